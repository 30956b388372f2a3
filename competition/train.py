"""Training of one fold: AdamW + warmup/cosine, AMP on CUDA, channels_last, gradient accumulation,
EMA, early stopping on the fold's validation metric, and per-epoch checkpoints that resume exactly.

Outputs in `experiments/<exp>/fold{k}/`: `last.pt` (full training state, every epoch), `best.pt`
(self-describing: weights + config + score), `log.csv` (one row per epoch).
Determinism: shuffling, augmentation and dropout are seeded from (seed, fold, epoch), so a run
resumed after a kill reproduces the uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from timm.optim import param_groups_weight_decay
from timm.utils import ModelEmaV3
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from competition.atomic import save_torch, write_csv
from competition.config import Config, to_dict
from competition.dataset import seed_worker
from competition.inference import Predictions, predict
from competition.metrics import is_better, score, score_all
from competition.model import Detector, amp_dtype, build_model

log = logging.getLogger(__name__)

LOG_EVERY = 25  # optimizer steps between progress-bar loss updates (the only host syncs in the loop)


@dataclass
class FoldInputs:
    """What one fold trains and validates on."""

    fold: int
    train: Dataset  # training images with the train transform
    val: Dataset  # validation images with the eval transform
    val_target: np.ndarray  # labels of `val`, in order
    prior: float  # share of AI images in the training part (fallback prediction)


def worker_count(cfg: Config, device: torch.device, cached: bool) -> int:
    """DataLoader workers: as configured, else 0 for cached small images, else from the cores."""
    if cfg.data.num_workers >= 0:
        return cfg.data.num_workers
    if cached:
        return 0
    cores = os.cpu_count() or 1
    return min(8, cores) if device.type == "cuda" else max(1, min(8, cores - 1))


def make_loader(dataset: Dataset, cfg: Config, device: torch.device, train: bool, seed: int = 0) -> DataLoader:
    """A DataLoader: seeded shuffling for training, pinned memory on CUDA, seeded workers."""
    workers = worker_count(cfg, device, getattr(dataset, "cache", None) is not None)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=cfg.train.batch_size if train else cfg.train.batch_size * 2,
        shuffle=train,
        drop_last=train and len(dataset) > cfg.train.batch_size,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        worker_init_fn=seed_worker if workers else None,
        generator=generator,
    )


def epoch_seed(seed: int, fold: int, epoch: int) -> int:
    """A distinct, reproducible seed per (experiment seed, fold, epoch)."""
    return (seed * 1_000_003 + fold * 10_007 + epoch * 101) % 2**31


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: Config, steps_per_epoch: int):
    """Linear warmup then cosine decay to min_lr, stepped once per optimizer step."""
    total = max(1, cfg.train.epochs * steps_per_epoch)
    warmup = int(cfg.train.warmup_epochs * steps_per_epoch)
    floor = cfg.train.min_lr / cfg.train.lr

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _rng_state() -> dict:
    """Python, NumPy and torch RNG states as checkpoint-safe values."""
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
            "numpy_pos": int(np_state[2]), "python": list(random.getstate()[1])}


def _set_rng_state(state: dict) -> None:
    """Restore what _rng_state saved."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    random.setstate((3, tuple(state["python"]), None))


def train_one_epoch(model: torch.nn.Module, loader: DataLoader, optimizer, scheduler, scaler, ema, cfg: Config,
                    device: torch.device, dtype: torch.dtype | None, desc: str) -> dict:
    """One pass over the training loader; returns mean loss, images/s and the data-wait share."""
    model.train()
    accum = cfg.train.accum_steps
    smooth = cfg.train.label_smoothing
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else nullcontext
    loss_sum = torch.zeros((), device=device)
    seen, wait, start = 0, 0.0, time.perf_counter()
    bar = tqdm(loader, desc=desc, leave=False, mininterval=2)
    tick = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    for step, (images, target, _, error) in enumerate(bar):
        wait += time.perf_counter() - tick
        images = images.to(device, non_blocking=True)
        if cfg.train.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        target = target.to(device, non_blocking=True)
        weight = torch.tensor([0.0 if e else 1.0 for e in error], device=device)
        target = target * (1 - smooth) + 0.5 * smooth
        with autocast():
            logits = model(images).float()
        loss = (F.binary_cross_entropy_with_logits(logits, target, reduction="none") * weight).sum()
        loss = loss / weight.sum().clamp(min=1.0)
        scaler.scale(loss / accum).backward()
        if (step + 1) % accum == 0 or step + 1 == len(loader):
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            if ema is not None:
                ema.update(model)
        loss_sum += loss.detach() * len(images)
        seen += len(images)
        if step % LOG_EVERY == 0:
            bar.set_postfix(loss=f"{loss_sum.item() / max(seen, 1):.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
        tick = time.perf_counter()
    elapsed = time.perf_counter() - start
    return {"train_loss": loss_sum.item() / max(seen, 1), "train_img_s": seen / elapsed,
            "data_wait": wait / elapsed if elapsed else 0.0}


def validate(model: torch.nn.Module, loader: DataLoader, target: np.ndarray, cfg: Config, device: torch.device,
             dtype: torch.dtype | None, prior: float) -> dict:
    """Identity-view validation: loss and metrics for early stopping and the log."""
    preds = predict(model, loader, device, "identity", prior, dtype, cfg.train.channels_last, desc="validate")
    p = np.clip(preds.prob, 1e-7, 1 - 1e-7)
    val_loss = float(-np.mean(target * np.log(p) + (1 - target) * np.log(1 - p)))
    out = {"val_loss": val_loss}
    out.update({f"val_{k}": v for k, v in score_all(target, preds.prob).items() if k != "logloss"})
    out["val_score"] = score(cfg.competition.metric, target, preds.prob)
    return out


def _new_state(cfg: Config, fold: int, steps_per_epoch: int, device: torch.device):
    """Fresh model, optimizer, scheduler, scaler and EMA for a fold (model init seeded by fold)."""
    torch.manual_seed(epoch_seed(cfg.train.seed, fold, -1))
    model = build_model(cfg.model).to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    params = param_groups_weight_decay(model, cfg.train.weight_decay)
    optimizer = torch.optim.AdamW(params, lr=cfg.train.lr)
    scheduler = build_scheduler(optimizer, cfg, math.ceil(steps_per_epoch / cfg.train.accum_steps))
    dtype = amp_dtype(cfg.train.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    ema = ModelEmaV3(model, decay=cfg.train.ema_decay) if cfg.train.ema else None
    return model, optimizer, scheduler, scaler, ema, dtype


def _checkpoint(model, optimizer, scheduler, scaler, ema, epoch: int, best: dict, history: list, cfg: Config) -> dict:
    """Everything needed to resume exactly after `epoch`."""
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(), "ema": ema.state_dict() if ema is not None else None,
            "epoch": epoch, "best": best, "history": history, "rng": _rng_state(), "config": to_dict(cfg)}


def _best_weights(model: Detector, ema, cfg: Config, epoch: int, val_score: float) -> dict:
    """A self-describing best checkpoint: weights used for evaluation plus what made them."""
    net = ema.module if ema is not None else model
    return {"model": net.state_dict(), "model_name": cfg.model.name, "config": to_dict(cfg), "epoch": epoch,
            "metric": cfg.competition.metric, "score": val_score}


def load_detector(path: Path, cfg: Config, device: torch.device) -> Detector:
    """Rebuild a Detector from a best.pt written by train_fold (weights_only load)."""
    ckpt = torch.load(path, map_location=device, weights_only=True)
    model = build_model(dataclasses.replace(cfg.model, pretrained=False), quiet=True).to(device)
    model.load_state_dict(ckpt["model"])
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model.eval()


def train_fold(cfg: Config, inputs: FoldInputs, out_dir: Path, device: torch.device) -> Path:
    """Train (or resume) one fold; return the path of its best checkpoint."""
    out_dir.mkdir(parents=True, exist_ok=True)
    last, best_path = out_dir / "last.pt", out_dir / "best.pt"
    probe = make_loader(inputs.train, cfg, device, train=True)
    model, optimizer, scheduler, scaler, ema, dtype = _new_state(cfg, inputs.fold, len(probe), device)
    runner = torch.compile(model) if cfg.train.compile else model
    start, best, history = 0, {"score": None, "epoch": -1, "stale": 0}, []
    if last.is_file():
        ckpt = torch.load(last, map_location=device, weights_only=True)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        if ema is not None and ckpt["ema"] is not None:
            ema.load_state_dict(ckpt["ema"])
        _set_rng_state(ckpt["rng"])
        start, best, history = ckpt["epoch"] + 1, ckpt["best"], ckpt["history"]
        log.info("fold %d: resuming after epoch %d (best %s at epoch %d)", inputs.fold, ckpt["epoch"],
                 best["score"], best["epoch"])
    val_loader = make_loader(inputs.val, cfg, device, train=False)
    for epoch in range(start, cfg.train.epochs):
        if cfg.train.patience and best["stale"] >= cfg.train.patience:
            log.info("fold %d: early stop, no improvement for %d epochs", inputs.fold, best["stale"])
            break
        seed = epoch_seed(cfg.train.seed, inputs.fold, epoch)
        torch.manual_seed(seed)
        if hasattr(inputs.train, "transform") and hasattr(inputs.train.transform, "set_random_seed"):
            inputs.train.transform.set_random_seed(seed)
        loader = make_loader(inputs.train, cfg, device, train=True, seed=seed)
        t0 = time.perf_counter()
        row = {"epoch": epoch, "lr": scheduler.get_last_lr()[0]}
        row.update(train_one_epoch(runner, loader, optimizer, scheduler, scaler, ema, cfg, device, dtype,
                                   desc=f"fold {inputs.fold} epoch {epoch}"))
        eval_model = ema.module if ema is not None else model
        row.update(validate(eval_model, val_loader, inputs.val_target, cfg, device, dtype, inputs.prior))
        row["epoch_s"] = time.perf_counter() - t0
        history.append(row)
        if is_better(cfg.competition.metric, row["val_score"], best["score"]):
            best = {"score": row["val_score"], "epoch": epoch, "stale": 0}
            save_torch(best_path, _best_weights(model, ema, cfg, epoch, row["val_score"]))
        else:
            best = {**best, "stale": best["stale"] + 1}
        save_torch(last, _checkpoint(model, optimizer, scheduler, scaler, ema, epoch, best, history, cfg))
        write_csv(out_dir / "log.csv", pd.DataFrame(history))
        log.info("fold %d epoch %d: loss %.4f val_loss %.4f val_%s %.5f (best %.5f @%d) %.0f img/s %.0fs",
                 inputs.fold, epoch, row["train_loss"], row["val_loss"], cfg.competition.metric, row["val_score"],
                 best["score"], best["epoch"], row["train_img_s"], row["epoch_s"])
    if not best_path.is_file():
        raise RuntimeError(f"fold {inputs.fold}: no best checkpoint written (did every epoch score NaN?)")
    return best_path


def predict_fold(model: Detector, dataset: Dataset, cfg: Config, device: torch.device, prior: float,
                 desc: str) -> Predictions:
    """TTA predictions of a fold's best model over a dataset."""
    loader = make_loader(dataset, cfg, device, train=False)
    return predict(model, loader, device, cfg.tta.views, prior, amp_dtype(cfg.train.amp, device),
                   cfg.train.channels_last, desc=desc)
