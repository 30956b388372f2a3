"""Image decoding and the Dataset: Pillow decode (EXIF orientation, any mode -> RGB), optional uint8 cache.

The Dataset holds only an index (paths, labels); images are decoded on demand, or read from a
memory-mapped uint8 cache when the images are small and all one size (CIFAKE: 32x32), which is
decoded once, keyed by the file list, and reused by every fold and experiment.
Undecodable images never crash a run: the sample comes back with `ok=False` and the reason, and
the caller skips (training) or gives a fallback prediction (OOF/test), listing the file.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import ExifTags, Image, ImageFile, ImageOps
from torch.utils.data import DataLoader, Dataset, RandomSampler
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from competition.allocator import worker_limits
from competition.atomic import DiskFullError, atomic_path, free_bytes, write_text
from competition.config import Config, DataConfig
from competition.augment import to_tensor

log = logging.getLogger(__name__)

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, not a grey half-image
CACHE_MAX_SIDE = 128  # cache: auto only caches images whose sides are at most this
CACHED, BAD, UNCACHED = 1, 0, 2  # cache states per row


class BadImageError(RuntimeError):
    """An image that cannot be decoded."""


def decode_image(path, max_pixels: int | None = None, draft: int | None = None) -> np.ndarray:
    """Decode any image Pillow reads (a path or a binary file object) into uint8 RGB HWC, EXIF orientation
    applied, first frame only; images over max_pixels (e.g. a server's bound) are refused before decoding.
    draft=n lets a JPEG decode at 1/2, 1/4 or 1/8 scale while staying at least n x n (fast; content only)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if max_pixels and img.width * img.height > max_pixels:
                    raise BadImageError(f"{img.width}x{img.height} is over the {max_pixels / 1e6:g} megapixel limit")
                if draft:
                    img.draft("RGB", (draft, draft))
                if img.getexif().get(ExifTags.Base.Orientation, 1) != 1:  # exif_transpose copies even when
                    img = ImageOps.exif_transpose(img)  # there is nothing to turn: 324 MB more for an 81 MP photo
                return _to_rgb(img)
    except FileNotFoundError:
        raise BadImageError("file not found") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise BadImageError(f"{type(err).__name__}: {err}") from None


def reencode(image: np.ndarray, spec: dict) -> bytes:
    """Encode pixels in memory with one fixed setting ({format, quality}), stripping all metadata."""
    fmt = spec["format"].upper()
    buf = io.BytesIO()
    options = {"quality": int(spec.get("quality", 90))} if fmt in ("JPEG", "WEBP") else {}
    if fmt == "JPEG":
        options.update(progressive=False, subsampling=2, optimize=False)  # baseline 4:2:0, whatever the source was
    Image.fromarray(image).save(buf, fmt, **options)
    return buf.getvalue()


def normalize_encoding(image: np.ndarray, spec: dict) -> np.ndarray:
    """The pixels the model sees after re-encoding with `spec` (identity when spec is empty)."""
    if not spec:
        return image
    with Image.open(io.BytesIO(reencode(image, spec))) as img:
        return np.asarray(img.convert("RGB"))


def _to_rgb(img: Image.Image) -> np.ndarray:
    """Convert any Pillow mode to uint8 RGB: 16-bit scaled, transparency composited on white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(img, dtype=np.float64)
        top = 65535.0 if array.max() > 255 else 255.0
        gray = np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    array = np.asarray(img if img.mode == "RGB" else img.convert("RGB"))  # convert("RGB") of RGB is a copy
    if array.ndim != 3 or array.shape[0] < 1 or array.shape[1] < 1:
        raise BadImageError(f"decoded to shape {array.shape}")
    return array


DECODER_VERSION = 2  # bump by hand when what a cached pixel means changes in a way the source hash cannot see


def decoder_signature() -> str:
    """What decoded pixels depend on besides the file: this module's decode code and the codec libraries."""
    from PIL import __version__ as pillow_version
    from PIL import features

    source = inspect.getsource(decode_image) + inspect.getsource(_to_rgb)
    parts = [f"v{DECODER_VERSION}", f"Pillow {pillow_version}", f"libjpeg {features.version('jpg')}",
             f"zlib {features.version('zlib')}", hashlib.sha1(source.encode()).hexdigest()[:12]]
    return "|".join(parts)


def _list_key(paths: list[str]) -> str:
    """Hash of the file list alone (which images, in which order)."""
    return hashlib.sha1("\n".join(paths).encode()).hexdigest()[:16]


def _cache_key(paths: list[str], decoder: str) -> str:
    """Hash of the file list with each file's size and mtime and the decoder: any change invalidates the cache."""
    digest = hashlib.sha1(decoder.encode())
    for path in paths:
        try:
            stat = os.stat(path)
            digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{path}\0missing\n".encode())
    return digest.hexdigest()[:16]


def remove_stale_caches(cache_dir: Path, list_key: str, key: str, decoder: str) -> int:
    """Delete caches no current key can point at: other decoders, or older versions of this file list."""
    removed = 0
    for meta_file in cache_dir.glob("images_*.json"):
        try:
            meta = json.loads(meta_file.read_text())
        except (OSError, ValueError):
            meta = {}
        stale = meta.get("decoder") != decoder or (meta.get("list") == list_key and meta.get("key") != key)
        if stale:
            meta_file.with_suffix(".npy").unlink(missing_ok=True)
            meta_file.unlink(missing_ok=True)
            removed += 1
    if removed:
        log.info("removed %d stale image cache(s) from %s", removed, cache_dir)
    return removed


def probe_sizes(paths: list[str], n: int = 64) -> list[tuple[int, int]]:
    """(h, w) of the first n readable images, from their headers (unreadable ones are handled when decoding)."""
    sizes = []
    for path in paths[:n]:
        try:
            with Image.open(path) as img:
                sizes.append((img.height, img.width))
        except Exception:  # noqa: BLE001 - unreadable files are handled when decoding
            continue
    return sizes


def probe_small_images(paths: list[str], n: int = 64) -> tuple[int, int] | None:
    """(h, w) if the first n readable images share one size of at most CACHE_MAX_SIDE, else None."""
    sizes = set(probe_sizes(paths, n))
    if len(sizes) != 1:
        return None
    h, w = sizes.pop()
    return (h, w) if max(h, w) <= CACHE_MAX_SIDE else None


class ImageCache:
    """A uint8 (N, H, W, 3) memory-mapped array of decoded images plus a per-row state and reason.

    `subset(rows)` gives a view over some rows (a fold) without copying any image.
    """

    def __init__(self, array: np.ndarray, states: np.ndarray, reasons: dict[int, str],
                 rows: np.ndarray | None = None):
        self.array, self.states, self.reasons = array, states, reasons
        self.rows = np.arange(len(states)) if rows is None else np.asarray(rows)

    def subset(self, rows: np.ndarray) -> "ImageCache":
        """A view of these rows (indices into this cache)."""
        return ImageCache(self.array, self.states, self.reasons, self.rows[rows])

    def state(self, index: int) -> int:
        """CACHED, BAD or UNCACHED for row `index` of this view."""
        return int(self.states[self.rows[index]])

    def image(self, index: int) -> np.ndarray:
        """The cached image of row `index` (a private copy)."""
        return np.array(self.array[self.rows[index]])

    def reason(self, index: int) -> str:
        """Why row `index` could not be decoded."""
        return self.reasons.get(int(self.rows[index]), "undecodable")

    @classmethod
    def build(cls, paths: list[str], size: tuple[int, int], cache_dir: Path) -> "ImageCache":
        """Open the cache for these files, decoding them once (atomically) if it does not exist yet."""
        decoder = decoder_signature()
        key, list_key = _cache_key(paths, decoder), _list_key(paths)
        data_file = cache_dir / f"images_{key}_{size[0]}x{size[1]}.npy"
        meta_file = data_file.with_suffix(".json")
        if cache_dir.is_dir():
            remove_stale_caches(cache_dir, list_key, key, decoder)
        if not (data_file.is_file() and meta_file.is_file()):
            cls._write(paths, size, data_file, meta_file, {"key": key, "list": list_key, "decoder": decoder})
        meta = json.loads(meta_file.read_text())
        array = np.load(data_file, mmap_mode="r")
        return cls(array, np.asarray(meta["states"], dtype=np.uint8), {int(k): v for k, v in meta["reasons"].items()})

    @staticmethod
    def _write(paths: list[str], size: tuple[int, int], data_file: Path, meta_file: Path, ident: dict) -> None:
        """Decode every image into a new cache file; odd-sized ones stay UNCACHED, bad ones are BAD."""
        states = np.full(len(paths), CACHED, dtype=np.uint8)
        reasons: dict[int, str] = {}
        need = len(paths) * size[0] * size[1] * 3 + 2**20
        if free_bytes(data_file.parent if data_file.parent.is_dir() else Path(".")) < need:
            raise DiskFullError(f"no space left on {data_file.parent} for the image cache ({need / 2**20:.0f} MiB "
                                f"needed) - free space, point data.cache_dir elsewhere, or set data.cache=none")
        with atomic_path(data_file) as tmp:
            array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), *size, 3))
            _reserve(tmp)  # a full disk fails here with ENOSPC, not later with SIGBUS on a page write
            for i, path in enumerate(tqdm(paths, desc=f"caching {len(paths)} images", mininterval=2)):
                try:
                    image = decode_image(path)
                except BadImageError as err:
                    states[i], reasons[i] = BAD, str(err)
                    continue
                if image.shape[:2] != size:
                    states[i] = UNCACHED
                    continue
                array[i] = image
            array.flush()
            del array
        write_text(meta_file, json.dumps({**ident, "states": states.tolist(), "reasons": reasons}))
        log.info("cached %d images in %s (%d bad, %d odd-sized)", len(paths), data_file,
                 int((states == BAD).sum()), int((states == UNCACHED).sum()))


class ImageDataset(Dataset):
    """Images by index: returns (uint8 CHW tensor, or (crops, C, H, W) for multi-crop TTA, label, index, error).

    `transform` is an albumentations-style callable (`transform(image=...)["image"]`): the train preset or
    the one eval geometry of competition.augment.build_eval_transform.
    """

    def __init__(self, paths: list[str], labels: np.ndarray | None, transform, cache: ImageCache | None = None,
                 encoding: dict | None = None, crop_store=None):
        self.paths = list(paths)
        self.labels = np.zeros(len(self.paths), np.float32) if labels is None else np.asarray(labels, np.float32)
        self.transform = transform
        self.cache = cache
        self.encoding = encoding or {}
        # competition.crop_cache: TrainWindows (native windows the transform then augments) or EvalCrops (the
        # eval transform's output, stored whole); None = decode every time
        self.crop_store = crop_store
        # Augmentation seed and number of the current epoch, in shared memory so persistent workers see each new
        # epoch; seed -1 = not seeded (evaluation). Each worker reseeds its transform once per epoch from (seed,
        # worker id), so a resumed run draws exactly what the uninterrupted one drew.
        self.epoch_seed = torch.tensor([-1, 0], dtype=torch.int64)  # moved to shared memory on first use
        self._seeded = -1  # the epoch seed this process (worker) last applied

    def set_epoch_seed(self, seed: int, epoch: int = 0) -> None:
        """Seed the augmentation of the coming epoch (seen by persistent workers too: the seed is shared
        before the first epoch's workers start; evaluation datasets never pay for shared memory)."""
        if not self.epoch_seed.is_shared():
            self.epoch_seed.share_memory_()
        self.epoch_seed[0], self.epoch_seed[1] = seed, epoch

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int) -> np.ndarray:
        """Decoded uint8 RGB image for a row (cache when it has it)."""
        if self.cache is not None:
            state = self.cache.state(index)
            if state == CACHED:
                return self.cache.image(index)
            if state == BAD:
                raise BadImageError(self.cache.reason(index))
        return decode_image(self.paths[index])

    def prepare(self, image: np.ndarray) -> torch.Tensor:
        """What the model gets for a decoded image: re-encoding (when configured), the transform, a uint8 tensor."""
        return self.augment(normalize_encoding(image, self.encoding))

    def augment(self, image: np.ndarray) -> torch.Tensor:
        """The transform (reseeded once per epoch in each worker) on re-encoded pixels, as a uint8 tensor."""
        seed = int(self.epoch_seed[0])
        if seed != self._seeded and seed >= 0 and hasattr(self.transform, "set_random_seed"):
            info = torch.utils.data.get_worker_info()
            self.transform.set_random_seed((seed * 1_000_003 + (info.id + 1 if info else 0)) % 2**32)
            self._seeded = seed
        return to_tensor(self.transform(image=image)["image"])

    def encoded(self, index: int) -> np.ndarray:
        """A row decoded and re-encoded as configured (what a crop cache stores windows of)."""
        return normalize_encoding(self.load(index), self.encoding)

    def transformed(self, index: int) -> np.ndarray:
        """A row through decode, re-encoding and the (deterministic eval) transform (what EvalCrops stores)."""
        return self.transform(image=self.encoded(index))["image"]

    def sample(self, index: int) -> torch.Tensor:
        """The model input of a row: from the crop cache when there is one, else decoded now."""
        if self.crop_store is None:
            return self.prepare(self.load(index))
        epoch = int(self.epoch_seed[1])
        if getattr(self.crop_store, "windows", False):
            return self.augment(self.crop_store.get(index, self.encoded, epoch))
        return to_tensor(self.crop_store.get(index, self.transformed, epoch))

    def __getitem__(self, index: int):
        error, label = "", self.labels[index]
        try:
            tensor = self.sample(index)
        except BadImageError as err:
            error, label = str(err) or "undecodable", np.float32("nan")  # NaN label: weight 0 in training
            tensor = self.prepare(np.zeros((8, 8, 3), np.uint8))
        return tensor, torch.tensor(label), index, error


def seed_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: seed the worker's augmentation from torch's per-worker seed; release the heap
    inherited from the parent and keep large decode buffers out of the heap (competition.allocator)."""
    worker_limits()
    info = torch.utils.data.get_worker_info()
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    transform = getattr(info.dataset, "transform", None)
    if hasattr(transform, "set_random_seed"):
        transform.set_random_seed(seed)


def _reserve(path: Path) -> None:
    """Allocate a sparse file's blocks now, so running out of disk is an error, not a SIGBUS."""
    with open(path, "rb+") as fh:
        os.posix_fallocate(fh.fileno(), 0, os.fstat(fh.fileno()).st_size)


def open_cache(paths: list[str], mode: str, cache_dir: Path) -> ImageCache | None:
    """The uint8 cache for these files when the config asks for it (auto: small same-sized images)."""
    if mode == "none" or not paths:
        return None
    size = probe_small_images(paths)
    if size is None:
        if mode == "memmap":
            log.warning("data.cache=memmap but images are not small and same-sized; reading from disk")
        return None
    return ImageCache.build(paths, size, cache_dir)


def worker_count(data: DataConfig, device: torch.device, cached: bool) -> int:
    """DataLoader workers: as configured, else 0 for cached small images, else from the cores."""
    if data.num_workers >= 0:
        return data.num_workers
    if cached:
        return 0
    cores = os.cpu_count() or 1
    return min(8, cores) if device.type == "cuda" else max(1, min(8, cores - 1))


def make_loader(dataset: Dataset, cfg: Config, device: torch.device, train: bool, seed: int = 0,
                shard: tuple[int, int] = (0, 1)) -> DataLoader:
    """A DataLoader: seeded shuffling for training (2x batch for evaluation), pinned memory on CUDA, seeded workers.

    shard=(rank, world) with world > 1: this rank's DistributedSampler share (shuffled per epoch with
    `sampler.set_epoch` for training; in order, padded to equal shares, for evaluation)."""
    workers = worker_count(cfg.data, device, getattr(dataset, "cache", None) is not None)
    # Shuffling has its own generator (reseed it per epoch: loader.sampler.generator.manual_seed): the loader's
    # generator is also drawn from for the workers' base seed whenever a worker pool starts, which would shift a
    # resumed run's order if the two were shared.
    if shard[1] > 1:
        sampler = DistributedSampler(dataset, num_replicas=shard[1], rank=shard[0], shuffle=train, seed=seed)
    else:
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed)) if train else None
    return DataLoader(
        dataset,
        batch_size=cfg.train.batch_size if train else cfg.train.batch_size * 2,
        sampler=sampler,
        drop_last=train and len(dataset) > cfg.train.batch_size,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        worker_init_fn=seed_worker if workers else None,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=train and workers > 0,  # kept across epochs; reseeded through dataset.epoch_seed
    )
