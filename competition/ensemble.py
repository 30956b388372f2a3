"""Blend experiments on their OOF predictions, score the blend honestly, write a validated submission.

    python -m competition.ensemble exp001 exp002 [exp003 ...] [--method auto|METHOD] [--name NAME] [--force]

Methods: the registry competition.blend.BLENDERS (listed under --method below). Every method is scored
by nested cross-validation over the members' own folds: weights (fitted on a smooth objective: log loss
for f1/accuracy), calibration and threshold are fitted on K-1 folds' OOF and label the held-out fold;
the held-out predictions are pooled and scored once, exactly as each member's OOF is. `auto` chooses the
method inside the nested CV (on the inner folds), so its score pays for the choice. The in-sample score
(fitted and scored on all OOF) is printed beside it, labelled as such; it flatters.
The fitted blend is saved in the sidecar and is what `predict` and `serve` load.

Members must come from one competition, one training set (inputs.json fingerprint, OOF ids, labels and folds)
and one metric, and from the competition's CURRENT train.csv and folds file (a member made before labels were
corrected, rows added or removed, or the folds changed is refused: rerun it with --restart); anything else is
refused, as are a member that is a blend (blend its members) and one whose outputs are missing (named, with the
command that makes them). --name is a plain name: the kit's own .csv/.json/.oof.csv and a submissions/ prefix
are stripped (logged); other folders are refused. submissions/<name>.csv is overwritten only by a re-blend with the
same settings (members, method, metric, calibration, values, data); otherwise pass another --name or --force.
The submission is refused when it carries no information (competition.submission.check_information).
"""

from __future__ import annotations

import argparse
import datetime as dt
import difflib
import os
import logging
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from competition import cli, options
from competition.atomic import write_csv, write_json
from competition.config import CompetitionConfig, TrackingConfig, is_override, load_config
from competition.errors import DataError, KitError
from competition.leaderboard import (SCOPE_FIELDS, DataCheck, data_problem, experiment_scope, member_state,
                                     missing_outputs, read_json, scope_title, test_like_column, write_leaderboard)
from competition.blend import Blend, auto_methods, choose, describe_methods, method_names, nested_auto, nested_cv
from competition.metrics import (THRESHOLD_METRICS, best_threshold, get_metric, positive_rates, score, score_note,
                                 warn_positive_rates)
from competition.paths import experiment_arg
from competition.project import Project, typed_folder
from competition.run_folder import fold_done
from competition.submission import Evidence, SubmissionError, build_submission, expected_frame, write_submission
from competition.tracking import log_blend

log = logging.getLogger(__name__)


class EnsembleError(KitError, ValueError):
    """Members that cannot be blended (different folds, ids, or missing outputs)."""


@dataclass
class Members:
    """Aligned OOF and test predictions of the blended experiments."""

    names: list[str]
    oof: np.ndarray  # (n_train, n_members) probabilities
    test: np.ndarray  # (n_test, n_members) probabilities
    target: np.ndarray  # (n_train,)
    fold: np.ndarray  # (n_train,)
    ids: pd.Series  # OOF ids
    test_ids: pd.Series
    metric: str
    member_scores: list[dict] = field(default_factory=list)
    oof_test_like: np.ndarray | None = None  # (n_train, n_members) prob_test_like, when every member has it
    test_like_adapted: list[str] = field(default_factory=list)  # members whose column is their adapted one


def load_oof(project: Project, name: str) -> pd.DataFrame:
    """An experiment's oof.csv (id, fold, target, prob), refusing partial experiments and damaged files."""
    out = project.experiment_dir(name)
    metrics_file, oof_file = out / "metrics.json", out / "oof.csv"
    if not (metrics_file.is_file() and oof_file.is_file()):
        raise EnsembleError(f"{out}: no oof.csv/metrics.json - run `./run.sh {name}` first")
    metrics = read_json(metrics_file)
    if metrics is None:
        raise EnsembleError(f"{metrics_file}: unreadable - rerun `./run.sh {name}` to rewrite it")
    if not metrics.get("complete", False):
        raise EnsembleError(f"{metrics_file}: experiment ran only some folds; finish it before blending")
    oof = read_predictions(oof_file, name, lambda: remake_fix(out, name, "oof.csv", metrics))
    check_oof_rows(oof, oof_file, name, metrics)
    return oof


def recorded_rows(out: Path, metrics: dict) -> tuple[int | None, str]:
    """The OOF row count an experiment recorded (metrics.json n_oof, else inputs.json n_train) and where."""
    if isinstance(metrics.get("n_oof"), int):
        return metrics["n_oof"], "metrics.json n_oof"
    inputs = read_json(out / "inputs.json") if (out / "inputs.json").is_file() else None
    n_train = inputs.get("n_train") if isinstance(inputs, dict) else None
    return (n_train, "inputs.json n_train") if isinstance(n_train, int) else (None, "")


def check_oof_rows(oof: pd.DataFrame, file: Path, name: str, metrics: dict) -> None:
    """Refuse a damaged oof.csv (no rows, ids listed twice, another row count than the experiment recorded) with the
    command that truly remakes it (remake_fix)."""
    n, where = recorded_rows(file.parent, metrics)
    twice = oof["id"][oof["id"].duplicated()]
    problem = ("no rows (header only)" if oof.empty else
               f"{len(twice)} id(s) listed twice, e.g. {twice.head(3).tolist()}" if len(twice) else
               f"{len(oof)} rows, but the experiment recorded {n} ({where})" if n is not None and len(oof) != n else "")
    if problem:
        raise DataError(f"{file}: {problem}: the file is damaged - {remake_fix(file.parent, name, file.name, metrics)}")


def fold_frames(out: Path, file: str) -> list[pd.DataFrame] | None:
    """Every fold's <file> (oof.csv or test.csv) of an experiment, or None when a fold is unfinished or unreadable."""
    folds = sorted(p for p in out.glob("fold*") if p.is_dir() and p.name[4:].isdigit())
    if not folds or not all(fold_done(p) for p in folds):
        return None
    try:
        frames = [pd.read_csv(p / file, dtype={"id": str}, keep_default_na=False) for p in folds]
    except (OSError, ValueError):
        return None
    whole = all({"id", "prob"} <= set(f.columns) and pd.to_numeric(f["prob"], errors="coerce").notna().all()
                for f in frames)
    return frames if whole else None


def remake_fix(out: Path, name: str, file: str, metrics: dict | None = None, want: pd.Series | None = None) -> str:
    """The command that truly remakes an experiment's oof.csv/test.csv: `./run.sh assemble` when its fold files are
    whole (OOF: the recorded row count, each id once; test: every id in `want`), else rerunning the experiment."""
    frames = fold_frames(out, file)
    if frames is not None and file == "oof.csv":
        ids, (n, _) = pd.concat(frames)["id"], recorded_rows(out, metrics or {})
        whole = len(ids) > 0 and not ids.duplicated().any() and (n is None or len(ids) == n)
    else:
        whole = frames is not None and all(len(f) > 0 and (want is None or want.isin(set(f["id"])).all())
                                           for f in frames)
    if whole:
        return f"`./run.sh assemble {name}` rebuilds {file} from its fold files"
    return f"its fold files are damaged or missing too: rerun `./run.sh {name} --restart`"


def read_predictions(file: Path, name: str, fix: Callable[[], str] | None = None) -> pd.DataFrame:
    """oof.csv or test.csv of an experiment: ids as text, `prob` a number on every row (else refused, naming rows and
    `fix()`, the command remaking the file: default a rerun)."""
    def advice() -> str:
        return fix() if fix else f"rerun `./run.sh {name} --restart`"

    try:
        frame = pd.read_csv(file, dtype={"id": str, "error": str}, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DataError(f"{file}: unreadable ({type(err).__name__}) - {advice()}") from None
    if not {"id", "prob"} <= set(frame.columns):
        raise DataError(f"{file}: needs columns id and prob, has {list(frame.columns)} - {advice()}")
    frame["prob"] = pd.to_numeric(frame["prob"], errors="coerce")
    empty = frame["prob"].isna()
    if empty.any():
        raise DataError(f"{file}: {int(empty.sum())} of {len(frame)} rows have no probability (empty/NaN), e.g. "
                        f"{frame.loc[empty, 'id'].head(3).tolist()} - {advice()}")
    return frame


def load_test(project: Project, name: str) -> pd.DataFrame:
    """An experiment's fold-averaged test predictions (id, prob)."""
    out = project.experiment_dir(name)
    return read_predictions(out / "test.csv", name, lambda: remake_fix(out, name, "test.csv"))


def check_test_ids(project: Project, comp: CompetitionConfig, names: list[str], test_ids: pd.Series) -> None:
    """Refuse members whose test.csv lacks sample-submission ids (cut short, other ids), naming the files and the
    command that remakes each (remake_fix)."""
    want = expected_frame(comp, project, test_ids)[comp.id_column].astype(str)
    missing = want[~want.isin(set(test_ids.astype(str)))]
    if len(missing):
        files = ", ".join(str(project.experiment_dir(n) / "test.csv") for n in names)
        fixes = "; ".join(dict.fromkeys(remake_fix(project.experiment_dir(n), n, "test.csv", want=want) for n in names))
        raise DataError(f"{files}: {len(missing)} sample-submission ids have no prediction, e.g. "
                        f"{missing.head(3).tolist()} - the predictions file is cut short or made for other test ids: "
                        f"{fixes}")


def test_errors(project: Project, name: str) -> tuple[dict[str, str], str]:
    """Test ids that got no prediction in an experiment (decode errors, missing files; filled with the prior) with
    their reason, from test.csv's `error` column or bad_test_images.csv, and the file that lists them."""
    out = project.experiment_dir(name)
    for file in (out / "test.csv", out / "bad_test_images.csv"):
        if file.is_file():
            frame = pd.read_csv(file, dtype=str, keep_default_na=False)
            if {"id", "error"} <= set(frame.columns):
                bad = frame[frame["error"].str.strip() != ""]
                return dict(zip(bad["id"], bad["error"])), str(file)
    return {}, ""


def check_same_scope(project: Project, names: list[str], comp: CompetitionConfig) -> dict:
    """Refuse members trained on another competition, other training data or scored by another metric than the
    first member (fields unknown for an older experiment are not compared); return the shared scope."""
    scopes = {n: experiment_scope(project.experiment_dir(n)) for n in names}
    first = scopes[names[0]]
    for name in names[1:]:
        for key in SCOPE_FIELDS:
            if first[key] and scopes[name][key] and first[key] != scopes[name][key]:
                raise EnsembleError(f"{name} and {names[0]} differ in {key} ({scopes[name][key]} vs {first[key]}): "
                                    f"{name} is {scope_title(scopes[name])}, {names[0]} is {scope_title(first)} - blend "
                                    f"experiments of one competition, training data and metric (rerun one on the other's)")
    known = next((s["competition"] for s in scopes.values() if s["competition"]), "")
    if known and known != comp.name:
        raise EnsembleError(f"{names[0]} was trained on competition `{known}`, but competition.yaml is `{comp.name}` - "
                            f"blend with the competition.yaml it was trained with (or competition.name={known})")
    return {**first, **{k: next((s[k] for s in scopes.values() if s[k]), "") for k in SCOPE_FIELDS}}


KIT_SUFFIXES = (".oof.csv", ".csv", ".json")  # what the kit adds to a blend's name: never doubled


def blend_name(text: str, project: Project) -> str:
    """--name as a plain submission name: a leading ./ or submissions/ (or that folder's full path) and the kit's own
    extensions (.csv, .json, .oof.csv, any case) are stripped, saying so; any other folder is refused."""
    folder, _, name = text.strip().replace("\\", "/").rpartition("/")
    if folder and os.path.normpath(folder) not in (".", project.submissions.name) and not any(
            (base / folder).resolve() == project.submissions.resolve() for base in (typed_folder(), project.root)):
        raise EnsembleError(f"--name {text}: blends are always written to {project.submissions.name}/ - pass a plain "
                            f"name, e.g. --name {name or 'myblend'}")
    while (suffix := next((x for x in KIT_SUFFIXES if name.lower().endswith(x) and len(name) > len(x)), "")):
        name = name[: -len(suffix)]
    if not name or name.lower().endswith(".oof"):
        raise EnsembleError(f"--name {text}: {'empty' if not name else 'a name ending in .oof is the OOF file of another blend'}"
                            f" - pass a plain name, e.g. --name myblend")
    if name != text:
        log.info("--name %s: writing %s/%s.csv (+ .json, .oof.csv): the kit adds its extensions and folder itself",
                 text, project.submissions.name, name)
    return name


def check_member(project: Project, name: str) -> None:
    """Refuse a member that is a blend (submissions/<name>), an unknown name (suggesting close experiment names,
    case-insensitively) or an experiment whose outputs are missing (naming the files and the command)."""
    if not project.experiment_dir(name).is_dir():
        side = project.submissions / f"{name}.json"
        if side.is_file() or project.submission_file(name).is_file():
            saved = read_json(side) if side.is_file() else None
            members = saved.get("members") if saved and isinstance(saved.get("members"), list) else []
            instead = f": `./run.sh ensemble {' '.join(members)} ...`" if members else ""
            raise EnsembleError(f"{name} is a blend in {project.submissions.name}/ ({name}.csv), not an experiment: "
                                f"blends cannot be members - blend its members instead{instead}")
        if (project.experiments / f"{name}.yaml").is_file():
            raise EnsembleError(f"experiment {name} has not run yet (no {project.experiments.name}/{name}/) - run "
                                f"`./run.sh {name}` first")
        known = sorted({p.name for p in project.experiments.iterdir() if p.is_dir()} |
                       {p.stem for p in project.experiments.glob("*.yaml")}) if project.experiments.is_dir() else []
        close = [k for k in known if k.lower() == name.lower()] or difflib.get_close_matches(name, known, 3, 0.6)
        hint = f"; did you mean {' or '.join(close)}?" if close else f" - experiments: {', '.join(known[:8]) or 'none'}"
        raise EnsembleError(f"no experiment {name} (no {project.experiments.name}/{name}/ or {name}.yaml){hint}")
    missing = missing_outputs(project.experiments, name)
    if missing:
        raise EnsembleError(f"member {name}: {missing}")


def check_current_data(project: Project, names: list[str], comp: CompetitionConfig) -> None:
    """Refuse a member made from other training data than the competition's current train table and folds."""
    check = DataCheck(project, comp)
    for name in names:
        stale = data_problem(check, project.experiments, name)
        if stale:
            raise EnsembleError(f"member {name} is {stale}, then blend again")
    if check.problem:
        log.warning("members' training data not compared with the competition's current data: %s", check.problem)


def different_test_ids(project: Project, names: tuple[str, str], tests: tuple[pd.DataFrame, pd.DataFrame]) -> DataError:
    """The error for two members whose test.csv list different ids: both files, what each lacks, and each one's
    remake command (remake_fix; the sample submission's ids decide which is stale)."""
    (a, b), (ids_a, ids_b) = names, (set(t["id"]) for t in tests)
    files = [project.experiment_dir(n) / "test.csv" for n in names]
    fixes = "; ".join(f"{n}: {remake_fix(project.experiment_dir(n), n, 'test.csv')}" for n in names)
    return DataError(f"{files[0]} and {files[1]} list different test ids ({len(ids_a - ids_b)} only in {a}'s, "
                     f"{len(ids_b - ids_a)} only in {b}'s): one is cut short or made for other test ids - {fixes}")


def load_members(project: Project, names: list[str], metric: str) -> Members:
    """Load and align members, checking they share the same OOF ids, folds and test ids."""
    if len(set(names)) != len(names):
        raise EnsembleError(f"members listed twice: {names}")
    oofs = [load_oof(project, n).sort_values("id").reset_index(drop=True) for n in names]
    tests = [load_test(project, n) for n in names]
    ref, ref_test = oofs[0], tests[0]
    for name, oof, test in zip(names[1:], oofs[1:], tests[1:]):
        if len(oof) != len(ref) or not (oof["id"].values == ref["id"].values).all():
            raise EnsembleError(f"{name} and {names[0]} have different OOF ids; blend experiments of one competition")
        if not (oof["target"].to_numpy(int) == ref["target"].to_numpy(int)).all():
            n_diff = int((oof["target"].to_numpy(int) != ref["target"].to_numpy(int)).sum())
            raise EnsembleError(f"{name} and {names[0]} were trained on different labels ({n_diff} OOF rows differ): "
                                f"train.csv changed between them - rerun the older one on the current data")
        if not (oof["fold"].values == ref["fold"].values).all():
            n_diff = int((oof["fold"].values != ref["fold"].values).sum())
            raise EnsembleError(f"{name} and {names[0]} used different folds ({n_diff} rows differ); nested scores "
                                f"need shared folds - rerun one of them on the same folds file")
        if set(test["id"]) != set(ref_test["id"]):
            raise different_test_ids(project, (names[0], name), (ref_test, test))
    tests = [t.set_index("id").loc[ref_test["id"]].reset_index() for t in tests]
    members = Members(names=names, oof=np.column_stack([o["prob"].to_numpy(float) for o in oofs]),
                      test=np.column_stack([t["prob"].to_numpy(float) for t in tests]),
                      target=ref["target"].to_numpy(int), fold=ref["fold"].to_numpy(int), ids=ref["id"],
                      test_ids=ref_test["id"], metric=metric)
    members.oof_test_like, members.test_like_adapted = test_like_matrix(project, names, oofs)
    for j, name in enumerate(names):
        members.member_scores.append(member_score(name, members.oof[:, j], members.target, members.fold, metric))
    return members


def test_like_matrix(project: Project, names: list[str],
                     oofs: list[pd.DataFrame]) -> tuple[np.ndarray | None, list[str]]:
    """The members' test-like OOF columns (leaderboard.test_like_column: the adapted one of a tta.adapt_bn member, the
    predictions it submits), aligned like their OOF, and the members whose column is adapted; (None, []) unless every
    member has a complete one, logging which member lacks it and the command that adds it."""
    columns = [test_like_column(o.columns) for o in oofs]
    lacking = [n for n, o, c in zip(names, oofs, columns)
               if c is None or pd.to_numeric(o[c], errors="coerce").isna().any()]
    if lacking:
        warn_no_test_like(project, lacking, logging.WARNING if len(lacking) < len(names) else logging.INFO)
        return None, []
    matrix = np.column_stack([pd.to_numeric(o[c], errors="coerce").to_numpy(float) for o, c in zip(oofs, columns)])
    return matrix, [n for n, c in zip(names, columns) if c == "prob_test_like_adapted"]


def warn_no_test_like(project: Project, lacking: list[str], level: int = logging.WARNING) -> None:
    """One log line (a warning when other members have the column): no nested test-like score, the members lacking
    the column and per member the command adding it from its checkpoints, with its recorded overrides (rerun_words)."""
    from competition.assemble import rerun_words  # noqa: PLC0415 - torch only when a fix is worded
    from competition.config import load_saved_config  # noqa: PLC0415

    fixes = []
    for name in lacking:
        out = project.experiment_dir(name)
        try:
            words = rerun_words(load_saved_config(out / "config.yaml"), out, ("data.test_like_oof=on",), name)
        except (KitError, OSError):
            words = f"{name} data.test_like_oof=on"
        fixes.append(f"`./run.sh assemble {words}`")
    log.log(level, "nested test-like score not computed: member(s) %s have no test-like OOF column - add it without "
            "retraining: %s, then blend again", ", ".join(lacking), "; ".join(fixes))


def test_like_score(members: Members, method: str, calibration: str) -> dict | None:
    """The blend's honest score on the test-like OOF: the same nested CV (method, calibration) on the members' test-like
    columns (the adapted one of a tta.adapt_bn member); None unless every member has one."""
    if members.oof_test_like is None:
        return None
    result = nested_cv(method, members.oof_test_like, members.target, members.fold, members.metric, calibration)
    result.pop("held_out", None)
    result["adapted"] = members.test_like_adapted  # members scored on their tta.adapt_bn predictions
    print(f"{method + ' on test-like OOF':<28} {result['mean']:>12.5f} ± {result['std']:.5f} "  # noqa: T201 - CLI answer
          f"{result['pooled']:>14.5f}   (validation images re-encoded like the test images)")
    return result


def member_score(name: str, prob: np.ndarray, y: np.ndarray, fold: np.ndarray, metric: str) -> dict:
    """A member scored like its metrics.json (at its OOF-tuned threshold) and like a blend (nested, pooled)."""
    threshold = best_threshold(metric, y, prob)
    per_fold = [score(metric, y[fold == k], prob[fold == k], threshold) for k in np.unique(fold)]
    return {"name": name, "oof": score(metric, y, prob, threshold), "threshold": threshold,
            "fold_mean": float(np.mean(per_fold)), "fold_std": float(np.std(per_fold)),
            "nested": nested_cv("mean", prob[:, None], y, fold, metric)["pooled"]}


def evaluate_method(method: str, members: Members, calibration: str = "none") -> dict:
    """Nested (honest, pooled) and in-sample scores of one method on the members' OOF, and its full-data fit."""
    x, y, fold, metric = members.oof, members.target, members.fold, members.metric
    blend = Blend.fit(members.names, method, metric, x, y, calibration)
    prob = blend.apply(x)
    return {"method": method, "nested": nested_cv(method, x, y, fold, metric, calibration),
            "in_sample": score(metric, y, prob, blend.threshold), "blend": blend}


def evaluate(methods: list[str], members: Members, calibration: str) -> tuple[list[dict], dict, dict]:
    """(every method's result, the chosen one, the honest nested score of the choice: `auto` pays for choosing)."""
    results = [evaluate_method(m, members, calibration) for m in methods]
    chosen = next(r for r in results if r["method"] == choose({r["method"]: r["nested"] for r in results},
                                                                 members.metric))
    if len(methods) == 1:
        return results, chosen, chosen["nested"]
    honest = nested_auto(methods, members.oof, members.target, members.fold, members.metric, calibration)
    return results, chosen, honest


def _git_commit() -> str:
    """The repository's HEAD commit, or '' outside git."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def report(members: Members, results: list[dict], chosen: dict, honest: dict) -> str:
    """The member and blend score table printed to the console: fold mean ± std ranks, pooled beside it."""
    m = members.metric
    at = " at each file's threshold" if m in THRESHOLD_METRICS else ""
    lines = [f"scores: {m}{at}; fold mean ± std over the members' folds (what ranks), pooled over all OOF rows beside "
             f"it; nested = fitted and thresholded on K-1 folds, scored on the held-out fold", "",
             f"{'member':<28} {'fold mean ± std':>22} {'OOF pooled':>12} {'nested pooled':>14}"]
    for s in members.member_scores:
        lines.append(f"{s['name']:<28} {s['fold_mean']:>12.5f} ± {s['fold_std']:.5f} {s['oof']:>12.5f} "
                     f"{s['nested']:>14.5f}")
    lines += ["", f"{'blend method':<28} {'nested fold mean ± std':>22} {'nested pooled':>14} "
                  f"{'in-sample (flatters)':>22}"]
    for r in results:
        mark = "  <- chosen" if r is chosen else ""
        n = r["nested"]
        lines.append(f"{r['method']:<28} {n['mean']:>12.5f} ± {n['std']:.5f} {n['pooled']:>14.5f} "
                     f"{r['in_sample']:>22.5f}{mark}")
    if len(results) > 1:
        lines.append(f"{'auto (choice made inside CV)':<28} {honest['mean']:>12.5f} ± {honest['std']:.5f} "
                     f"{honest['pooled']:>14.5f}   picks per fold: {', '.join(honest['choices'])}")
    return "\n".join(lines)


SETTINGS = ("members", "selected_by", "metric", "calibration", "submission_values")  # a blend file's identity


def refuse_case_twin(csv_path: Path, name: str) -> None:
    """Refuse a blend name equal to an existing one except for case (same Kaggle slug, same file on macOS/Windows)."""
    folder = csv_path.parent
    twins = sorted({p.stem for p in folder.glob("*.json") if p.stem.lower() == name.lower() and p.stem != name}
                   | {p.stem for p in folder.glob("*.csv") if p.stem.lower() == name.lower() and p.stem != name})
    if twins:
        raise EnsembleError(f"--name {name}: {folder / (twins[0] + '.csv')} differs only by case (same Kaggle slug) "
                            f"- pick another name, or pass --name {twins[0]} (with --force) to replace it")


def check_destination(project: Project, name: str, settings: dict, force: bool) -> Path:
    """submissions/<name>.csv, unless it (or its sidecar) holds something else than a blend with these settings:
    then refused naming the file, --name and --force (a re-blend with identical settings overwrites its own file)."""
    csv_path = project.submission_file(name)
    side = csv_path.with_suffix(".json")
    refuse_case_twin(csv_path, name)
    if force or not (csv_path.exists() or side.exists()):
        return csv_path
    saved = read_json(side) if side.is_file() else None
    if not saved or not isinstance(saved.get("members"), list):
        raise EnsembleError(f"{csv_path} exists and was not written by competition.ensemble (no blend sidecar "
                            f"{side.name}) - pass --name NAME for a new file, or --force to overwrite it")
    scope = saved.get("scope") or {}
    differ = [f"{k} {saved.get(k)} -> {settings[k]}" for k in SETTINGS if saved.get(k) != settings[k]]
    differ += [f"{k} {scope[k]} -> {settings['scope'][k]}" for k in SCOPE_FIELDS
               if scope.get(k) and settings["scope"].get(k) and scope[k] != settings["scope"][k]]
    if differ:
        raise EnsembleError(f"{csv_path} holds a blend with other settings ({'; '.join(dict.fromkeys(differ))}) - pass --name NAME to "
                            f"keep both, or --force to overwrite it")
    return csv_path


def blend_evidence(project: Project, names: list[str], oof_rate: float) -> Evidence:
    """Test rows without a prediction in any member (with the files listing them) and the blend's OOF positive rate."""
    empty, files = {}, []
    for name in names:
        errors, file = test_errors(project, name)
        empty.update(errors)
        files += [file] if errors else []
    reasons = pd.Series(list(empty.values()), dtype=str).value_counts().head(3)
    return Evidence(sorted(empty), ", ".join(files), oof_rate, ", ".join(f"{r}: {n}" for r, n in reasons.items()))


def blend_experiments(project: Project, names: list[str], method: str, comp: CompetitionConfig, name: str = "",
                      calibrate: str = "auto", force: bool = False, tracking: TrackingConfig | None = None) -> dict:
    """Blend, score, write submissions/<name>.csv + .json (with the fitted blend), refresh the leaderboard."""
    for member in names:
        check_member(project, member)
    check_current_data(project, names, comp)
    members = load_members(project, names, comp.metric)
    check_test_ids(project, comp, names, members.test_ids)
    shared = check_same_scope(project, names, comp)
    if shared["metric"] and shared["metric"] != comp.metric:
        log.warning("members were scored by %s; this blend is fitted and scored by %s (competition.metric)",
                    shared["metric"], comp.metric)
    if calibrate == "auto":
        calibrate = "platt" if get_metric(comp.metric).calibrated else "none"
    settings = {"members": names, "selected_by": method, "metric": comp.metric, "calibration": calibrate,
                "submission_values": comp.submission_values, "scope": {**shared, "metric": comp.metric}}
    csv_path = check_destination(project, name or f"blend_{'_'.join(names)}_{method}", settings, force)
    results, chosen, honest = evaluate(auto_methods(len(names)) if method == "auto" else [method], members, calibrate)
    print(report(members, results, chosen, honest))  # noqa: T201 - the CLI's answer
    like = test_like_score(members, chosen["method"], calibrate)  # printed beside the plain score
    blend: Blend = chosen["blend"].with_reference(members.test)
    prob = blend.apply(members.test)
    rates = positive_rates(chosen["blend"].apply(members.oof), prob, blend.threshold)
    evidence = blend_evidence(project, names, rates["oof"])
    values = blend.label(prob) if comp.submission_values == "label" else prob
    frame = build_submission(comp, project, members.test_ids, values)
    try:
        write_submission(csv_path, frame, comp, project, evidence)
    except SubmissionError as err:
        spread = np.ptp(members.test, axis=0)
        raise SubmissionError(f"{err} [blend method {chosen['method']}{' chosen by auto' if method == 'auto' else ''}; "
                              f"each member's test predictions span {', '.join(f'{s:.2g}' for s in spread)}: a span "
                              f"near 0 is a member that predicts a constant; rank ties scores within 1e-5]") from None
    sidecar = {
        **settings, "method": chosen["method"], "blend": blend.to_dict(),
        "score_note": score_note(comp.metric, blend.threshold),
        "nested": honest, "in_sample": chosen["in_sample"], "oof_score": chosen["in_sample"],
        "nested_test_like": like,
        "threshold": blend.threshold, "positive_rate": rates, "member_scores": members.member_scores,
        "member_inputs": {n: member_state(project.experiment_dir(n)) for n in names},
        "no_prediction": evidence.no_prediction, "rows": len(frame), "git_commit": _git_commit(),
        "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    write_blend_files(project, csv_path, sidecar, members, results, chosen, tracking)
    if comp.metric in THRESHOLD_METRICS or comp.submission_values == "label":
        warn_positive_rates(rates, blend.threshold, csv_path.name)
    log.info("submission %s: %s (%s), nested %s: fold mean %.5f ± %.5f (pooled %.5f), in-sample %.5f", csv_path,
             chosen["method"], method, sidecar["score_note"], honest["mean"], honest["std"], honest["pooled"],
             chosen["in_sample"])
    return sidecar


def write_blend_files(project: Project, csv_path: Path, sidecar: dict, members: Members, results: list[dict],
                      chosen: dict, tracking: TrackingConfig | None = None) -> None:
    """<name>.oof.csv (nested and in-sample OOF), <name>.json (the sidecar), the leaderboard, then the tracker."""
    write_csv(csv_path.with_suffix(".oof.csv"), pd.DataFrame({
        "id": members.ids.values, "fold": members.fold, "target": members.target,
        "nested": sidecar["nested"].pop("held_out"), "in_sample": chosen["blend"].apply(members.oof)}))
    for r in results:
        r["nested"].pop("held_out", None)
    sidecar["methods_tried"] = [{"method": r["method"], "nested": r["nested"], "in_sample": r["in_sample"]}
                                for r in results]
    write_json(csv_path.with_suffix(".json"), sidecar)
    write_leaderboard(project)
    log_blend(tracking, project, csv_path, sidecar)  # tracking.backend: after the blend's files are written


def build_parser() -> argparse.ArgumentParser:
    """The ensemble command line; --method's choices are the blend registry's (competition.blend.BLENDERS)."""
    parser = cli.parser(__doc__)
    parser.add_argument("experiments", nargs="+", help="experiment names to blend (1 or more), then any "
                                                       "section.key=value overrides of competition.yaml")
    parser.add_argument("--method", default="auto", type=options.choice("auto", *method_names()),
                        help=f"auto: chosen inside the nested CV; {describe_methods()}")
    parser.add_argument("--name", default="", help="submission name (default: blend_<members>_<method>)")
    parser.add_argument("--force", action="store_true", help="overwrite submissions/<name>.csv even when it holds "
                                                             "another blend or a file the kit did not write")
    parser.add_argument("--calibrate", default="auto", type=options.choice("auto", "none", "platt", "temperature"),
                        help="calibrate the blend's probabilities (auto: platt for calibration metrics: logloss)")
    return parser


def main(argv: list[str] | None = None, project: Project | None = None) -> int:
    """CLI entry point."""
    args = build_parser().parse_args(argv)
    names = [e for e in args.experiments if not is_override(e)]
    overrides = [e for e in args.experiments if is_override(e)]

    def body() -> int:
        nonlocal project
        project = project or Project.from_env()  # inside cli.run: a bad KIT_HOME is one ERROR line
        cfg = load_config("", overrides, project, check_model=False)
        comp = cfg.competition
        members = [experiment_arg(n, project) for n in names]  # a name, or experiments/<name>.yaml typed from anywhere
        name = blend_name(args.name, project) if args.name else ""
        blend_experiments(project, members, args.method, comp, name, args.calibrate, args.force, cfg.tracking)
        return 0

    return cli.run(body)


if __name__ == "__main__":
    sys.exit(main())
