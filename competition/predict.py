"""Predict images with an experiment's fold models (or a blend's members) and TTA.

    python -m competition.predict exp001 PATH [PATH ...] [--csv out.csv]
    python -m competition.predict submissions/<blend>.json PATH ...
    python -m competition.predict exp001 PATH ... --onnx [--fp16]   (the exported model, through onnxruntime)

PATHs are images or folders (searched recursively). One line per image: path, probability that it is
AI-generated, and the label at the saved threshold. A blend is the one `ensemble` saved (competition.blend):
an image of the test set gets the label the submission gave it (rank blends rank against the submission's
test predictions). Unreadable images are flagged with the reason and
get no label (-1 in the CSV); no path is ever dropped.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from competition import cli
from competition.atomic import write_csv
from competition.blend import load_blend
from competition.config import ConfigError, is_override
from competition.errors import DataError
from competition.inference import load_experiment, predict_experiment, predict_onnx
from competition.model import pick_device
from competition.project import Project
from competition.tables import list_images

log = logging.getLogger(__name__)


def expand_paths(items: list[str]) -> list[str]:
    """Files as given, folders expanded to the image files below them (sorted; other files named in a warning)."""
    out = []
    for item in items:
        path = Path(item)
        out += list_images(path) if path.is_dir() else [str(path)]
    return out


def predict_paths(project: Project, target: str, paths: list[str], device: torch.device) -> tuple[pd.DataFrame, dict]:
    """path, prob, label, error for every path (none dropped), and timings {load, predict} in seconds."""
    blend = load_blend(Path(target)) if target.endswith(".json") else None
    exps = [load_experiment(project, m, device) for m in (blend.members if blend else [target])]
    runs = [predict_experiment(e, paths, device) for e in exps]
    prob = blend.apply(np.column_stack([r[0] for r in runs])) if blend else runs[0][0]
    threshold = blend.threshold if blend else exps[0].threshold
    errors = runs[0][1]
    label = np.where([e == "" for e in errors], (prob >= threshold).astype(int), -1)  # -1: no image, no label
    frame = pd.DataFrame({"path": paths, "prob": prob, "label": label, "error": errors})
    timing = {"load": sum(e.load_s for e in exps), "predict": sum(e.timing["predict"] for e in exps),
              "threshold": threshold}
    return frame, timing


def predict_paths_onnx(project: Project, name: str, paths: list[str], fp16: bool = False) -> tuple[pd.DataFrame, dict]:
    """predict_paths through the experiment's exported ONNX model (`./run.sh export`): same columns, same threshold."""
    if name.endswith(".json"):
        raise ConfigError("--onnx predicts with one experiment's exported model; a blend has no ONNX export")
    prob, errors, timing = predict_onnx(project, name, paths, fp16)
    label = np.where([e == "" for e in errors], (prob >= timing["threshold"]).astype(int), -1)
    return pd.DataFrame({"path": paths, "prob": prob, "label": label, "error": errors}), timing


def print_predictions(frame: pd.DataFrame) -> None:
    """One tab-separated line per image: path, probability, label (kind), and why when unreadable."""
    for row in frame.itertuples():
        if row.error:
            print(f"{row.path}\t-\t- (UNREADABLE: {row.error})")  # noqa: T201
            continue
        kind = "AI-generated" if row.label else "human-made"
        print(f"{row.path}\t{row.prob:.4f}\t{row.label} ({kind})")  # noqa: T201


def main(argv: list[str] | None = None, project: Project | None = None) -> int:
    """CLI entry point."""
    parser = cli.parser(__doc__, device=True)
    parser.add_argument("model", help="experiment name, or a blend's submissions/<name>.json")
    parser.add_argument("paths", nargs="+", help="images or folders")
    parser.add_argument("--csv", type=Path, help="also write path,prob,label,error to this CSV")
    parser.add_argument("--onnx", action="store_true", help="run the exported ONNX model (./run.sh export) with onnxruntime")
    parser.add_argument("--fp16", action="store_true", help="with --onnx: the half-precision export")
    args = parser.parse_args(argv)
    project = project or Project.from_env()

    def body() -> int:
        if any(is_override(p) for p in args.paths):
            raise ConfigError("predict uses the experiment's saved config; it takes no section.key=value overrides")
        paths = expand_paths(args.paths)
        if not paths:
            raise DataError(f"no images found in {args.paths}")
        if args.onnx:
            frame, timing = predict_paths_onnx(project, args.model, paths, args.fp16)
        else:
            frame, timing = predict_paths(project, args.model, paths, pick_device(args.device))
        print_predictions(frame)
        if args.csv:
            write_csv(args.csv, frame)
        unreadable = int((frame["error"] != "").sum())
        if unreadable:
            log.warning("%d of %d image(s) unreadable: no label given (label -1 in the CSV)", unreadable, len(frame))
        log.info("%d images: %.1f images/s (%.2fs predicting with every fold model and TTA; %.1fs loading models), "
                 "threshold %.3f", len(paths), len(paths) / max(timing["predict"], 1e-9), timing["predict"],
                 timing["load"], timing["threshold"])
        return 0

    return cli.run(body)


if __name__ == "__main__":
    sys.exit(main())
