"""Blend methods, their honest (nested) scores, and the saved `Blend` that ensemble, predict and serve share.

Methods live in one registry, BLENDERS (a `Blender` subclass decorated with `@register`), read by ensemble's
--method choices, the `auto` search and the help: `mean` (probabilities), `rank` (mean of each member's
empirical CDF), `logit` (mean of logits), `hill` (Caruana selection with replacement: non-negative weights),
`optimize` (Nelder-Mead weights), `stack` (logistic regression on logits); any of them optionally followed by
Platt or temperature scaling.

- Weights are fitted on a smooth objective (`fit_objective`: log loss for f1/accuracy, else the metric);
  the threshold of a threshold metric is tuned afterwards, on the same rows.
- Nested CV (`nested_cv`): fit and tune on K-1 folds, label the held-out fold, score each fold; blends are
  compared by the mean ± std of those fold scores, as members are (their fold mean ± std at their own
  threshold). The pooled score of all held-out folds is reported too, labelled: pooling the outputs of
  fitted blends whose intercepts follow each training fold's class balance biases AUC (noise members
  pool to ~0.45), so it is not what ranks.
- `auto` (`nested_auto`) chooses the method on the inner folds of each outer fold, so its nested score
  pays for the choice.
- A `Blend` is what a submission was made with (method, parameters, calibration, threshold, and for rank
  blends the test predictions that define the rank scale); saved in the submission's .json sidecar and
  loaded by predict and serve, so an image's label is the submission's label for it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit, logit
from sklearn.linear_model import LogisticRegression

from competition.errors import ConfigError
from competition.metrics import THRESHOLD_METRICS, best_threshold, greater_is_better, score

EPS = 1e-6


def fit_objective(metric: str) -> str:
    """What fitted weights optimise: a smooth criterion (log loss) for threshold metrics, else the metric."""
    return "logloss" if metric in THRESHOLD_METRICS else metric


def _logits(p: np.ndarray) -> np.ndarray:
    return logit(np.clip(p, EPS, 1 - EPS))


RANK_TOLERANCE = 1e-5  # reference values this close count as ties: an image re-predicted by `predict` (float
# differences ~1e-7 from another batch composition) ranks exactly as it did in the submission


def ecdf(x: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
    """Each column's share of `reference` rows (default: x itself) at or below each value (+ tolerance), in (0, 1]."""
    reference = x if reference is None else reference
    return np.column_stack([np.searchsorted(np.sort(ref), col + RANK_TOLERANCE, side="right") / len(ref)
                            for col, ref in zip(x.T, reference.T)])


class Blender:
    """fit(x, y, objective) then blend(x) -> scores; `params` holds everything fitted (JSON-ready).

    A new method is one subclass (method name, one-line `summary`, blend/fit) decorated with `@register`:
    ensemble's --method choices, the `auto` search and the help text all read BLENDERS."""

    method = ""
    summary = ""  # one line for --help and the docs
    auto_max_members = 0  # `auto` tries this method only up to this many members (0: any number)

    def __init__(self, params: dict | None = None):
        self.params = params or {}

    def fit(self, x: np.ndarray, y: np.ndarray, objective: str) -> "Blender":
        return self

    def blend(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError


BLENDERS: dict[str, type[Blender]] = {}  # the one registry of blend methods, in registration order


def register(cls: type[Blender]) -> type[Blender]:
    """Class decorator: make a Blender subclass a blend method (name = its `method`)."""
    if not cls.method or cls.method in BLENDERS or cls.method == "auto":
        raise ValueError(f"blend method name {cls.method!r} is empty, reserved or registered twice")
    BLENDERS[cls.method] = cls
    return cls


def method_names() -> tuple[str, ...]:
    """Every registered blend method, in registration order."""
    return tuple(BLENDERS)


def auto_methods(n_members: int) -> list[str]:
    """The methods `--method auto` compares for this many members."""
    return [m for m, cls in BLENDERS.items() if not cls.auto_max_members or n_members <= cls.auto_max_members]


def describe_methods() -> str:
    """One line per registered method, for --help."""
    return "; ".join(f"{m}: {cls.summary}" for m, cls in BLENDERS.items())


@register
class MeanBlender(Blender):
    method, summary = "mean", "mean of probabilities"

    def blend(self, x):
        return x.mean(axis=1)


@register
class RankBlender(Blender):
    """Mean empirical CDF: within the rows given, or against a saved reference (the test set of the submission)."""

    method, summary = "rank", "mean empirical CDF (rank average)"

    def blend(self, x):
        reference = self.params.get("reference")
        return ecdf(x, None if reference is None else np.asarray(reference, dtype=np.float64).T).mean(axis=1)


@register
class LogitBlender(Blender):
    method, summary = "logit", "mean of logits"

    def blend(self, x):
        return expit(_logits(x).mean(axis=1))


def _gain(objective: str, y: np.ndarray, p: np.ndarray) -> float:
    s = score(objective, y, p)
    return s if greater_is_better(objective) else -s


@register
class HillBlender(Blender):
    """Caruana ensemble selection with replacement on logits: add the member that helps most, repeatedly."""

    method, iterations = "hill", 50
    summary = "Caruana hill climbing (selection with replacement: non-negative weights)"

    def fit(self, x, y, objective):
        z, counts, total, best = _logits(x), np.zeros(x.shape[1]), np.zeros(len(y)), -np.inf
        for _ in range(self.iterations):
            n = counts.sum()
            gains = [_gain(objective, y, expit((total + z[:, j]) / (n + 1))) for j in range(x.shape[1])]
            j = int(np.argmax(gains))
            if gains[j] < best - 1e-12 and n > 0:
                break
            best = max(best, gains[j])
            counts[j] += 1
            total += z[:, j]
        self.params = {"weights": (counts / counts.sum()).tolist()}
        return self

    def blend(self, x):
        return expit(_logits(x) @ np.asarray(self.params["weights"]))


@register
class OptimizeBlender(HillBlender):
    """Nelder-Mead on softmax-parameterised (non-negative, sum-one) weights of the logits."""

    method, summary = "optimize", "Nelder-Mead weights on logits"
    auto_max_members = 8  # Nelder-Mead in more dimensions is slow and unreliable

    def fit(self, x, y, objective):
        z, m = _logits(x), x.shape[1]

        def loss(theta):
            w = np.exp(theta - theta.max())
            return -_gain(objective, y, expit(z @ (w / w.sum())))

        simplex = np.vstack([np.zeros(m), np.eye(m)])  # unit steps: the default 0.00025 barely moves off equal weights
        res = minimize(loss, np.zeros(m), method="Nelder-Mead", options={"maxiter": 200 * m, "initial_simplex": simplex})
        w = np.exp(res.x - res.x.max())
        self.params = {"weights": (w / w.sum()).tolist()}
        return self


@register
class StackBlender(Blender):
    """Logistic regression on the members' logits (applied with the saved coefficients)."""

    method, summary = "stack", "logistic regression on logits (stacking)"

    def fit(self, x, y, objective):
        model = LogisticRegression(C=1.0, max_iter=1000).fit(_logits(x), y)
        self.params = {"coef": model.coef_[0].tolist(), "intercept": float(model.intercept_[0])}
        return self

    def blend(self, x):
        return expit(_logits(x) @ np.asarray(self.params["coef"]) + self.params["intercept"])


METHODS = method_names()  # kept for importers; read BLENDERS / method_names() for methods registered later


def calibrate(base: Blender, kind: str, x: np.ndarray, y: np.ndarray) -> dict:
    """Platt (a, b) or temperature (a, b=0) on the blend's logit, fitted on these rows."""
    z = _logits(base.blend(x))
    if kind == "platt":
        lr = LogisticRegression(C=1e6, max_iter=1000).fit(z[:, None], y)
        return {"kind": kind, "a": float(lr.coef_[0, 0]), "b": float(lr.intercept_[0])}
    nll = lambda t: -np.mean(y * np.log(expit(z / t[0]) + EPS) + (1 - y) * np.log(1 - expit(z / t[0]) + EPS))  # noqa: E731
    return {"kind": kind, "a": float(1.0 / minimize(nll, [1.0], bounds=[(0.05, 20.0)]).x[0]), "b": 0.0}


@dataclass
class Blend:
    """A fitted blend: how member probabilities become the submission's probability and label."""

    members: list[str]
    method: str
    metric: str
    params: dict = field(default_factory=dict)  # weights | coef + intercept | reference (rank), as fitted
    calibration: dict | None = None  # {"kind", "a", "b"} applied to the blend's logit
    threshold: float = 0.5  # label = prob >= threshold (tuned on OOF for f1/accuracy)

    @classmethod
    def fit(cls, members: list[str], method: str, metric: str, x: np.ndarray, y: np.ndarray,
            calibration: str = "none") -> "Blend":
        """Fit weights (smooth objective), then calibration, then the threshold, all on these rows."""
        if method not in BLENDERS:
            raise ConfigError(f"blend method {method!r}: choose one of {', '.join(BLENDERS)}")
        base = BLENDERS[method]().fit(x, y, fit_objective(metric))
        blend = cls(list(members), method, metric, dict(base.params))
        if calibration != "none":
            blend.calibration = calibrate(base, calibration, x, y)
        blend.threshold = best_threshold(metric, y, blend.apply(x))
        return blend

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Blend per-member probabilities (rows, members) into one score per row."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(self.members):
            raise ConfigError(f"blend of {len(self.members)} members given {x.shape} predictions")
        p = BLENDERS[self.method](self.params).blend(x)
        if self.calibration:
            p = expit(self.calibration["a"] * _logits(p) + self.calibration["b"])
        return p

    def label(self, prob: np.ndarray) -> np.ndarray:
        """0/1 labels at the blend's threshold."""
        return (np.asarray(prob) >= self.threshold).astype(int)

    def with_reference(self, test: np.ndarray) -> "Blend":
        """A rank blend pinned to the test predictions it ranks (so one image ranks as in the submission)."""
        if self.method != "rank":
            return self
        return Blend(self.members, self.method, self.metric, {"reference": np.asarray(test).T.tolist()},
                     self.calibration, self.threshold)

    def to_dict(self) -> dict:
        """JSON-ready form (floats round-trip exactly)."""
        return {"members": self.members, "method": self.method, "metric": self.metric, "params": self.params,
                "calibration": self.calibration, "threshold": self.threshold}

    @classmethod
    def from_dict(cls, data: dict) -> "Blend":
        """The saved blend of a submission sidecar."""
        return cls(list(data["members"]), data["method"], data["metric"], dict(data.get("params") or {}),
                   data.get("calibration"), float(data["threshold"]))


def _labels_or_probs(blend: Blend, x: np.ndarray) -> np.ndarray:
    """What the metric is scored on: labels for threshold metrics (at the blend's threshold), else probabilities."""
    p = blend.apply(x)
    return blend.label(p).astype(float) if blend.metric in THRESHOLD_METRICS else p


def pooled(metric: str, y: np.ndarray, held: np.ndarray, fold: np.ndarray) -> dict:
    """Held-out predictions (labels for f1/accuracy) scored once pooled, as a single experiment's OOF is, and per
    fold (mean ± std); `held_out` keeps the predictions themselves."""
    per_fold = [score(metric, y[fold == k], held[fold == k]) for k in np.unique(fold)]
    return {"pooled": score(metric, y, held), "mean": float(np.mean(per_fold)), "std": float(np.std(per_fold)),
            "folds": [float(s) for s in per_fold], "held_out": held}


def nested_cv(method: str, x: np.ndarray, y: np.ndarray, fold: np.ndarray, metric: str,
              calibration: str = "none") -> dict:
    """Fit (weights, calibration, threshold) on K-1 folds, predict the held-out fold; scores of the pooled result."""
    held = np.zeros(len(y))
    for k in np.unique(fold):
        train = fold != k
        blend = Blend.fit([str(j) for j in range(x.shape[1])], method, metric, x[train], y[train], calibration)
        held[~train] = _labels_or_probs(blend, x[~train])
    return pooled(metric, y, held, fold)


def better(metric: str, a: float, b: float) -> bool:
    """Whether score a beats score b for this metric."""
    return a > b if greater_is_better(metric) else a < b


def choose(results: dict[str, dict], metric: str) -> str:
    """The method whose nested fold-mean score is best."""
    best = None
    for method, result in results.items():
        if best is None or better(metric, result["mean"], results[best]["mean"]):
            best = method
    return best


def halves(y: np.ndarray) -> np.ndarray:
    """A seeded stratified split of rows into two folds (inner CV when the outer split has only two folds)."""
    fold = np.zeros(len(y), int)
    for label in (0, 1):
        rows = np.flatnonzero(y == label)
        fold[np.random.default_rng(label).permutation(rows)[: len(rows) // 2]] = 1
    return fold


def nested_auto(methods: list[str], x: np.ndarray, y: np.ndarray, fold: np.ndarray, metric: str,
                calibration: str = "none") -> dict:
    """`auto`'s honest score: for each outer fold, choose the method by nested CV on the other folds only,
    fit it there, and label the held-out fold; the choices made are listed."""
    held, picks = np.zeros(len(y)), []
    for k in np.unique(fold):
        inner = fold != k
        inner_fold = fold[inner] if len(np.unique(fold[inner])) >= 2 else halves(y[inner])  # 2 folds: split the other
        scores = {m: nested_cv(m, x[inner], y[inner], inner_fold, metric, calibration) for m in methods}
        pick = choose(scores, metric)
        blend = Blend.fit([str(j) for j in range(x.shape[1])], pick, metric, x[inner], y[inner], calibration)
        held[~inner] = _labels_or_probs(blend, x[~inner])
        picks.append(pick)
    return {**pooled(metric, y, held, fold), "choices": picks}


def load_blend(path: Path) -> Blend:
    """The blend saved in a submission's .json sidecar by competition.ensemble."""
    try:
        sidecar = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: not a readable blend sidecar ({type(err).__name__}); pass the .json that "
                          f"`competition.ensemble` wrote") from None
    if not isinstance(sidecar, dict) or "members" not in sidecar:
        raise ConfigError(f"{path}: not a blend sidecar (no `members`); pass the .json that competition.ensemble wrote")
    if not isinstance(sidecar.get("blend"), dict):
        raise ConfigError(f"{path}: written by an older kit without the fitted blend - rerun `python -m "
                          f"competition.ensemble {' '.join(sidecar['members'])} --method {sidecar.get('method', 'auto')}`")
    return Blend.from_dict(sidecar["blend"])
