"""Grad-CAM: which regions drove a prediction, for timm CNN backbones.

    python -m competition.explain exp001 IMAGE [IMAGE ...] [--out DIR] [--device auto|cpu|cuda]

The last convolutional stage is picked automatically: timm's `forward_features` returns it as a
(B, C, h, w) map; the gradient of the AI logit with respect to that map weights its channels.
Heatmaps are averaged over the experiment's fold models (centre crop); the probability printed is the one
`predict` gives (every fold, TTA). Models whose features are not a spatial map (e.g. vision transformers'
tokens) are refused with a clear message. A typed table, config, archive or checkpoint is refused as not an image.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from PIL import Image

from competition import cli
from competition.augment import to_tensor
from competition.config import Config
from competition.decode import BadImageError, decode_image
from competition.errors import KitError
from competition.inference import ALLOW_INCOMPLETE_HELP, eval_dataset, load_experiment, predict_experiment
from competition.model import Detector, pick_device
from competition.outputs import check_folder, claim, distinct_names
from competition.paths import experiment_arg, output_path, refuse_non_image, user_path
from competition.project import Project

log = logging.getLogger(__name__)


class GradCamUnsupported(KitError, ValueError):
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
    return (cam / top).cpu().numpy(), torch.sigmoid(logit.detach()).cpu().numpy()


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blend a jet-coloured heatmap over a uint8 RGB image."""
    colours = colormaps["jet"](heatmap)[..., :3] * 255
    return (image.astype(np.float32) * (1 - alpha) + colours * alpha).clip(0, 255).astype(np.uint8)


def explain_images(models: list[Detector], images: list[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray]:
    """Fold-averaged overlays and probabilities for same-sized uint8 RGB images (the eval crops)."""
    device = next(models[0].parameters()).device
    batch = to_tensor(np.stack(images)).to(device)
    cams, probs = zip(*(gradcam(m, batch) for m in models))
    cam, prob = np.mean(cams, axis=0), np.mean(probs, axis=0)
    return [overlay(im, c) for im, c in zip(images, cam)], prob


def eval_crop(cfg: Config, image: np.ndarray) -> np.ndarray:
    """The centre eval crop (HWC uint8) the model sees for a decoded image: the inference layer's geometry."""
    return eval_dataset(cfg, [], tta=False).prepare(image).permute(1, 2, 0).numpy()


def explain_file(models: list[Detector], cfg: Config, path: str, target: Path, project: Project,
                 force: bool = False, owns: Path | None = None) -> float:
    """Write the overlay of one image to target (through competition.outputs); return its fold-averaged probability."""
    (ov,), prob = explain_images(models, [eval_crop(cfg, decode_image(path))])
    scale = max(1, 256 // ov.shape[0])
    with claim(project, target, "explain", force, owns) as tmp:
        Image.fromarray(ov).resize((ov.shape[1] * scale, ov.shape[0] * scale), Image.NEAREST).save(tmp, "PNG")
    return float(prob[0])


def typed_image(text: str, project: Project) -> Path:
    """An image file typed on the command line; a table, config, archive or checkpoint is refused with the fix."""
    path = user_path(text, project, "image", kind="file")
    refuse_non_image(text, path, "explain")
    return path


def main(argv: list[str] | None = None, project: Project | None = None) -> int:
    """CLI entry point."""
    parser = cli.parser(__doc__, device=True)
    parser.add_argument("experiment")
    parser.add_argument("images", nargs="+")
    parser.add_argument("--out", default=None, help="folder for overlays (default: <exp>/gradcam/)")
    parser.add_argument("--force", action="store_true", help="replace overlay files explain did not write")
    parser.add_argument("--allow-incomplete", action="store_true", help=ALLOW_INCOMPLETE_HELP)
    args = parser.parse_args(argv)

    def body() -> int:
        nonlocal project
        project = project or Project.from_env()  # inside cli.run: a bad KIT_HOME is one ERROR line
        name = experiment_arg(args.experiment, project)
        images = [str(typed_image(p, project)) for p in args.images]
        own = project.experiment_dir(name) / "gradcam"
        out = check_folder(project, output_path(args.out, "--out"), "explain", own) if args.out else own
        exp = load_experiment(project, name, pick_device(args.device), args.allow_incomplete)
        probs = predict_experiment(exp, images, pick_device(args.device))[0]  # the number `predict` prints
        models = [m.to(memory_format=torch.contiguous_format) for m in exp.models]
        failed = 0
        for path, prob, target in zip(images, probs, (out / n for n in distinct_names(images, "_gradcam.png"))):
            try:
                explain_file(models, exp.cfg, path, target, project, args.force, own)
            except BadImageError as err:
                log.error("%s: cannot decode (%s), skipped", path, err)
                failed += 1
                continue
            print(f"{path}\t{prob:.4f}\t{target}")  # noqa: T201
        log.info("probabilities are predict's (every fold, TTA, threshold %.3f); heatmaps are of the centre crop",
                 exp.threshold)
        return 2 if failed == len(args.images) else 0

    return cli.run(body)


if __name__ == "__main__":
    sys.exit(main())
