"""K-fold splits of train.csv, written once to folds/ and read by every experiment (never re-split).

    python -m competition.folds                 # folds for competition.yaml's settings
    python -m competition.folds folds.n_splits=10 folds.seed=7
"""

from __future__ import annotations

import argparse
import logging
import sys

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from competition import ROOT
from competition.atomic import write_csv
from competition.config import Config, ConfigError, load_config
from competition.tables import DataError, load_train_table

log = logging.getLogger(__name__)

FOLDS_DIR = ROOT / "folds"


def folds_file(cfg: Config):
    """Path of the folds file for this competition, K, seed and grouping."""
    group = f"_g-{cfg.folds.group_column}" if cfg.folds.group_column else ""
    if not group and cfg.folds.groups == "phash":
        group = f"_phash{cfg.folds.phash_distance}"
    if cfg.folds.ood_split == "cluster":
        group += f"_ood{cfg.folds.ood_clusters}"
    return FOLDS_DIR / f"{cfg.competition.name}_k{cfg.folds.n_splits}_s{cfg.folds.seed}{group}.csv"


def make_groups(cfg: Config, train: pd.DataFrame) -> pd.Series | None:
    """Group id per training row: the configured column, pHash near-duplicate groups, or None."""
    group_col = cfg.folds.group_column
    if group_col:
        if group_col not in train.columns:
            raise DataError(f"`folds.group_column: {group_col}` is not a column of train.csv ({', '.join(train.columns)})")
        return train[group_col].astype(str)
    if cfg.folds.groups != "phash":
        return None
    from competition.config import resolve_path
    from competition.grouping import compute_hashes, describe_groups, group_hashes

    hashes = compute_hashes(train["path"].tolist(), resolve_path(cfg.data.cache_dir) / "phash.csv")
    groups = group_hashes(hashes, cfg.folds.phash_distance).astype(str)
    unreadable = hashes == 0
    groups[unreadable] = [f"unreadable-{i}" for i in np.flatnonzero(unreadable)]  # singletons, not one big group
    stats = describe_groups(groups, train["label"].to_numpy())
    log.info("pHash groups (distance <= %d): %s", cfg.folds.phash_distance, stats)
    return pd.Series(groups, index=train.index)


def make_folds(cfg: Config, train: pd.DataFrame | None = None) -> pd.DataFrame:
    """Assign a stratified (grouped when configured) fold to every training row: `id, label, fold`."""
    train = load_train_table(cfg.competition) if train is None else train
    k, seed = cfg.folds.n_splits, cfg.folds.seed
    if train["label"].value_counts().min() < k:
        raise DataError(f"{k} folds need at least {k} images of each class; got {train['label'].value_counts().to_dict()}")
    folds = train[["id", "label"]].copy()
    folds["fold"] = -1
    groups = make_groups(cfg, train)
    if groups is not None:
        folds["group"] = groups.values
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        splits = splitter.split(folds, folds["label"], groups=folds["group"])
    else:
        splits = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(folds, folds["label"])
    for fold, (_, val_idx) in enumerate(splits):
        folds.iloc[val_idx, folds.columns.get_loc("fold")] = fold
    if groups is not None:
        crossing = folds.groupby("group")["fold"].nunique()
        if (crossing > 1).any():
            raise AssertionError(f"groups cross folds: {list(crossing[crossing > 1].index[:5])}")
        sizes = folds.groupby("group")["label"].agg(["size", "nunique"])
        log.info("%d groups, largest %d, %d holding both classes; no group crosses folds", len(sizes),
                 int(sizes["size"].max()), int((sizes["nunique"] > 1).sum()))
    if cfg.folds.ood_split == "cluster":
        folds["ood_fold"] = make_ood_folds(cfg, train)
    return folds


def make_ood_folds(cfg: Config, train: pd.DataFrame) -> np.ndarray:
    """Out-of-distribution folds: k-means content clusters (on pHash bits), whole clusters held out together."""
    from sklearn.cluster import KMeans

    from competition.config import resolve_path
    from competition.grouping import compute_hashes

    hashes = compute_hashes(train["path"].tolist(), resolve_path(cfg.data.cache_dir) / "phash.csv")
    bits = np.unpackbits(hashes.view(np.uint8).reshape(-1, 8), axis=1).astype(np.float32)
    n_clusters = min(cfg.folds.ood_clusters, len(train) // 2)
    clusters = KMeans(n_clusters=n_clusters, n_init=3, random_state=cfg.folds.seed).fit_predict(bits)
    k = min(cfg.folds.n_splits, n_clusters)
    ood = np.full(len(train), -1)
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=cfg.folds.seed)
    for fold, (_, idx) in enumerate(splitter.split(bits, train["label"], groups=clusters)):
        ood[idx] = fold
    log.info("OOD split: %d content clusters in %d folds (fold sizes %s)", n_clusters, k, np.bincount(ood).tolist())
    return ood


def summarize_folds(folds: pd.DataFrame) -> str:
    """One line per fold: size and AI share."""
    stats = folds.groupby("fold")["label"].agg(["size", "mean"])
    return "; ".join(f"fold {f}: {int(r['size'])} images, {r['mean']:.1%} AI" for f, r in stats.iterrows())


def ensure_folds(cfg: Config) -> pd.DataFrame:
    """Load the folds file, building and writing it first if it does not exist."""
    path = folds_file(cfg)
    if not path.is_file():
        train = load_train_table(cfg.competition)
        folds = make_folds(cfg, train)
        write_csv(path, folds)
        log.info("wrote %s (%d rows): %s", path, len(folds), summarize_folds(folds))
        if cfg.folds.audit:
            from competition.audit import audit, write_report

            write_report(audit(train, folds["fold"].to_numpy()), FOLDS_DIR, path.stem)
    return load_folds(cfg)


def load_folds(cfg: Config) -> pd.DataFrame:
    """Read the folds file and check it covers exactly the current training table."""
    path = folds_file(cfg)
    if not path.is_file():
        raise DataError(f"{path} not found - run `python -m competition.folds` first")
    folds = pd.read_csv(path, dtype={"id": str})
    missing = {"id", "label", "fold"} - set(folds.columns)
    if missing:
        raise DataError(f"{path}: columns {sorted(missing)} missing - delete the file and rebuild the folds")
    return folds


def main(argv: list[str] | None = None) -> int:
    """CLI: write the folds file for competition.yaml (+ overrides)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. folds.n_splits=10")
    parser.add_argument("--force", action="store_true", help="rebuild even if the folds file exists")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        cfg = load_config("", args.overrides, check_model=False)
        if args.force:
            folds_file(cfg).unlink(missing_ok=True)
        folds = ensure_folds(cfg)
    except (ConfigError, DataError) as err:
        log.error("%s", err)
        return 2
    log.info("%s: %s", folds_file(cfg), summarize_folds(folds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
