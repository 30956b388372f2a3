"""Ablation view: what each experiment changed against a reference, and whether its score moved beyond noise.

    python -m competition.compare exp001 exp004 exp005 [--out experiments/ABLATION.md]
    ./run.sh compare exp001 exp004 exp005

The first experiment is the reference. For each one: the config keys that differ from it (runtime keys such as
paths, threads and devices left out), the OOF score and its delta, the fold std, the paired per-fold delta
(mean +- std over folds: the folds are the same file, so fold k of both runs saw the same images), whether
that delta is beyond noise (|mean| > 2 standard errors), and the wall minutes. Both deltas are signed so that
POSITIVE IS BETTER, whichever way the metric runs (for logloss, lower is better: a drop in logloss is +).
"""

from __future__ import annotations

import json
import logging
import sys

import numpy as np

from competition import cli, outputs
from competition.config import load_saved_config, require_experiment, to_dict
from competition.errors import ConfigError
from competition.metrics import greater_is_better
from competition.paths import experiment_arg, output_path
from competition.project import Project

log = logging.getLogger(__name__)
IGNORED = {"name", "description"}  # identity, not a recipe


def flatten(cfg: dict, prefix: str = "") -> dict:
    """{"train": {"lr": 1}} -> {"train.lr": 1}."""
    out = {}
    for key, value in cfg.items():
        path = f"{prefix}{key}"
        out.update(flatten(value, f"{path}.") if isinstance(value, dict) and key != "class_folders" else {path: value})
    return out


def config_changes(reference: dict, other: dict) -> list[str]:
    """`key: old -> new` for every recipe key that differs (runtime keys ignored)."""
    from competition.config import RUNTIME_KEYS

    skip = IGNORED | {f"{s}.{k}" for s, k in RUNTIME_KEYS}
    a, b = flatten(reference), flatten(other)
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if k not in skip and a.get(k) != b.get(k)]


def load_run(project: Project, name: str) -> tuple[dict, dict]:
    """(resolved config as a dict, metrics.json) of a finished experiment."""
    out = project.experiment_dir(name)
    if not (out / "metrics.json").is_file():
        require_experiment(name, project)  # a name with neither outputs nor a YAML: say which exist
        raise ConfigError(f"{out}: no metrics.json - run `./run.sh {name}` first")
    return to_dict(load_saved_config(out / "config.yaml")), json.loads((out / "metrics.json").read_text())


def fold_scores(metrics: dict) -> dict[int, float]:
    """fold -> that fold's score (metric at the fold's own file)."""
    return {int(r["fold"]): float(r["score"]) for r in metrics.get("folds", [])}


def paired_delta(ref: dict, other: dict, lower_is_better: bool) -> tuple[float, float, bool]:
    """Mean and std over shared folds of (other - reference), signed so that positive is better, and whether the
    mean exceeds two standard errors."""
    a, b = fold_scores(ref), fold_scores(other)
    shared = sorted(set(a) & set(b))
    if len(shared) < 2:
        return float("nan"), float("nan"), False
    d = np.array([better_delta(a[k], b[k], lower_is_better) for k in shared])
    se = d.std(ddof=1) / np.sqrt(len(d))
    return float(d.mean()), float(d.std(ddof=1)), bool(abs(d.mean()) > 2 * se)


def better_delta(ref_score: float, score: float, lower_is_better: bool) -> float:
    """score - ref_score, signed so that positive means better than the reference."""
    return (ref_score - score) if lower_is_better else (score - ref_score)


def compare(project: Project, names: list[str]) -> str:
    """The ablation table (markdown) of names against names[0]; both delta columns: + = better."""
    runs = [load_run(project, n) for n in names]
    ref_cfg, ref = runs[0]
    lower = not greater_is_better(ref.get("metric", "auc"))
    way = "lower" if lower else "higher"
    rows = [f"| experiment | change vs {names[0]} | OOF {ref.get('metric')} ({way} is better) | delta (+ = better) "
            "| fold std | paired fold delta, + = better (mean +- std) | beyond noise | minutes |",
            "|---|---|---|---|---|---|---|---|"]
    for name, (cfg, m) in zip(names, runs):
        changes = "; ".join(config_changes(ref_cfg, cfg)) or ("(reference)" if name == names[0] else "(same config)")
        delta = better_delta(ref["oof_score"], m["oof_score"], lower)
        mean, std, beyond = paired_delta(ref, m, lower) if name != names[0] else (float("nan"),) * 2 + (False,)
        paired = f"{mean:+.5f} +- {std:.5f}" if mean == mean else ""
        verdict = ("yes" if beyond else "no") if mean == mean else ""
        rows.append(f"| {name} | {changes} | {m['oof_score']:.5f} | {delta:+.5f} | {m.get('fold_std', float('nan')):.5f} "
                    f"| {paired} | {verdict} | {m.get('wall_s', 0) / 60:.1f} |")
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None, project: Project | None = None) -> int:
    """CLI entry point."""
    parser = cli.parser(__doc__)
    parser.add_argument("experiments", nargs="+", help="reference first, then the experiments to compare with it")
    parser.add_argument("--out", help="also write the table to this markdown file")
    parser.add_argument("--force", action="store_true", help="let --out replace a file compare did not write")
    args = parser.parse_args(argv)

    def body() -> int:
        nonlocal project
        project = project or Project.from_env()  # inside cli.run: a bad KIT_HOME is one ERROR line
        out = outputs.check_target(project, output_path(args.out, "--out"), "compare", args.force) if args.out else None
        table = compare(project, [experiment_arg(e, project) for e in args.experiments])
        print(table)  # noqa: T201 - the command's output
        if out is not None:
            outputs.write_text(project, out, table, "compare", args.force)
        return 0

    return cli.run(body)


if __name__ == "__main__":
    sys.exit(main())
