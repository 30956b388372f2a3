"""experiments/LEADERBOARD.md: every experiment ranked by its OOF score, and every blend by its nested OOF score.

For f1/accuracy every score is at the threshold of the file written (shown beside the metric).

    python -m competition.leaderboard          # regenerate and print it

Regenerated from the metrics.json of each experiment and the .json sidecar of each submission, so it
is always a pure function of what is on disk. Unreadable files are named in a warning and left out.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path

from competition import cli
from competition.atomic import write_text
from competition.metrics import THRESHOLD_METRICS, greater_is_better
from competition.project import Project

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


def load_metrics(directory: Path) -> list[dict]:
    """metrics.json of every experiment folder that has a complete one (others are logged and skipped)."""
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
        out.append(data)
    return out


def load_blends(directory: Path) -> list[dict]:
    """Sidecars of every blend written by competition.ensemble."""
    out = []
    for path in sorted(directory.glob("*.json")):
        data = read_json(path)
        if data is not None and "members" in data:
            nested = data.get("nested") or {}
            out.append({**data, "file": path.with_suffix(".csv").name,
                        "nested_mean": nested.get("mean")})
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


def render(experiments: list[dict], blends: list[dict]) -> str:
    """The leaderboard as markdown."""
    lines = ["# Leaderboard", "", "Experiments ranked by out-of-fold score (regenerated after every run). OOD score: the same experiment "
             "trained with whole content clusters held out (`./run.sh expNNN --ood`), a proxy for unseen content.", "",
             "| rank | experiment | metric | OOF score | fold mean ± std | OOD score | OOF AUC | backbone | img size | "
             "augment | epochs (run) | TTA gain | wall min | note |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for i, m in enumerate(_rank(experiments, "oof_score"), 1):
        size = f"{m['img_size']}" + (f" x{m['input_upscale']}" if m.get("input_upscale", 1) > 1 else "")
        note = [] if m.get("complete", True) else [f"partial: folds {m['folds_run']}"]
        if m.get("bad_train_images") or m.get("bad_test_images"):
            note.append(f"bad images: {m.get('bad_train_images', 0)} train / {m.get('bad_test_images', 0)} test")
        if m.get("description"):
            note.append(m["description"])
        lines.append(
            f"| {i} | {m['experiment']} | {_metric_label(m)} | {_fmt(m['oof_score'])} | "
            f"{_fmt(m['fold_mean'])} ± {_fmt(m['fold_std'])} | {_fmt(m.get('ood_score'))} | {_fmt(m['oof']['auc'])} | "
            f"{m['model']} | {size} | "
            f"{m.get('augment', '')} | {m['epochs']} ({'/'.join(map(str, m.get('epochs_run', [])))}) | "
            f"{m['tta']['gain']:+.5f} ({m['tta']['views']}) | {m['wall_s'] / 60:.1f} | {'; '.join(note)} |")
    if blends:
        lines += ["", "## Blends", "",
                  "Ranked by nested fold mean: weights, calibration and threshold fitted on K-1 folds' OOF, scored on "
                  "the held-out fold (compare with the experiments' fold mean ± std, computed the same way); `auto` "
                  "chooses its method inside that CV. Pooled: the held-out folds scored together. In-sample: fitted "
                  "and scored on all OOF (flatters).", "",
                  "| rank | submission | method | metric | nested fold mean ± std | nested pooled | in-sample | "
                  "positive rate OOF / test | members |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for i, b in enumerate(_rank(blends, "nested_mean"), 1):
            nested, rates = b.get("nested") or {}, b.get("positive_rate") or {}
            rate_txt = f"{rates['oof']:.1%} / {rates['test']:.1%}" + (" !!" if rates.get("shifted") else "") if rates else ""
            lines.append(f"| {i} | {b['file']} | {b['method']}{' (auto)' if b.get('selected_by') == 'auto' else ''} | "
                         f"{_metric_label(b)} | {_fmt(nested.get('mean'))} ± {_fmt(nested.get('std'))} | "
                         f"{_fmt(nested.get('pooled'))} | {_fmt(b.get('in_sample'))} | {rate_txt} | {', '.join(b['members'])} |")
    return "\n".join(lines) + "\n"


def write_leaderboard(project: Project) -> Path:
    """Regenerate the leaderboard file from disk."""
    path = project.leaderboard
    write_text(path, render(load_metrics(project.experiments), load_blends(project.submissions)))
    log.info("leaderboard: %s", path)
    return path


def main(argv: list[str] | None = None, project: Project | None = None) -> int:
    """CLI: regenerate experiments/LEADERBOARD.md and print it."""
    cli.parser(__doc__).parse_args(argv)
    project = project or Project.from_env()

    def body() -> int:
        print(write_leaderboard(project).read_text())  # noqa: T201 - the CLI's answer
        return 0

    return cli.run(body)


if __name__ == "__main__":
    sys.exit(main())
