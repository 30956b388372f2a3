"""Training of one fold: a timm optimizer (AdamW by default; layer-wise LR decay) and a timm schedule (warmup, then
cosine/tanh/poly/step) stepped per update, BCE or focal loss, timm mixup/cutmix, AMP on CUDA, channels_last,
gradient accumulation, EMA, SWA (torch.optim.swa_utils, BatchNorm recomputed), early stopping on the fold's
validation metric, and per-epoch checkpoints that resume exactly.

Outputs in `experiments/<exp>/fold{k}/`: `last.pt` (full training state, every epoch), `best.pt`
(self-describing: weights + config + score), `log.csv` (one row per epoch).
Determinism: shuffling, augmentation and dropout are seeded from (seed, fold, epoch), so a run
resumed after a kill reproduces the uninterrupted run.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from timm.data import Mixup
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.scheduler.scheduler import Scheduler
from timm.utils import ModelEmaV3
from torch.optim.swa_utils import AveragedModel, update_bn
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler
from tqdm.auto import tqdm  # a widget in a notebook, the terminal bar elsewhere

from competition.allocator import trim
from competition.atomic import save_torch, write_csv
from competition.config import Config, ConfigError, to_dict
from competition.dataset import make_loader
from competition.distributed import SINGLE, Dist
from competition.errors import DataError
from competition.inference import predict
from competition.metrics import is_better, score, score_all, selection_metric
from competition.model import Detector, amp_dtype, build_model
from competition.project import Project

log = logging.getLogger(__name__)

LOG_EVERY = 25  # optimizer steps between progress-bar loss updates (the only host syncs in the loop)
NO_TRAINING = "KIT_NO_TRAINING"  # names a file: the test suite's fast tests forbid training (tests/conftest.py)


def refuse_forbidden_training() -> None:
    """Stop where $KIT_NO_TRAINING forbids training, recording the attempt in the file it names (the test suite
    sets it for every test not marked slow, so a fast test cannot train here or in a process it starts)."""
    record = os.environ.get(NO_TRAINING)
    if record:
        with open(record, "a", encoding="utf-8") as fh:
            fh.write(f"process {os.getpid()} started training\n")
        raise RuntimeError(f"training is forbidden here (${NO_TRAINING} is set: a test not marked slow trained)")


@dataclass
class FoldInputs:
    """What one fold trains and validates on."""

    fold: int
    train: Dataset  # training images with the train transform
    val: Dataset  # validation images with the eval transform
    val_target: np.ndarray  # labels of `val`, in order
    prior: float  # share of AI images in the training part (fallback prediction)


def epoch_seed(seed: int, fold: int, epoch: int) -> int:
    """A distinct, reproducible seed per (experiment seed, fold, epoch)."""
    return (seed * 1_000_003 + fold * 10_007 + epoch * 101) % 2**31


class UpdateScheduler:
    """A timm scheduler stepped once per optimizer update, with the small LRScheduler surface the loop uses
    (`step`, `get_last_lr`, `last_epoch` = updates done, `state_dict`)."""

    def __init__(self, scheduler: Scheduler):
        self.scheduler, self.last_epoch = scheduler, 0
        self.held: float | None = None  # a constant lr (SWA's window) instead of the schedule
        scheduler.step_update(0)  # the rates of the first update, lr_scale applied

    def step(self) -> None:
        """One optimizer update done: set the learning rates of the next."""
        self.last_epoch += 1
        if self.held is None:
            self.scheduler.step_update(self.last_epoch)
        else:
            self.scheduler.update_groups(self.held)

    def hold(self, lr: float) -> None:
        """From now on every update uses this lr (x each group's lr_scale), the schedule paused."""
        self.held = lr
        self.scheduler.update_groups(lr)

    def get_last_lr(self) -> list[float]:
        """The learning rate of every parameter group now."""
        return [group["lr"] for group in self.scheduler.optimizer.param_groups]

    def state_dict(self) -> dict:
        """Progress, to resume."""
        return {"last_epoch": self.last_epoch, "held": self.held}

    def load_state_dict(self, state: dict) -> None:
        """Resume after `last_epoch` updates."""
        self.last_epoch = int(state["last_epoch"])
        self.scheduler.step_update(self.last_epoch)
        if state.get("held") is not None:
            self.hold(float(state["held"]))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: Config, steps_per_epoch: int) -> UpdateScheduler:
    """timm's scheduler factory (train.scheduler): linear warmup from min_lr, then decay to min_lr over
    train.epochs, stepped per optimizer update; parameter groups' lr_scale (layer decay) applied by timm."""
    epochs, kind = cfg.train.epochs, cfg.train.scheduler
    warmup = min(cfg.train.warmup_epochs, epochs / 2)  # the warmup comes first (prefix): the decay gets the rest
    scheduler, _ = create_scheduler_v2(
        optimizer, sched=kind, num_epochs=epochs - warmup, decay_epochs=max(1, epochs // 3), decay_rate=0.1,
        min_lr=cfg.train.min_lr, warmup_lr=cfg.train.min_lr, warmup_epochs=warmup, warmup_prefix=True,
        cooldown_epochs=0, step_on_epochs=False, updates_per_epoch=max(1, steps_per_epoch))
    return UpdateScheduler(scheduler)


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


@dataclass
class TrainState:
    """Everything that changes while a fold trains and is saved in last.pt to resume exactly."""

    model: Detector
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    ema: ModelEmaV3 | None
    dtype: torch.dtype | None  # autocast dtype (None = fp32)
    swa: AveragedModel | None = None  # train.swa: running average of the end-of-epoch weights in the SWA window
    mixer: Mixup | None = None  # train.mixup / train.cutmix: timm's batch mixer
    epoch: int = -1  # last finished epoch
    best: dict = field(default_factory=lambda: {"score": None, "epoch": -1, "stale": 0})
    history: list = field(default_factory=list)  # one dict per finished epoch (log.csv)

    @property
    def eval_model(self) -> Detector:
        """The weights that are validated and saved as best: the EMA when it is on."""
        return self.ema.module if self.ema is not None else self.model

    def checkpoint(self, cfg: Config) -> dict:
        """Everything needed to resume exactly after `epoch`."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "swa": self.swa.state_dict() if self.swa is not None else None, "epoch": self.epoch,
                "best": self.best, "history": self.history, "rng": _rng_state(), "config": to_dict(cfg)}

    def restore(self, ckpt: dict) -> None:
        """Load a checkpoint() dict back (weights, optimizer, schedule, scaler, EMA, RNG, progress)."""
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        if self.ema is not None and ckpt["ema"] is not None:
            self.ema.load_state_dict(ckpt["ema"])
        if self.swa is not None and ckpt.get("swa") is not None:
            self.swa.load_state_dict(ckpt["swa"])
        _set_rng_state(ckpt["rng"])
        self.epoch, self.best, self.history = ckpt["epoch"], ckpt["best"], ckpt["history"]

    def best_weights(self, cfg: Config, val_score: float, model: torch.nn.Module | None = None) -> dict:
        """A self-describing best checkpoint: evaluation weights (or `model`'s), how to rebuild them, what made them."""
        return {"model": (model or self.eval_model).state_dict(), "model_name": cfg.model.name,
                "create_kwargs": getattr(self.model, "create_kwargs", None), "config": to_dict(cfg),
                "epoch": self.epoch, "metric": select_metric(cfg), "score": val_score, "swa": model is not None}


def train_one_epoch(state: TrainState, runner: torch.nn.Module, loader: DataLoader, cfg: Config,
                    device: torch.device, desc: str) -> dict:
    """One pass over the training loader; returns mean loss, images/s and the data-wait share."""
    runner.train()
    accum, smooth = cfg.train.accum_steps, cfg.train.label_smoothing
    autocast = (lambda: torch.autocast(device.type, dtype=state.dtype)) if state.dtype else nullcontext
    loss_sum = torch.zeros((), device=device)
    seen, wait, start = 0, 0.0, time.perf_counter()
    bar = tqdm(loader, desc=desc, leave=False, mininterval=2)
    tick = time.perf_counter()
    state.optimizer.zero_grad(set_to_none=True)
    for step, (images, target, _, _) in enumerate(bar):
        wait += time.perf_counter() - tick
        images = images.to(device, non_blocking=True)
        if cfg.train.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        target = target.to(device, non_blocking=True)
        weight = (~torch.isnan(target)).float()  # undecodable rows carry a NaN label: weight 0, no host list
        target = torch.nan_to_num(target)
        if state.mixer is not None:
            images, target, weight = mix_batch(state.mixer, images, target, weight, cfg.train.channels_last)
        target = target * (1 - smooth) + 0.5 * smooth
        with autocast():
            logits = runner(images).float()
        loss = (per_image_loss(logits, target, cfg) * weight).sum() / weight.sum().clamp(min=1.0)
        group = min(accum, len(loader) - step // accum * accum)  # micro-steps in this group (the last may be short)
        backward(state, loss / group, cfg.train.grad_checkpointing)
        if (step + 1) % accum == 0 or step + 1 == len(loader):
            _optimizer_step(state, cfg.train.clip_grad)
        loss_sum += loss.detach() * len(images)
        seen += len(images)
        if step % LOG_EVERY == 0:
            bar.set_postfix(loss=f"{loss_sum.item() / max(seen, 1):.4f}", lr=f"{state.scheduler.get_last_lr()[0]:.2e}")
        tick = time.perf_counter()
    elapsed = time.perf_counter() - start
    return {"train_loss": loss_sum.item() / max(seen, 1), "train_img_s": seen / elapsed,
            "data_wait": wait / elapsed if elapsed else 0.0}


def mix_batch(mixer: Mixup, images: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
              channels_last: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """timm's mixup/cutmix on a batch (image i mixed with image N-1-i, in float 0-255): the mixed images, the
    matching soft targets, and weights that drop a pair when either image was undecodable."""
    images = images.float()
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    images, mixed = mixer(images, target.long())  # 2-class one-hot targets mixed by the same lam as the pixels
    return images, mixed[:, 1], weight * weight.flip(0)  # column 1 = P(AI)


def build_mixer(cfg: Config) -> Mixup | None:
    """timm's Mixup for train.mixup / train.cutmix (None when both are 0)."""
    if not (cfg.train.mixup or cfg.train.cutmix):
        return None
    return Mixup(mixup_alpha=cfg.train.mixup, cutmix_alpha=cfg.train.cutmix, prob=cfg.train.mix_prob, mode="batch",
                 label_smoothing=0.0, num_classes=2)


def per_image_loss(logits: torch.Tensor, target: torch.Tensor, cfg: Config) -> torch.Tensor:
    """The configured loss per image: BCE, or focal (BCE x (1 - p_t)^gamma, easy images down-weighted)."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    if cfg.train.loss == "bce":
        return bce
    p = torch.sigmoid(logits)
    p_t = p * target + (1 - p) * (1 - target)
    return bce * (1 - p_t).pow(cfg.train.focal_gamma)


def build_optimizer(model: Detector, cfg: Config) -> torch.optim.Optimizer:
    """timm's optimizer factory on the backbone (the Detector's own tensors are buffers): no decay on biases and
    norms; with train.layer_decay, each group carries an lr_scale that the timm scheduler applies."""
    layer_decay = cfg.train.layer_decay or None
    return create_optimizer_v2(model.backbone, cfg.train.optimizer, lr=cfg.train.lr,
                               weight_decay=cfg.train.weight_decay, layer_decay=layer_decay)


def _optimizer_step(state: TrainState, clip_grad: float = 0.0) -> bool:
    """Clip (after unscaling), step the optimizer through the scaler; step the schedule and EMA only when the
    optimizer really stepped (fp16's GradScaler skips steps with inf/NaN gradients). Returns whether it stepped."""
    if clip_grad > 0:
        state.scaler.unscale_(state.optimizer)
        torch.nn.utils.clip_grad_norm_(state.model.parameters(), clip_grad)
    scale = state.scaler.get_scale() if state.scaler.is_enabled() else None  # a sync, only under fp16
    state.scaler.step(state.optimizer)
    state.scaler.update()
    state.optimizer.zero_grad(set_to_none=True)
    stepped = scale is None or state.scaler.get_scale() >= scale  # the scale drops exactly when a step is skipped
    if stepped:
        state.scheduler.step()
        if state.ema is not None:  # with warmup, the decay follows the optimizer step count (the schedule's)
            state.ema.update(state.model, step=state.scheduler.last_epoch if state.ema.use_warmup else None)
    return stepped


def norm_statistics(model: torch.nn.Module) -> list[torch.Tensor]:
    """The running buffers of every BatchNorm layer (mean, variance, batch count), in module order."""
    norms = (m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))
    return [b for m in norms for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None]


def backward(state: TrainState, loss: torch.Tensor, checkpointed: bool) -> None:
    """loss.backward() through the scaler. Under activation checkpointing the backward recomputes the forward, which
    would update BatchNorm running statistics a second time with the same batch: they are put back as the training
    forward left them, so checkpointing changes memory and time, not the model."""
    if not checkpointed:
        state.scaler.scale(loss).backward()
        return
    buffers = norm_statistics(state.model)
    saved = [b.clone() for b in buffers]
    state.scaler.scale(loss).backward()
    with torch.no_grad():
        for buffer, value in zip(buffers, saved):
            buffer.copy_(value)


def validate(model: torch.nn.Module, loader: DataLoader, target: np.ndarray, cfg: Config, device: torch.device,
             dtype: torch.dtype | None, prior: float, dist: Dist = SINGLE) -> dict:
    """Identity-view validation: loss and metrics for early stopping and the log (every rank gets every row)."""
    preds = predict(model, loader, device, "identity", prior, dtype, cfg.train.channels_last, desc="validate", dist=dist)
    p = np.clip(preds.prob, 1e-7, 1 - 1e-7)
    val_loss = float(-np.mean(target * np.log(p) + (1 - target) * np.log(1 - p)))
    out = {"val_loss": val_loss}
    out.update({f"val_{k}": v for k, v in score_all(target, preds.prob).items() if k != "logloss"})
    out["val_score"] = score(select_metric(cfg), target, preds.prob)  # threshold-free for f1/accuracy by default
    return out


def select_metric(cfg: Config) -> str:
    """The criterion that picks epochs and the best checkpoint (train.select_by resolved)."""
    return selection_metric(cfg.competition.metric, cfg.train.select_by)


def new_state(cfg: Config, fold: int, steps_per_epoch: int, device: torch.device, project: Project) -> TrainState:
    """Fresh model, optimizer, scheduler, scaler and EMA for a fold (model init seeded by fold)."""
    torch.manual_seed(epoch_seed(cfg.train.seed, fold, -1))
    model = build_model(cfg.model, project).to(device)
    if cfg.train.grad_checkpointing:
        set_grad_checkpointing(model, cfg.model.name)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, math.ceil(steps_per_epoch / cfg.train.accum_steps))
    dtype = amp_dtype(cfg.train.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    ema = ModelEmaV3(model, decay=cfg.train.ema_decay, use_warmup=cfg.train.ema_warmup) if cfg.train.ema else None
    swa = AveragedModel(model) if cfg.train.swa else None
    return TrainState(model, optimizer, scheduler, scaler, ema, dtype, swa, build_mixer(cfg))


def set_grad_checkpointing(model: Detector, name: str) -> None:
    """Turn on timm's activation checkpointing, or say clearly that this backbone has none."""
    try:
        model.backbone.set_grad_checkpointing(True)
    except (AttributeError, AssertionError, NotImplementedError, TypeError) as err:
        raise ConfigError(f"{name} does not support train.grad_checkpointing ({type(err).__name__}: {err}); "
                          f"set it to false or lower train.batch_size") from None


def train_fold(cfg: Config, inputs: FoldInputs, out_dir: Path, device: torch.device, project: Project,
               dist: Dist = SINGLE) -> Path:
    """Train (or resume) one fold; return the path of its best checkpoint. Under torchrun every rank trains its
    shard through DistributedDataParallel and only rank 0 writes."""
    out_dir.mkdir(parents=True, exist_ok=True)
    last, best_path = out_dir / "last.pt", out_dir / "best.pt"
    shard = (dist.rank, dist.world)
    seed = epoch_seed(cfg.train.seed, inputs.fold, 0) if dist.enabled else 0  # DistributedSampler: seed + epoch
    loader = make_loader(inputs.train, cfg, device, train=True, seed=seed, shard=shard)  # workers persist
    if dist.enabled:
        log.info("fold %d: rank %d of %d trains on %d of %d rows per epoch", inputs.fold, dist.rank, dist.world,
                 len(loader.sampler), len(inputs.train))
    state = new_state(cfg, inputs.fold, len(loader), device, project)
    runner = wrap_model(state.model, cfg, device, dist)
    if last.is_file():
        state.restore(torch.load(last, map_location=device, weights_only=True))
        log.info("fold %d: resuming after epoch %d (best %s at epoch %d)", inputs.fold, state.epoch,
                 state.best["score"], state.best["epoch"])
    val_loader = make_loader(inputs.val, cfg, device, train=False, shard=shard)
    trim()  # before the persistent training workers fork from this process (later epochs follow validation,
    # which trims when it ends); the steps in between reuse freed buffers
    for epoch in range(state.epoch + 1, cfg.train.epochs):
        if in_swa_window(cfg, epoch) and cfg.train.swa_lr and state.scheduler.held is None:
            state.scheduler.hold(cfg.train.swa_lr)
        if cfg.train.patience and state.best["stale"] >= cfg.train.patience:
            log.info("fold %d: early stop, no improvement for %d epochs", inputs.fold, state.best["stale"])
            break
        row = _run_epoch(state, runner, inputs, (loader, val_loader), cfg, device, epoch, dist)
        improved = is_better(select_metric(cfg), row["val_score"], state.best["score"])
        state.best = {"score": row["val_score"], "epoch": epoch, "stale": 0} if improved else \
            {**state.best, "stale": state.best["stale"] + 1}
        if dist.is_main:
            if improved:
                save_torch(best_path, state.best_weights(cfg, row["val_score"]))
            save_torch(last, state.checkpoint(cfg))
            write_csv(out_dir / "log.csv", pd.DataFrame(state.history))
        dist.barrier()  # rank 0's checkpoint is on disk before any rank moves on (a kill resumes from it)
        log.info("fold %d epoch %d: loss %.4f val_loss %.4f val_%s %.5f (selects epochs; best %.5f @%d) %.0f img/s "
                 "%.0fs", inputs.fold, epoch, row["train_loss"], row["val_loss"], select_metric(cfg), row["val_score"],
                 state.best["score"], state.best["epoch"], row["train_img_s"], row["epoch_s"])
    if state.swa is not None:
        finish_swa(state, loader, val_loader, inputs, cfg, device, out_dir, dist)
    if not best_path.is_file():
        raise DataError(f"{out_dir / 'log.csv'}: fold {inputs.fold} scored NaN at every epoch, so no best checkpoint "
                        f"was written (a validation fold of one class, or NaN predictions) - rebuild the folds "
                        f"(`./run.sh folds --force`) or lower train.lr, then rerun with --restart")
    return best_path


def in_swa_window(cfg: Config, epoch: int) -> bool:
    """Whether this epoch's end weights join the SWA average (the last train.swa_epochs epochs)."""
    return cfg.train.swa and epoch >= cfg.train.epochs - cfg.train.swa_epochs


def finish_swa(state: TrainState, loader: DataLoader, val_loader: DataLoader, inputs: FoldInputs, cfg: Config,
               device: torch.device, out_dir: Path, dist: Dist = SINGLE) -> None:
    """Recompute the averaged model's BatchNorm statistics on the training images (one pass, no gradients),
    validate it, and save it as best.pt; its scores join the last log row as swa_* columns."""
    assert state.swa is not None
    log.info("fold %d: SWA of %d epochs; recomputing BatchNorm statistics on %d training images", inputs.fold,
             int(state.swa.n_averaged), len(inputs.train))
    images = (batch[0].to(device) for batch in tqdm(loader, desc=f"fold {inputs.fold} SWA BatchNorm", leave=False))
    update_bn(images, state.swa, device)
    swa_model = state.swa.module.eval()
    row = validate(swa_model, val_loader, inputs.val_target, cfg, device, state.dtype, inputs.prior, dist)
    state.history[-1].update({f"swa_{k}": v for k, v in row.items()})
    if dist.is_main:
        save_torch(out_dir / "best.pt", state.best_weights(cfg, row["val_score"], swa_model))
        write_csv(out_dir / "log.csv", pd.DataFrame(state.history))
    dist.barrier()
    log.info("fold %d: SWA val_%s %.5f (best single epoch %.5f @%d)", inputs.fold, select_metric(cfg),
             row["val_score"], state.best["score"], state.best["epoch"])


def wrap_model(model: torch.nn.Module, cfg: Config, device: torch.device, dist: Dist) -> torch.nn.Module:
    """What the training loop calls: DistributedDataParallel under torchrun, then torch.compile if configured."""
    if dist.enabled:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return torch.compile(model) if cfg.train.compile else model


def _run_epoch(state: TrainState, runner: torch.nn.Module, inputs: FoldInputs, loaders: tuple[DataLoader, DataLoader],
               cfg: Config, device: torch.device, epoch: int, dist: Dist = SINGLE) -> dict:
    """Train one seeded epoch and validate; append the log row to state.history and return it."""
    refuse_forbidden_training()
    loader, val_loader = loaders
    seed = epoch_seed(cfg.train.seed, inputs.fold, epoch)
    torch.manual_seed(seed)
    if hasattr(inputs.train, "set_epoch_seed"):
        inputs.train.set_epoch_seed(seed + dist.rank, epoch)  # each rank augments its own rows differently
    if isinstance(loader.sampler, DistributedSampler):
        loader.sampler.set_epoch(epoch)  # this epoch's shuffling, the same permutation on every rank
    else:
        loader.sampler.generator.manual_seed(seed)  # this epoch's shuffling; the workers persist across epochs
    t0 = time.perf_counter()
    row = {"epoch": epoch, "lr": state.scheduler.get_last_lr()[0]}
    row.update(train_one_epoch(state, runner, loader, cfg, device, desc=f"fold {inputs.fold} epoch {epoch}"))
    if state.swa is not None and in_swa_window(cfg, epoch):
        state.swa.update_parameters(state.model)
    row.update(validate(state.eval_model, val_loader, inputs.val_target, cfg, device, state.dtype, inputs.prior, dist))
    row["epoch_s"] = time.perf_counter() - t0
    state.epoch = epoch
    state.history.append(row)
    return row
