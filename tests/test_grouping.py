"""pHash grouping: near-duplicate pairs with opposite labels never split across folds."""

from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image, ImageEnhance

from competition.config import CompetitionConfig, Config, FoldsConfig, DataConfig
from competition.folds import make_folds
from competition.grouping import close_pairs, compute_hashes, group_hashes
from competition.project import Project
from competition.tables import load_train_table
from tests.conftest import CIFAKE


def test_multi_index_hashing_matches_brute_force():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**63, 300, dtype=np.int64).view(np.uint64)
    noisy = base[:100] ^ (np.uint64(1) << rng.integers(0, 64, 100).astype(np.uint64))  # 1-bit neighbours
    hashes = np.concatenate([base, noisy])
    for d in (1, 3, 6):
        found = {tuple(p) for p in close_pairs(hashes, d)}
        xor = hashes[:, None] ^ hashes[None, :]
        dist = np.unpackbits(xor.view(np.uint8)).reshape(*xor.shape, 64).sum(axis=-1)  # independent of the kit's popcount
        brute = {(i, j) for i, j in zip(*np.nonzero(dist <= d)) if i < j}
        assert found == brute


def test_constructed_pairs_never_split(tmp_path):
    """Each real image gets a lightly edited copy (re-encoded, brightened) labelled as the other class."""
    data = tmp_path / "data"
    (data / "img").mkdir(parents=True)
    sources = sorted((CIFAKE / "train_data").glob("*.jpg"))[:40]
    rows = []
    for i, src in enumerate(sources):
        img = Image.open(src).convert("RGB").resize((128, 128))
        img.save(data / "img" / f"{i}_a.jpg", quality=95)
        ImageEnhance.Brightness(img).enhance(1.05).save(data / "img" / f"{i}_b.png")
        rows += [(f"img/{i}_a.jpg", i % 2, i), (f"img/{i}_b.png", 1 - i % 2, i)]
    pd.DataFrame(rows, columns=["file_name", "label", "pair"]).to_csv(data / "train.csv", index=False)
    cfg = Config(competition=CompetitionConfig(name="pairs", data_dir=str(data)),
                 folds=FoldsConfig(n_splits=5, seed=0, groups="phash", phash_distance=6),
                 data=DataConfig(cache_dir=str(tmp_path / "cache")))
    folds = make_folds(cfg, load_train_table(cfg.competition, Project(tmp_path)), Project(tmp_path))
    truth = pd.read_csv(data / "train.csv")
    folds["pair"] = truth.set_index("file_name").loc[folds["id"], "pair"].values
    assert (folds.groupby("pair")["fold"].nunique() == 1).all()  # no pair split
    assert folds["fold"].nunique() == 5
    # the hash cache is reused: a second run hashes nothing
    paths = [str(data / f) for f in truth["file_name"]]
    before = (tmp_path / "cache" / "phash.csv").stat().st_mtime_ns
    compute_hashes(paths, tmp_path / "cache" / "phash.csv")
    assert (tmp_path / "cache" / "phash.csv").stat().st_mtime_ns == before


def test_unrelated_images_stay_apart():
    rng = np.random.default_rng(1)
    hashes = rng.integers(0, 2**63, 2000, dtype=np.int64).view(np.uint64)
    assert len(np.unique(group_hashes(hashes, 6))) == 2000
