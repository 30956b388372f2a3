"""The uint8 image cache: small same-sized images (CIFAKE: 32x32) decoded once into a memory-mapped array.

Keyed by the file list (with each file's size and mtime) and the decoder's signature (competition.decode), and
reused by every fold and experiment; caches no current key can point at are removed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm  # a widget in a notebook, the terminal bar elsewhere

from competition.atomic import DiskFullError, atomic_path, free_bytes, write_text
from competition.decode import BadImageError, decode_image, decoder_signature

log = logging.getLogger(__name__)

CACHE_MAX_SIDE = 128  # cache: auto only caches images whose sides are at most this
CACHED, BAD, UNCACHED = 1, 0, 2  # cache states per row


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

