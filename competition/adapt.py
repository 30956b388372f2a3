"""Test-time adaptation of BatchNorm statistics (AdaBN, `tta.adapt_bn`): a fold model's BatchNorm running mean and
variance re-estimated on the images it is about to predict (the test set, or validation rows re-encoded like it).

Only the normalisation statistics change: no weight is trained and no label is read. Each BatchNorm layer's
statistics are reset and re-accumulated as a cumulative average over every batch (momentum None) of a forward pass
in train mode without gradients; every other layer (dropout, stochastic depth) stays in eval mode. The images are
the identity view of the eval geometry (the caller passes an `eval_dataset(..., tta=False)`). A model without
BatchNorm (e.g. a LayerNorm ConvNeXt) is returned unchanged with one warning.

Every inference entry point honours the setting through `adapt_models` (competition.inference.predict_experiment:
predict, kaggle_predict, Kit.predict, explain): the fold models are adapted on the images being predicted. Fewer
than MIN_IMAGES usable images (a one-image batch has no variance and is skipped) leave the models unadapted with one
warning saying why; fewer than NOISY_BELOW are adapted with one warning that the statistics are noisy.
"""

from __future__ import annotations

import copy
import json
import logging
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from competition.config import Config
from competition.dataset import make_loader
from competition.model import amp_dtype

log = logging.getLogger(__name__)
_warned: set[str] = set()  # model classes already warned about (one warning per process, not per fold)
MIN_IMAGES = 8  # fewer usable images than this: BatchNorm statistics are not re-estimated (predictions unadapted)
NOISY_BELOW = 64  # fewer usable images than this: adapted, with one warning that the statistics are noisy


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm layer of a model (timm's BatchNormAct2d included: it subclasses BatchNorm2d)."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def adapt_batchnorm(model: nn.Module, dataset, cfg: Config, device: torch.device, desc: str = "adapt BN") -> nn.Module:
    """A copy of `model` whose BatchNorm running statistics are re-estimated on `dataset`'s images (labels unread);
    the model itself is left as it was. Without BatchNorm, or with too few usable images, the model itself is
    returned unchanged, with one warning."""
    return adapt_counted(model, dataset, cfg, device, desc)[0]


def adapt_counted(model: nn.Module, dataset, cfg: Config, device: torch.device, desc: str = "adapt BN",
                  warn_noisy: bool = True) -> tuple[nn.Module, int]:
    """adapt_batchnorm and the number of images the statistics were estimated on (0: nothing adapted, `model`
    itself returned: no BatchNorm, or fewer than MIN_IMAGES usable images, the real cause warned)."""
    if not batchnorm_layers(model):
        name = type(getattr(model, "backbone", model)).__name__
        if name not in _warned:
            _warned.add(name)
            log.warning("tta.adapt_bn: %s has no BatchNorm layer, nothing to adapt: predictions are unadapted", name)
        return model, 0
    if len(dataset) < MIN_IMAGES:
        log.warning("%s: tta.adapt_bn needs at least %d images to adapt on, got %d: the model is left unadapted "
                    "(predict the whole test set at once)", desc, MIN_IMAGES, len(dataset))
        return model, 0
    adapted = copy.deepcopy(model).eval()
    layers = batchnorm_layers(adapted)
    for bn in layers:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over every batch
        bn.train()
    seen = accumulate(adapted, dataset, cfg, device, desc)
    for bn, old in zip(layers, batchnorm_layers(model)):
        bn.momentum = old.momentum
    if seen < MIN_IMAGES:
        log.warning("%s: tta.adapt_bn: only %d of %d image(s) usable (undecodable images and batches of fewer than 2 "
                    "decodable images are skipped), at least %d needed: the model is left unadapted", desc, seen,
                    len(dataset), MIN_IMAGES)
        return model, 0
    if seen < NOISY_BELOW and warn_noisy:
        log.warning("%s: tta.adapt_bn adapts on only %d image(s) (fewer than %d): the BatchNorm statistics are noisy; "
                    "adapt on the whole test set", desc, seen, NOISY_BELOW)
    log.info("%s: %d BatchNorm layer(s) re-estimated on %d image(s)", desc, len(layers), seen)
    return adapted.eval(), seen


def adapt_models(models: list[nn.Module], dataset, cfg: Config, device: torch.device, name: str) -> list[nn.Module]:
    """The fold models as `cfg.tta.adapt_bn` predicts with them: each adapted on `dataset` (the images being
    predicted, identity view) when it asks for it, else (or when too few images are usable) the models themselves;
    at most one warning for all folds."""
    if not cfg.tta.adapt_bn or not models:
        return models
    if len(dataset) < MIN_IMAGES:
        log.warning("%s: tta.adapt_bn is on but only %d image(s) are predicted (adapting needs at least %d): "
                    "predicting unadapted; predict the whole test set at once to get the run's adapted predictions",
                    name, len(dataset), MIN_IMAGES)
        return models
    out = []
    for k, model in enumerate(models):
        adapted, seen = adapt_counted(model, dataset, cfg, device, f"{name} fold model {k} adapt BN", warn_noisy=k == 0)
        if seen == 0 and batchnorm_layers(model):  # too few usable images: the same for every fold, warned once
            return models
        out.append(adapted)
    return out


@torch.no_grad()
def accumulate(model: nn.Module, dataset, cfg: Config, device: torch.device, desc: str) -> int:
    """Forward every decodable image of `dataset` once (BatchNorm layers in train mode accumulate); images seen."""
    loader = make_loader(dataset, cfg, device, train=False)
    amp = amp_dtype(cfg.train.amp, device)
    autocast = (lambda: torch.autocast(device.type, dtype=amp)) if amp else nullcontext
    seen = 0
    for images, _, _, errors in tqdm(loader, desc=desc, leave=False, mininterval=2):
        keep = torch.tensor([not e for e in errors], dtype=torch.bool)
        images = images[keep]
        if images.ndim == 5:  # several crops per image: every crop is an image the model normalises
            images = images.flatten(0, 1)
        if len(images) < 2:  # a one-image batch has no variance to contribute
            continue
        images = images.to(device, non_blocking=True)
        if cfg.train.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast():
            model(images)
        seen += int(keep.sum())
    return seen


def adapted_fold(fold_dir: Path) -> bool:
    """Whether a finished fold's predictions were made with tta.adapt_bn (its result.json records `adapt_bn`)."""
    try:
        return bool(json.loads((fold_dir / "result.json").read_text()).get("adapt_bn"))
    except (OSError, ValueError, AttributeError):
        return False


def stale_predictions(cfg: Config, fold_dir: Path) -> bool:
    """A finished fold predicted with the other tta.adapt_bn than the config's: its predictions are recomputed from
    its checkpoints (train_fold resumes after its last epoch: no retraining)."""
    stale = adapted_fold(fold_dir) != cfg.tta.adapt_bn
    if stale:
        log.info("%s: predicted with tta.adapt_bn=%s, the config says %s: recomputing its predictions from its "
                 "checkpoints (no retraining)", fold_dir.name, not cfg.tta.adapt_bn, cfg.tta.adapt_bn)
    return stale
