"""Test-time inference: the kit's batched TTA (all views in one forward) vs a plain loop, 1/2/8 views.

    .venv/bin/python benchmarks/inference.py [--n 1024]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.data import DataLoader

from common import table
from competition.augment import tta_views, view_names
from competition.config import ModelConfig
from competition.inference import predict
from competition.model import build_model
from competition.project import Project
from train_throughput import Synthetic


def plain(model, ds, views: str) -> float:
    """One forward per view, float32 NCHW, model on default memory format."""
    loader = DataLoader(ds, batch_size=128)
    start = time.perf_counter()
    with torch.no_grad():
        for x, *_ in loader:
            for view in tta_views(views):
                torch.sigmoid(model(view(x)))
    return len(ds) / (time.perf_counter() - start)


def kit(model, ds, views: str) -> float:
    loader = DataLoader(ds, batch_size=128)
    start = time.perf_counter()
    predict(model, loader, torch.device("cpu"), views, channels_last=True)
    return len(ds) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1024)
    args = parser.parse_args()
    ds = Synthetic(args.n, 32)
    rows = []
    base = build_model(ModelConfig(name="tf_efficientnet_lite0", pretrained=False, input_upscale=2), Project.from_env()).eval()
    fast = build_model(ModelConfig(name="tf_efficientnet_lite0", pretrained=False, input_upscale=2), Project.from_env()).eval()
    fast = fast.to(memory_format=torch.channels_last)
    for views in view_names():  # every registered view set
        p, k = plain(base, ds, views), kit(fast, ds, views)
        rows.append([views, len(tta_views(views)), p, k, k / p])
    table("Inference with TTA, tf_efficientnet_lite0 32px x2 (images/s, each image counted once)",
          ["views", "n", "plain loop", "kit", "ratio"], rows)


if __name__ == "__main__":
    main()
