"""Data path: images/s through the kit's Dataset + forensic preset vs decode-only and the seeds' pipeline.

    .venv/bin/python benchmarks/data_path.py
Ratios are within one run (this machine is shared and noisy; absolute rates drift).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from torch.utils.data import DataLoader

from common import CIFAKE, FACES, rate, table
from competition.augment import build_train_transform
from competition.config import DataConfig
from competition.dataset import ImageDataset, seed_worker
from competition.decode import decode_image
from competition.image_cache import open_cache


def decode_only(paths: list[str]) -> int:
    for p in paths:
        decode_image(p)
    return len(paths)


def seeds_pipeline(paths: list[str]) -> int:
    """cv2.imread -> cvtColor -> resize 512 -> float32/255, one image at a time in a generator."""
    def gen():
        for p in paths:
            img = cv2.cvtColor(cv2.imread(p), cv2.COLOR_BGR2RGB)
            yield cv2.resize(img, (512, 512)).astype(np.float32) / 255.0
    return sum(1 for _ in gen())


def kit(paths: list[str], size: int, workers: int, cache=None) -> float:
    ds = ImageDataset(paths, np.zeros(len(paths)), build_train_transform(DataConfig(img_size=size), seed=0), cache)
    loader = DataLoader(ds, batch_size=32, shuffle=True, num_workers=workers, worker_init_fn=seed_worker if workers else None,
                        persistent_workers=workers > 0)

    def epoch() -> int:
        return sum(len(batch[0]) for batch in loader)
    return rate(epoch, 4.0)


def main() -> None:
    faces = [str(FACES / f) for f in pd.read_csv(FACES / "train.csv")["file_name"]]
    cifake = [str(CIFAKE / f) for f in pd.read_csv(CIFAKE / "train.csv")["file_name"][:3000]]
    rows = []
    for name, paths, size in (("faces 1024px JPEG", faces, 224), ("CIFAKE 32px JPEG", cifake, 32)):
        limit = rate(lambda: decode_only(paths), 4.0)
        seeds = rate(lambda: seeds_pipeline(paths[:100]), 4.0)
        rows.append([name, "decode only (limit, 1 process)", limit, 1.0])
        rows.append([name, "seeds: imread+resize512+float32", seeds, seeds / limit])
        for workers in (0, 1, 2):
            r = kit(paths, size, workers)
            per_worker = r / max(1, workers)
            rows.append([name, f"kit forensic, {workers} workers", r, per_worker / limit])
        if size == 32:
            with tempfile.TemporaryDirectory() as tmp:
                cache = open_cache(paths, "auto", Path(tmp))
                r = kit(paths, size, 0, cache)
                rows.append([name, "kit forensic, uint8 memmap cache, 0 workers", r, r / limit])
    table("Data path (images/s; ratio = per-worker rate / decode-only limit)",
          ["images", "pipeline", "images/s", "ratio"], rows)


if __name__ == "__main__":
    main()
