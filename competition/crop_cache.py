"""Native-crop caches for large images: decode a photo once, train on its native pixels for several epochs.

Decoding a 1024-2048 px JPEG costs 3-16 ms per core; augmenting the 224 crop the model trains on costs
~0.3 ms. Two caches, both uint8 memmaps under data.cache_dir, cut the decodes without resizing anything:

- `TrainWindows` keeps one native window per training image: 2 x img_size square (the whole image when it
  is smaller), at a seeded random position. Each image is re-decoded once every `data.crop_cache_epochs`
  epochs at a new position, staggered by row so every epoch re-decodes 1/N of the images; in between, the
  train preset's random crop, flip, JPEG and blur run on the stored window.
- `EvalCrops` stores the deterministic eval crop of each row once (validation's centre crop), so the
  validation pass of every epoch stops re-decoding the validation images.

Rows are filled lazily by whichever process first needs them (DataLoader worker, DDP rank): the pixels are
written before the row's marker, so a killed run leaves no half-written row. Window positions are seeded by
(seed, row, round): a resumed run, or a rerun on another machine with an empty cache, sees the same pixels.
The caches are keyed by the file list (with sizes and mtimes), the decoder and what defines their pixels.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Callable

import numpy as np

from competition.atomic import DiskFullError, atomic_path, free_bytes
from competition.augment import get_preset
from competition.decode import decoder_signature
from competition.image_cache import _cache_key, _reserve, probe_sizes

log = logging.getLogger(__name__)

WINDOW_SCALE = 2  # a training window is WINDOW_SCALE x img_size square: room for random crops inside it
AUTO_MIN_PIXELS = 8  # crop_cache=auto turns on when the median image has >= this many crops' worth of pixels


def wants_crop_cache(mode: str, augment: str, img_size: int, paths: list[str], n: int = 64) -> bool:
    """Whether training should use TrainWindows: on/off as configured; auto = random-crop presets on images whose
    median pixel count (first n readable) is at least AUTO_MIN_PIXELS crops (decoding then dominates)."""
    if mode == "off" or not get_preset(augment).random_crop:
        return False
    if mode == "on":
        return True
    pixels = [h * w for h, w in probe_sizes(paths, n)]
    return bool(pixels) and float(np.median(pixels)) >= AUTO_MIN_PIXELS * img_size * img_size


class _RowStore:
    """A (n, *shape) uint8 memmap plus an int32 (n, 3) marker table [round, h, w], created once, atomically."""

    def __init__(self, cache_dir: Path, stem: str, n: int, shape: tuple[int, ...]):
        self.data_file = cache_dir / f"{stem}.npy"
        self.mark_file = cache_dir / f"{stem}.rows.npy"
        self.n, self.shape = n, shape
        self._pid, self._data, self._mark = -1, None, None
        if not (self.data_file.is_file() and self.mark_file.is_file()):
            self._create(cache_dir)

    def _create(self, cache_dir: Path) -> None:
        """Write an empty store (every marker -1): the data file sparse but reserved, so a full disk fails now."""
        cache_dir.mkdir(parents=True, exist_ok=True)
        need = self.n * int(np.prod(self.shape)) + 2**20
        if free_bytes(cache_dir) < need:
            raise DiskFullError(f"no space left on {cache_dir} for the crop cache ({need / 2**20:.0f} MiB needed) - "
                                f"free space, point data.cache_dir elsewhere, or set data.crop_cache=off")
        with atomic_path(self.mark_file) as tmp:
            marks = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.int32, shape=(self.n, 3))
            marks[:] = -1
            marks.flush()
            del marks
        with atomic_path(self.data_file) as tmp:
            np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(self.n, *self.shape))
            _reserve(tmp)
        log.info("crop cache %s: %d rows x %s (%.0f MiB on disk)", self.data_file, self.n, self.shape, need / 2**20)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(data, marks) memmaps, opened once per process (workers and ranks map the same file, MAP_SHARED)."""
        if self._pid != os.getpid():
            self._data = np.load(self.data_file, mmap_mode="r+")
            self._mark = np.load(self.mark_file, mmap_mode="r+")
            self._pid = os.getpid()
        return self._data, self._mark

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_pid": -1, "_data": None, "_mark": None}  # reopen after pickling (spawn)


def _stem(kind: str, paths: list[str], ident: str) -> str:
    """File stem keyed by the file list (sizes, mtimes), the decoder and what defines the stored pixels."""
    key = hashlib.sha1(f"{_cache_key(paths, decoder_signature())}|{ident}".encode()).hexdigest()[:16]
    return f"{kind}_{key}"


class TrainWindows:
    """One native window per training row, re-drawn every `epochs` epochs (see the module docstring)."""

    windows = True  # the dataset augments what get() returns (EvalCrops returns finished crops)
    def __init__(self, paths: list[str], img_size: int, epochs: int, seed: int, encoding: dict, cache_dir: Path):
        self.side, self.epochs, self.seed = WINDOW_SCALE * img_size, epochs, seed
        ident = f"side={self.side}|every={epochs}|seed={seed}|encoding={sorted(encoding.items())}"
        self.store = _RowStore(cache_dir, _stem("windows", paths, ident), len(paths), (self.side, self.side, 3))
        self.decodes = 0  # rows this process decoded (for the benchmark)

    def round(self, index: int, epoch: int) -> int:
        """Which draw of row `index` epoch `epoch` trains on (rows are staggered so 1/N re-decode per epoch)."""
        return (max(epoch, 0) + index % self.epochs) // self.epochs

    def get(self, index: int, load: Callable[[int], np.ndarray], epoch: int) -> np.ndarray:
        """The row's window for this epoch (decoding through `load` only when its round is not stored yet): a
        read-only view of the cache, valid until the row's next refresh."""
        data, marks = self.store.arrays()
        want = self.round(index, epoch)
        if marks[index, 0] != want:
            window = self.draw(load(index), index, want)
            h, w = window.shape[:2]
            data[index, :h, :w] = window
            marks[index, 1:] = (h, w)
            marks[index, 0] = want  # last: the row counts as filled only once its pixels are in
            self.decodes += 1
        h, w = int(marks[index, 1]), int(marks[index, 2])
        window = data[index, :h, :w].view(np.ndarray)  # no copy: the transform's crop copies only what it keeps
        window.flags.writeable = False  # and an in-place op could never write into the shared cache
        return window

    def draw(self, image: np.ndarray, index: int, round_: int) -> np.ndarray:
        """A seeded random native window of at most side x side pixels (the whole image when smaller)."""
        rng = np.random.default_rng((self.seed, index, round_))
        height, width = image.shape[:2]
        h, w = min(height, self.side), min(width, self.side)
        y, x = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
        return image[y:y + h, x:x + w]


class EvalCrops:
    """The deterministic eval crop(s) of each row, computed once (the output of `geometry`, an EvalTransform, on
    the decoded and re-encoded image)."""

    windows = False
    def __init__(self, paths: list[str], geometry, encoding: dict, cache_dir: Path):
        size = geometry.size
        shape = geometry(image=np.zeros((size, size, 3), np.uint8))["image"].shape  # what one row's crop(s) hold
        ident = f"{geometry.signature}|encoding={sorted(encoding.items())}|shape={shape}"
        self.store = _RowStore(cache_dir, _stem("evalcrops", paths, ident), len(paths), shape)
        self.decodes = 0

    def get(self, index: int, load: Callable[[int], np.ndarray], epoch: int = 0) -> np.ndarray:
        """The row's eval crop(s), computing them through `load` (decode + eval transform) the first time."""
        data, marks = self.store.arrays()
        if marks[index, 0] != 0:
            data[index] = load(index)
            marks[index, 0] = 0
            self.decodes += 1
        return np.array(data[index])
