"""Peak RSS of building folds + the Dataset index for synthetic 80,000- and 1,000,000-row train.csv.

    .venv/bin/python benchmarks/memory.py 80000      # one size per process, so peaks do not mix
The 80k run goes through the real table checks (files exist, paths inside the data folder) on empty
files; the index never holds image bytes, so RSS grows with rows, not with image sizes.
"""

from __future__ import annotations

import gc
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from common import peak_rss_mb, table
from competition.config import CompetitionConfig, Config, FoldsConfig
from competition.dataset import ImageDataset
from competition.folds import make_folds
from competition.project import Project
from competition.tables import load_train_table


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 80_000
    base = peak_rss_mb()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        names = [f"img/{i:07d}.jpg" for i in range(n)]
        real_files = n <= 100_000
        if real_files:
            (data / "img").mkdir()
            for name in names:
                (data / name).touch()
        pd.DataFrame({"file_name": names, "label": np.arange(n) % 2}).to_csv(data / "train.csv", index=False)
        comp = CompetitionConfig(name="mem", data_dir=str(data))
        cfg = Config(competition=comp, folds=FoldsConfig(n_splits=5, audit=False))
        if real_files:
            train = load_train_table(comp, Project(data))
        else:
            train = pd.read_csv(data / "train.csv").rename(columns={"file_name": "id"})
            train["path"] = str(data) + "/" + train["id"]
        folds = make_folds(cfg, train, Project(data))
        ds = ImageDataset(train["path"].tolist(), train["label"].to_numpy(), None)
        gc.collect()
        peak = peak_rss_mb()
        table(f"Memory, {n:,} rows", ["rows", "table checks", "peak RSS MB", "of which kit (above import)", "bytes/row"],
              [[n, "full" if real_files else "skipped (no 1M files)", peak, peak - base, (peak - base) * 2**20 / n]])
        assert len(ds) == len(folds) == n


if __name__ == "__main__":
    main()
