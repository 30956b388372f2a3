"""Grad-CAM: which regions drove a prediction, for timm CNN backbones.

    python -m competition.explain exp001 IMAGE [IMAGE ...] [--out DIR]

The last convolutional stage is picked automatically: timm's `forward_features` returns it as a
(B, C, h, w) map; the gradient of the AI logit with respect to that map weights its channels.
Heatmaps are averaged over the experiment's fold models. Models whose features are not a spatial
map (e.g. vision transformers' tokens) are refused with a clear message.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from PIL import Image

from competition.atomic import atomic_path
from competition.augment import build_eval_transform, to_tensor
from competition.config import EXPERIMENTS_DIR, ConfigError, load_saved_config
from competition.dataset import BadImageError, decode_image, normalize_encoding
from competition.model import Detector
from competition.train import load_detector

log = logging.getLogger(__name__)


class GradCamUnsupported(ValueError):
    """The backbone has no spatial feature map to explain."""


def gradcam(model: Detector, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(heatmaps in [0, 1] at input size (N, H, W), probabilities (N,)) for uint8 NCHW images."""
    model.eval()
    x = model.prepare(images)
    with torch.enable_grad():
        feats = model.backbone.forward_features(x)
        if feats.ndim != 4:
            raise GradCamUnsupported(
                f"Grad-CAM needs a CNN whose last stage is a (B, C, H, W) map; {type(model.backbone).__name__} "
                f"returns features of shape {tuple(feats.shape)} - not supported for this backbone")
        feats.retain_grad()
        logit = model.backbone.forward_head(feats).reshape(-1)
        logit.sum().backward()
    weights = feats.grad.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * feats).sum(dim=1, keepdim=True)).detach()
    cam = F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    top = cam.flatten(1).amax(dim=1).clamp(min=1e-8)[:, None, None]
    return (cam / top).numpy(), torch.sigmoid(logit.detach()).numpy()


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blend a jet-coloured heatmap over a uint8 RGB image."""
    colours = colormaps["jet"](heatmap)[..., :3] * 255
    return (image.astype(np.float32) * (1 - alpha) + colours * alpha).clip(0, 255).astype(np.uint8)


def explain_images(models: list[Detector], images: list[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray]:
    """Fold-averaged overlays and probabilities for same-sized uint8 RGB images."""
    batch = torch.stack([to_tensor(im) for im in images])
    cams, probs = zip(*(gradcam(m, batch) for m in models))
    cam, prob = np.mean(cams, axis=0), np.mean(probs, axis=0)
    return [overlay(im, c) for im, c in zip(images, cam)], prob


def load_fold_models(name: str) -> tuple[list[Detector], object]:
    """Every fold's best model of an experiment (CPU) and its saved config."""
    out = EXPERIMENTS_DIR / name
    cfg = load_saved_config(out / "config.yaml")
    ckpts = sorted(out.glob("fold*/best.pt"))
    if not ckpts:
        raise ConfigError(f"{out}: no fold*/best.pt - run `./run.sh {name}` first")
    return [load_detector(c, cfg, torch.device("cpu")).to(memory_format=torch.contiguous_format) for c in ckpts], cfg


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment")
    parser.add_argument("images", nargs="+")
    parser.add_argument("--out", type=Path, default=None, help="folder for overlays (default: <exp>/gradcam/)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        models, cfg = load_fold_models(args.experiment)
        out = args.out or EXPERIMENTS_DIR / args.experiment / "gradcam"
        crop = build_eval_transform(cfg.data)
        for path in args.images:
            try:
                image = crop(image=normalize_encoding(decode_image(path), cfg.data.normalize_encoding))["image"]
            except BadImageError as err:
                log.error("%s: cannot decode (%s), skipped", path, err)
                continue
            (ov,), prob = explain_images(models, [image])
            scale = max(1, 256 // ov.shape[0])
            target = out / f"{Path(path).stem}_gradcam.png"
            with atomic_path(target) as tmp:
                Image.fromarray(ov).resize((ov.shape[1] * scale, ov.shape[0] * scale), Image.NEAREST).save(tmp, "PNG")
            print(f"{path}\t{prob[0]:.4f}\t{target}")  # noqa: T201
    except (ConfigError, GradCamUnsupported) as err:
        log.error("%s", err)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
