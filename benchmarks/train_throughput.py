"""Training throughput: the kit's train loop vs a plain fp32 NCHW PyTorch loop, same model/batch/data.

    .venv/bin/python benchmarks/train_throughput.py [--steps 8]
On CUDA the kit side uses AMP (bf16) + channels_last; on CPU channels_last and fp32.
"""

from __future__ import annotations

import argparse
import time

import timm
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from common import table
from competition.config import Config, DataConfig, ModelConfig, TrainConfig
from competition.model import amp_dtype, build_model, pick_device
from competition.project import Project
from competition.train import TrainState, build_scheduler, train_one_epoch


class Synthetic(Dataset):
    """n uint8 images of one size (the kit's data contract: uint8 CHW, label, index, error)."""

    def __init__(self, n: int, size: int):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
        self.y = (torch.arange(n) % 2).float()

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i], i, ""


def kit_rate(cfg: Config, ds: Dataset, device) -> tuple[float, float]:
    model = build_model(cfg.model, Project.from_env()).to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loader = DataLoader(ds, batch_size=cfg.train.batch_size, shuffle=True, drop_last=True)
    sched = build_scheduler(opt, cfg, len(loader))
    dtype = amp_dtype("auto", device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    state = TrainState(model, opt, sched, scaler, None, dtype)
    train_one_epoch(state, model, loader, cfg, device, "warm-up")
    out = train_one_epoch(state, model, loader, cfg, device, "kit")
    return out["train_img_s"], out["data_wait"]


def plain_rate(name: str, ds: Synthetic, batch: int, upscale: int, device) -> float:
    """The seeds' style: float32 normalised tensors, NCHW, fp32, loss.item() every step."""
    model = timm.create_model(name, pretrained=False, num_classes=1).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    xs = ((ds.x.float() / 255.0) - 0.5) / 0.5
    if upscale > 1:
        xs = F.interpolate(xs, scale_factor=upscale, mode="nearest")
    loader = DataLoader(list(zip(xs, ds.y)), batch_size=batch, shuffle=True, drop_last=True)

    def epoch() -> int:
        model.train()
        seen = 0
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            loss = F.binary_cross_entropy_with_logits(model(x).squeeze(1), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss.item()
            seen += len(x)
        return seen
    epoch()
    start = time.perf_counter()
    n = epoch()
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--model", default="tf_efficientnet_lite0")
    args = parser.parse_args()
    device = pick_device("auto")
    torch.set_num_threads(torch.get_num_threads())
    rows = []
    for size, upscale, batch in ((224, 1, 32), (32, 2, 64)):
        ds = Synthetic(batch * args.steps, size)
        cfg = Config(model=ModelConfig(name=args.model, pretrained=False, input_upscale=upscale),
                     data=DataConfig(img_size=size), train=TrainConfig(batch_size=batch, epochs=1))
        kit, wait = kit_rate(cfg, ds, device)
        nchw = Config(model=cfg.model, data=cfg.data, train=TrainConfig(batch_size=batch, epochs=1, channels_last=False))
        kit_nchw, _ = kit_rate(nchw, ds, device)
        plain = plain_rate(args.model, ds, batch, upscale, device)
        label = f"{size}px" + (f" x{upscale} (exp001)" if upscale > 1 else "")
        rows.append([args.model, label, device.type, plain, kit_nchw, kit, kit / plain, f"{wait:.1%}"])
    table("Training throughput (images/s)", ["model", "input", "device", "plain fp32 NCHW loop",
                                             "kit, channels_last off", "kit (channels_last)", "ratio kit/plain",
                                             "kit data wait"], rows)


if __name__ == "__main__":
    main()
