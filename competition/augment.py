"""Augmentation presets (albumentations 2.x) and test-time-augmentation views: two registries.

Presets work on uint8 HWC arrays and return uint8: normalisation happens on the model side, which
keeps DataLoader transfers 4x smaller than float32. What the field has learned is encoded here:
generator artifacts live in the pixels, so `forensic` never resizes (native-resolution crop or pad);
blur and JPEG re-compression hit both classes alike so that neither becomes a class cue.

Adding a preset: one function returning its albumentations steps, registered with `@register_preset(name, ...)`;
adding a TTA view set: one function returning its batch views, registered with `@register_views(name)`; plus
its test (tests/test_registries.py). `data.augment` and `tta.views` accept exactly the registered names.
This module is imported by `competition.config`, so albumentations, cv2 and torch are imported inside the
functions that use them (light commands never load them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

import numpy as np

if TYPE_CHECKING:
    import albumentations as A
    import torch

    from competition.config import DataConfig

PAD = 4  # cv2.BORDER_REFLECT_101: pad small images by reflection, not with a constant border


class Base(NamedTuple):
    """The steps most presets share, built from the data config: a native random crop (reflect-padded when the
    image is smaller) and the flip (h-flip, or the 8 D4 flips/rotations when data.d4)."""

    crop: Any
    flip: Any


@dataclass(frozen=True)
class Preset:
    """A registered augmentation preset and what other code must know about it."""

    name: str
    steps: Callable[[DataConfig, Base], list]  # (data config, shared steps) -> albumentations training steps
    native: bool = True  # native-scale pixels: eval takes a centre crop (tta.crops/tiles apply); False: resize
    random_crop: bool = False  # trains on random native crops, so a TrainWindows crop cache can serve it

    @property
    def description(self) -> str:
        """What the preset does (its function's docstring), for docs and listings."""
        return (self.steps.__doc__ or "").strip()


PRESETS: dict[str, Preset] = {}  # name -> Preset, in registration order (the order config errors list them)


def register_preset(name: str, *, native: bool = True, random_crop: bool = False) -> Callable:
    """Register the decorated step builder as preset `name` (accepted by `data.augment` from then on)."""
    def register(fn: Callable[[DataConfig, Base], list]) -> Callable[[DataConfig, Base], list]:
        PRESETS[name] = Preset(name, fn, native, random_crop)
        return fn
    return register


def preset_names() -> tuple[str, ...]:
    """The registered preset names: the allowed values of `data.augment`."""
    return tuple(PRESETS)


def get_preset(name: str) -> Preset:
    """The registered preset `name` (ValueError naming the choices otherwise)."""
    if name not in PRESETS:
        raise ValueError(f"unknown augmentation preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


@register_preset("forensic", random_crop=True)
def forensic(data: DataConfig, base: Base) -> list:
    """native random crop/pad, h-flip, JPEG re-compression, Gaussian blur (both classes alike)"""
    import albumentations as A

    return [base.crop, base.flip,
            A.ImageCompression(compression_type="jpeg", quality_range=(data.jpeg_quality_min, 100), p=data.jpeg_p),
            A.GaussianBlur(blur_limit=(3, 5), sigma_limit=(0.1, 1.5), p=data.blur_p)]


@register_preset("light", random_crop=True)
def light(data: DataConfig, base: Base) -> list:
    """native random crop/pad, h-flip only"""
    return [base.crop, base.flip]


@register_preset("resize", native=False)
def resize(data: DataConfig, base: Base) -> list:
    """resize the whole image to img_size, h-flip (the seeds' approach; destroys high-frequency traces)"""
    import albumentations as A
    import cv2

    return [A.Resize(data.img_size, data.img_size, interpolation=cv2.INTER_AREA), base.flip]


@register_preset("none")
def no_augmentation(data: DataConfig, base: Base) -> list:
    """native centre crop/pad only"""
    import albumentations as A

    return [A.CenterCrop(data.img_size, data.img_size, pad_if_needed=True, border_mode=PAD)]


def build_train_transform(data: DataConfig, seed: int | None = None) -> A.Compose:
    """The training pipeline of the configured preset."""
    import albumentations as A

    preset = get_preset(data.augment)
    size = data.img_size
    crop = A.RandomCrop(size, size, pad_if_needed=True, border_mode=PAD)
    flip = A.D4(p=1.0) if data.d4 else A.HorizontalFlip(p=0.5)  # d4: the 8 flips/rotations, uniformly
    return A.Compose(preset.steps(data, Base(crop, flip)), seed=seed)


class EvalTransform:
    """The one eval geometry, albumentations-style (`t(image=x)["image"]`): resize for presets that resize,
    else native-scale centre crop; crops=5 gives the four corners + centre (shape (5, H, W, C)), tiles=n an
    n x n grid of native tiles spread over the whole image + the centre crop (the centre crop always last)."""

    def __init__(self, data: DataConfig, crops: int = 1, tiles: int = 0):
        import albumentations as A
        import cv2

        resize = not get_preset(data.augment).native
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
    import cv2

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
    import torch

    array = np.ascontiguousarray(image)
    if not array.flags.writeable:  # Pillow's arrays are read-only views; copy (only the final crop)
        array = array.copy()
    tensor = torch.from_numpy(array)
    return tensor.permute(2, 0, 1) if tensor.ndim == 3 else tensor.permute(0, 3, 1, 2)


View = Callable[["torch.Tensor"], "torch.Tensor"]  # a batch transform (NCHW -> NCHW of the same shape)
VIEW_SETS: dict[str, Callable[[], list[View]]] = {}  # name -> its views (the first is the identity), in order


def register_views(name: str) -> Callable:
    """Register the decorated view-list builder as TTA view set `name` (accepted by `tta.views` from then on).
    Its first view must be the identity (`predict` reports the identity view's score as the no-TTA baseline),
    and every view must only move pixels (a permutation of the image, so nothing is lost or resampled)."""
    def register(fn: Callable[[], list[View]]) -> Callable[[], list[View]]:
        VIEW_SETS[name] = fn
        return fn
    return register


def view_names() -> tuple[str, ...]:
    """The registered TTA view-set names: the allowed values of `tta.views`."""
    return tuple(VIEW_SETS)


def rot_flip(k: int, flip: bool) -> View:
    """The view rotating a batch by k x 90 degrees, then h-flipping it when flip."""
    def view(x: torch.Tensor) -> torch.Tensor:
        x = x.rot90(k, dims=(2, 3)) if k else x
        return x.flip(dims=(3,)) if flip else x
    return view


@register_views("identity")
def identity_view() -> list[View]:
    """The image as cropped: no TTA."""
    return [rot_flip(0, False)]


@register_views("hflip")
def hflip_views() -> list[View]:
    """The image and its mirror (2 views)."""
    return [rot_flip(0, False), rot_flip(0, True)]


@register_views("d4")
def d4_views() -> list[View]:
    """The 8 flips/rotations of the square (pair with data.d4 training)."""
    return [rot_flip(k, f) for k in range(4) for f in (False, True)]


def tta_views(name: str) -> list[View]:
    """Batch transforms (NCHW) of a registered TTA view set, the identity first."""
    if name not in VIEW_SETS:
        raise ValueError(f"unknown TTA views {name!r}; choose one of {', '.join(VIEW_SETS)}")
    return VIEW_SETS[name]()
