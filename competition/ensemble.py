"""Blend experiments on their OOF predictions, score the blend honestly, write a validated submission.

    python -m competition.ensemble exp001 exp002 [exp003 ...] [--method auto|mean|rank|logit|hill|optimize|stack]
                                                [--name NAME]

Methods: `mean` (probabilities), `rank` (rank mean), `logit` (mean of logits), `hill` (Caruana
ensemble selection with replacement: non-negative weights), `optimize` (scipy Nelder-Mead weights on
the metric), `stack` (logistic regression on the members' logits).
Every method is scored by nested cross-validation over the members' own folds: whatever is fitted
(weights, stacker, threshold) is fitted on K-1 folds' OOF and scored on the held-out fold. The
in-sample score (fitted and scored on all OOF) is printed beside it, labelled as such; it flatters.
`auto` picks the method with the best nested score.
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
from scipy.optimize import minimize
from scipy.special import expit, logit
from scipy.stats import rankdata
from sklearn.linear_model import LogisticRegression

from competition import cli
from competition.atomic import write_json
from competition.config import CompetitionConfig, is_override, load_config
from competition.errors import KitError
from competition.leaderboard import read_json, write_leaderboard
from competition.metrics import THRESHOLD_METRICS, best_threshold, greater_is_better, score
from competition.project import Project
from competition.submission import build_submission, write_submission

log = logging.getLogger(__name__)

METHODS = ("mean", "rank", "logit", "hill", "optimize", "stack")
EPS = 1e-6


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
        per_fold = fold_scores(metric, members.target, members.oof[:, j], members.fold)
        members.member_scores.append({"name": name, "oof": score(metric, members.target, members.oof[:, j]),
                                      "fold_mean": float(np.mean(per_fold)), "fold_std": float(np.std(per_fold))})
    return members


def fold_scores(metric: str, target: np.ndarray, prob: np.ndarray, fold: np.ndarray, threshold: float = 0.5) -> list:
    """The metric on each fold separately."""
    return [score(metric, target[fold == k], prob[fold == k], threshold) for k in np.unique(fold)]


def _logits(p: np.ndarray) -> np.ndarray:
    return logit(np.clip(p, EPS, 1 - EPS))


def _ranks(p: np.ndarray) -> np.ndarray:
    """Column-wise ranks scaled to (0, 1]."""
    return np.column_stack([rankdata(col) / len(col) for col in p.T])


class Blender:
    """fit(oof, y) then blend(preds) -> probabilities; subclasses define what (if anything) is fitted."""

    fitted = False

    def fit(self, x: np.ndarray, y: np.ndarray, metric: str) -> "Blender":
        return self

    def blend(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def describe(self) -> dict:
        return {}


class MeanBlender(Blender):
    def blend(self, x):
        return x.mean(axis=1)


class RankBlender(Blender):
    def blend(self, x):
        return _ranks(x).mean(axis=1)


class LogitBlender(Blender):
    def blend(self, x):
        return expit(_logits(x).mean(axis=1))


class WeightedBlender(Blender):
    """Weighted mean of logits; weights from hill climbing or scipy."""

    fitted = True

    def __init__(self, search: str, iterations: int = 50):
        self.search, self.iterations, self.weights = search, iterations, None

    def blend(self, x):
        return expit(_logits(x) @ self.weights)

    def fit(self, x, y, metric):
        self.weights = self._hill(x, y, metric) if self.search == "hill" else self._optimize(x, y, metric)
        return self

    def _gain(self, metric: str, y: np.ndarray, p: np.ndarray) -> float:
        s = score(metric, y, p)
        return s if greater_is_better(metric) else -s

    def _hill(self, x, y, metric):
        """Caruana ensemble selection with replacement: add the member that helps most, repeatedly."""
        z = _logits(x)
        counts = np.zeros(x.shape[1])
        total = np.zeros(len(y))
        best_so_far = -np.inf
        for _ in range(self.iterations):
            n = counts.sum()
            gains = [self._gain(metric, y, expit((total + z[:, j]) / (n + 1))) for j in range(x.shape[1])]
            j = int(np.argmax(gains))
            if gains[j] < best_so_far - 1e-12 and n > 0:
                break
            best_so_far = max(best_so_far, gains[j])
            counts[j] += 1
            total += z[:, j]
        return counts / counts.sum()

    def _optimize(self, x, y, metric):
        """Nelder-Mead on the metric with softmax-parameterised (non-negative, sum-one) weights."""
        z = _logits(x)

        def loss(theta):
            w = np.exp(theta - theta.max())
            return -self._gain(metric, y, expit(z @ (w / w.sum())))

        m = x.shape[1]
        simplex = np.vstack([np.zeros(m), np.eye(m)])  # unit steps: the default 0.00025 barely moves off equal weights
        res = minimize(loss, np.zeros(m), method="Nelder-Mead",
                       options={"maxiter": 200 * m, "initial_simplex": simplex})
        w = np.exp(res.x - res.x.max())
        return w / w.sum()

    def describe(self):
        return {"weights": [round(float(w), 6) for w in self.weights]}


class StackBlender(Blender):
    """Logistic regression on the members' logits."""

    fitted = True

    def fit(self, x, y, metric):
        self.model = LogisticRegression(C=1.0, max_iter=1000).fit(_logits(x), y)
        return self

    def blend(self, x):
        return self.model.predict_proba(_logits(x))[:, 1]

    def describe(self):
        return {"coef": self.model.coef_[0].round(6).tolist(), "intercept": float(self.model.intercept_[0])}


class Calibrated(Blender):
    """A blender followed by Platt scaling or a temperature on its logit, fitted on the same rows."""

    fitted = True

    def __init__(self, base: Blender, kind: str):
        self.base, self.kind, self.a, self.b = base, kind, 1.0, 0.0

    def fit(self, x, y, metric):
        self.base.fit(x, y, metric)
        z = _logits(self.base.blend(x))
        if self.kind == "platt":
            lr = LogisticRegression(C=1e6, max_iter=1000).fit(z[:, None], y)
            self.a, self.b = float(lr.coef_[0, 0]), float(lr.intercept_[0])
        else:  # temperature: one scale, no shift
            nll = lambda t: -np.mean(y * np.log(expit(z / t[0]) + EPS) + (1 - y) * np.log(1 - expit(z / t[0]) + EPS))
            self.a = float(1.0 / minimize(nll, [1.0], bounds=[(0.05, 20.0)]).x[0])
        return self

    def blend(self, x):
        return expit(self.a * _logits(self.base.blend(x)) + self.b)

    def describe(self):
        return {**self.base.describe(), "calibration": {"kind": self.kind, "a": self.a, "b": self.b}}


def make_blender(method: str, calibrate: str = "none") -> Blender:
    """A fresh blender for a method name, optionally calibrated (platt | temperature)."""
    base = {"mean": MeanBlender, "rank": RankBlender, "logit": LogitBlender, "stack": StackBlender,
            "hill": lambda: WeightedBlender("hill"), "optimize": lambda: WeightedBlender("optimize")}[method]()
    return base if calibrate == "none" else Calibrated(base, calibrate)


def nested_scores(method: str, x: np.ndarray, y: np.ndarray, fold: np.ndarray, metric: str,
                  calibrate: str = "none") -> list[float]:
    """Fit blender (and threshold) on K-1 folds' OOF, score the held-out fold; one score per fold."""
    out = []
    for k in np.unique(fold):
        train, held = fold != k, fold == k
        blender = make_blender(method, calibrate).fit(x[train], y[train], metric)
        threshold = best_threshold(metric, y[train], blender.blend(x[train]))
        out.append(score(metric, y[held], blender.blend(x[held]), threshold))
    return out


def evaluate_method(method: str, members: Members, calibrate: str = "none") -> dict:
    """Nested (honest) and in-sample scores of a method on the members' OOF."""
    x, y, fold, metric = members.oof, members.target, members.fold, members.metric
    nested = nested_scores(method, x, y, fold, metric, calibrate)
    blender = make_blender(method, calibrate).fit(x, y, metric)
    prob = blender.blend(x)
    threshold = best_threshold(metric, y, prob)
    return {"method": method, "nested": {"mean": float(np.mean(nested)), "std": float(np.std(nested)),
                                         "folds": [float(s) for s in nested]},
            "in_sample": score(metric, y, prob, threshold), "threshold": threshold, "blender": blender}


def choose(results: list[dict], metric: str) -> dict:
    """The method with the best nested mean."""
    sign = 1 if greater_is_better(metric) else -1
    return max(results, key=lambda r: sign * r["nested"]["mean"])


def _git_commit() -> str:
    """The repository's HEAD commit, or '' outside git."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def report(members: Members, results: list[dict], chosen: dict) -> str:
    """The member and blend score table printed to the console."""
    m = members.metric
    lines = [f"{'member':<28} {'OOF ' + m:>12} {'fold mean ± std':>22}"]
    for s in members.member_scores:
        lines.append(f"{s['name']:<28} {s['oof']:>12.5f} {s['fold_mean']:>12.5f} ± {s['fold_std']:.5f}")
    lines.append("")
    lines.append(f"{'blend method':<28} {'nested ' + m:>12} {'(mean ± std over folds)':>24} {'in-sample (flatters)':>22}")
    for r in results:
        mark = "  <- chosen" if r is chosen else ""
        lines.append(f"{r['method']:<28} {r['nested']['mean']:>12.5f} ± {r['nested']['std']:.5f}"
                     f"{'':>12} {r['in_sample']:>14.5f}{mark}")
    return "\n".join(lines)


def blend_experiments(project: Project, names: list[str], method: str, comp: CompetitionConfig, name: str = "",
                      calibrate: str = "auto") -> dict:
    """Blend, score, write submissions/<name>.csv + .json and refresh the leaderboard; return the sidecar."""
    members = load_members(project, names, comp.metric)
    methods = [m for m in METHODS if m != "optimize" or len(names) <= 8] if method == "auto" else [method]
    if calibrate == "auto":
        calibrate = "platt" if comp.metric == "logloss" else "none"
    results = [evaluate_method(m, members, calibrate) for m in methods]
    chosen = choose(results, comp.metric)
    print(report(members, results, chosen))  # noqa: T201 - the CLI's answer
    blender: Blender = chosen["blender"]
    prob = blender.blend(members.test)
    values = (prob >= chosen["threshold"]).astype(int) if comp.submission_values == "label" else prob
    name = name or f"blend_{'_'.join(names)}_{chosen['method']}"
    frame = build_submission(comp, project, members.test_ids, values)
    csv_path = write_submission(project.submission_file(name), frame, comp, project)
    oof_prob = blender.blend(members.oof)
    sidecar = {
        "members": names, "method": chosen["method"], "metric": comp.metric, "calibration": calibrate,
        "oof_score": score(comp.metric, members.target, oof_prob, chosen["threshold"]),
        "nested": chosen["nested"], "in_sample": chosen["in_sample"],
        "threshold": chosen["threshold"] if comp.metric in THRESHOLD_METRICS or comp.submission_values == "label" else None,
        "submission_values": comp.submission_values, **blender.describe(),
        "member_scores": members.member_scores,
        "methods_tried": [{"method": r["method"], "nested": r["nested"], "in_sample": r["in_sample"]} for r in results],
        "rows": len(frame), "git_commit": _git_commit(),
        "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    write_json(csv_path.with_suffix(".json"), sidecar)
    write_leaderboard(project)
    log.info("submission %s: %s nested %s %.5f ± %.5f (in-sample %.5f)", csv_path, chosen["method"], comp.metric,
             chosen["nested"]["mean"], chosen["nested"]["std"], chosen["in_sample"])
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
