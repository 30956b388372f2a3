"""The one inference layer: an experiment's fold models, the eval geometry, and batched TTA prediction.

Training, OOF, test predictions, `predict`, `explain`, `report` and `serve` all go through here:
- `eval_dataset`: the eval geometry (centre crop, or 5 native crops for TTA, or resize) decided once;
- `predict`: views x crops in one forward pass per batch, TTA-averaged and identity-view probabilities;
- `load_experiment` / `predict_experiment`: every fold's best model of a finished experiment, averaged.
Undecodable images get the fallback probability and are reported, never dropped.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm  # a widget in a notebook, the terminal bar elsewhere

from competition.allocator import trim
from competition.adapt import adapt_models
from competition.augment import build_eval_transform, tta_views
from competition.config import Config, ConfigError, load_saved_config, require_experiment
from competition.dataset import ImageDataset, make_loader
from competition.image_cache import ImageCache
from competition.distributed import SINGLE, Dist, gather_errors, gather_rows
from competition.model import Detector, amp_dtype, load_detector
from competition.project import Project

log = logging.getLogger(__name__)


@dataclass
class Predictions:
    """Probabilities for every row of a dataset, in dataset order."""

    prob: np.ndarray  # TTA-averaged probability of AI-generated
    prob_identity: np.ndarray  # identity view only (centre crop), for measuring TTA gain
    errors: dict[int, str]  # row index -> why the image could not be decoded (fallback used)


@dataclass
class Experiment:
    """A finished experiment loaded for inference: its config, fold models, threshold and prior."""

    name: str
    cfg: Config
    models: list[Detector]
    threshold: float = 0.5  # the experiment's OOF-chosen threshold (metrics.json)
    prior: float = 0.5  # share of AI images in training: the fallback for undecodable images
    load_s: float = 0.0  # seconds spent loading the fold models
    timing: dict = field(default_factory=dict)


def eval_dataset(cfg: Config, paths: list[str], labels: np.ndarray | None = None, cache: ImageCache | None = None,
                 tta: bool = True, crop_store=None) -> ImageDataset:
    """The images as the model sees them at evaluation: tta=True adds the configured native crops or tiles;
    crop_store: an EvalCrops store of this geometry (validation of large images), else decoded each time."""
    transform = build_eval_transform(cfg.data, cfg.tta.crops if tta else 1, cfg.tta.tiles if tta else 0)
    return ImageDataset(paths, labels, transform, cache, encoding=cfg.data.normalize_encoding, crop_store=crop_store)


@torch.no_grad()
def predict_views(model: torch.nn.Module, images: torch.Tensor, transforms: list, autocast=nullcontext,
                  channels_last: bool = False, max_batch: int = 256) -> np.ndarray:
    """Probabilities (views, N, crops) for a uint8 batch (N, C, H, W) or (N, crops, C, H, W).

    The views x N x crops images go through the model at most max_batch at a time (d4 x 5 crops x batch 64 is
    2,560 images: one forward would not fit a 16 GB GPU); logits come back fp32. Each forward's chunk is cut
    from the views as it is needed (never all views at once: 4x4 tiles x hflip x 64 images are 327 MB of uint8),
    the same chunks as slicing the views' concatenation."""
    crops = images.shape[1] if images.ndim == 5 else 1
    flat = images.flatten(0, 1) if images.ndim == 5 else images
    out = []
    for start in range(0, len(transforms) * len(flat), max_batch):
        chunk = views_chunk(flat, transforms, start, max_batch)
        if channels_last:
            chunk = chunk.contiguous(memory_format=torch.channels_last)
        with autocast():
            out.append(model(chunk).float())
    return torch.sigmoid(torch.cat(out)).view(len(transforms), images.shape[0], crops).cpu().numpy()


def views_chunk(flat: torch.Tensor, transforms: list, start: int, size: int) -> torch.Tensor:
    """Rows start..start+size of torch.cat([view(flat) for view in transforms]), building only those rows."""
    n, parts, row = len(flat), [], start
    end = min(start + size, n * len(transforms))
    while row < end:  # one slice per view the rows span
        k, first = divmod(row, n)
        last = min(n, first + end - row)
        parts.append(transforms[k](flat[first:last]).contiguous())  # contiguous, as a slice of the cat was
        row += last - first
    return parts[0] if len(parts) == 1 else torch.cat(parts)


@torch.no_grad()
def predict(model: torch.nn.Module, loader: DataLoader, device: torch.device, views: str = "identity",
            fallback: float = 0.5, amp: torch.dtype | None = None, channels_last: bool = False,
            desc: str = "predict", max_batch: int = 256, dist: Dist = SINGLE) -> Predictions:
    """Run the model over a loader with the named TTA views; the first view is the identity.

    Under torchrun each rank predicts its shard; the shards are gathered by row index (every rank gets every
    row once: the sampler's padding lands on rows already predicted)."""
    model.eval()
    trim()  # the loader forks its workers from this process: give them (and the OS) no retained free heap
    transforms = tta_views(views)
    n = len(loader.dataset)
    prob, prob_id = np.full(n, np.nan), np.full(n, np.nan)
    errors: dict[int, str] = {}
    autocast = (lambda: torch.autocast(device.type, dtype=amp)) if amp else nullcontext
    for images, _, index, error in tqdm(loader, desc=desc, leave=False, mininterval=2, disable=not dist.is_main):
        p = predict_views(model, images.to(device, non_blocking=True), transforms, autocast, channels_last, max_batch)
        if not np.isfinite(p).all():
            raise ConfigError(f"{desc}: the model answered NaN/inf for {int((~np.isfinite(p)).any(axis=(0, 2)).sum())} "
                              f"of {p.shape[1]} image(s): its weights are NaN/inf, as after a training that diverged - "
                              f"lower train.lr (or set train.clip_grad, e.g. 1.0), then rerun with --restart")
        idx = index.numpy()
        prob[idx] = p.mean(axis=(0, 2))
        prob_id[idx] = p[0, :, -1]  # identity view of the centre crop (last of five_crops / tile_crops)
        errors.update({int(i): err for i, err in zip(idx, error) if err})
    if dist.enabled:
        idx = np.flatnonzero(~np.isnan(prob))  # this rank's shard
        full = gather_rows(dist, n, idx, {"prob": prob[idx], "prob_id": prob_id[idx]})
        prob, prob_id = full["prob"], full["prob_id"]
        errors = gather_errors(dist, errors)
    bad = np.fromiter(errors.keys(), dtype=np.int64, count=len(errors))
    prob[bad], prob_id[bad] = fallback, fallback
    assert not np.isnan(prob).any(), "a row got no prediction"
    trim()  # large inference buffers are not needed by what comes next (training, the next fold)
    return Predictions(prob, prob_id, errors)


def predict_dataset(model: Detector, dataset: ImageDataset, cfg: Config, device: torch.device, prior: float,
                    desc: str, views: str | None = None, dist: Dist = SINGLE) -> Predictions:
    """A model's predictions over a dataset with the config's TTA views (or `views`), batch, AMP and layout."""
    loader = make_loader(dataset, cfg, device, train=False, shard=(dist.rank, dist.world))
    return predict(model, loader, device, views or cfg.tta.views, prior, amp_dtype(cfg.train.amp, device),
                   cfg.train.channels_last, desc=desc, max_batch=forward_cap(cfg), dist=dist)


def forward_cap(cfg: Config) -> int:
    """Images per forward pass at inference: tta.max_batch, or the training batch when it is 0 (a CPU forward of
    64 lite0 images at 224 px held ~3.3 GB, as much as a training step of 32: docs/large-photos.md)."""
    return cfg.tta.max_batch or cfg.train.batch_size


def load_experiment(project: Project, name: str, device: torch.device, allow_incomplete: bool = False) -> Experiment:
    """Every fold's best model of a finished experiment, with its saved config, threshold and training prior
    (an unfinished one is refused unless allow_incomplete: see check_finished)."""
    out = project.experiment_dir(name)
    checkpoints = sorted(out.glob("fold*/best.pt"))
    if not checkpoints or not (out / "config.yaml").is_file():
        require_experiment(name, project)  # a name with neither outputs nor a YAML: say which names exist
        raise ConfigError(f"{out}: no fold*/best.pt - run `./run.sh {name}` first")
    cfg = load_saved_config(out / "config.yaml")
    check_finished(out, cfg, name, allow_incomplete)
    t0 = time.perf_counter()
    models = [load_detector(ckpt, device, project) for ckpt in checkpoints]
    return Experiment(name, cfg, models, *threshold_and_prior(out), time.perf_counter() - t0)


ALLOW_INCOMPLETE_HELP = ("use an experiment that is not finished (folds missing, not assembled, or still "
                         "training): fewer fold models and threshold 0.5 instead of the OOF-chosen one; loudly warned")


def unfinished(out: Path, cfg: Config) -> list[str]:
    """What keeps an experiment from being finished ([] when finished): folds without a final best.pt and
    result.json (the folds metrics.json assembled, else every fold the config asks for), no metrics.json (not
    assembled), a training run holding its lock or a fold's."""
    try:
        folds = [int(k) for k in json.loads((out / "metrics.json").read_text())["folds_run"]]
    except (OSError, ValueError, KeyError, TypeError):
        folds = list(cfg.train.folds) or list(range(cfg.folds.n_splits))
    missing = [k for k in folds if not all((out / f"fold{k}" / f).is_file() for f in ("best.pt", "result.json"))]
    problems = [f"fold(s) {', '.join(map(str, missing))} not finished"] if missing else []
    if not (out / "metrics.json").is_file():
        problems.append("not assembled (no metrics.json, so no OOF-chosen threshold)")
    busy = [folder.name for folder in [out, *sorted(out.glob("fold*"))] if lock_held(folder / ".lock")]
    if busy:
        problems.append(f"still training (a run holds the lock of {', '.join(busy)})")
    return problems


def lock_held(file: Path) -> bool:
    """Whether another process holds the flock a training run takes on file (this process's own does not count:
    a finishing run writes its report while holding it)."""
    try:
        fh = open(file)  # noqa: SIM115 - closed below; read-only, never creates the file
    except OSError:
        return False
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return not re.search(rf"\b{os.getpid()}\b", fh.read())
        fcntl.flock(fh, fcntl.LOCK_UN)
    return False


def check_finished(out: Path, cfg: Config, name: str, allow_incomplete: bool) -> None:
    """Refuse an unfinished experiment with the fix; with allow_incomplete, warn loudly and go on."""
    problems = unfinished(out, cfg)
    if problems and not allow_incomplete:
        raise ConfigError(f"{out} is not a finished experiment: {'; '.join(problems)} - finish it (`./run.sh {name}`; "
                          f"`./run.sh assemble {name}` once every fold is done), or pass --allow-incomplete to use it "
                          f"as it is")
    if problems:
        log.warning("USING AN UNFINISHED EXPERIMENT (--allow-incomplete) %s: %s; predictions use the fold models "
                    "present and the threshold %s", name, "; ".join(problems),
                    "0.5 (not OOF-chosen)" if not (out / "metrics.json").is_file() else "of metrics.json")


def threshold_and_prior(out: Path) -> tuple[float, float]:
    """An experiment's OOF-chosen threshold (metrics.json) and training share of AI images (the fallback
    prediction for undecodable images); 0.5 each when the files are missing."""
    metrics_file, oof_file = out / "metrics.json", out / "oof.csv"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    prior = float(pd.read_csv(oof_file)["target"].mean()) if oof_file.is_file() else 0.5
    return float(metrics.get("threshold", 0.5)), prior


def predict_experiment(exp: Experiment, paths: list[str], device: torch.device) -> tuple[np.ndarray, list[str]]:
    """Fold-averaged TTA probabilities for image paths and the decode error per path ('' when fine); with the
    run's tta.adapt_bn each fold model is first adapted on these images (competition.adapt.adapt_models), as the
    run adapted it on its test set."""
    dataset = eval_dataset(exp.cfg, paths)
    t0 = time.perf_counter()
    models = adapt_models(exp.models, eval_dataset(exp.cfg, paths, tta=False), exp.cfg, device, exp.name)
    run = predict_dataset(Averaged(models, as_logit=True), dataset, exp.cfg, device, exp.prior, desc=f"{exp.name} folds")
    exp.timing["predict"] = exp.timing.get("predict", 0.0) + time.perf_counter() - t0
    return run.prob, [run.errors.get(i, "") for i in range(len(paths))]


class Averaged(torch.nn.Module):
    """uint8 images -> the mean over fold models and TTA views of sigmoid(logit): one probability per image.
    as_logit=True returns the logit of that mean (computed in float64), what `predict` expects of a model, so
    each image is decoded and cut once for all folds (benchmarks/onnx_speed.py); `export` writes it to ONNX."""

    def __init__(self, models: list[Detector], views: str = "identity", as_logit: bool = False):
        super().__init__()
        self.models = torch.nn.ModuleList(models)
        self.views = tta_views(views)
        self.as_logit = as_logit

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        dtype = torch.float64 if self.as_logit else torch.float32
        prob = torch.stack([torch.sigmoid(m(view(images)).to(dtype)) for m in self.models for view in self.views]).mean(0)
        return torch.logit(prob.clamp(1e-12, 1 - 1e-12)).float() if self.as_logit else prob


def predict_image(exp: Experiment, image: np.ndarray) -> float:
    """Fold-averaged TTA probability for one decoded RGB image (what `serve` answers)."""
    batch = eval_dataset(exp.cfg, []).prepare(image)
    batch = batch[None]
    transforms = tta_views(exp.cfg.tta.views)
    return float(np.mean([predict_views(m, batch.to(next(m.parameters()).device), transforms,
                                        max_batch=forward_cap(exp.cfg)).mean() for m in exp.models]))



def onnx_session(path: Path, threads: int = 0):
    """An ONNX Runtime CPU session (threads 0 = ORT's default: one per core)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_file(project: Project, name: str, fp16: bool = False) -> Path:
    """experiments/<name>/export/model[.fp16].onnx, written by `./run.sh export` (refused with the fix otherwise)."""
    path = project.experiment_dir(name) / "export" / ("model.fp16.onnx" if fp16 else "model.onnx")
    if not path.is_file():
        require_experiment(name, project)  # a name with neither outputs nor a YAML: say which names exist
        raise ConfigError(f"{path} not found - run `./run.sh export {name}{' --fp16' if fp16 else ''}` first")
    return path


def predict_onnx(project: Project, name: str, paths: list[str], fp16: bool = False, threads: int = 0,
                 allow_incomplete: bool = False) -> tuple[np.ndarray, list[str], dict]:
    """`predict_experiment` through ONNX Runtime: the exported fold-and-view-averaged model on the experiment's eval
    geometry (crops / tiles averaged per image); (probabilities, decode errors, timings {load, predict, threshold})."""
    out = project.experiment_dir(name)
    cfg = load_saved_config(out / "config.yaml")
    check_finished(out, cfg, name, allow_incomplete)
    t0 = time.perf_counter()
    session = onnx_session(onnx_file(project, name, fp16), threads)
    threshold, prior = threshold_and_prior(out)
    if cfg.tta.adapt_bn:
        log.warning("%s: --onnx runs the export's BatchNorm statistics: the run's tta.adapt_bn is NOT applied "
                    "(predictions unadapted); predict without --onnx to adapt on these images", name)
    load_s, t1 = time.perf_counter() - t0, time.perf_counter()
    loader = make_loader(eval_dataset(cfg, paths), cfg, torch.device("cpu"), train=False)
    prob, errors = np.full(len(paths), np.nan), [""] * len(paths)
    for images, _, index, error in tqdm(loader, desc=f"{name} onnx", leave=False, mininterval=2):
        crops = images.shape[1] if images.ndim == 5 else 1
        flat = images.flatten(0, 1) if images.ndim == 5 else images
        p = session.run(None, {"images": flat.numpy()})[0].reshape(len(images), crops).mean(1)
        idx = index.numpy()
        prob[idx] = p
        for i, err in zip(idx, error):
            if err:
                prob[i], errors[i] = prior, err
    return prob, errors, {"load": load_s, "predict": time.perf_counter() - t1, "threshold": threshold}
