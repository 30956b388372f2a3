"""Run one experiment end to end: folds if missing -> every fold -> OOF + TTA test preds -> metrics -> leaderboard.

    python -m competition.experiment exp001 [section.key=value ...] [--restart] [--ood]

Outputs in experiments/<exp>/: config.yaml (resolved), fold{k}/ (checkpoints, log.csv, oof.csv, test.csv,
result.json), oof.csv (id, fold, target, prob), test.csv (id, prob), metrics.json, and lists of
undecodable images. Finished folds are skipped and an interrupted fold resumes from its last epoch.

This module is the command line and the orchestration; the output folder (locks, resume checks, --restart) is
competition.run_folder, fold outputs -> experiment outputs competition.assemble, one process per device
competition.fold_workers, and the tables with their folds competition.folds.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from competition import cli, options
from competition.adapt import adapt_counted, batchnorm_layers, stale_predictions
from competition.assemble import assemble, write_fold_outputs
from competition.atomic import remove_stale_temps, write_csv, write_json
from competition.augment import build_eval_transform, build_train_transform
from competition.config import Config, ConfigError, is_override, load_config, override_error
from competition.crop_cache import EvalCrops, TrainWindows, wants_crop_cache
from competition.dataset import ImageDataset
from competition.distributed import SINGLE, Dist, rank_device, setup, shutdown
from competition.fold_workers import launch_workers
from competition.folds import load_tables
from competition.image_cache import ImageCache, open_cache
from competition.inference import eval_dataset, predict_dataset
from competition.leaderboard import write_leaderboard
from competition.model import load_detector, pick_device
from competition.project import Project
from competition.pseudo import join, log_selection, pseudo_file, select_pseudo, teacher_predictions
from competition.run_folder import (check_decodable, check_inputs_unchanged, experiment_lock, fold_done,
                                    inputs_fingerprint, open_outputs, open_shared_outputs, output_dir)
from competition.test_encoding import (LEGACY_KERNEL, kernel_is_stale, match_test_filter, run_profile,
                                       test_like_dataset, wants_test_like)
from competition.tracking import check_tracking, log_experiment
from competition.train import FoldInputs, epoch_seed, train_fold

log = logging.getLogger(__name__)
T = TypeVar("T")


def fold_inputs(cfg: Config, fold: int, train: pd.DataFrame, cache: ImageCache | None,
                crop_dir: Path | None = None, extra: Dataset | None = None, encoding: dict | None = None) -> FoldInputs:
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
                            sub(np.flatnonzero(~is_val)), encoding=cfg.data.normalize_encoding, crop_store=windows,
                            image_filter=match_test_filter(cfg, encoding, cfg.train.seed))  # data.match_test
    val_ds = eval_dataset(cfg, val_paths, val["label"].to_numpy(), sub(np.flatnonzero(is_val)), tta=False,
                          crop_store=val_crops)
    return FoldInputs(fold=fold, train=join(train_ds, extra), val=val_ds, val_target=val["label"].to_numpy(),
                      prior=float(trn["label"].mean()))


def run_fold(cfg: Config, project: Project, fold: int, run: "Run", out: Path) -> None:
    """Train one fold, then write its TTA predictions for its validation rows and the test set (rank 0 writes)."""
    fold_dir, t0 = out / f"fold{fold}", time.perf_counter()
    train, test, device, dist = run.train, run.test, run.device, run.dist
    extra = pseudo_rows(cfg, project, fold, run, fold_dir) if cfg.pseudo.teacher else None
    inputs = main_first(dist, lambda: fold_inputs(cfg, fold, train, run.caches["train"], run.crop_dir, extra,
                                                           run.encoding))  # rank 0
    # creates the crop stores (if any) before the other ranks open them
    model = load_detector(train_fold(cfg, inputs, fold_dir, device, project, dist), device, project)
    val = train[(train["fold"] == fold).to_numpy()]
    oof = predict_dataset(model, eval_dataset(cfg, inputs.val.paths, cache=inputs.val.cache), cfg, device,
                          inputs.prior, desc=f"fold {fold} OOF TTA", dist=dist)
    oof_like = test_like_oof(cfg, run, model, val, inputs.prior, oof.prob, fold)  # None unless data.test_like_oof
    adapted = adapted_predictions(cfg, run, model, val, inputs, fold) if cfg.tta.adapt_bn else None  # tta.adapt_bn
    tst = adapted["test"] if adapted else predict_dataset(
        model, eval_dataset(cfg, test["path"].tolist(), cache=run.caches["test"]), cfg, device, inputs.prior,
        desc=f"fold {fold} test TTA", dist=dist)
    if dist.is_main:
        write_fold_outputs(cfg, fold_dir, val, test, oof, tst, time.perf_counter() - t0, test_like=oof_like,
                           adapted=adapted)
    dist.barrier()


def adapted_predictions(cfg: Config, run: "Run", model, val: pd.DataFrame, inputs: FoldInputs, fold: int) -> dict:
    """tta.adapt_bn (competition.adapt): `test`, the test predictions of the fold model adapted on the test images;
    `test_like`, the validation rows re-encoded like the test (as they are when the test is encoded like train)
    predicted by the model adapted on them (None without a test-like OOF); `batchnorm_layers` (0 when nothing was
    adapted: no BatchNorm, or too few usable test images - then no test-like adaptation and no gain either). Every
    rank adapts on the whole set (same statistics everywhere), then predicts its shard."""
    test_paths, prior = run.test["path"].tolist(), inputs.prior
    on_test, seen = adapt_counted(model, eval_dataset(cfg, test_paths, cache=run.caches["test"], tta=False), cfg,
                                  run.device, f"fold {fold} adapt BN on test")
    tst = predict_dataset(on_test, eval_dataset(cfg, test_paths, cache=run.caches["test"]), cfg, run.device, prior,
                          desc=f"fold {fold} test TTA{' (adapted)' if seen else ''}", dist=run.dist)
    out = {"test": tst, "test_like": None, "batchnorm_layers": len(batchnorm_layers(model)) if seen else 0}
    if seen and wants_test_like(cfg.data.test_like_oof, run.encoding):
        like = (test_like_dataset(cfg, val["path"].tolist(), val["id"].astype(str).tolist(), run.encoding,
                                  cfg.train.seed) if run.encoding["shifted"]
                else eval_dataset(cfg, inputs.val.paths, cache=inputs.val.cache))
        out["test_like"] = adapted_test_like(cfg, run, model, like, prior, fold)
    return out


def adapted_test_like(cfg: Config, run: "Run", model, like: Dataset, prior: float, fold: int) -> np.ndarray | None:
    """prob_test_like_adapted: the model adapted on the test-like validation rows `like`, then predicting them
    (None when too few images were usable to adapt on)."""
    on_like, seen = adapt_counted(model, like, cfg, run.device, f"fold {fold} adapt BN on test-like OOF")
    return predict_dataset(on_like, like, cfg, run.device, prior, dist=run.dist,
                           desc=f"fold {fold} OOF test-like (adapted)").prob if seen else None


def test_like_oof(cfg: Config, run: "Run", model, val: pd.DataFrame, prior: float, plain: np.ndarray,
                  fold: int) -> np.ndarray | None:
    """prob_test_like of a fold's validation rows: the model on them re-encoded like test images (competition.
    test_encoding, seeded by train.seed); the plain OOF when the test set is encoded like train; None when
    data.test_like_oof does not ask for it."""
    if not wants_test_like(cfg.data.test_like_oof, run.encoding):
        return None
    if not run.encoding["shifted"]:
        return np.asarray(plain, float)
    dataset = test_like_dataset(cfg, val["path"].tolist(), val["id"].astype(str).tolist(), run.encoding, cfg.train.seed)
    return predict_dataset(model, dataset, cfg, run.device, prior, desc=f"fold {fold} OOF test-like", dist=run.dist).prob


def with_finished_folds(out: Path, folds: list[int], n_folds: int) -> list[int]:
    """The folds to assemble: those asked for plus every other finished fold in the folder, so a run of some folds
    never rewrites a finished experiment's outputs with fewer folds."""
    finished = [k for k in range(n_folds) if k not in folds and fold_done(out / f"fold{k}")]
    if finished:
        log.info("assembling the finished fold(s) %s too (outputs hold every finished fold)", finished)
    return sorted({*folds, *finished})


def add_test_like(cfg: Config, project: Project, out: Path, run: "Run", folds: list[int]) -> None:
    """Resume/assemble: make prob_test_like (and remake prob_test_like_adapted) of finished folds whose oof.csv lacks
    it or made it with another resize kernel than data.test_like_resize (runs before the key imitated test resizes
    with area), from their best.pt (no retraining); the kernel is recorded in the fold's result.json."""
    if not wants_test_like(cfg.data.test_like_oof, run.encoding):
        return
    for fold in folds:
        fold_dir = out / f"fold{fold}"
        if not ((fold_dir / "oof.csv").is_file() and (fold_dir / "best.pt").is_file()):
            continue
        oof = pd.read_csv(fold_dir / "oof.csv", dtype={"id": str, "error": str}, keep_default_na=False)
        made_with, had = test_like_kernel(out, fold_dir), "prob_test_like" in oof
        if had and not kernel_is_stale(made_with, cfg.data.test_like_resize, run.encoding):
            continue
        val = run.train.set_index(run.train["id"].astype(str), drop=False).loc[oof["id"]]
        prior = float(run.train.loc[(run.train["fold"] != fold).to_numpy(), "label"].mean())
        model = load_detector(fold_dir / "best.pt", run.device, project)
        oof["prob_test_like"] = test_like_oof(cfg, run, model, val, prior, oof["prob"].to_numpy(float), fold)
        if "prob_test_like_adapted" in oof:
            like = test_like_dataset(cfg, val["path"].tolist(), oof["id"].tolist(), run.encoding, cfg.train.seed)
            adapted = adapted_test_like(cfg, run, model, like, prior, fold)
            oof = oof.drop(columns="prob_test_like_adapted") if adapted is None else oof.assign(
                prob_test_like_adapted=adapted)
        write_csv(fold_dir / "oof.csv", oof)
        record_test_like_kernel(fold_dir, cfg.data.test_like_resize)
        if had:
            log.info("%s: test-like OOF column made with %s remade with data.test_like_resize=%s (from best.pt, no "
                     "retraining)", fold_dir.name, made_with or LEGACY_KERNEL, cfg.data.test_like_resize)
        else:
            log.info("%s: added the test-like OOF column (data.test_like_oof=%s)", fold_dir.name, cfg.data.test_like_oof)


def test_like_kernel(out: Path, fold_dir: Path) -> str | None:
    """The resize kernel a finished fold's test-like column was made with: its result.json's record, else the
    experiment's metrics.json (runs before the per-fold record); None when neither says (LEGACY_KERNEL)."""
    for path, keys in ((fold_dir / "result.json", ("test_like_resize",)),
                       (out / "metrics.json", ("oof_test_like", "resize_kernel"))):
        value = json.loads(path.read_text()) if path.is_file() else {}
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, str):
            return value
    return None


def record_test_like_kernel(fold_dir: Path, kernel: str) -> None:
    """Write the kernel a fold's test-like column was (re)made with into its result.json."""
    result = fold_dir / "result.json"
    if result.is_file():
        write_json(result, {**json.loads(result.read_text()), "test_like_resize": kernel})


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
    encoding: dict | None = None  # the test set's encoding profile (competition.test_encoding) when the run needs it


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


def prepare_run(cfg: Config, project: Project, out: Path, ood: bool, device: str | None, dist: Dist = SINGLE,
                predicts: bool = True) -> Run:
    """Tables (folds built and audited once), the input fingerprint check (`predicts`: False for --assemble, which
    refuses stale test predictions instead of recomputing them), caches and the device."""
    torch.set_num_threads(cfg.train.threads or torch.get_num_threads())
    train, test = main_first(dist, lambda: load_tables(cfg, project, "ood_fold" if ood else "fold"))
    on_main(dist, lambda: check_inputs_unchanged(out, train, test, forget=predicts))
    cache_dir = project.cache_dir(cfg)
    caches = main_first(dist, lambda: {split: open_cache(frame["path"].tolist(), cfg.data.cache, cache_dir)
                                       for split, frame in (("train", train), ("test", test))})
    check_decodable(cfg, train, caches["train"])
    n_folds = int(train["fold"].max()) + 1 if ood else cfg.folds.n_splits
    encoding = main_first(dist, lambda: run_profile(cfg, project, train, test))  # test-like OOF, data.match_test
    windows = wants_crop_cache(cfg.data.crop_cache, cfg.data.augment, cfg.data.img_size, train["path"].tolist())
    if windows and cfg.data.match_test:
        log.info("crop cache off: data.match_test re-encodes each whole decoded image like a test image (resize "
                 "included), which stored windows cannot give")
        windows = False
    if windows:
        log.info("crop cache on (data.crop_cache=%s): each training image is decoded once per %d epochs",
                 cfg.data.crop_cache, cfg.data.crop_cache_epochs)
    run = Run(train, test, caches, n_folds, pick_device(rank_device(dist, device or cfg.train.device)), dist,
              cache_dir / "crops" if windows else None, encoding)
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
            if dist.broadcast(fold_done(out / f"fold{fold}") and not stale_predictions(cfg, out / f"fold{fold}")):
                log.info("fold %d already done, skipping", fold)
                continue
            if dist.is_main:
                remove_stale_temps(out / f"fold{fold}")
            run_fold(cfg, project, fold, run, out)



def finish(cfg: Config, project: Project, out: Path, run: Run, folds: list[int], ood: bool, wall: float) -> dict:
    """Assemble every fold into the experiment's outputs (refused while a fold is missing), leaderboard, report."""
    metrics = assemble(cfg, out, folds, run.n_folds, run.test, wall, run.encoding)
    write_leaderboard(project)
    if not ood:
        _write_report(project, cfg.name)
    log_experiment(cfg, out, metrics, project)  # tracking.backend: after every output is written
    return metrics


def run_experiment(cfg: Config, project: Project, restart: bool = False, ood: bool = False,
                   folds: list[int] | None = None, mode: str = "all", device: str | None = None,
                   workers: Callable[[list[int]], None] | None = None, dist: Dist = SINGLE) -> dict | None:
    """Run an experiment's folds (resuming) and assemble it once.

    mode: all (train, then assemble) | train (only these folds, no assembly: one of several processes or
    machines) | assemble (refused while a fold is missing). `workers`, when given, trains the folds instead
    of this process (one process per device). ood=True uses the folds file's `ood_fold` split, into <exp>/ood/.
    restart=True deletes the whole experiment's outputs first, in every training mode (all folds, not only
    `folds`), refused while another process trains one of its folds; mode=assemble refuses it.
    Under torchrun (`dist`), every rank trains each fold data-parallel; rank 0 locks, writes and assembles.
    """
    if restart and mode == "assemble":
        raise ConfigError(f"--restart with --assemble would delete the folds it gathers: to start over, train again "
                          f"with `./run.sh {cfg.name} --restart` (add --folds K --no-assemble to train only some folds "
                          f"here); to assemble, leave --restart out")
    out = output_dir(cfg, project, ood)
    check_tracking(cfg.tracking, project)  # a tracking.* mistake is refused now, not after the last fold
    if mode == "train":
        on_main(dist, lambda: open_shared_outputs(cfg, out, restart))
        run = prepare_run(cfg, project, out, ood, device, dist)
        train_folds(cfg, project, out, run, folds or list(cfg.train.folds) or list(range(run.n_folds)))
        return None
    with experiment_lock(out) if dist.is_main else nullcontext():
        on_main(dist, lambda: open_outputs(cfg, out, restart))
        t0, wall_file = time.perf_counter(), out / "wall_s.json"
        wall_before = json.loads(wall_file.read_text())["wall_s"] if wall_file.is_file() else 0.0
        run = prepare_run(cfg, project, out, ood, device, dist, predicts=mode != "assemble")
        folds = folds or list(cfg.train.folds) or list(range(run.n_folds))
        if mode == "all":
            (workers or (lambda ks: train_folds(cfg, project, out, run, ks)))(folds)
        if not dist.is_main:
            return None
        folds = with_finished_folds(out, folds, run.n_folds)  # `--folds 0` on a finished run keeps every fold
        add_test_like(cfg, project, out, run, folds)  # finished folds made before the test-like column
        wall = wall_before + time.perf_counter() - t0
        write_json(wall_file, {"wall_s": wall})
        return finish(cfg, project, out, run, folds, ood, wall)


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
    parser.add_argument("--restart", action="store_true",
                        help="delete this experiment's outputs (every fold, also with --folds/--no-assemble) and "
                             "start over; refused while another process trains one of its folds, and with --assemble")
    parser.add_argument("--ood", action="store_true",
                        help="train on the out-of-distribution split (folds.ood_split: cluster) into <exp>/ood/")
    parser.add_argument("--folds", default="", type=options.number_list(0, 999, "fold numbers", as_text=True),
                        help="only these folds, e.g. 0,1 (overrides train.folds)")
    parser.add_argument("--devices", default="", type=options.devices(empty=True),
                        help="one process per device, folds dealt round-robin: 0,1 | cpu,cpu; when one fails, "
                             "the others are stopped (rerun to resume)")
    parser.add_argument("--device", default="", type=options.device(empty=True),
                        help="where this process trains (overrides train.device): cpu, cuda:1")
    parser.add_argument("--no-assemble", action="store_true", help="train the folds only; `assemble` gathers them later")
    parser.add_argument("--assemble", action="store_true", help="only gather finished folds (refused while one is missing)")
    args = parser.parse_intermixed_args(argv)  # `t1 --folds 0 train.epochs=2`: overrides may follow the options

    def body() -> int:
        nonlocal project
        project = project or Project.from_env()  # inside cli.run: a bad KIT_HOME is one ERROR line
        bad = [o for o in args.overrides if not is_override(o)]
        if bad:
            raise override_error(bad[0])
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
