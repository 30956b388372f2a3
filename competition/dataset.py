"""The Dataset and its DataLoader: images by index, decoded on demand (competition.decode) or read from the
uint8 cache (competition.image_cache) or a crop cache (competition.crop_cache).

The Dataset holds only an index (paths, labels). Undecodable images never crash a run: the sample comes back
with its error and a NaN label, and the caller skips (training) or gives a fallback prediction (OOF/test),
listing the file.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler
from torch.utils.data.distributed import DistributedSampler

from competition.allocator import worker_limits
from competition.augment import to_tensor
from competition.config import Config, DataConfig
from competition.decode import BadImageError, decode_image, normalize_encoding
from competition.image_cache import BAD, CACHED, ImageCache


class ImageDataset(Dataset):
    """Images by index: returns (uint8 CHW tensor, or (crops, C, H, W) for multi-crop TTA, label, index, error).

    `transform` is an albumentations-style callable (`transform(image=...)["image"]`): the train preset or
    the one eval geometry of competition.augment.build_eval_transform.
    """

    def __init__(self, paths: list[str], labels: np.ndarray | None, transform, cache: ImageCache | None = None,
                 encoding: dict | None = None, crop_store=None, image_filter=None, keys: list[str] | None = None):
        self.paths = list(paths)
        # image_filter(image, key) -> image or (image, transform): applied to each decoded image before re-encoding
        # (competition.test_encoding: re-encode like a test image); a returned transform augments that image instead
        # of `transform`. key: keys[i] (default the path), + "@<epoch seed>" in a seeded training epoch. Never with
        # a crop store (its windows are cut before the filter could see the whole image).
        self.image_filter, self.keys = image_filter, list(keys) if keys is not None else self.paths
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

    def augment(self, image: np.ndarray, transform=None) -> torch.Tensor:
        """The transform (reseeded once per epoch in each worker) on re-encoded pixels, as a uint8 tensor."""
        seed = int(self.epoch_seed[0])
        if seed != self._seeded and seed >= 0:
            info = torch.utils.data.get_worker_info()
            for each in (self.transform, getattr(self.image_filter, "transform", None)):
                if hasattr(each, "set_random_seed"):
                    each.set_random_seed((seed * 1_000_003 + (info.id + 1 if info else 0)) % 2**32)
            self._seeded = seed
        return to_tensor((transform or self.transform)(image=image)["image"])

    def filtered(self, index: int, image: np.ndarray) -> tuple[np.ndarray, object]:
        """A decoded row through image_filter (when set): (image, the transform to augment it with or None)."""
        if self.image_filter is None:
            return image, None
        seed = int(self.epoch_seed[0])
        out = self.image_filter(image, self.keys[index] if seed < 0 else f"{self.keys[index]}@{seed}")
        return out if isinstance(out, tuple) else (out, None)

    def encoded(self, index: int) -> np.ndarray:
        """A row decoded and re-encoded as configured (what a crop cache stores windows of)."""
        return normalize_encoding(self.load(index), self.encoding)

    def transformed(self, index: int) -> np.ndarray:
        """A row through decode, re-encoding and the (deterministic eval) transform (what EvalCrops stores)."""
        return self.transform(image=self.encoded(index))["image"]

    def sample(self, index: int) -> torch.Tensor:
        """The model input of a row: from the crop cache when there is one, else decoded now."""
        if self.crop_store is None:
            image, transform = self.filtered(index, self.load(index))
            return self.augment(normalize_encoding(image, self.encoding), transform)
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
