"""Model factory: any timm backbone with one logit, pretrained from a local file or the hub.

The returned `Detector` takes uint8 NCHW images and owns normalisation (mean/std from the weights'
pretrained config) and the optional integer nearest-neighbour upscale for tiny inputs, so the data
path ships compact uint8 tensors and never needs to know the backbone.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import nn

from competition.config import ModelConfig, from_dict, listed_models
from competition.errors import ConfigError, DataError
from competition.project import Project

log = logging.getLogger(__name__)


class Detector(nn.Module):
    """uint8 images -> normalise -> (upscale) -> backbone -> one logit per image (AI-generated)."""

    def __init__(self, backbone: nn.Module, mean: tuple, std: tuple, upscale: int = 1, input_filter: str = "none"):
        super().__init__()
        self.backbone = backbone
        self.upscale = upscale
        self.input_filter = input_filter  # none | highpass (model.input_filter)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255.0)  # saved with the weights
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255.0)  # saved with the weights

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (or float 0-255) NCHW -> the normalised, upscaled float tensor the backbone sees."""
        x = (images.float() - self.mean) / self.std
        if self.input_filter == "highpass":
            x = highpass(x)
        if self.upscale > 1:
            x = F.interpolate(x, scale_factor=self.upscale, mode="nearest")
        return x

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        feats = self.backbone.forward_features(self.prepare(images))
        with torch.autocast(images.device.type, enabled=False):  # the head and the logits stay fp32 under AMP
            return self.backbone.forward_head(feats.float()).squeeze(1)


HIGHPASS_GAIN = 4.0  # the residual of a normalised natural image has std ~0.2-0.3; x4 brings it near 1


def highpass(x: torch.Tensor) -> torch.Tensor:
    """The noise residual: each pixel minus its 3x3 mean (reflect-padded), scaled by HIGHPASS_GAIN."""
    local_mean = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), 3, stride=1)
    return (x - local_mean) * HIGHPASS_GAIN


def local_weights(cfg: ModelConfig, project: Project) -> tuple[Path | None, dict]:
    """(weights file, models.json entry) for cfg.name: pretrained_file wins, else weights_dir/models.json."""
    if cfg.pretrained_file:
        return project.resolve(cfg.pretrained_file), {}
    index = project.resolve(cfg.weights_dir) / "models.json"
    for entry in listed_models(index):
        if entry.get("timm_model") == cfg.name:
            return index.parent / entry["file"], entry
    return None, {}


def create_kwargs(cfg: ModelConfig, entry: dict) -> dict:
    """timm.create_model keyword arguments: one output, dropout, and the weights' own architecture kwargs."""
    kwargs: dict = {"num_classes": 1, "drop_rate": cfg.drop_rate}
    if cfg.drop_path_rate > 0:
        kwargs["drop_path_rate"] = cfg.drop_path_rate
    kwargs.update(entry.get("create_model_kwargs", {}))  # they define the architecture, pretrained or not
    return kwargs


def build_model(cfg: ModelConfig, project: Project, quiet: bool = False) -> Detector:
    """Create the timm backbone (one output), load weights as configured, wrap it in a Detector."""
    file, entry = local_weights(cfg, project)
    kwargs = create_kwargs(cfg, entry)
    if cfg.pretrained and file is not None:
        backbone = backbone_from_file(cfg.name, file, entry, kwargs)
    elif cfg.pretrained:
        try:
            backbone = timm.create_model(cfg.name, pretrained=True, **kwargs)
        except Exception as err:  # noqa: BLE001 - hub failures come in many types
            raise ConfigError(
                f"{cfg.name}: pretrained weights could not be loaded from the hub ({type(err).__name__}: {err}); "
                f"offline? set model.pretrained_file to a local .safetensors/.pth, or model.pretrained=false"
            ) from None
        log.info("%s: ImageNet weights from the hub", cfg.name)
    else:
        backbone = timm.create_model(cfg.name, pretrained=False, **kwargs)
        if not quiet:
            log.info("%s: random initialisation (model.pretrained=false)", cfg.name)
    _reset_head(backbone)
    data_cfg = timm.data.resolve_data_config({}, model=backbone)
    detector = Detector(backbone, tuple(data_cfg["mean"]), tuple(data_cfg["std"]), cfg.input_upscale, cfg.input_filter)
    detector.create_kwargs = kwargs  # saved in checkpoints, so a checkpoint rebuilds without models.json
    return detector


def backbone_from_file(name: str, file: Path, entry: dict, kwargs: dict) -> nn.Module:
    """A timm backbone with ImageNet weights from a local file (mean/std from models.json when given)."""
    if not file.is_file():
        raise ConfigError(f"weights file {file} not found; fix model.pretrained_file or model.weights_dir")
    overlay = {"file": str(file)}
    if entry.get("mean"):
        overlay.update(mean=tuple(entry["mean"]), std=tuple(entry["std"]))
    try:
        backbone = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    except Exception as err:  # noqa: BLE001 - safetensors/torch/timm raise many types for a bad file
        reason = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        raise ConfigError(f"{file}: not usable as {name} weights ({type(err).__name__}: {reason}) - point "
                          f"model.pretrained_file at a .safetensors/.pth of this architecture") from None
    log.info("%s: ImageNet weights from %s", name, file)
    return backbone


def load_detector(path: Path, device: torch.device, project: Project | None = None) -> Detector:
    """Rebuild a Detector from a self-describing best.pt (weights_only load): architecture, kwargs, weights.

    Checkpoints written before create kwargs were saved fall back to models.json (needs the project)."""
    ckpt = read_checkpoint(path, device)
    cfg = from_dict(ckpt["config"])
    kwargs = ckpt.get("create_kwargs")
    if kwargs is None:
        kwargs = create_kwargs(cfg.model, local_weights(cfg.model, project or Project.from_env())[1])
    backbone = timm.create_model(cfg.model.name, pretrained=False, **kwargs)
    model = Detector(backbone, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), cfg.model.input_upscale,
                     cfg.model.input_filter).to(device)
    model.load_state_dict(ckpt["model"])  # mean/std buffers come with the weights
    model.create_kwargs = kwargs
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model.eval()


def read_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict:
    """A fold checkpoint's content; an unreadable, truncated or foreign file is one DataError naming it and the fix."""
    fix = (f"retrain that fold (delete {Path(path).parent} and rerun the experiment) or restore the file from "
           "where the run was made")
    try:
        with warnings.catch_warnings():  # a foreign pickle's protocol warning precedes the error below
            warnings.simplefilter("ignore", UserWarning)
            ckpt = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise DataError(f"{path}: checkpoint missing; {fix}") from None
    except Exception as err:  # noqa: BLE001 - torch raises many types (pickle, zip, runtime) for a damaged file
        detail = " ".join(str(err).split())[:120]
        raise DataError(f"{path}: not a readable checkpoint ({type(err).__name__}{': ' + detail if detail else ''}); "
                        f"{fix}") from None
    missing = [key for key in ("config", "model") if not isinstance(ckpt, dict) or key not in ckpt]
    if missing:
        raise DataError(f"{path}: not a kit checkpoint (no {', '.join(missing)}); {fix}")
    return ckpt


def _reset_head(backbone: nn.Module) -> None:
    """Zero the new one-logit head: timm's fan-out init gives a 1-output head weights of +-1 and
    initial logits of magnitude ~5 (BCE loss ~6 at step 0); zeros start every image at p=0.5."""
    head = backbone.get_classifier()
    if isinstance(head, nn.Linear):
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)


def pick_device(name: str) -> torch.device:
    """auto -> cuda when available, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device {name!r} is not a device name: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise ConfigError(f"device {name} asked for, but {torch.cuda.device_count()} CUDA device(s) are visible; use "
                          f"--device auto/cpu (train.device=auto or cpu)")
    return device


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: on CUDA, bf16 where the GPU has it natively (compute capability >= 8.0: A100, H100, L4),
    else fp16 (T4, V100: trained with a GradScaler); None (fp32) on CPU or with amp=off.

    `torch.cuda.is_bf16_supported()` is not used: recent torch also counts emulation and says True on a T4."""
    if device.type != "cuda" or amp == "off":
        return None
    native_bf16 = torch.cuda.get_device_capability(device) >= (8, 0)
    if amp == "auto":
        return torch.bfloat16 if native_bf16 else torch.float16
    if amp == "bf16" and not native_bf16:
        major, minor = torch.cuda.get_device_capability(device)
        raise ConfigError(f"train.amp=bf16 needs a GPU of compute capability >= 8.0; this one is {major}.{minor} - "
                          f"use train.amp=auto (fp16 + GradScaler here)")
    return torch.bfloat16 if amp == "bf16" else torch.float16
