"""K-fold splits of train.csv, written once to folds/ and read by every experiment (never re-split).

    python -m competition.folds                 # folds for competition.yaml's settings (then the shortcut audit)
    python -m competition.folds folds.n_splits=10 folds.seed=7 [--force]

This module only splits; the caller decides what runs next (the CLI and `experiment` audit a new split).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from competition import cli
from competition.atomic import write_csv
from competition.fold_checks import check_new_folds
from competition.config import Config, load_config
from competition.embed import embed_config
from competition.grouping import components, compute_hashes, describe_groups, group_hashes, twin_pairs
from competition.project import Project
from competition.shift import refresh_shift
from competition.tables import DataError, check_identical_files, data_dir, load_test_table, load_train_table

log = logging.getLogger(__name__)

def make_groups(cfg: Config, train: pd.DataFrame, project: Project) -> pd.Series | None:
    """Group id per training row: the configured column (`group` in the table), pHash groups, or None."""
    if cfg.folds.group_column:
        if "group" not in train.columns:
            raise DataError(f"`folds.group_column: {cfg.folds.group_column}`: the training table was read without it")
        return train["group"].astype(str)
    if cfg.folds.groups == "twins":
        return pd.Series(twin_groups(cfg, train, project), index=train.index)
    if cfg.folds.groups != "phash":
        return None
    hashes = compute_hashes(train["path"].tolist(), project.cache_dir(cfg) / "phash.csv")
    groups = group_hashes(hashes, cfg.folds.phash_distance).astype(str)
    unreadable = hashes == 0
    groups[unreadable] = [f"unreadable-{i}" for i in np.flatnonzero(unreadable)]  # singletons, not one big group
    stats = describe_groups(groups, train["label"].to_numpy())
    log.info("pHash groups (distance <= %d): %s", cfg.folds.phash_distance, stats)
    return pd.Series(groups, index=train.index)


def twin_groups(cfg: Config, train: pd.DataFrame, project: Project) -> np.ndarray:
    """Group ids joining images whose embeddings are within folds.twin_similarity among their nearest neighbours;
    unreadable images (zero vectors) stay singletons and never link two others."""
    emb = embed_config(cfg, train["path"].tolist(), project)
    readable = np.flatnonzero(emb.any(axis=1))
    pairs = readable[twin_pairs(emb[readable], cfg.folds.twin_similarity, cfg.folds.twin_neighbors)]
    groups = components(len(train), pairs).astype(str)
    unreadable = np.setdiff1d(np.arange(len(train)), readable)
    groups[unreadable] = [f"unreadable-{i}" for i in unreadable]
    log.info("twin groups (cosine >= %.3f, %d neighbours, %s): %s", cfg.folds.twin_similarity,
             cfg.folds.twin_neighbors, cfg.folds.embed_model, describe_groups(groups, train["label"].to_numpy()))
    return groups


def make_folds(cfg: Config, train: pd.DataFrame, project: Project) -> pd.DataFrame:
    """Assign a stratified (grouped when configured) fold to every training row: `id, label, fold`."""
    k, seed = cfg.folds.n_splits, cfg.folds.seed
    counts = train["label"].value_counts().reindex([0, 1], fill_value=0)
    if counts.min() < k:
        raise DataError(f"train.csv: {k} folds need at least {k} images of each class (0 = human, 1 = AI); got "
                        f"{counts.to_dict()} - add images of the missing class or check competition.label_column")
    if "path" in train:  # byte-identical copies: contradicting labels refused, a leak across folds warned
        root = data_dir(cfg.competition, project)
        check_identical_files(train, root / cfg.competition.train_csv if cfg.competition.train_csv else root)
    folds = train[["id", "label"]].copy()
    folds["fold"] = -1
    groups = make_groups(cfg, train, project)
    if groups is not None:
        folds["group"] = groups.values
        check_group_count(folds, k, cfg)
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        splits = splitter.split(folds, folds["label"], groups=folds["group"])
    else:
        splits = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(folds, folds["label"])
    for fold, (_, val_idx) in enumerate(splits):
        folds.iloc[val_idx, folds.columns.get_loc("fold")] = fold
    check_fold_classes(folds, "fold", cfg)
    if groups is not None:
        crossing = folds.groupby("group")["fold"].nunique()
        if (crossing > 1).any():
            raise AssertionError(f"groups cross folds: {list(crossing[crossing > 1].index[:5])}")
        sizes = folds.groupby("group")["label"].agg(["size", "nunique"])
        log.info("%d groups, largest %d, %d holding both classes; no group crosses folds", len(sizes),
                 int(sizes["size"].max()), int((sizes["nunique"] > 1).sum()))
    if cfg.folds.ood_split == "cluster":
        folds["ood_fold"] = make_ood_folds(cfg, train, project)
    return folds


def check_fold_classes(folds: pd.DataFrame, column: str, cfg: Config) -> None:
    """Refuse a split where a fold's validation rows hold one class: no score but accuracy is defined there (AUC,
    F1 and log loss need both), and every epoch of that fold would score NaN. Only grouping can do it."""
    counts = folds.groupby(column)["label"].agg(["size", "sum"])
    lone = counts[(counts["sum"] == 0) | (counts["sum"] == counts["size"])]
    if len(lone):
        fold, row = int(lone.index[0]), lone.iloc[0]
        which = "AI (1)" if row["sum"] else "human (0)"
        cause = (f"the groups follow the label: check the column folds.group_column: {cfg.folds.group_column}"
                 if cfg.folds.group_column else f"grouping (folds.groups: {cfg.folds.groups}) joined each class into "
                 f"few groups: use fewer folds.n_splits or a finer grouping")
        raise DataError(f"{len(lone)} fold(s) would validate on one class only (fold {fold}: {int(row['size'])} "
                        f"{which} images, none of the other), so its score is undefined - {cause}")


def check_group_count(folds: pd.DataFrame, k: int, cfg: Config) -> None:
    """Refuse groupings that leave fewer groups than folds (e.g. a pHash distance that joins everything)."""
    n_groups = folds["group"].nunique()
    largest = folds["group"].value_counts().iloc[0] / len(folds)
    if n_groups < k or largest > 0.5:
        fix = {"phash": "lower folds.phash_distance", "twins": "raise folds.twin_similarity"}.get(cfg.folds.groups, "")
        fix = f"check the column folds.group_column: {cfg.folds.group_column}" if cfg.folds.group_column else fix
        raise DataError(f"grouping left {n_groups} group(s) for {k} folds, the largest holding {largest:.0%} of the "
                        f"images - {fix}")


def make_ood_folds(cfg: Config, train: pd.DataFrame, project: Project) -> np.ndarray:
    """Out-of-distribution folds: k-means content clusters of backbone embeddings, whole clusters held out together."""
    from sklearn.cluster import KMeans

    emb = embed_config(cfg, train["path"].tolist(), project)
    n_clusters = min(cfg.folds.ood_clusters, len(train) // 2)
    clusters = KMeans(n_clusters=n_clusters, n_init=3, random_state=cfg.folds.seed).fit_predict(emb)
    k = min(cfg.folds.n_splits, n_clusters)
    ood = np.full(len(train), -1)
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=cfg.folds.seed)
    for fold, (_, idx) in enumerate(splitter.split(emb, train["label"], groups=clusters)):
        ood[idx] = fold
    log.info("OOD split: %d content clusters in %d folds (fold sizes %s)", n_clusters, k, np.bincount(ood).tolist())
    return ood


def summarize_folds(folds: pd.DataFrame) -> str:
    """One line per fold: size and AI share."""
    stats = folds.groupby("fold")["label"].agg(["size", "mean"])
    return "; ".join(f"fold {f}: {int(r['size'])} images, {r['mean']:.1%} AI" for f, r in stats.iterrows())


def ensure_folds(cfg: Config, project: Project, train: pd.DataFrame) -> tuple[pd.DataFrame, bool]:
    """(folds, built): the folds file, made and written first if it does not exist; checked against `train`."""
    path = project.folds_file(cfg)
    built = not path.is_file()
    if built:
        folds = make_folds(cfg, train, project)
        write_csv(path, folds)
        log.info("wrote %s (%d rows): %s", path, len(folds), summarize_folds(folds))
    folds = load_folds(path)
    check_folds_match(folds, train, path)
    return folds, built


def load_folds(path: Path) -> pd.DataFrame:
    """Read a folds file (ids as text) and check its columns."""
    if not path.is_file():
        raise DataError(f"{path} not found - run `./run.sh folds` first")
    try:
        folds = pd.read_csv(path, dtype={"id": str, "group": str}, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: unreadable folds file ({type(err).__name__}) - delete it to rebuild the folds") from None
    missing = {"id", "label", "fold"} - set(folds.columns)
    if missing:
        raise DataError(f"{path}: columns {sorted(missing)} missing - delete the file to rebuild the folds")
    return folds


def check_folds_match(folds: pd.DataFrame, train: pd.DataFrame, path: Path) -> None:
    """Refuse a folds file made from another training table (ids or labels changed since)."""
    mine = folds.set_index("id")["label"]
    if set(mine.index) != set(train["id"]):
        raise DataError(f"{path} does not match the training table ({len(folds)} vs {len(train)} ids) - the data "
                        f"changed: delete the folds file to rebuild it (and rerun experiments with --restart)")
    changed = int((mine.loc[train["id"]].to_numpy() != train["label"].to_numpy()).sum())
    if changed:
        raise DataError(f"{path}: {changed} label(s) differ from the training table - labels were corrected since the "
                        f"folds were made: delete the folds file to rebuild it (and rerun experiments with --restart)")


def prepare_folds(cfg: Config, project: Project, train: pd.DataFrame, test: pd.DataFrame) -> pd.DataFrame:
    """The folds file for this config: read it, or build it and then run the shortcut audit and shift check."""
    folds, built = ensure_folds(cfg, project, train)
    if built:
        check_new_folds(cfg, project, train, test, folds)
    else:
        refresh_shift(cfg, project, train, test)  # the shift report measured another test set: measured again
    return folds


def load_tables(cfg: Config, project: Project, split: str = "fold") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Training rows with their fold (the folds file's `split` column) and test rows, both checked."""
    train = load_train_table(cfg.competition, project, cfg.folds.group_column)
    test = load_test_table(cfg.competition, project)
    folds = prepare_folds(cfg, project, train, test)
    path = project.folds_file(cfg)
    if split not in folds.columns:
        raise DataError(f"{path} has no `{split}` column - set `folds.ood_split: cluster` in competition.yaml "
                        f"(a new folds file is built) to run the out-of-distribution split")
    train = train.merge(folds[["id", split]].rename(columns={split: "fold"}), on="id", how="left",
                        validate="one_to_one")
    return train, test


def build_folds(project: Project, overrides: list[str], force: bool = False) -> pd.DataFrame:
    """The folds file for competition.yaml (+ overrides), made (and audited) when missing or force; the CLI's work
    (also competition.notebook's Kit.folds)."""
    cfg = load_config("", overrides, project, check_model=False)
    train = load_train_table(cfg.competition, project, cfg.folds.group_column)
    if force:
        project.folds_file(cfg).unlink(missing_ok=True)
    folds, built = ensure_folds(cfg, project, train)
    test = load_test_table(cfg.competition, project)
    if built:
        check_new_folds(cfg, project, train, test, folds)
    else:
        refresh_shift(cfg, project, train, test)  # the shift report measured another test set: measured again
    log.info("%s: %s", project.folds_file(cfg), summarize_folds(folds))
    return folds


def main(argv: list[str] | None = None, project: Project | None = None) -> int:
    """CLI: write the folds file for competition.yaml (+ overrides), then audit it."""
    parser = cli.parser(__doc__)
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. folds.n_splits=10")
    parser.add_argument("--force", action="store_true", help="rebuild even if the folds file exists")
    args = parser.parse_args(argv)

    def body() -> int:
        nonlocal project
        project = project or Project.from_env()  # inside cli.run: a bad KIT_HOME is one ERROR line
        build_folds(project, args.overrides, args.force)
        return 0

    return cli.run(body)


if __name__ == "__main__":
    sys.exit(main())
