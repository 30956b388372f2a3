"""Predict images with an experiment's fold models (or a blend's members) and TTA.

    python -m competition.predict exp001 PATH [PATH ...] [--csv out.csv]
    python -m competition.predict submissions/<blend>.json PATH ...

PATHs are images or folders (searched recursively). One line per image: path, probability that it is
AI-generated, and the label at the saved threshold. Unreadable images are flagged with the reason and
get no label (-1 in the CSV); no path is ever dropped.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.special import expit, logit

from competition import cli
from competition.atomic import write_csv
from competition.config import ConfigError, is_override
from competition.errors import DataError
from competition.inference import load_experiment, predict_experiment
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


def combine(sidecar: dict, member_probs: np.ndarray) -> np.ndarray:
    """Apply a blend's saved combination to per-member probabilities (n_images, n_members)."""
    z = logit(np.clip(member_probs, 1e-6, 1 - 1e-6))
    method = sidecar["method"]
    if "weights" in sidecar:
        p = expit(z @ np.asarray(sidecar["weights"]))
    elif "coef" in sidecar:
        p = expit(z @ np.asarray(sidecar["coef"]) + sidecar["intercept"])
    elif method == "logit":
        p = expit(z.mean(axis=1))
    else:
        if method == "rank":
            log.warning("rank blends rank a whole test set; single images use the mean probability instead")
        p = member_probs.mean(axis=1)
    cal = sidecar.get("calibration")
    if isinstance(cal, dict):
        p = expit(cal["a"] * logit(np.clip(p, 1e-6, 1 - 1e-6)) + cal["b"])
    return p


def read_sidecar(path: Path) -> dict:
    """A blend's .json sidecar written by competition.ensemble, checked to be one."""
    try:
        sidecar = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: not a readable blend sidecar ({type(err).__name__}); pass the .json that "
                          f"`competition.ensemble` wrote") from None
    if not isinstance(sidecar, dict) or "members" not in sidecar:
        raise ConfigError(f"{path}: not a blend sidecar (no `members`); pass the .json that competition.ensemble wrote")
    return sidecar


def predict_paths(project: Project, target: str, paths: list[str], device: torch.device) -> tuple[pd.DataFrame, dict]:
    """path, prob, label, error for every path (none dropped), and timings {load, predict} in seconds."""
    sidecar = read_sidecar(Path(target)) if target.endswith(".json") else None
    members = sidecar["members"] if sidecar else [target]
    exps = [load_experiment(project, m, device) for m in members]
    runs = [predict_experiment(e, paths, device) for e in exps]
    prob = combine(sidecar, np.column_stack([r[0] for r in runs])) if sidecar else runs[0][0]
    threshold = float(sidecar.get("threshold") or 0.5) if sidecar else exps[0].threshold
    errors = runs[0][1]
    label = np.where([e == "" for e in errors], (prob >= threshold).astype(int), -1)  # -1: no image, no label
    frame = pd.DataFrame({"path": paths, "prob": prob, "label": label, "error": errors})
    timing = {"load": sum(e.load_s for e in exps), "predict": sum(e.timing["predict"] for e in exps),
              "threshold": threshold}
    return frame, timing


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
    args = parser.parse_args(argv)
    project = project or Project.from_env()

    def body() -> int:
        if any(is_override(p) for p in args.paths):
            raise ConfigError("predict uses the experiment's saved config; it takes no section.key=value overrides")
        paths = expand_paths(args.paths)
        if not paths:
            raise DataError(f"no images found in {args.paths}")
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
