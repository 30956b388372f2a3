"""GPU figures in one run (needs CUDA): the kit's train loop, fp32 NCHW vs AMP + channels_last, on an
exp001-sized model (tf_efficientnet_lite0, 32 px x2) and EfficientNet-B0 at 224 px; data-wait share on a real
decode + forensic-augmentation path (generated JPEGs, DataLoader workers); peak GPU memory; and fold-parallel
throughput on 2 GPUs vs 1 when there are two.

    KIT_PYTHON=python3 benchmarks/gpu.sh [--steps 30]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from common import table
from competition.augment import build_train_transform
from competition.config import Config, DataConfig, ModelConfig, TrainConfig
from competition.dataset import ImageDataset, make_loader
from competition.model import amp_dtype, build_model
from competition.project import Project
from competition.train import TrainState, build_scheduler, train_one_epoch

CASES = [("tf_efficientnet_lite0", 32, 2, 256, "exp001-sized: 32 px x2"), ("efficientnet_b0", 224, 1, 64, "224 px")]


def make_jpegs(folder: Path, n: int, side: int) -> list[str]:
    """n random-texture JPEGs of side x side (photo-like size, so decoding costs what it costs)."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        small = rng.integers(0, 256, (side // 8, side // 8, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((side, side), Image.BICUBIC)
        path = folder / f"{i}.jpg"
        img.save(path, quality=90)
        paths.append(str(path))
    return paths


def run(cfg: Config, paths: list[str], device: torch.device, steps: int) -> dict:
    """Two epochs of the kit's loop (warm-up, measured) on real files; img/s, data wait, peak memory."""
    ds = ImageDataset(paths[: cfg.train.batch_size * steps], np.arange(len(paths)) % 2,
                      build_train_transform(cfg.data, seed=0))
    loader = make_loader(ds, cfg, device, train=True)
    model = build_model(cfg.model, Project.from_env()).to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    dtype = amp_dtype(cfg.train.amp, device)
    state = TrainState(model, opt, build_scheduler(opt, cfg, len(loader)),
                       torch.amp.GradScaler(device.type, enabled=dtype == torch.float16), None, dtype)
    cuda = device.type == "cuda"
    train_one_epoch(state, model, loader, cfg, device, "warm-up")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    out = train_one_epoch(state, model, loader, cfg, device, "measured")
    if cuda:
        torch.cuda.synchronize()
    out["peak_gb"] = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else float("nan")
    return out


def config(name: str, size: int, upscale: int, batch: int, fast: bool) -> Config:
    return Config(model=ModelConfig(name=name, pretrained=False, input_upscale=upscale),
                  data=DataConfig(img_size=size, augment="forensic", num_workers=-1),
                  train=TrainConfig(batch_size=batch, epochs=1, amp="auto" if fast else "off", channels_last=fast))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--device", default="cuda:0", help="cpu only to smoke-test this script")
    parser.add_argument("--scale", type=float, default=1.0, help="batch-size factor (a CPU smoke test uses 0.05)")
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(device) if cuda else "CPU (smoke test, not a GPU figure)"
    cap = torch.cuda.get_device_capability(device) if cuda else (0, 0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model, size, upscale, batch, label in CASES:
            batch = max(2, int(batch * args.scale))
            paths = make_jpegs(Path(tmp), batch * args.steps, max(size, 256))
            slow = run(config(model, size, upscale, batch, False), paths, device, args.steps)
            fast = run(config(model, size, upscale, batch, True), paths, device, args.steps)
            rows.append([f"{name} (sm {cap[0]}.{cap[1]})", model, label, batch, slow["train_img_s"],
                         fast["train_img_s"], fast["train_img_s"] / slow["train_img_s"], f"{fast['data_wait']:.1%}",
                         fast["peak_gb"], str(amp_dtype("auto", device)).replace("torch.", "")])
    table("GPU training throughput (images/s, kit loop, real JPEG decode + forensic augmentation)",
          ["GPU", "model", "input", "batch", "fp32 NCHW", "AMP + channels_last", "ratio (goal >= 2.5)",
           "data wait (goal < 10%)", "peak GPU GB", "AMP dtype"], rows)
    if cuda and torch.cuda.device_count() < 2:
        print(f"fold-parallel 2 GPUs vs 1: not measured ({torch.cuda.device_count()} GPU visible)")  # noqa: T201


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    t0 = time.perf_counter()
    main()
    print(f"total {time.perf_counter() - t0:.0f} s")  # noqa: T201
