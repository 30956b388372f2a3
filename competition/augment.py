"""Augmentation presets (albumentations 2.x) and test-time-augmentation views.

Presets work on uint8 HWC arrays and return uint8: normalisation happens on the model side, which
keeps DataLoader transfers 4x smaller than float32. What the field has learned is encoded here:
generator artifacts live in the pixels, so `forensic` never resizes (native-resolution crop or pad);
blur and JPEG re-compression hit both classes alike so that neither becomes a class cue.

- forensic: native-resolution random crop (pad if smaller), h-flip, JPEG re-compression, Gaussian blur
- light:    native-resolution random crop (pad if smaller), h-flip only
- resize:   resize the whole image to img_size, h-flip (the seeds' approach; destroys high-frequency traces)
- none:     native-resolution centre crop only
"""

from __future__ import annotations

from typing import Callable

import albumentations as A
import cv2
import numpy as np
import torch

from competition.config import DataConfig

PAD = cv2.BORDER_REFLECT_101  # pad small images by reflection, not with a constant border
PRESETS = ("forensic", "light", "resize", "none")


def build_train_transform(data: DataConfig, seed: int | None = None) -> A.Compose:
    """The training pipeline of the configured preset."""
    size = data.img_size
    crop = A.RandomCrop(size, size, pad_if_needed=True, border_mode=PAD)
    flip = A.D4(p=1.0) if data.d4 else A.HorizontalFlip(p=0.5)  # d4: the 8 flips/rotations, uniformly
    if data.augment == "forensic":
        steps = [
            crop,
            flip,
            A.ImageCompression(compression_type="jpeg", quality_range=(data.jpeg_quality_min, 100), p=data.jpeg_p),
            A.GaussianBlur(blur_limit=(3, 5), sigma_limit=(0.1, 1.5), p=data.blur_p),
        ]
    elif data.augment == "light":
        steps = [crop, flip]
    elif data.augment == "resize":
        steps = [A.Resize(size, size, interpolation=cv2.INTER_AREA), flip]
    elif data.augment == "none":
        steps = [A.CenterCrop(size, size, pad_if_needed=True, border_mode=PAD)]
    else:
        raise ValueError(f"unknown augmentation preset {data.augment!r}; choose one of {', '.join(PRESETS)}")
    return A.Compose(steps, seed=seed)


class EvalTransform:
    """The one eval geometry, albumentations-style (`t(image=x)["image"]`): resize for the resize preset,
    else native-scale centre crop; crops=5 gives the four corners + centre (shape (5, H, W, C)), tiles=n an
    n x n grid of native tiles spread over the whole image + the centre crop (the centre crop always last)."""

    def __init__(self, data: DataConfig, crops: int = 1, tiles: int = 0):
        resize = data.augment == "resize"
        self.size, self.crops, self.tiles = data.img_size, 1 if resize else crops, 0 if resize else tiles
        if resize:
            self.single = A.Compose([A.Resize(self.size, self.size, interpolation=cv2.INTER_AREA)])
        else:
            self.single = A.Compose([A.CenterCrop(self.size, self.size, pad_if_needed=True, border_mode=PAD)])

    def __call__(self, *, image: np.ndarray) -> dict:
        if self.tiles:
            return {"image": tile_crops(image, self.size, self.tiles)}
        if self.crops > 1:
            return {"image": five_crops(image, self.size)}
        return self.single(image=image)

    @property
    def signature(self) -> str:
        """What defines the output pixels (keys EvalCrops)."""
        return f"{type(self.single.transforms[0]).__name__}|size={self.size}|crops={self.crops}|tiles={self.tiles}"


def build_eval_transform(data: DataConfig, crops: int = 1, tiles: int = 0) -> EvalTransform:
    """Deterministic eval geometry matching the preset; crops=5 adds the corner crops, tiles=n a tile grid (TTA)."""
    return EvalTransform(data, crops, tiles)


def _pad_to(image: np.ndarray, size: int) -> np.ndarray:
    """Reflect-pad an image on the bottom/right up to size x size when it is smaller."""
    h, w = image.shape[:2]
    if h >= size and w >= size:
        return image
    return cv2.copyMakeBorder(image, 0, max(0, size - h), 0, max(0, size - w), PAD)


def five_crops(image: np.ndarray, size: int) -> np.ndarray:
    """Four corner crops and the centre crop at native scale (padding first if the image is small)."""
    image = _pad_to(image, size)
    h, w = image.shape[:2]
    cy, cx = (h - size) // 2, (w - size) // 2
    corners = [(0, 0), (0, w - size), (h - size, 0), (h - size, w - size), (cy, cx)]
    return np.stack([image[y:y + size, x:x + size] for y, x in corners])


def tile_crops(image: np.ndarray, size: int, grid: int) -> np.ndarray:
    """grid x grid native tiles at evenly spaced positions from corner to corner (overlapping on small images,
    covering the image when grid x size >= its sides), then the centre crop; grid**2 + 1 crops of one shape."""
    image = _pad_to(image, size)
    h, w = image.shape[:2]
    ys = np.linspace(0, h - size, grid).round().astype(int) if grid > 1 else [(h - size) // 2]
    xs = np.linspace(0, w - size, grid).round().astype(int) if grid > 1 else [(w - size) // 2]
    corners = [(int(y), int(x)) for y in ys for x in xs] + [((h - size) // 2, (w - size) // 2)]
    return np.stack([image[y:y + size, x:x + size] for y, x in corners])


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 HWC (or NHWC) array -> uint8 CHW (or NCHW) tensor."""
    array = np.ascontiguousarray(image)
    if not array.flags.writeable:  # Pillow's arrays are read-only views; copy (only the final crop)
        array = array.copy()
    tensor = torch.from_numpy(array)
    return tensor.permute(2, 0, 1) if tensor.ndim == 3 else tensor.permute(0, 3, 1, 2)


def tta_views(name: str) -> list[Callable[[torch.Tensor], torch.Tensor]]:
    """Batch transforms (NCHW) for a TTA setting: identity, hflip (2 views) or d4 (8 views)."""
    def rot_flip(k: int, flip: bool) -> Callable[[torch.Tensor], torch.Tensor]:
        def view(x: torch.Tensor) -> torch.Tensor:
            x = torch.rot90(x, k, dims=(2, 3)) if k else x
            return torch.flip(x, dims=(3,)) if flip else x
        return view

    if name == "identity":
        return [rot_flip(0, False)]
    if name == "hflip":
        return [rot_flip(0, False), rot_flip(0, True)]
    if name == "d4":
        return [rot_flip(k, f) for k in range(4) for f in (False, True)]
    raise ValueError(f"unknown TTA views {name!r}; choose identity, hflip or d4")
