"""experiments/LEADERBOARD.md: every experiment ranked by its OOF score, and every blend by its nested OOF score,
one section per competition, training data fingerprint and metric (never ranked across them).

For f1/accuracy every score is at the threshold of the file written (shown beside the metric).

    python -m competition.leaderboard          # regenerate and print it

Regenerated from the metrics.json of each experiment and the .json sidecar of each submission, so it
is always a pure function of what is on disk. Unreadable files are named in a warning and left out.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import sys
from pathlib import Path

import pandas as pd
import yaml

from competition import cli
from competition.atomic import write_text
from competition.config import CompetitionConfig, load_config, load_saved_config
from competition.errors import KitError
from competition.metrics import THRESHOLD_METRICS, greater_is_better
from competition.project import Project
from competition.run_folder import fold_done, train_digest
from competition.tables import load_train_table

log = logging.getLogger(__name__)


REQUIRED = ("experiment", "metric", "oof_score", "fold_mean", "fold_std", "oof", "model", "img_size", "epochs",
            "tta", "wall_s")


def read_json(path: Path) -> dict | None:
    """A JSON object from a file, or None (with a warning naming the file) when it is empty or broken."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        log.warning("%s: unreadable (%s), left out - delete it or rerun what wrote it", path, type(err).__name__)
        return None
    if not isinstance(data, dict):
        log.warning("%s: not a JSON object, left out", path)
        return None
    return data


def experiment_scope(out: Path, metrics: dict | None = None) -> dict:
    """What an experiment's scores are comparable with: competition name (its config.yaml), training-data
    fingerprint (inputs.json: hash of training ids, labels and folds) and metric (metrics.json); '' = unknown.
    data_dir is where the data lies (a runtime key: Kaggle runs elsewhere): recorded, never compared - other data
    in another folder shows in the fingerprint."""
    metrics = metrics if metrics is not None else (read_json(out / "metrics.json") or {})
    inputs = (read_json(out / "inputs.json") or {}) if (out / "inputs.json").is_file() else {}
    comp = {}
    if (out / "config.yaml").is_file():
        try:
            comp = (yaml.safe_load((out / "config.yaml").read_text()) or {}).get("competition") or {}
        except (OSError, yaml.YAMLError, AttributeError):
            log.warning("%s: unreadable, its competition is unknown on the leaderboard", out / "config.yaml")
    return {"competition": str(comp.get("name", "")), "fingerprint": str(inputs.get("train", "")),
            "n_train": inputs.get("n_train"), "metric": str(metrics.get("metric", "") or comp.get("metric", "")),
            "data_dir": str(comp.get("data_dir", ""))}


SCOPE_FIELDS = ("competition", "fingerprint", "metric")  # what must match for scores to be ranked together


def scope_key(scope: dict) -> tuple[str, ...]:
    """The fields that decide whether two scores may be ranked together."""
    return tuple(str(scope.get(k) or "") for k in SCOPE_FIELDS)


def scope_title(scope: dict) -> str:
    """A section heading naming the competition, training data fingerprint and metric."""
    rows = f" ({scope['n_train']} train rows)" if scope.get("n_train") else ""
    return (f"competition `{scope.get('competition') or 'unknown'}` · training data "
            f"`{scope.get('fingerprint') or 'unknown'}`{rows} · metric `{scope.get('metric') or 'unknown'}`")


def file_digest(path: Path) -> str:
    """A short hash of a file's bytes ('' when it cannot be read)."""
    try:
        return hashlib.sha1(path.read_bytes()).hexdigest()[:16]
    except OSError:
        return ""


def member_state(out: Path) -> dict:
    """What a blend records of each member, to notice later that it is gone or was rerun: inputs and OOF hashes."""
    inputs = (read_json(out / "inputs.json") or {}) if (out / "inputs.json").is_file() else {}
    return {"train": inputs.get("train", ""), "test": inputs.get("test", ""), "oof": file_digest(out / "oof.csv")}


MEMBER_FILES = ("metrics.json", "oof.csv", "test.csv")  # what a blend reads of each member


def missing_outputs(experiments: Path, name: str) -> str:
    """Which of an experiment's outputs a blend needs are missing, and the command that makes them ('' if none)."""
    out = experiments / name
    if not out.is_dir():
        return f"{experiments.name}/{name}/ was deleted - run `./run.sh {name}` again (or blend without it)"
    missing = [f"{experiments.name}/{name}/{f}" for f in MEMBER_FILES if not (out / f).is_file()]
    if not missing:
        return ""
    folds = [p for p in out.glob("fold*") if p.is_dir()]
    fix = (f"`./run.sh assemble {name}` rebuilds {'it' if len(missing) == 1 else 'them'} from its finished folds"
           if folds and all(fold_done(p) for p in folds) else f"run `./run.sh {name}` to finish it")
    return f"{', '.join(missing)} missing - {fix}"


STALE = "stale: training data changed since"  # how the leaderboard marks results made from other data


class DataCheck:
    """The competition's current training rows (competition.yaml's train table, and each folds file), read once and
    cheaply (no image decoded), to tell whether an experiment's recorded inputs are still the current data."""

    def __init__(self, project: Project, comp: CompetitionConfig | None = None):
        self.project, self.comp, self.problem = project, comp, ""
        self._train: pd.DataFrame | None = None
        self._folds: dict[Path, pd.DataFrame | None] = {}

    def train(self) -> pd.DataFrame | None:
        """Current training rows (id, label), or None with `problem` set when the data cannot be read."""
        if self._train is None and not self.problem:
            try:
                comp = self.comp or load_config("", [], self.project, check_model=False).competition
                self._train = load_train_table(comp, self.project)[["id", "label"]]
            except (KitError, OSError, ValueError) as err:
                self.problem = f"data not checked ({str(err).splitlines()[0] if str(err) else type(err).__name__})"
        return self._train

    def folds(self, out: Path) -> tuple[Path | None, pd.DataFrame | None]:
        """The folds file an experiment's saved config names, and its (id, fold) rows (None when absent)."""
        try:
            path = self.project.folds_file(load_saved_config(out / "config.yaml"))
        except KitError:
            return None, None
        if path not in self._folds:
            try:
                frame = pd.read_csv(path, dtype={"id": str}, keep_default_na=False)
                keep = [c for c in ("id", "fold", "label") if c in frame.columns]
                self._folds[path] = frame[keep] if {"id", "fold"} <= set(keep) else None
            except (OSError, ValueError):
                self._folds[path] = None
        return path, self._folds[path]

    def change(self, out: Path) -> str:
        """What changed in the competition's training data since experiments/<exp>/ was made (labels of N rows,
        rows added or removed, folds), '' when nothing did or it cannot be told (no inputs.json: an older run)."""
        inputs = read_json(out / "inputs.json") if (out / "inputs.json").is_file() else None
        train = self.train()
        if not inputs or not inputs.get("train") or train is None:
            return ""
        path, folds = self.folds(out)
        if folds is not None:
            now = train.merge(folds[["id", "fold"]], on="id", how="left")
            if train_digest(now) == inputs["train"]:
                return ""
        try:
            oof = pd.read_csv(out / "oof.csv", dtype={"id": str}, keep_default_na=False)[["id", "fold", "target"]]
        except (OSError, ValueError, KeyError):
            return "training rows/labels/folds (inputs.json fingerprint differs)" if folds is not None else ""
        return describe_change(oof, train, folds, path) or (
            "training rows/labels/folds (inputs.json fingerprint differs)" if folds is not None else "")


def describe_change(oof: pd.DataFrame, train: pd.DataFrame, folds: pd.DataFrame | None, path: Path | None) -> str:
    """How current training rows (and folds file) differ from the rows an OOF was made on ('' when they do not)."""
    then, now = set(oof["id"]), set(train["id"])
    unrun = set(folds.loc[~folds["fold"].isin(set(oof["fold"])), "id"]) if folds is not None else set()
    removed, added = len(then - now), len(now - then - unrun)  # rows of folds a partial run skipped are not new
    parts = [f"rows {' and '.join(f'{n} {w}' for n, w in ((added, 'added'), (removed, 'removed')) if n)}"] if removed or added else []
    both = oof.merge(train, on="id")
    labels = int((both["target"].astype(int) != both["label"].astype(int)).sum())
    parts += [f"labels of {labels} row(s)"] if labels else []
    if folds is not None:
        refold = oof.merge(folds[["id", "fold"]], on="id", suffixes=("", "_now"))
        moved = int((refold["fold"].astype(str) != refold["fold_now"].astype(str)).sum())
        parts += [f"folds of {moved} row(s) in {path.name}"] if moved else []
    return "; ".join(parts)


def data_problem(check: DataCheck, experiments: Path, name: str) -> str:
    """'stale: training data changed since (...)' for an experiment made from other data, else ''."""
    change = check.change(experiments / name)
    if not change:
        return ""
    path, folds = check.folds(experiments / name)
    old = folds is not None and "label" in folds.columns and describe_change(
        folds.rename(columns={"label": "target"}), check.train(), None, None)
    first = f"delete {path.parent.name}/{path.name} (made from the old train.csv), then " if old else ""
    return f"{STALE} ({change}) - {first}rerun `./run.sh {name} --restart`"


def member_problem(experiments: Path, name: str, saved: dict | None, check: DataCheck | None = None) -> str:
    """Why a blend member no longer is what the blend was made from, or is made from other data ('' when neither)."""
    out = experiments / name
    missing = missing_outputs(experiments, name)
    if missing:
        return f"member {name} {'is gone: ' if not out.is_dir() else ''}{missing}"
    stale = data_problem(check, experiments, name) if check is not None else ""
    if stale:
        return f"member {name} {stale}"
    if not saved:
        return ""
    now = member_state(out)
    if any(saved.get(k) and now[k] and saved[k] != now[k] for k in ("train", "test")):
        return f"member {name} was rerun on other data"
    if saved.get("oof") and now["oof"] != saved["oof"]:
        return f"member {name} was rerun since (its OOF changed)"
    return ""


def load_metrics(directory: Path, check: DataCheck | None = None) -> list[dict]:
    """metrics.json of every experiment folder that has a complete one (others are logged and skipped); with a
    check, `stale` says how the competition's training data changed since each was made."""
    out = []
    for path in sorted(directory.glob("*/metrics.json")):
        data = read_json(path)
        if data is None:
            continue
        ood = read_json(path.parent / "ood" / "metrics.json") if (path.parent / "ood" / "metrics.json").is_file() else None
        if ood is not None:
            data["ood_score"] = ood.get("oof_score")
        missing = [k for k in REQUIRED if k not in data]
        if missing:
            log.warning("%s: not on the leaderboard, missing %s", path, ", ".join(missing))
            continue
        data["scope"] = experiment_scope(path.parent, data)
        data["stale"] = data_problem(check, directory, path.parent.name) if check is not None else ""
        out.append(data)
    return out


def blend_scope(sidecar: dict, experiments: Path) -> dict:
    """A blend's scope: saved in its sidecar, else (older sidecars) its first surviving member's, with its metric."""
    if isinstance(sidecar.get("scope"), dict):
        return sidecar["scope"]
    alive = [m for m in sidecar["members"] if (experiments / m / "metrics.json").is_file()]
    scope = experiment_scope(experiments / alive[0]) if alive else {}
    return {**scope, "metric": sidecar.get("metric", scope.get("metric", ""))}


def load_blends(directory: Path, experiments: Path | None = None, check: DataCheck | None = None) -> list[dict]:
    """Sidecars of every blend written by competition.ensemble, with their scope and why any is stale."""
    experiments = experiments if experiments is not None else directory.parent / "experiments"
    out = []
    for path in sorted(directory.glob("*.json")):
        data = read_json(path)
        if data is None or not isinstance(data.get("members"), list):
            continue
        states = data.get("member_inputs") or {}
        stale = [p for p in (member_problem(experiments, m, states.get(m), check) for m in data["members"]) if p]
        out.append({**data, "file": path.with_suffix(".csv").name, "nested_mean": (data.get("nested") or {}).get("mean"),
                    "scope": blend_scope(data, experiments), "stale": stale})
    return out


def _rank(rows: list[dict], key: str) -> list[dict]:
    """Rows sorted best-first by `key`, per each row's metric direction (NaN last)."""
    def sort_key(row: dict) -> float:
        value = row.get(key)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return math.inf
        return -value if greater_is_better(row.get("metric", "auc")) else value
    return sorted(rows, key=sort_key)


def _fmt(value, digits: int = 5) -> str:
    """Number formatting for the table ('' for missing)."""
    if value is None:
        return ""
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _metric_label(row: dict) -> str:
    """The metric, with the threshold its scores are taken at for f1/accuracy."""
    if row.get("metric") in THRESHOLD_METRICS and row.get("threshold") is not None:
        return f"{row['metric']} @ {row['threshold']:.4g}"
    return str(row.get("metric", ""))


INTRO = ("Experiments ranked by out-of-fold score (regenerated after every run). OOD score: the same experiment "
         "trained with whole content clusters held out (`./run.sh expNNN --ood`), a proxy for unseen content. "
         "One section per competition, training data (fingerprint of the training ids, labels and folds, from "
         "experiments/<exp>/inputs.json) and metric: scores on other data or by another metric are never ranked "
         "together. An experiment made from other training data than the competition's current train.csv and folds "
         "is marked `stale: training data changed since` and listed below the ranked ones. OOF test-like: the OOF "
         "scored on validation images re-encoded like the test images, with its gap to the plain OOF (blank when not "
         "computed: data.test_like_oof, docs/validation.md); `adapted`: the tta.adapt_bn predictions, as submitted.")
BLEND_INTRO = ("Ranked by nested fold mean: weights, calibration and threshold fitted on K-1 folds' OOF, scored on the "
               "held-out fold (compare with the experiments' fold mean ± std, computed the same way); `auto` chooses its "
               "method inside that CV. Pooled: the held-out folds scored together. In-sample: fitted and scored on all "
               "OOF (flatters). A blend whose member is gone, was rerun or is stale is listed, not ranked.")


def experiment_table(experiments: list[dict]) -> list[str]:
    """The experiments of one section, ranked."""
    lines = ["| rank | experiment | metric | OOF score | fold mean ± std | OOF test-like | OOD score | OOF AUC | backbone | "
             "img size | augment | epochs (run) | TTA gain | wall min | note |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    ranked = _rank([m for m in experiments if not m.get("stale")], "oof_score")
    for i, m in enumerate(ranked + [m for m in experiments if m.get("stale")], 1):
        size = f"{m['img_size']}" + (f" x{m['input_upscale']}" if m.get("input_upscale", 1) > 1 else "")
        note = [m["stale"]] if m.get("stale") else []
        note += [] if m.get("complete", True) else [f"partial: folds {m['folds_run']}"]
        if m.get("bad_train_images") or m.get("bad_test_images"):
            note.append(f"bad images: {m.get('bad_train_images', 0)} train / {m.get('bad_test_images', 0)} test")
        if m.get("description"):
            note.append(m["description"])
        lines.append(
            f"| {'-' if m.get('stale') else i} | {m['experiment']} | {_metric_label(m)} | {_fmt(m['oof_score'])} | "
            f"{_fmt(m['fold_mean'])} ± {_fmt(m['fold_std'])} | {test_like_cell(m)} | "
            f"{_fmt(m.get('ood_score'))} | {_fmt(m['oof']['auc'])} | "
            f"{m['model']} | {size} | "
            f"{m.get('augment', '')} | {m['epochs']} ({'/'.join(map(str, m.get('epochs_run', [])))}) | "
            f"{m['tta']['gain']:+.5f} ({m['tta']['views']}) | {m['wall_s'] / 60:.1f} | {'; '.join(note)} |")
    return lines


# A run's test-like OOF column, preferred first: a tta.adapt_bn run submits predictions of models adapted on the test
# images, so its test-like score is the adapted one (competition.adapt). Leaderboard, ensemble and Kit ask here.
TEST_LIKE_COLUMNS = ("prob_test_like_adapted", "prob_test_like")


def test_like_column(columns) -> str | None:
    """The OOF column that scores what a run submits on test-like images: prob_test_like_adapted (tta.adapt_bn) when
    present, else prob_test_like; None without one (data.test_like_oof)."""
    present = set(columns)
    return next((c for c in TEST_LIKE_COLUMNS if c in present), None)


def test_like_result(metrics: dict) -> dict | None:
    """A run's test-like OOF score as submitted, from metrics.json: {score, gap (plain OOF minus it, flipped for
    lower-is-better), adapted, shifted (the test profile)}: adapt_bn's adapted score for a tta.adapt_bn run, else
    oof_test_like's; None when not computed."""
    plain = metrics.get("oof_test_like") if isinstance(metrics.get("oof_test_like"), dict) else {}
    adapt = metrics.get("adapt_bn") if isinstance(metrics.get("adapt_bn"), dict) else {}
    shifted = bool((plain.get("profile") or {}).get("shifted"))
    if adapt.get("oof_test_like_adapted") is not None and metrics.get("oof_score") is not None:
        value, oof = float(adapt["oof_test_like_adapted"]), float(metrics["oof_score"])
        gap = oof - value if greater_is_better(metrics.get("metric", "auc")) else value - oof
        return {"score": value, "gap": gap, "adapted": True, "shifted": shifted}
    if plain.get("score") is None:
        return None
    return {"score": plain["score"], "gap": plain.get("gap", 0.0), "adapted": False, "shifted": shifted}


def test_like_cell(metrics: dict) -> str:
    """The run's test-like OOF score (test_like_result) with its gap to the plain OOF, `adapted` when it scores the
    tta.adapt_bn predictions ('' for runs without it: competition.test_encoding, data.test_like_oof)."""
    like = test_like_result(metrics)
    if like is None:
        return ""
    return f"{_fmt(like['score'])} (gap {like['gap']:+.4f}{', adapted' if like['adapted'] else ''})"


def shift_line(experiments: list[dict]) -> list[str]:
    """One line above a section's table when a run's test profile says the test set is encoded otherwise than train:
    the table still ranks by plain OOF (every run has it), but OOF test-like is the honest order."""
    shifted = [m["experiment"] for m in experiments if (test_like_result(m) or {}).get("shifted")]
    if not shifted:
        return []
    return [f"Test set encoded unlike train (test profile of {', '.join(shifted[:3])}: shifted): ranked by plain OOF, "
            f"but OOF test-like is the honest order - compare that column before choosing.", ""]


def blend_table(blends: list[dict]) -> list[str]:
    """The blends of one section: ranked when their members are still what they were made from, else listed."""
    lines = ["| rank | submission | method | metric | nested fold mean ± std | nested pooled | in-sample | "
             "nested test-like | positive rate OOF / test | members | note |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    ranked = _rank([b for b in blends if not b["stale"]], "nested_mean")
    for i, b in enumerate(ranked + [b for b in blends if b["stale"]], 1):
        nested, rates = b.get("nested") or {}, b.get("positive_rate") or {}
        rate_txt = f"{rates['oof']:.1%} / {rates['test']:.1%}" + (" !!" if rates.get("shifted") else "") if rates else ""
        rank = "-" if b["stale"] else str(i)
        note = f"not ranked: {'; '.join(b['stale'])}" if b["stale"] else ""
        lines.append(f"| {rank} | {b['file']} | {b.get('method', '')}{' (auto)' if b.get('selected_by') == 'auto' else ''} | "
                     f"{_metric_label(b)} | {_fmt(nested.get('mean'))} ± {_fmt(nested.get('std'))} | "
                     f"{_fmt(nested.get('pooled'))} | {_fmt(b.get('in_sample'))} | "
                     f"{blend_test_like_cell(b.get('nested_test_like'))} | {rate_txt} | {', '.join(b['members'])} | "
                     f"{note} |")
    return lines


def blend_test_like_cell(nested: dict | None) -> str:
    """A blend's nested score on its members' test-like OOF, naming the members whose adapted (tta.adapt_bn) column
    it used ('' when a member has none)."""
    if not isinstance(nested, dict) or nested.get("mean") is None:
        return ""
    adapted = nested.get("adapted") or []
    return _fmt(nested["mean"]) + (f" (adapted: {', '.join(adapted)})" if adapted else "")


def sections(experiments: list[dict], blends: list[dict]) -> list[tuple[dict, list[dict], list[dict]]]:
    """(scope, its experiments, its blends) per competition / training data / metric, in a stable order."""
    groups: dict[tuple, tuple[dict, list, list]] = {}
    for row in experiments:
        groups.setdefault(scope_key(row["scope"]), (row["scope"], [], []))[1].append(row)
    for row in blends:
        groups.setdefault(scope_key(row["scope"]), (row["scope"], [], []))[2].append(row)
    return [groups[k] for k in sorted(groups, key=lambda k: (-len(groups[k][1]), k))]


def render(experiments: list[dict], blends: list[dict], data_note: str = "") -> str:
    """The leaderboard as markdown: one section per scope (competition, training data, metric)."""
    lines = ["# Leaderboard", "", INTRO] + (["", f"Training data: {data_note}."] if data_note else [])
    for scope, exps, mixes in sections(experiments, blends):
        lines += ["", f"## {scope_title(scope)}", ""]
        lines += shift_line(exps) + experiment_table(exps) if exps else ["No finished experiment in this section."]
        if mixes:
            lines += ["", "### Blends", "", BLEND_INTRO, ""] + blend_table(mixes)
    return "\n".join(lines) + "\n"


def write_leaderboard(project: Project) -> Path:
    """Regenerate the leaderboard file from disk; refused (ProjectError, nothing written) for a $KIT_HOME folder
    without competition.yaml, as every other command refuses it."""
    project.competition_yaml()  # KIT_HOME=<data folder> would otherwise get an experiments/LEADERBOARD.md
    path, check = project.leaderboard, DataCheck(project)
    experiments = load_metrics(project.experiments, check)
    write_text(path, render(experiments, load_blends(project.submissions, project.experiments, check), check.problem))
    log.info("leaderboard: %s", path)
    return path


def main(argv: list[str] | None = None, project: Project | None = None) -> int:
    """CLI: regenerate experiments/LEADERBOARD.md and print it."""
    cli.parser(__doc__).parse_args(argv)

    def body() -> int:
        nonlocal project
        project = project or Project.from_env()  # inside cli.run: a bad KIT_HOME is one ERROR line
        print(write_leaderboard(project).read_text())  # noqa: T201 - the CLI's answer
        return 0

    return cli.run(body)


if __name__ == "__main__":
    sys.exit(main())
