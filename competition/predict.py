"""Predict images with an experiment's fold models (or a blend's members) and TTA.

    python -m competition.predict exp001 PATH [PATH ...] [--csv out.csv]
    python -m competition.predict submissions/<blend>.json PATH ...

PATHs are images or folders (searched recursively). One line per image: path, probability that it is
AI-generated, and the label at the saved threshold. Undecodable images get the training prior and
are flagged, never dropped.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.special import expit, logit

from competition.augment import build_eval_transform
from competition.atomic import write_csv
from competition.config import EXPERIMENTS_DIR, Config, ConfigError, load_saved_config
from competition.dataset import ImageDataset
from competition.model import pick_device
from competition.tables import IMAGE_SUFFIXES
from competition.train import load_detector, predict_fold

log = logging.getLogger(__name__)


def expand_paths(items: list[str]) -> list[str]:
    """Files as given, folders expanded to the image files below them (sorted)."""
    out = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            out += sorted(str(p) for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        else:
            out.append(str(path))
    return out


def predict_experiment(name: str, paths: list[str], device: torch.device,
                       timing: dict | None = None) -> tuple[np.ndarray, list[str], float]:
    """Fold-averaged TTA probabilities for paths, the error per path, and the experiment's threshold.

    timing, when given, accumulates seconds spent loading models ("load") and predicting ("predict").
    """
    timing = {} if timing is None else timing
    out = EXPERIMENTS_DIR / name
    cfg: Config = load_saved_config(out / "config.yaml")
    metrics = json.loads((out / "metrics.json").read_text()) if (out / "metrics.json").is_file() else {}
    prior = float(pd.read_csv(out / "oof.csv")["target"].mean()) if (out / "oof.csv").is_file() else 0.5
    crops = {"crops": cfg.tta.crops, "crop_size": cfg.data.img_size} if cfg.data.augment != "resize" else {}
    ds = ImageDataset(paths, None, build_eval_transform(cfg.data), None, encoding=cfg.data.normalize_encoding, **crops)
    checkpoints = sorted(out.glob("fold*/best.pt"))
    if not checkpoints:
        raise ConfigError(f"{out}: no fold*/best.pt - run `./run.sh {name}` first")
    probs, errors = [], {}
    for ckpt in checkpoints:
        t0 = time.perf_counter()
        model = load_detector(ckpt, cfg, device)
        t1 = time.perf_counter()
        preds = predict_fold(model, ds, cfg, device, prior, desc=f"{name} {ckpt.parent.name}")
        timing["load"] = timing.get("load", 0.0) + t1 - t0
        timing["predict"] = timing.get("predict", 0.0) + time.perf_counter() - t1
        probs.append(preds.prob)
        errors = preds.errors
    return np.mean(probs, axis=0), [errors.get(i, "") for i in range(len(paths))], float(metrics.get("threshold", 0.5))


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


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="experiment name, or a blend's submissions/<name>.json")
    parser.add_argument("paths", nargs="+", help="images or folders")
    parser.add_argument("--csv", type=Path, help="also write path,prob,label,error to this CSV")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    paths = expand_paths(args.paths)
    if not paths:
        log.error("no images found in %s", args.paths)
        return 2
    device = pick_device(args.device)
    timing: dict = {}
    try:
        if args.model.endswith(".json"):
            sidecar = json.loads(Path(args.model).read_text())
            runs = [predict_experiment(m, paths, device, timing) for m in sidecar["members"]]
            prob = combine(sidecar, np.column_stack([r[0] for r in runs]))
            errors, threshold = runs[0][1], sidecar.get("threshold") or 0.5
        else:
            prob, errors, threshold = predict_experiment(args.model, paths, device, timing)
    except (ConfigError, FileNotFoundError) as err:
        log.error("%s", err)
        return 2
    frame = pd.DataFrame({"path": paths, "prob": prob, "label": (prob >= threshold).astype(int), "error": errors})
    for row in frame.itertuples():
        kind = "AI-generated" if row.label else "human-made"
        print(f"{row.path}\t{row.prob:.4f}\t{row.label} ({kind}){chr(9) + 'UNREADABLE: ' + row.error if row.error else ''}")  # noqa: T201
    if args.csv:
        write_csv(args.csv, frame)
    log.info("%d images: %.1f images/s (%.2fs predicting with every fold model and TTA; %.1fs loading models), "
             "threshold %.3f", len(paths), len(paths) / max(timing["predict"], 1e-9), timing["predict"], timing["load"],
             threshold)
    return 0


if __name__ == "__main__":
    sys.exit(main())
