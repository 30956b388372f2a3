"""Blend experiments on their OOF predictions, score the blend honestly, write a validated submission.

    python -m competition.ensemble exp001 exp002 [exp003 ...] [--method auto|mean|rank|logit|hill|optimize|stack]
                                                [--name NAME]

Methods (competition.blend): `mean`, `rank`, `logit`, `hill`, `optimize`, `stack`. Every method is scored
by nested cross-validation over the members' own folds: weights (fitted on a smooth objective: log loss
for f1/accuracy), calibration and threshold are fitted on K-1 folds' OOF and label the held-out fold;
the held-out predictions are pooled and scored once, exactly as each member's OOF is. `auto` chooses the
method inside the nested CV (on the inner folds), so its score pays for the choice. The in-sample score
(fitted and scored on all OOF) is printed beside it, labelled as such; it flatters.
The fitted blend is saved in the sidecar and is what `predict` and `serve` load.
"""

from __future__ import annotations

import datetime as dt
import logging
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from competition import cli
from competition.atomic import write_csv, write_json
from competition.config import CompetitionConfig, is_override, load_config
from competition.errors import KitError
from competition.leaderboard import read_json, write_leaderboard
from competition.blend import METHODS, Blend, choose, nested_auto, nested_cv
from competition.metrics import THRESHOLD_METRICS, best_threshold, positive_rates, score, score_note, warn_positive_rates
from competition.project import Project
from competition.submission import build_submission, write_submission

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


def load_oof(project: Project, name: str) -> pd.DataFrame:
    """An experiment's oof.csv (id, fold, target, prob), refusing partial experiments."""
    out = project.experiment_dir(name)
    metrics_file, oof_file = out / "metrics.json", out / "oof.csv"
    if not (metrics_file.is_file() and oof_file.is_file()):
        raise EnsembleError(f"{out}: no oof.csv/metrics.json - run `./run.sh {name}` first")
    metrics = read_json(metrics_file)
    if metrics is None:
        raise EnsembleError(f"{metrics_file}: unreadable - rerun `./run.sh {name}` to rewrite it")
    if not metrics.get("complete", False):
        raise EnsembleError(f"{metrics_file}: experiment ran only some folds; finish it before blending")
    oof = pd.read_csv(oof_file, dtype={"id": str}, keep_default_na=False)
    if oof["id"].duplicated().any():
        raise EnsembleError(f"{oof_file}: ids listed twice - rerun `./run.sh {name} --restart`")
    return oof


def load_test(project: Project, name: str) -> pd.DataFrame:
    """An experiment's fold-averaged test predictions (id, prob)."""
    return pd.read_csv(project.experiment_dir(name) / "test.csv", dtype={"id": str}, keep_default_na=False)


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
        if not (oof["fold"].values == ref["fold"].values).all():
            n_diff = int((oof["fold"].values != ref["fold"].values).sum())
            raise EnsembleError(f"{name} and {names[0]} used different folds ({n_diff} rows differ); nested scores "
                                f"need shared folds - rerun one of them on the same folds file")
        if set(test["id"]) != set(ref_test["id"]):
            raise EnsembleError(f"{name} and {names[0]} predicted different test ids")
    tests = [t.set_index("id").loc[ref_test["id"]].reset_index() for t in tests]
    members = Members(names=names, oof=np.column_stack([o["prob"].to_numpy(float) for o in oofs]),
                      test=np.column_stack([t["prob"].to_numpy(float) for t in tests]),
                      target=ref["target"].to_numpy(int), fold=ref["fold"].to_numpy(int), ids=ref["id"],
                      test_ids=ref_test["id"], metric=metric)
    for j, name in enumerate(names):
        members.member_scores.append(member_score(name, members.oof[:, j], members.target, members.fold, metric))
    return members


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


def blend_experiments(project: Project, names: list[str], method: str, comp: CompetitionConfig, name: str = "",
                      calibrate: str = "auto") -> dict:
    """Blend, score, write submissions/<name>.csv + .json (with the fitted blend), refresh the leaderboard."""
    members = load_members(project, names, comp.metric)
    methods = [m for m in METHODS if m != "optimize" or len(names) <= 8] if method == "auto" else [method]
    if calibrate == "auto":
        calibrate = "platt" if comp.metric == "logloss" else "none"
    results, chosen, honest = evaluate(methods, members, calibrate)
    print(report(members, results, chosen, honest))  # noqa: T201 - the CLI's answer
    blend: Blend = chosen["blend"].with_reference(members.test)
    prob = blend.apply(members.test)
    values = blend.label(prob) if comp.submission_values == "label" else prob
    name = name or f"blend_{'_'.join(names)}_{method if method == 'auto' else chosen['method']}"
    frame = build_submission(comp, project, members.test_ids, values)
    csv_path = write_submission(project.submission_file(name), frame, comp, project)
    rates = positive_rates(chosen["blend"].apply(members.oof), prob, blend.threshold)
    sidecar = {
        "members": names, "method": chosen["method"], "selected_by": method, "metric": comp.metric,
        "calibration": calibrate, "blend": blend.to_dict(), "score_note": score_note(comp.metric, blend.threshold),
        "nested": honest, "in_sample": chosen["in_sample"], "oof_score": chosen["in_sample"],
        "threshold": blend.threshold, "positive_rate": rates, "submission_values": comp.submission_values,
        "member_scores": members.member_scores,
        "methods_tried": [{"method": r["method"], "nested": r["nested"], "in_sample": r["in_sample"]} for r in results],
        "rows": len(frame), "git_commit": _git_commit(),
        "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    write_csv(csv_path.with_suffix(".oof.csv"), pd.DataFrame({
        "id": members.ids.values, "fold": members.fold, "target": members.target,
        "nested": honest.pop("held_out"), "in_sample": chosen["blend"].apply(members.oof)}))
    for r in results:
        r["nested"].pop("held_out", None)
    write_json(csv_path.with_suffix(".json"), sidecar)
    write_leaderboard(project)
    if comp.metric in THRESHOLD_METRICS or comp.submission_values == "label":
        warn_positive_rates(rates, blend.threshold, csv_path.name)
    log.info("submission %s: %s (%s), nested %s: fold mean %.5f ± %.5f (pooled %.5f), in-sample %.5f", csv_path,
             chosen["method"], method, sidecar["score_note"], honest["mean"], honest["std"], honest["pooled"],
             chosen["in_sample"])
    return sidecar


def main(argv: list[str] | None = None, project: Project | None = None) -> int:
    """CLI entry point."""
    parser = cli.parser(__doc__)
    parser.add_argument("experiments", nargs="+", help="experiment names to blend (1 or more), then any "
                                                       "section.key=value overrides of competition.yaml")
    parser.add_argument("--method", default="auto", choices=("auto", *METHODS))
    parser.add_argument("--name", default="", help="submission name (default: blend_<members>_<method>)")
    parser.add_argument("--calibrate", default="auto", choices=("auto", "none", "platt", "temperature"),
                        help="calibrate the blend's probabilities (auto: platt when the metric is logloss)")
    args = parser.parse_args(argv)
    project = project or Project.from_env()
    names = [e for e in args.experiments if not is_override(e)]
    overrides = [e for e in args.experiments if is_override(e)]

    def body() -> int:
        comp = load_config("", overrides, project, check_model=False).competition
        blend_experiments(project, names, args.method, comp, args.name, args.calibrate)
        return 0

    return cli.run(body)


if __name__ == "__main__":
    sys.exit(main())
