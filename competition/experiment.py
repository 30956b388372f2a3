"""Run one experiment end to end: folds if missing -> every fold -> OOF + TTA test preds -> metrics -> leaderboard.

    python -m competition.experiment exp001 [section.key=value ...] [--restart]

Outputs in experiments/<exp>/: config.yaml (resolved), fold{k}/ (checkpoints, log.csv, oof.csv, test.csv,
result.json), oof.csv (id, fold, target, prob), test.csv (id, prob), metrics.json, and lists of
undecodable images. Finished folds are skipped and an interrupted fold resumes from its last epoch.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from competition.atomic import remove_stale_temps, write_csv, write_json
from competition.augment import build_eval_transform, build_train_transform
from competition.config import EXPERIMENTS_DIR, Config, ConfigError, load_config, resolve_path, save_config, to_dict
from competition.dataset import BAD, ImageCache, ImageDataset, decode_image, BadImageError, open_cache
from competition.folds import ensure_folds, folds_file
from competition.leaderboard import write_leaderboard
from competition.metrics import best_threshold, score, score_all
from competition.model import pick_device
from competition.tables import DataError, load_test_table, load_train_table
from competition.train import FoldInputs, load_detector, predict_fold, train_fold

log = logging.getLogger(__name__)


def experiment_dir(name: str) -> Path:
    """Output folder of an experiment."""
    return EXPERIMENTS_DIR / name


def load_tables(cfg: Config, split: str = "fold") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Training rows with their fold (the folds file's `split` column) and test rows, both checked."""
    train = load_train_table(cfg.competition)
    folds = ensure_folds(cfg)
    if set(folds["id"]) != set(train["id"]):
        raise DataError(
            f"{folds_file(cfg)} does not match the training table ({len(folds)} vs {len(train)} ids) - "
            f"the data changed: delete the folds file and rerun to rebuild it"
        )
    if split not in folds.columns:
        raise DataError(f"{folds_file(cfg)} has no `{split}` column - set `folds.ood_split: cluster` in "
                        f"competition.yaml (a new folds file is built) to run the out-of-distribution split")
    train = train.merge(folds[["id", split]].rename(columns={split: "fold"}), on="id", how="left",
                        validate="one_to_one")
    return train, load_test_table(cfg.competition)


def check_config_unchanged(cfg: Config, out: Path) -> None:
    """Refuse to resume outputs made with a different config (train.folds may differ)."""
    saved_file = out / "config.yaml"
    if not saved_file.is_file():
        return
    defaults = to_dict(Config())
    saved = yaml.safe_load(saved_file.read_text())
    saved = {s: ({**defaults[s], **v} if isinstance(v, dict) and isinstance(defaults.get(s), dict) else v)
             for s, v in saved.items()}  # keys added to the kit later read as their defaults
    now = to_dict(cfg)
    for conf in (saved, now):
        conf.get("train", {}).pop("folds", None)
    if saved != now:
        diff = [f"{s}.{k}: {saved.get(s, {}).get(k)!r} -> {v!r}" for s, sec in now.items() if isinstance(sec, dict)
                for k, v in sec.items() if saved.get(s, {}).get(k) != v]
        raise ConfigError(f"{saved_file}: config changed since these outputs were made ({'; '.join(diff[:4])}); "
                          f"rerun with --restart to start over, or use a new experiment name")


def scan_bad_images(paths: list[str], cache: ImageCache | None) -> dict[int, str]:
    """Decode every image once (or read the cache's verdict): row index -> reason, for on_bad_image=fail."""
    if cache is not None:
        return {int(i): cache.reasons.get(int(i), "undecodable") for i in np.flatnonzero(cache.states == BAD)}
    bad = {}
    for i, path in enumerate(paths):
        try:
            decode_image(path)
        except BadImageError as err:
            bad[i] = str(err)
    return bad


def fold_done(fold_dir: Path) -> bool:
    """A fold is finished when its result, OOF and test predictions are all written."""
    return all((fold_dir / f).is_file() for f in ("result.json", "oof.csv", "test.csv"))


def run_fold(cfg: Config, fold: int, train: pd.DataFrame, test: pd.DataFrame, caches: dict, out: Path,
             device: torch.device) -> None:
    """Train one fold, then write its TTA predictions for its validation rows and the test set."""
    fold_dir = out / f"fold{fold}"
    t0 = time.perf_counter()
    is_val = (train["fold"] == fold).to_numpy()
    trn, val = train[~is_val], train[is_val]
    prior = float(trn["label"].mean())
    idx_trn, idx_val = np.flatnonzero(~is_val), np.flatnonzero(is_val)
    cache = caches["train"]
    eval_tf = build_eval_transform(cfg.data)
    enc = {"encoding": cfg.data.normalize_encoding}
    inputs = FoldInputs(
        fold=fold,
        train=ImageDataset(trn["path"].tolist(), trn["label"].to_numpy(), build_train_transform(cfg.data),
                           cache and cache.subset(idx_trn), **enc),
        val=ImageDataset(val["path"].tolist(), val["label"].to_numpy(), eval_tf, cache and cache.subset(idx_val), **enc),
        val_target=val["label"].to_numpy(),
        prior=prior,
    )
    best = train_fold(cfg, inputs, fold_dir, device)
    model = load_detector(best, cfg, device)
    crops = {"crops": cfg.tta.crops, "crop_size": cfg.data.img_size} if cfg.data.augment != "resize" else {}
    crops.update(enc)
    val_ds = ImageDataset(val["path"].tolist(), val["label"].to_numpy(), eval_tf, cache and cache.subset(idx_val), **crops)
    oof = predict_fold(model, val_ds, cfg, device, prior, desc=f"fold {fold} OOF TTA")
    test_ds = ImageDataset(test["path"].tolist(), None, eval_tf, caches["test"], **crops)
    tst = predict_fold(model, test_ds, cfg, device, prior, desc=f"fold {fold} test TTA")
    write_csv(fold_dir / "oof.csv", pd.DataFrame({
        "id": val["id"].values, "fold": fold, "target": val["label"].values, "prob": oof.prob,
        "prob_identity": oof.prob_identity, "error": [oof.errors.get(i, "") for i in range(len(val))]}))
    write_csv(fold_dir / "test.csv", pd.DataFrame({
        "id": test["id"].values, "prob": tst.prob, "error": [tst.errors.get(i, "") for i in range(len(test))]}))
    history = pd.read_csv(fold_dir / "log.csv")
    ckpt = torch.load(best, map_location="cpu", weights_only=True)
    target = val["label"].to_numpy()
    write_json(fold_dir / "result.json", {
        "fold": fold, "best_epoch": ckpt["epoch"], "epochs_run": len(history),
        "score": score(cfg.competition.metric, target, oof.prob),
        "score_identity": score(cfg.competition.metric, target, oof.prob_identity),
        **{k: v for k, v in score_all(target, oof.prob).items()},
        "train_s": float(history["epoch_s"].sum()), "predict_s": time.perf_counter() - t0,
    })
    log.info("fold %d done: OOF %s %.5f (identity %.5f)", fold, cfg.competition.metric,
             score(cfg.competition.metric, target, oof.prob), score(cfg.competition.metric, target, oof.prob_identity))


def assemble(cfg: Config, out: Path, folds_run: list[int], n_folds: int, test: pd.DataFrame, wall_s: float) -> dict:
    """Gather fold outputs into oof.csv, test.csv (fold mean), bad-image lists and metrics.json."""
    metric = cfg.competition.metric
    oof = pd.concat([pd.read_csv(out / f"fold{k}" / "oof.csv", dtype={"id": str}, keep_default_na=False)
                     for k in folds_run], ignore_index=True)
    fold_tests = [pd.read_csv(out / f"fold{k}" / "test.csv", dtype={"id": str}, keep_default_na=False)
                  for k in folds_run]
    results = [json.loads((out / f"fold{k}" / "result.json").read_text()) for k in folds_run]
    for frame in fold_tests:
        assert (frame["id"].values == test["id"].values).all(), "fold test predictions are out of order"
    test_prob = np.mean([f["prob"].to_numpy(dtype=float) for f in fold_tests], axis=0)
    write_csv(out / "oof.csv", oof[["id", "fold", "target", "prob"]])
    write_csv(out / "test.csv", pd.DataFrame({"id": test["id"].values, "prob": test_prob}))
    bad_train = oof.loc[oof["error"] != "", ["id", "error"]]
    bad_test = fold_tests[0].loc[fold_tests[0]["error"] != "", ["id", "error"]]
    write_csv(out / "bad_train_images.csv", bad_train)
    write_csv(out / "bad_test_images.csv", bad_test)
    target, prob = oof["target"].to_numpy(), oof["prob"].to_numpy(dtype=float)
    fold_scores = [r["score"] for r in results]
    tta_id = score(metric, target, oof["prob_identity"].to_numpy(dtype=float))
    tta = score(metric, target, prob)
    metrics = {
        "experiment": cfg.name, "description": cfg.description, "metric": metric,
        "complete": len(folds_run) == n_folds, "folds_run": folds_run, "n_oof": len(oof),
        "oof_score": tta, "fold_mean": float(np.mean(fold_scores)), "fold_std": float(np.std(fold_scores)),
        "oof": score_all(target, prob), "folds": results,
        "tta": {"views": cfg.tta.views, "crops": cfg.tta.crops, "oof_identity": tta_id, "oof_tta": tta,
                "gain": (tta - tta_id) if metric != "logloss" else (tta_id - tta)},
        "threshold": best_threshold(metric, target, prob),
        "model": cfg.model.name, "img_size": cfg.data.img_size, "input_upscale": cfg.model.input_upscale,
        "augment": cfg.data.augment, "epochs": cfg.train.epochs,
        "epochs_run": [r["epochs_run"] for r in results],
        "bad_train_images": len(bad_train), "bad_test_images": len(bad_test),
        "train_s": float(sum(r["train_s"] for r in results)), "wall_s": wall_s,
    }
    write_json(out / "metrics.json", metrics)
    for split, bad in (("training", bad_train), ("test", bad_test)):
        for _, row in bad.iterrows():
            log.warning("bad %s image %s: %s", split, row["id"], row["error"])
    if len(bad_train):
        log.warning("%d training image(s) skipped (weight 0, OOF = prior); listed in %s", len(bad_train),
                    out / "bad_train_images.csv")
    if len(bad_test):
        log.warning("!!! %d test image(s) could not be decoded and got the training prior as prediction; "
                    "listed in %s", len(bad_test), out / "bad_test_images.csv")
    return metrics


def run_experiment(cfg: Config, restart: bool = False, ood: bool = False) -> dict:
    """Run every configured fold of an experiment (resuming), then assemble and rank it.

    ood=True trains on the folds file's `ood_fold` split (whole content clusters held out) into <exp>/ood/.
    """
    out = experiment_dir(cfg.name) / "ood" if ood else experiment_dir(cfg.name)
    if restart and out.exists():
        shutil.rmtree(out)
    check_config_unchanged(cfg, out)
    out.mkdir(parents=True, exist_ok=True)
    if stale := remove_stale_temps(out):
        log.info("removed %d temp file(s) left by an interrupted run", stale)
    save_config(cfg, out / "config.yaml")
    wall_file = out / "wall_s.json"
    wall_before = json.loads(wall_file.read_text())["wall_s"] if wall_file.is_file() else 0.0
    t0 = time.perf_counter()
    torch.set_num_threads(cfg.train.threads or torch.get_num_threads())
    device = pick_device(cfg.train.device)
    train, test = load_tables(cfg, "ood_fold" if ood else "fold")
    n_folds = int(train["fold"].max()) + 1 if ood else cfg.folds.n_splits
    cache_dir = resolve_path(cfg.data.cache_dir)
    caches = {"train": open_cache(train["path"].tolist(), cfg.data.cache, cache_dir),
              "test": open_cache(test["path"].tolist(), cfg.data.cache, cache_dir)}
    if cfg.data.on_bad_image == "fail":
        bad = scan_bad_images(train["path"].tolist(), caches["train"])
        if bad:
            listing = "; ".join(f"{train['id'].iloc[i]}: {r}" for i, r in list(bad.items())[:10])
            raise DataError(f"{len(bad)} training image(s) cannot be decoded ({listing}) - fix or remove them, "
                            f"or set data.on_bad_image=skip")
    folds_run = list(cfg.train.folds) or list(range(n_folds))
    log.info("%s: %s on %s, folds %s, %d train / %d test images", cfg.name, cfg.model.name, device, folds_run,
             len(train), len(test))
    for fold in folds_run:
        if fold_done(out / f"fold{fold}"):
            log.info("fold %d already done, skipping", fold)
            continue
        run_fold(cfg, fold, train, test, caches, out, device)
        write_json(wall_file, {"wall_s": wall_before + time.perf_counter() - t0})
    wall = wall_before + time.perf_counter() - t0
    write_json(wall_file, {"wall_s": wall})
    metrics = assemble(cfg, out, folds_run, n_folds, test, wall)
    write_leaderboard()
    if not ood:
        try:
            from competition.report import write_report

            write_report(cfg.name)
        except Exception as err:  # noqa: BLE001 - a plotting failure must not fail a finished run
            log.warning("report not written: %s: %s", type(err).__name__, err)
    log.info("%s: OOF %s %.5f (folds %.5f +- %.5f), TTA gain %+.5f, %.1f min", cfg.name, metrics["metric"],
             metrics["oof_score"], metrics["fold_mean"], metrics["fold_std"], metrics["tta"]["gain"], wall / 60)
    return metrics


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", help="experiment name (experiments/<name>.yaml) or a YAML path")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. train.epochs=1")
    parser.add_argument("--restart", action="store_true", help="delete this experiment's outputs and start over")
    parser.add_argument("--ood", action="store_true",
                        help="train on the out-of-distribution split (folds.ood_split: cluster) into <exp>/ood/")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    try:
        cfg = load_config(args.experiment, args.overrides)
        run_experiment(cfg, restart=args.restart, ood=args.ood)
    except (ConfigError, DataError) as err:
        log.error("%s", err)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
