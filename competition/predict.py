"""Predict images with an experiment's fold models (or a blend's members) and TTA.

    python -m competition.predict exp001 PATH [PATH ...] [--csv out.csv]
    python -m competition.predict submissions/<blend>.json PATH ...
    python -m competition.predict exp001 PATH ... --onnx [--fp16]   (the exported model, through onnxruntime)

PATHs are images or folders (searched recursively). One line per image: path, probability that it is
AI-generated, and the label at the saved threshold. A blend is the one `ensemble` saved (competition.blend):
an image of the test set gets the label the submission gave it (rank blends rank against the submission's
test predictions). Unreadable images are flagged with the reason and
get no label (-1 in the CSV); no path is ever dropped. An unfinished experiment (a fold missing, not assembled,
or still training) is refused with the fix; --allow-incomplete uses it anyway, with a loud warning.
A run with tta.adapt_bn adapts each fold model's BatchNorm on the images given (competition.adapt.adapt_models; at
least adapt.MIN_IMAGES of them, else unadapted with one warning): predict a whole test set at once to get the
run's adapted predictions. --onnx runs the export as it is (unadapted, warned).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from competition import cli
from competition.blend import load_blend
from competition.config import ConfigError, is_override
from competition.errors import DataError
from competition.inference import ALLOW_INCOMPLETE_HELP, load_experiment, predict_experiment, predict_onnx
from competition.model import pick_device
from competition.outputs import check_target, write_csv
from competition.paths import experiment_arg, output_path, refuse_non_image, user_path
from competition.project import Project
from competition.tables import list_images

log = logging.getLogger(__name__)


def expand_paths(items: list[str], project: Project | None = None) -> list[str]:
    """Files as typed (found where the command was typed, then in the project; a URL or a miss is refused with
    the near spelling on disk), folders expanded to the image files below them (sorted; others named)."""
    out = []
    for item in items:
        path = user_path(item, project, "image or folder")
        refuse_non_image(item, path, "predict")
        out += list_images(path) if path.is_dir() else [str(path)]
    return out


def model_arg(text: str, project: Project) -> str:
    """The model argument: a blend's .json (typed path, found like any other), else an experiment name or YAML."""
    if text.strip().lower().endswith(".json"):
        return str(user_path(text, project, "blend sidecar", kind="file"))
    return experiment_arg(text, project)


def predict_paths(project: Project, target: str, paths: list[str], device: torch.device,
                  allow_incomplete: bool = False) -> tuple[pd.DataFrame, dict]:
    """path, prob, label, error for every path (none dropped), and timings {load, predict} in seconds; an
    unfinished experiment (or blend member) is refused unless allow_incomplete."""
    blend = load_blend(Path(target)) if target.endswith(".json") else None
    exps = [load_experiment(project, m, device, allow_incomplete) for m in (blend.members if blend else [target])]
    runs = [predict_experiment(e, paths, device) for e in exps]
    prob = blend.apply(np.column_stack([r[0] for r in runs])) if blend else runs[0][0]
    threshold = blend.threshold if blend else exps[0].threshold
    errors = runs[0][1]
    label = np.where([e == "" for e in errors], (prob >= threshold).astype(int), -1)  # -1: no image, no label
    frame = pd.DataFrame({"path": paths, "prob": prob, "label": label, "error": errors})
    timing = {"load": sum(e.load_s for e in exps), "predict": sum(e.timing["predict"] for e in exps),
              "threshold": threshold}
    return frame, timing


def predict_paths_onnx(project: Project, name: str, paths: list[str], fp16: bool = False,
                       allow_incomplete: bool = False) -> tuple[pd.DataFrame, dict]:
    """predict_paths through the experiment's exported ONNX model (`./run.sh export`): same columns, same threshold."""
    if name.endswith(".json"):
        raise ConfigError("--onnx predicts with one experiment's exported model; a blend has no ONNX export")
    prob, errors, timing = predict_onnx(project, name, paths, fp16, allow_incomplete=allow_incomplete)
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
    parser.add_argument("--csv", help="also write path,prob,label,error to this CSV (a new file, or one predict "
                                      "wrote; --force replaces another file)")
    parser.add_argument("--force", action="store_true", help="let --csv replace a file predict did not write")
    parser.add_argument("--onnx", action="store_true", help="run the exported ONNX model (./run.sh export) with onnxruntime")
    parser.add_argument("--fp16", action="store_true", help="with --onnx: the half-precision export")
    parser.add_argument("--allow-incomplete", action="store_true", help=ALLOW_INCOMPLETE_HELP)
    args = parser.parse_args(argv)

    def body() -> int:
        nonlocal project
        project = project or Project.from_env()  # inside cli.run: a bad KIT_HOME is one ERROR line
        if any(is_override(p) for p in args.paths):
            raise ConfigError("predict uses the experiment's saved config; it takes no section.key=value overrides")
        model = model_arg(args.model, project)
        paths = expand_paths(args.paths, project)
        if not paths:
            raise DataError(f"no images found in {args.paths}")
        csv = output_path(args.csv, "--csv") if args.csv else None
        if csv is not None:
            check_target(project, csv, "predict", args.force)  # refused before minutes of predicting, not after
        if args.onnx:
            frame, timing = predict_paths_onnx(project, model, paths, args.fp16, args.allow_incomplete)
        else:
            frame, timing = predict_paths(project, model, paths, pick_device(args.device), args.allow_incomplete)
        print_predictions(frame)
        if csv is not None:
            write_csv(project, csv, frame, "predict", args.force)
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
