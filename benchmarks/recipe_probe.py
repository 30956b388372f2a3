"""Quick recipe probes on CIFAKE before paying for 5-fold runs: a 5,000 / 2,000 split, plain loop, hflip only.

    ../.venv/bin/python recipe_probe.py regnetx_002:2:2 regnetx_002:4:2 regnetx_002:2:2:0.002:hp

Each argument is model:upscale:epochs[:lr[:hp]] (hp = the high-pass input of model.input_filter). Prints
validation AUC/accuracy and seconds per probe; the first probe is the baseline the others are read against.
Not the kit's loop (no forensic augmentation, no TTA): use it to rank recipes, never to quote an OOF score.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.metrics import roc_auc_score

from competition.model import highpass

SHARED = Path(__file__).resolve().parents[2] / "shared"
ROOT = SHARED / "competitions" / "cifake"
N_TRAIN, N_VAL, BATCH = 5000, 2000, 64


def load() -> tuple[np.ndarray, np.ndarray]:
    """7,000 CIFAKE training images (seeded sample) as uint8 NHWC, and their labels."""
    frame = pd.read_csv(ROOT / "train.csv").sample(N_TRAIN + N_VAL, random_state=0)
    images = np.stack([np.asarray(Image.open(ROOT / f).convert("RGB")) for f in frame["file_name"]])
    return images, frame["label"].to_numpy(np.float32)


def make(name: str) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """The backbone with local ImageNet weights (../shared/weights), one logit, and its mean/std."""
    entry = next(m for m in json.loads((SHARED / "weights" / "models.json").read_text())["models"]
                 if m["timm_model"] == name)
    model = timm.create_model(name, pretrained=True, num_classes=1, **entry["create_model_kwargs"],
                              pretrained_cfg_overlay={"file": str(SHARED / "weights" / entry["file"])})
    return model, torch.tensor(entry["mean"]).view(1, 3, 1, 1), torch.tensor(entry["std"]).view(1, 3, 1, 1)


def prepare(batch: np.ndarray, up: int, mean: torch.Tensor, std: torch.Tensor, hp: bool) -> torch.Tensor:
    """uint8 NHWC -> normalised (or high-pass), nearest-upscaled, channels_last float."""
    x = (torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255 - mean) / std
    x = highpass(x) if hp else x
    x = F.interpolate(x, scale_factor=up, mode="nearest") if up > 1 else x
    return x.contiguous(memory_format=torch.channels_last)


def probe(data: tuple, name: str, up: int, epochs: int, lr: float, hp: bool) -> None:
    """Train on the first 5,000 images, score the last 2,000; one line."""
    (images, labels), rng = data, np.random.default_rng(0)
    torch.manual_seed(0)
    model, mean, std = make(name)
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * (N_TRAIN // BATCH), pct_start=0.1)
    start = time.time()
    for _ in range(epochs):
        model.train()
        order = rng.permutation(N_TRAIN)
        for i in range(0, N_TRAIN - BATCH + 1, BATCH):
            rows = order[i:i + BATCH]
            batch = images[rows].copy()
            flip = rng.random(BATCH) < 0.5
            batch[flip] = batch[flip, :, ::-1]
            loss = F.binary_cross_entropy_with_logits(model(prepare(batch, up, mean, std, hp)).squeeze(1),
                                                      torch.from_numpy(labels[rows]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        prob = torch.cat([torch.sigmoid(model(prepare(images[i:i + 256], up, mean, std, hp))).squeeze(1)
                          for i in range(N_TRAIN, N_TRAIN + N_VAL, 256)]).numpy()
    target = labels[N_TRAIN:]
    print(f"{name} x{up} {epochs} epochs lr {lr:g}{' highpass' if hp else ''}: AUC {roc_auc_score(target, prob):.4f} "
          f"accuracy {((prob > 0.5) == target).mean():.4f} {time.time() - start:.0f}s", flush=True)


if __name__ == "__main__":
    torch.set_num_threads(2)
    loaded = load()
    for arg in sys.argv[1:]:
        name, up, epochs, *rest = arg.split(":")
        probe(loaded, name, int(up), int(epochs), float(rest[0]) if rest else 2e-3, len(rest) > 1)
