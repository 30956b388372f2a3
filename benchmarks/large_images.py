"""The large-image training data path, per core: today's path (decode every epoch) vs the native-crop cache.

    ../.venv/bin/python large_images.py [--epochs-per-decode 8]
Sets, all JPEG, nothing resized: the faces as distributed (1024 px, half progressive q100), the faces re-encoded
as baseline q90 1024 px, and 2x2 mosaics of them as baseline q90 2048 px (written to a temp folder).
One process, 0 DataLoader workers, forensic preset at 224 px, batch 32: images/s per core. Rows:
- decode only: Pillow decode of the whole file (the old path's floor);
- today's path: ImageDataset decoding every image every epoch (data.crop_cache=off);
- crop cache, fill epoch: epoch 0, every image decoded once and its window stored;
- crop cache, cycle: epochs 1..N (each image re-decoded once, staggered), i.e. the steady state;
- crop cache, no refresh: an epoch in which no image is re-decoded (the floor the cycle tends to).
ratio = images/s over today's path, measured in the same run.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from torch.utils.data import DataLoader

from common import FACES, table
from competition.augment import build_train_transform
from competition.config import DataConfig
from competition.crop_cache import TrainWindows
from competition.dataset import ImageDataset
from competition.decode import decode_image

SIZE = 224


def make_sets(tmp: Path) -> dict[str, list[str]]:
    """The three image sets (faces as they are, baseline q90 1024 px, baseline q90 2048 px mosaics)."""
    faces = [str(FACES / f) for f in pd.read_csv(FACES / "train.csv")["file_name"]]
    (tmp / "b1024").mkdir()
    (tmp / "b2048").mkdir()
    base1024, base2048 = [], []
    for i, path in enumerate(faces[:160]):
        out = tmp / "b1024" / f"{i:03d}.jpg"
        Image.fromarray(decode_image(path)).save(out, quality=90)
        base1024.append(str(out))
    for i in range(40):
        tiles = [decode_image(faces[(4 * i + k) % len(faces)]) for k in range(4)]
        mosaic = np.concatenate([np.concatenate(tiles[:2], 1), np.concatenate(tiles[2:], 1)], 0)
        out = tmp / "b2048" / f"{i:03d}.jpg"
        Image.fromarray(mosaic).save(out, quality=90)
        base2048.append(str(out))
    return {"faces 1024 px (as distributed)": faces[:160], "1024 px baseline q90": base1024,
            "2048 px baseline q90": base2048}


def epoch_rate(ds: ImageDataset, epoch: int) -> float:
    """Images/s of one epoch through a 0-worker DataLoader (one core)."""
    ds.set_epoch_seed(1000 + epoch, epoch)
    loader = DataLoader(ds, batch_size=32, shuffle=True, num_workers=0)
    start = time.perf_counter()
    n = sum(len(batch[0]) for batch in loader)
    return n / (time.perf_counter() - start)


def decode_rate(paths: list[str]) -> float:
    start = time.perf_counter()
    for path in paths:
        decode_image(path)
    return len(paths) / (time.perf_counter() - start)


def measure(name: str, paths: list[str], every: int, tmp: Path) -> list[list]:
    data = DataConfig(img_size=SIZE, augment="forensic")
    labels = np.zeros(len(paths))
    decode = decode_rate(paths)
    today = ImageDataset(paths, labels, build_train_transform(data, seed=0))
    epoch_rate(today, 0)  # warm-up (page cache, allocator)
    old = float(np.mean([epoch_rate(today, e) for e in range(2)]))
    windows = TrainWindows(paths, SIZE, every, seed=0, encoding={}, cache_dir=tmp / f"cache_{abs(hash(name))}")
    cached = ImageDataset(paths, labels, build_train_transform(data, seed=0), crop_store=windows)
    fill = epoch_rate(cached, 0)
    cycle = [epoch_rate(cached, e) for e in range(1, every + 1)]
    cycle_rate = len(cycle) / sum(1 / r for r in cycle)  # images/s over the whole cycle (harmonic mean)
    frozen = TrainWindows(paths, SIZE, 10_000, seed=0, encoding={}, cache_dir=tmp / f"frozen_{abs(hash(name))}")
    hit = ImageDataset(paths, labels, build_train_transform(data, seed=0), crop_store=frozen)
    epoch_rate(hit, 0)
    no_refresh = epoch_rate(hit, 1)
    return [[name, "decode only (Pillow, whole image)", decode, decode / old],
            [name, "today's path: decode + forensic crop every epoch", old, 1.0],
            [name, "crop cache: fill epoch (every image decoded, window stored)", fill, fill / old],
            [name, f"**crop cache: steady state, decode once per {every} epochs**", cycle_rate, cycle_rate / old],
            [name, "crop cache: epoch without re-decodes", no_refresh, no_refresh / old]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs-per-decode", type=int, default=8, help="data.crop_cache_epochs")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, paths in make_sets(Path(tmp)).items():
            rows += measure(name, paths, args.epochs_per_decode, Path(tmp))
    table("Large-image data path, 1 core, forensic 224 px, batch 32 (images/s; ratio vs today's path)",
          ["images", "path", "images/s", "ratio"], rows)


if __name__ == "__main__":
    main()
