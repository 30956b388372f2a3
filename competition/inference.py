"""Batched prediction with test-time augmentation: views and native-scale crops in one forward pass.

Returns per-image probabilities averaged over TTA views and crops, plus the identity-view
probability, so the TTA gain can be measured on the same OOF rows. Undecodable images get the
fallback probability and are reported, never dropped.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from competition.augment import tta_views


@dataclass
class Predictions:
    """Probabilities for every row of a dataset, in dataset order."""

    prob: np.ndarray  # TTA-averaged probability of AI-generated
    prob_identity: np.ndarray  # identity view only (centre crop), for measuring TTA gain
    errors: dict[int, str]  # row index -> why the image could not be decoded (fallback used)


@torch.no_grad()
def predict_views(model: torch.nn.Module, images: torch.Tensor, transforms: list, autocast=nullcontext,
                  channels_last: bool = False) -> np.ndarray:
    """Probabilities (views, N, crops) for a uint8 batch (N, C, H, W) or (N, crops, C, H, W), one forward pass."""
    crops = images.shape[1] if images.ndim == 5 else 1
    flat = images.flatten(0, 1) if images.ndim == 5 else images
    batch = torch.cat([view(flat) for view in transforms])
    if channels_last:
        batch = batch.contiguous(memory_format=torch.channels_last)
    with autocast():
        logits = model(batch).float()
    return torch.sigmoid(logits).view(len(transforms), images.shape[0], crops).cpu().numpy()


@torch.no_grad()
def predict(model: torch.nn.Module, loader: DataLoader, device: torch.device, views: str = "identity",
            fallback: float = 0.5, amp_dtype: torch.dtype | None = None, channels_last: bool = False,
            desc: str = "predict") -> Predictions:
    """Run the model over a loader with the named TTA views; the first view is the identity."""
    model.eval()
    transforms = tta_views(views)
    n = len(loader.dataset)
    prob = np.full(n, np.nan, dtype=np.float64)
    prob_id = np.full(n, np.nan, dtype=np.float64)
    errors: dict[int, str] = {}
    autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype else nullcontext
    for images, _, index, error in tqdm(loader, desc=desc, leave=False, mininterval=2):
        p = predict_views(model, images.to(device, non_blocking=True), transforms, autocast, channels_last)
        idx = index.numpy()
        prob[idx] = p.mean(axis=(0, 2))
        prob_id[idx] = p[0, :, -1]  # identity view of the centre crop (last of five_crops)
        for i, err in zip(idx, error):
            if err:
                errors[int(i)] = err
    bad = np.fromiter(errors.keys(), dtype=np.int64, count=len(errors))
    prob[bad] = fallback
    prob_id[bad] = fallback
    assert not np.isnan(prob).any(), "a row got no prediction"
    return Predictions(prob, prob_id, errors)
