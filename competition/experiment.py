"""Run one experiment end to end: folds if missing -> every fold -> OOF + TTA test preds -> metrics -> leaderboard.

    python -m competition.experiment exp001 [section.key=value ...] [--restart] [--ood]

Outputs in experiments/<exp>/: config.yaml (resolved), fold{k}/ (checkpoints, log.csv, oof.csv, test.csv,
result.json), oof.csv (id, fold, target, prob), test.csv (id, prob), metrics.json, and lists of
undecodable images. Finished folds are skipped and an interrupted fold resumes from its last epoch.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import numpy as np
import pandas as pd
import torch
import yaml
from torch.utils.data import Dataset

from competition import cli
from competition.atomic import remove_stale_temps, write_csv, write_json
from competition.augment import build_eval_transform, build_train_transform
from competition.crop_cache import EvalCrops, TrainWindows, wants_crop_cache
from competition.config import RUNTIME_KEYS, Config, ConfigError, is_override, load_config, save_config, to_dict
from competition.dataset import BAD, ImageCache, ImageDataset, BadImageError, decode_image, open_cache
from competition.distributed import SINGLE, Dist, rank_device, setup, shutdown
from competition.folds import ensure_folds
from competition.inference import eval_dataset, predict_dataset
from competition.leaderboard import write_leaderboard
from competition.metrics import (THRESHOLD_METRICS, best_threshold, positive_rates, score, score_all, score_note,
                                 warn_positive_rates)
from competition.model import load_detector, pick_device
from competition.project import Project, inside
from competition.pseudo import join, log_selection, pseudo_file, select_pseudo, teacher_predictions
from competition.checks import check_new_folds
from competition.tables import DataError, load_test_table, load_train_table
from competition.train import FoldInputs, epoch_seed, select_metric, train_fold

log = logging.getLogger(__name__)
T = TypeVar("T")


def prepare_folds(cfg: Config, project: Project, train: pd.DataFrame, test: pd.DataFrame) -> pd.DataFrame:
    """The folds file for this config: read it, or build it and then run the shortcut audit and shift check."""
    folds, built = ensure_folds(cfg, project, train)
    if built:
        check_new_folds(cfg, project, train, test, folds)
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


def check_config_unchanged(cfg: Config, out: Path) -> None:
    """Refuse to resume outputs made with a different config; RUNTIME_KEYS may differ."""
    saved_file = out / "config.yaml"
    if not saved_file.is_file() or not any(out.glob("fold*/*.pt")):
        return  # nothing trained yet: a config fixed after a failed start simply replaces the saved one
    defaults = to_dict(Config())
    try:
        saved = yaml.safe_load(saved_file.read_text()) or {}
    except yaml.YAMLError:
        saved = {}
    saved = {s: ({**defaults[s], **v} if isinstance(v, dict) and isinstance(defaults.get(s), dict) else v)
             for s, v in saved.items()}  # keys added to the kit later read as their defaults
    now = to_dict(cfg)
    for conf in (saved, now):
        for section, key in RUNTIME_KEYS:
            conf.get(section, {}).pop(key, None)
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


def inputs_fingerprint(train: pd.DataFrame, test: pd.DataFrame) -> dict:
    """Hashes of what changes results besides the config: training ids, labels and folds; test ids in order."""
    digest = lambda frame: hashlib.sha1(frame.to_csv(index=False).encode()).hexdigest()[:16]  # noqa: E731
    return {"train": digest(train[["id", "label", "fold"]]), "test": digest(test[["id"]]),
            "n_train": len(train), "n_test": len(test)}


def check_inputs_unchanged(out: Path, train: pd.DataFrame, test: pd.DataFrame) -> None:
    """Refuse to resume when train.csv, the folds or test.csv changed since the outputs were made; record them."""
    now, file = inputs_fingerprint(train, test), out / "inputs.json"
    if file.is_file():
        try:
            saved = json.loads(file.read_text())
        except ValueError:
            saved = {}
        changed = [k for k in ("train", "test") if saved.get(k) != now[k]]
        if changed:
            what = " and ".join({"train": "training rows/labels/folds", "test": "test rows"}[k] for k in changed)
            raise DataError(f"{out}: the {what} changed since these outputs were made ({saved.get('n_train')} -> "
                            f"{now['n_train']} train, {saved.get('n_test')} -> {now['n_test']} test rows); rerun "
                            f"with --restart, or use a new experiment name")
    write_json(file, now)


@contextmanager
def experiment_lock(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on an experiment folder for a whole run; a second run is refused with the holder."""
    out.mkdir(parents=True, exist_ok=True)
    lock_file = out / ".lock"
    with open(lock_file, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise ConfigError(f"{out} is in use by {holder}; wait for that run to end (or stop it), then rerun") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {os.uname().nodename} since {time.strftime('%Y-%m-%d %H:%M:%S')}")
        fh.flush()
        try:
            yield
        finally:
            fh.truncate(0)
            fcntl.flock(fh, fcntl.LOCK_UN)


def fold_done(fold_dir: Path) -> bool:
    """A fold is finished when its result, OOF and test predictions are all written."""
    return all((fold_dir / f).is_file() for f in ("result.json", "oof.csv", "test.csv"))


def fold_inputs(cfg: Config, fold: int, train: pd.DataFrame, cache: ImageCache | None,
                crop_dir: Path | None = None, extra: Dataset | None = None) -> FoldInputs:
    """The training and validation datasets of one fold (train preset / identity eval geometry); with crop_dir,
    training reads native windows and validation stored centre crops from competition.crop_cache there; `extra`
    (pseudo-labelled test rows) is appended to the training rows."""
    is_val = (train["fold"] == fold).to_numpy()
    trn, val = train[~is_val], train[is_val]
    sub = (lambda rows: cache.subset(rows)) if cache is not None else (lambda rows: None)
    trn_paths, val_paths = trn["path"].tolist(), val["path"].tolist()
    windows = val_crops = None
    if crop_dir is not None:
        windows = TrainWindows(trn_paths, cfg.data.img_size, cfg.data.crop_cache_epochs,
                               epoch_seed(cfg.train.seed, fold, -2), cfg.data.normalize_encoding, crop_dir)
        val_crops = EvalCrops(val_paths, build_eval_transform(cfg.data), cfg.data.normalize_encoding, crop_dir)
    train_ds = ImageDataset(trn_paths, trn["label"].to_numpy(), build_train_transform(cfg.data),
                            sub(np.flatnonzero(~is_val)), encoding=cfg.data.normalize_encoding, crop_store=windows)
    val_ds = eval_dataset(cfg, val_paths, val["label"].to_numpy(), sub(np.flatnonzero(is_val)), tta=False,
                          crop_store=val_crops)
    return FoldInputs(fold=fold, train=join(train_ds, extra), val=val_ds, val_target=val["label"].to_numpy(),
                      prior=float(trn["label"].mean()))


def run_fold(cfg: Config, project: Project, fold: int, run: "Run", out: Path) -> None:
    """Train one fold, then write its TTA predictions for its validation rows and the test set (rank 0 writes)."""
    fold_dir, t0 = out / f"fold{fold}", time.perf_counter()
    train, test, device, dist = run.train, run.test, run.device, run.dist
    extra = pseudo_rows(cfg, project, fold, run, fold_dir) if cfg.pseudo.teacher else None
    inputs = main_first(dist, lambda: fold_inputs(cfg, fold, train, run.caches["train"], run.crop_dir, extra))  # rank 0
    # creates the crop stores (if any) before the other ranks open them
    model = load_detector(train_fold(cfg, inputs, fold_dir, device, project, dist), device, project)
    val = train[(train["fold"] == fold).to_numpy()]
    oof = predict_dataset(model, eval_dataset(cfg, inputs.val.paths, cache=inputs.val.cache), cfg, device,
                          inputs.prior, desc=f"fold {fold} OOF TTA", dist=dist)
    tst = predict_dataset(model, eval_dataset(cfg, test["path"].tolist(), cache=run.caches["test"]), cfg, device,
                          inputs.prior, desc=f"fold {fold} test TTA", dist=dist)
    if dist.is_main:
        write_fold_outputs(cfg, fold_dir, val, test, oof, tst, time.perf_counter() - t0)
    dist.barrier()


def pseudo_rows(cfg: Config, project: Project, fold: int, run: "Run", fold_dir: Path) -> ImageDataset:
    """Fold `fold`'s pseudo-labelled test rows (competition.pseudo: the teacher's fold-`fold` model only), recorded
    in fold{k}/pseudo.csv, as a training dataset with the train transform."""
    teacher = teacher_predictions(cfg, project, fold, run.test, inputs_fingerprint(run.train, run.test))
    chosen = select_pseudo(cfg, teacher, run.test)
    log_selection(fold, chosen, len(run.test), cfg.pseudo.teacher)
    if run.dist.is_main:
        fold_dir.mkdir(parents=True, exist_ok=True)
        write_csv(pseudo_file(fold_dir), chosen[["id", "teacher_prob", "label"]])
    rows = np.flatnonzero(run.test["id"].isin(chosen["id"]).to_numpy())
    cache = run.caches["test"].subset(rows) if run.caches["test"] is not None else None
    return ImageDataset(chosen["path"].tolist(), chosen["label"].to_numpy(), build_train_transform(cfg.data), cache,
                        encoding=cfg.data.normalize_encoding)


def write_fold_outputs(cfg: Config, fold_dir: Path, val: pd.DataFrame, test: pd.DataFrame, oof, tst,
                       seconds: float) -> None:
    """fold{k}/oof.csv, test.csv (every row, with decode errors) and result.json."""
    fold = int(fold_dir.name[4:])
    write_csv(fold_dir / "oof.csv", pd.DataFrame({
        "id": val["id"].values, "fold": fold, "target": val["label"].values, "prob": oof.prob,
        "prob_identity": oof.prob_identity, "error": [oof.errors.get(i, "") for i in range(len(val))]}))
    write_csv(fold_dir / "test.csv", pd.DataFrame({
        "id": test["id"].values, "prob": tst.prob, "error": [tst.errors.get(i, "") for i in range(len(test))]}))
    write_fold_result(cfg, fold_dir, val["label"].to_numpy(), oof, seconds)


def write_fold_result(cfg: Config, fold_dir: Path, target: np.ndarray, oof, seconds: float) -> None:
    """fold{k}/result.json: scores (TTA and identity view), best epoch and timings."""
    metric = cfg.competition.metric
    history = pd.read_csv(fold_dir / "log.csv")
    best_epoch = torch.load(fold_dir / "best.pt", map_location="cpu", weights_only=True)["epoch"]
    result = {"fold": int(fold_dir.name[4:]), "best_epoch": best_epoch, "epochs_run": len(history),
              "score": score(metric, target, oof.prob), "score_identity": score(metric, target, oof.prob_identity),
              **score_all(target, oof.prob), "train_s": float(history["epoch_s"].sum()), "predict_s": seconds}
    if pseudo_file(fold_dir).is_file():
        result["pseudo_rows"] = len(pd.read_csv(pseudo_file(fold_dir)))
    write_json(fold_dir / "result.json", result)
    log.info("%s done: OOF %s %.5f (identity %.5f)%s", fold_dir.name, metric, result["score"], result["score_identity"],
             " at threshold 0.5; the experiment's threshold is tuned on all folds' OOF" if metric in THRESHOLD_METRICS else "")


def read_folds(out: Path, folds_run: list[int], test: pd.DataFrame) -> tuple[pd.DataFrame, list, list]:
    """Every finished fold's OOF rows, test predictions (checked in test order) and result."""
    read = lambda f: pd.read_csv(f, dtype={"id": str}, keep_default_na=False)  # noqa: E731
    oof = pd.concat([read(out / f"fold{k}" / "oof.csv") for k in folds_run], ignore_index=True)
    tests = [read(out / f"fold{k}" / "test.csv") for k in folds_run]
    results = [json.loads((out / f"fold{k}" / "result.json").read_text()) for k in folds_run]
    for k, frame in zip(folds_run, tests):
        if len(frame) != len(test) or not (frame["id"].values == test["id"].values).all():
            raise DataError(f"{out / f'fold{k}' / 'test.csv'} does not list the current test rows in order - the test "
                            f"table changed since this fold ran; rerun with --restart")
    return oof, tests, results


def assemble(cfg: Config, out: Path, folds_run: list[int], n_folds: int, test: pd.DataFrame, wall_s: float) -> dict:
    """Gather fold outputs into oof.csv, test.csv (fold mean), bad-image lists and metrics.json."""
    oof, fold_tests, results = read_folds(out, folds_run, test)
    test_prob = np.mean([f["prob"].to_numpy(dtype=float) for f in fold_tests], axis=0)
    write_csv(out / "oof.csv", oof[["id", "fold", "target", "prob"]])
    write_csv(out / "test.csv", pd.DataFrame({"id": test["id"].values, "prob": test_prob}))
    bad = {"train": oof.loc[oof["error"] != "", ["id", "error"]],
           "test": fold_tests[0].loc[fold_tests[0]["error"] != "", ["id", "error"]]}
    write_csv(out / "bad_train_images.csv", bad["train"])
    write_csv(out / "bad_test_images.csv", bad["test"])
    metrics = summarize(cfg, oof, results, folds_run, n_folds, wall_s, test_prob)
    metrics.update(bad_train_images=len(bad["train"]), bad_test_images=len(bad["test"]))
    write_json(out / "metrics.json", metrics)
    if cfg.competition.metric in THRESHOLD_METRICS:
        warn_positive_rates(metrics["positive_rate"], metrics["threshold"], cfg.name)
    warn_bad_images(bad, out)
    return metrics


def summarize(cfg: Config, oof: pd.DataFrame, results: list[dict], folds_run: list[int], n_folds: int,
              wall_s: float, test_prob: np.ndarray) -> dict:
    """metrics.json's content: OOF score at the file's threshold, fold spread, TTA gain, positive rates, timings.

    For f1/accuracy every score is at the one threshold tuned on all OOF rows: the threshold a submission
    of this experiment uses. Fold mean/std are at that threshold too."""
    metric = cfg.competition.metric
    target, prob = oof["target"].to_numpy(), oof["prob"].to_numpy(dtype=float)
    identity = oof["prob_identity"].to_numpy(dtype=float)
    threshold = best_threshold(metric, target, prob)
    fold = oof["fold"].to_numpy()
    fold_scores = [score(metric, target[fold == k], prob[fold == k], threshold) for k in folds_run]
    tta_id, tta = score(metric, target, identity, best_threshold(metric, target, identity)), score(metric, target, prob, threshold)
    return {
        "experiment": cfg.name, "description": cfg.description, "metric": metric,
        "complete": sorted(folds_run) == list(range(n_folds)), "folds_run": folds_run, "n_oof": len(oof),
        "oof_score": tta, "fold_mean": float(np.mean(fold_scores)), "fold_std": float(np.std(fold_scores)),
        "score_note": score_note(metric, threshold), "oof": score_all(target, prob, threshold), "folds": results,
        "tta": {"views": cfg.tta.views, "crops": cfg.tta.crops, "tiles": cfg.tta.tiles, "oof_identity": tta_id, "oof_tta": tta,
                "gain": (tta - tta_id) if metric != "logloss" else (tta_id - tta)},
        "threshold": threshold, "positive_rate": positive_rates(prob, test_prob, threshold),
        "model": cfg.model.name, "img_size": cfg.data.img_size, "input_upscale": cfg.model.input_upscale,
        "augment": cfg.data.augment, "epochs": cfg.train.epochs, "epochs_run": [r["epochs_run"] for r in results],
        "select_by": select_metric(cfg), "train_s": float(sum(r["train_s"] for r in results)), "wall_s": wall_s,
    }


def warn_bad_images(bad: dict[str, pd.DataFrame], out: Path) -> None:
    """Log every undecodable image once, then a loud summary per split."""
    for split, frame in bad.items():
        for row in frame.itertuples():
            log.warning("bad %s image %s: %s", "training" if split == "train" else split, row.id, row.error)
    if len(bad["train"]):
        log.warning("%d training image(s) skipped (weight 0, OOF = prior); listed in %s", len(bad["train"]),
                    out / "bad_train_images.csv")
    if len(bad["test"]):
        log.warning("!!! %d test image(s) could not be decoded and got the training prior as prediction; "
                    "listed in %s", len(bad["test"]), out / "bad_test_images.csv")


def output_dir(cfg: Config, project: Project, ood: bool) -> Path:
    """experiments/<exp>/ (or its ood/ sub-folder), proved to lie inside experiments/."""
    out = project.experiment_dir(cfg.name)
    return inside(out / "ood", out) if ood else out


def open_outputs(cfg: Config, project: Project, out: Path, restart: bool) -> Path:
    """The experiment's output folder (locked by the caller), emptied on restart, checked, config saved."""
    if restart:
        for child in out.iterdir():
            if child.name != ".lock":
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    check_config_unchanged(cfg, out)
    if stale := remove_stale_temps(out):
        log.info("removed %d temp file(s) left by an interrupted run", stale)
    save_config(cfg, out / "config.yaml")
    return out


def check_decodable(cfg: Config, train: pd.DataFrame, cache: ImageCache | None) -> None:
    """With data.on_bad_image=fail: stop before training when any training image cannot be decoded."""
    if cfg.data.on_bad_image != "fail":
        return
    bad = scan_bad_images(train["path"].tolist(), cache)
    if bad:
        listing = "; ".join(f"{train['id'].iloc[i]}: {r}" for i, r in list(bad.items())[:10])
        raise DataError(f"{len(bad)} training image(s) cannot be decoded ({listing}) - fix or remove them, "
                        f"or set data.on_bad_image=skip")


@dataclass
class Run:
    """What every fold of a run shares: the tables, the image caches, the fold count, the device."""

    train: pd.DataFrame
    test: pd.DataFrame
    caches: dict
    n_folds: int
    device: torch.device
    dist: Dist = SINGLE  # torchrun ranks training each fold together (rank 0 writes)
    crop_dir: Path | None = None  # where competition.crop_cache keeps native windows (None: large-image cache off)


def on_main(dist: Dist, step: Callable[[], object]) -> None:
    """A step that writes shared files: rank 0 runs it while the other ranks wait."""
    if dist.is_main:
        step()
    dist.barrier()


def main_first(dist: Dist, step: Callable[[], T]) -> T:
    """Run a step that may write shared files on rank 0 first, then on the other ranks (which then only read)."""
    if dist.is_main:
        result = step()
        dist.barrier()
        return result
    dist.barrier()
    return step()


def prepare_run(cfg: Config, project: Project, out: Path, ood: bool, device: str | None, dist: Dist = SINGLE) -> Run:
    """Tables (folds built and audited once), the input fingerprint check, caches and the device."""
    torch.set_num_threads(cfg.train.threads or torch.get_num_threads())
    train, test = main_first(dist, lambda: load_tables(cfg, project, "ood_fold" if ood else "fold"))
    on_main(dist, lambda: check_inputs_unchanged(out, train, test))
    cache_dir = project.cache_dir(cfg)
    caches = main_first(dist, lambda: {split: open_cache(frame["path"].tolist(), cfg.data.cache, cache_dir)
                                       for split, frame in (("train", train), ("test", test))})
    check_decodable(cfg, train, caches["train"])
    n_folds = int(train["fold"].max()) + 1 if ood else cfg.folds.n_splits
    windows = wants_crop_cache(cfg.data.crop_cache, cfg.data.augment, cfg.data.img_size, train["path"].tolist())
    if windows:
        log.info("crop cache on (data.crop_cache=%s): each training image is decoded once per %d epochs",
                 cfg.data.crop_cache, cfg.data.crop_cache_epochs)
    run = Run(train, test, caches, n_folds, pick_device(rank_device(dist, device or cfg.train.device)), dist,
              cache_dir / "crops" if windows else None)
    if run.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed crop sizes: pick the fastest convolution kernels once
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # fp32 parts on tensor cores
    return run


def train_folds(cfg: Config, project: Project, out: Path, run: Run, folds: list[int]) -> None:
    """Train the folds not done yet, each under its own lock (several processes may share one experiment)."""
    log.info("%s: %s on %s, folds %s, %d train / %d test images", cfg.name, cfg.model.name, run.device, folds,
             len(run.train), len(run.test))
    dist = run.dist
    for fold in folds:
        with experiment_lock(out / f"fold{fold}") if dist.is_main else nullcontext():
            if dist.broadcast(fold_done(out / f"fold{fold}")):
                log.info("fold %d already done, skipping", fold)
                continue
            if dist.is_main:
                remove_stale_temps(out / f"fold{fold}")
            run_fold(cfg, project, fold, run, out)


def finish(cfg: Config, project: Project, out: Path, run: Run, folds: list[int], ood: bool, wall: float) -> dict:
    """Assemble every fold into the experiment's outputs (refused while a fold is missing), leaderboard, report."""
    missing = [k for k in folds if not fold_done(out / f"fold{k}")]
    if missing:
        raise DataError(f"{out}: fold(s) {missing} not finished - run them (e.g. `./run.sh {cfg.name} --folds "
                        f"{','.join(map(str, missing))} --no-assemble`), then `./run.sh assemble {cfg.name}`")
    metrics = assemble(cfg, out, folds, run.n_folds, run.test, wall)
    write_leaderboard(project)
    if not ood:
        _write_report(project, cfg.name)
    log.info("%s: assembled %d fold(s): OOF %s %.5f (folds %.5f +- %.5f), TTA gain %+.5f, %.1f min", cfg.name,
             len(folds), metrics["score_note"], metrics["oof_score"], metrics["fold_mean"], metrics["fold_std"],
             metrics["tta"]["gain"], wall / 60)
    return metrics


def run_experiment(cfg: Config, project: Project, restart: bool = False, ood: bool = False,
                   folds: list[int] | None = None, mode: str = "all", device: str | None = None,
                   workers: Callable[[list[int]], None] | None = None, dist: Dist = SINGLE) -> dict | None:
    """Run an experiment's folds (resuming) and assemble it once.

    mode: all (train, then assemble) | train (only these folds, no assembly: one of several processes or
    machines) | assemble (refused while a fold is missing). `workers`, when given, trains the folds instead
    of this process (one process per device). ood=True uses the folds file's `ood_fold` split, into <exp>/ood/.
    Under torchrun (`dist`), every rank trains each fold data-parallel; rank 0 locks, writes and assembles.
    """
    out = output_dir(cfg, project, ood)
    if mode == "train":
        out.mkdir(parents=True, exist_ok=True)
        on_main(dist, lambda: (check_config_unchanged(cfg, out), save_config(cfg, out / "config.yaml")))
        run = prepare_run(cfg, project, out, ood, device, dist)
        train_folds(cfg, project, out, run, folds or list(cfg.train.folds) or list(range(run.n_folds)))
        return None
    with experiment_lock(out) if dist.is_main else nullcontext():
        on_main(dist, lambda: open_outputs(cfg, project, out, restart and mode == "all"))
        t0, wall_file = time.perf_counter(), out / "wall_s.json"
        wall_before = json.loads(wall_file.read_text())["wall_s"] if wall_file.is_file() else 0.0
        run = prepare_run(cfg, project, out, ood, device, dist)
        folds = folds or list(cfg.train.folds) or list(range(run.n_folds))
        if mode == "all":
            (workers or (lambda ks: train_folds(cfg, project, out, run, ks)))(folds)
        if not dist.is_main:
            return None
        wall = wall_before + time.perf_counter() - t0
        write_json(wall_file, {"wall_s": wall})
        return finish(cfg, project, out, run, folds, ood, wall)


def device_plan(devices: str, folds: list[int]) -> list[tuple[str, list[int]]]:
    """`0,1` or `cuda:0,cuda:1` or `cpu,cpu` -> [(device, folds)], one entry per listed device (a device may
    be listed twice), folds dealt round-robin; devices left without a fold are dropped."""
    names = [f"cuda:{d}" if d.isdigit() else d for d in (d.strip() for d in devices.split(",")) if d]
    plan = [(name, folds[i::len(names)]) for i, name in enumerate(names)]
    return [(name, ks) for name, ks in plan if ks]


def launch_workers(project: Project, argv: list[str], devices: str) -> Callable[[list[int]], None]:
    """A `workers` callable: one `experiment ... --folds K --no-assemble --device D` process per device, waited for."""
    def start(folds: list[int]) -> None:
        env = {**os.environ, "KIT_HOME": str(project.root)}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parent.parent),
                                                          env.get("PYTHONPATH", "")]))
        procs = []
        for device, ks in device_plan(devices, folds):
            cmd = [sys.executable, "-m", "competition.experiment", *argv, "--folds", ",".join(map(str, ks)),
                   "--no-assemble", "--device", device]
            log.info("worker on %s: folds %s", device, ks)
            procs.append((device, ks, subprocess.Popen(cmd, env=env)))
        failed = [(d, ks, p.wait()) for d, ks, p in procs]
        failed = [f"{d} (folds {ks}, exit {rc})" for d, ks, rc in failed if rc != 0]
        if failed:
            raise DataError(f"worker(s) failed: {'; '.join(failed)} - see their messages above; rerun to resume")
    return start


def _write_report(project: Project, name: str) -> None:
    """The experiment's report; a plotting failure is logged, never fails a finished run."""
    from competition.report import write_report  # matplotlib only when a report is written

    try:
        write_report(project, name)
    except Exception as err:  # noqa: BLE001 - a finished run must not fail on a figure
        log.warning("report not written: %s: %s", type(err).__name__, err)


def main(argv: list[str] | None = None, project: Project | None = None) -> int:
    """CLI entry point."""
    parser = cli.parser(__doc__)
    parser.add_argument("experiment", help="experiment name (experiments/<name>.yaml) or a YAML path")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. train.epochs=1")
    parser.add_argument("--restart", action="store_true", help="delete this experiment's outputs and start over")
    parser.add_argument("--ood", action="store_true",
                        help="train on the out-of-distribution split (folds.ood_split: cluster) into <exp>/ood/")
    parser.add_argument("--folds", default="", help="only these folds, e.g. 0,1 (overrides train.folds)")
    parser.add_argument("--devices", default="", help="one process per device, folds dealt round-robin: 0,1 | cpu,cpu")
    parser.add_argument("--device", default="", help="where this process trains (overrides train.device): cpu, cuda:1")
    parser.add_argument("--no-assemble", action="store_true", help="train the folds only; `assemble` gathers them later")
    parser.add_argument("--assemble", action="store_true", help="only gather finished folds (refused while one is missing)")
    args = parser.parse_args(argv)
    project = project or Project.from_env()

    def body() -> int:
        bad = [o for o in args.overrides if not is_override(o)]
        if bad:
            raise ConfigError(f"override {bad[0]!r}: expected section.key=value, e.g. train.epochs=3")
        cfg = load_config(args.experiment, args.overrides, project)
        folds = parse_folds(args.folds, cfg.folds.n_splits) if args.folds else None
        mode = "assemble" if args.assemble else "train" if args.no_assemble else "all"
        base_argv = [args.experiment, *args.overrides] + (["--ood"] if args.ood else [])
        workers = launch_workers(project, base_argv, args.devices) if args.devices and mode == "all" else None
        dist = setup(args.device or cfg.train.device)
        if dist.enabled and args.devices:
            raise ConfigError("--devices starts one process per device itself; under torchrun leave it out")
        try:
            run_experiment(cfg, project, args.restart, args.ood, folds, mode, args.device or None, workers, dist)
        finally:
            shutdown(dist)
        return 0

    return cli.run(body)


def parse_folds(text: str, n_splits: int) -> list[int]:
    """`0,2` -> [0, 2], checked against the split."""
    try:
        folds = [int(k) for k in text.split(",") if k.strip()]
    except ValueError:
        raise ConfigError(f"--folds {text!r}: expected fold numbers like 0,1") from None
    bad = [k for k in folds if not 0 <= k < n_splits] + [k for k in set(folds) if folds.count(k) > 1]
    if bad or not folds:
        raise ConfigError(f"--folds {text!r}: each fold once, within 0..{n_splits - 1}")
    return folds


if __name__ == "__main__":
    sys.exit(main())
