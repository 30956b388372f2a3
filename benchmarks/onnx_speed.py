"""ONNX Runtime vs eager PyTorch on this CPU for exp001's model (tf_efficientnet_lite0, 32 px CIFAKE crops x2 nearest
upscale, channels_last in eager as the kit runs it), and `predict`'s images/s with model loading timed separately.

    .venv/bin/python benchmarks/onnx_speed.py [--n 2000]

1. One fold model, identity view, real CIFAKE test images: images/s at batch 1 and 32 (ratio ORT / eager).
2. `predict exp001 PATHS` vs `predict exp001 PATHS --onnx` over n test images in a scratch project holding exp001's
   config and five fold checkpoints of that architecture (ImageNet weights, an untrained head: speed does not
   depend on the weights; each fold's weights perturbed so that no two folds are identical), hflip TTA as exp001 runs it; the ONNX model is `./run.sh export`'s model.onnx.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from common import CIFAKE, table
from competition.config import load_config, save_config, to_dict
from competition.export import Averaged, export_experiment, export_verified, onnx_session
from competition.model import build_model
from competition.predict import predict_paths, predict_paths_onnx
from competition.project import REPO, Project


def images(n: int) -> tuple[torch.Tensor, list[str]]:
    """The first n CIFAKE test images (uint8 NCHW) and their paths."""
    from PIL import Image

    paths = [str(CIFAKE / i) for i in pd.read_csv(CIFAKE / "test.csv")["id"].head(n)]
    arr = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous(), paths


def rate(fn, batch: int, seconds: float = 4.0) -> float:
    """Images per second of fn(batch), after a warm-up, repeated for `seconds`."""
    fn()
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        done += batch
    return done / (time.perf_counter() - t0)


def model_rates(cfg, project: Project, x: torch.Tensor, tmp: Path) -> list[list]:
    """Eager vs ORT images/s at batch 1 and 32 for one fold model."""
    model = build_model(cfg.model, project, quiet=True).eval()
    eager = model.to(memory_format=torch.channels_last) if cfg.train.channels_last else model
    export_verified(Averaged([model]), x[:64], tmp / "fold.onnx", opset=17)
    session = onnx_session(tmp / "fold.onnx")
    rows = []
    for batch in (1, 32):
        xb = x[:batch]
        xe = xb.contiguous(memory_format=torch.channels_last) if cfg.train.channels_last else xb
        xn = xb.numpy()

        def run_eager():
            with torch.no_grad():
                torch.sigmoid(eager(xe))

        e, o = rate(run_eager, batch), rate(lambda: session.run(None, {"images": xn}), batch)
        rows.append([batch, round(e, 1), round(o, 1), f"{o / e:.2f}x"])
    return rows


def scratch_project(cfg, tmp: Path) -> Project:
    """A project with exp001's resolved config and five fold checkpoints of its architecture."""
    home = tmp / "project"
    comp = yaml.safe_load((REPO / "competition.yaml").read_text())
    comp["competition"]["data_dir"] = str(CIFAKE)
    (home / "experiments" / "exp001").mkdir(parents=True)
    (home / "competition.yaml").write_text(yaml.safe_dump(comp))
    out = home / "experiments" / "exp001"
    save_config(cfg, out / "config.yaml")
    for k in range(5):
        torch.manual_seed(k)
        model = build_model(cfg.model, Project(REPO), quiet=True)
        torch.nn.init.normal_(model.backbone.get_classifier().weight, std=0.05)
        with torch.no_grad():  # distinct weights per fold, as after fine-tuning: identical backbones would let
            for param in model.parameters():  # ONNX Runtime merge the five folds into one (common subexpressions)
                param.add_(torch.randn_like(param) * 1e-3 * (float(param.std()) if param.numel() > 1 else 1.0))
        (out / f"fold{k}").mkdir()
        torch.save({"config": to_dict(cfg), "model": model.state_dict(), "create_kwargs": model.create_kwargs,
                    "epoch": 0}, out / f"fold{k}" / "best.pt")
    return Project(home)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000, help="test images for the predict comparison")
    args = parser.parse_args()
    cfg = load_config("exp001", [f"competition.data_dir={CIFAKE}"], Project(REPO))
    x, paths = images(max(args.n, 64))
    tmp = Path(tempfile.mkdtemp(prefix="onnx-bench-"))
    try:
        table(f"exp001's model ({cfg.model.name}, {cfg.data.img_size} px x{cfg.model.input_upscale}), one fold, "
              f"identity view, {torch.get_num_threads()} threads: images/s",
              ["batch", "eager PyTorch", "ONNX Runtime", "ORT / eager"], model_rates(cfg, Project(REPO), x, tmp))
        project = scratch_project(cfg, tmp)
        export_experiment(project, "exp001")
        rows = []
        for name, run in (("eager (predict)", lambda: predict_paths(project, "exp001", paths[:args.n],
                                                                     torch.device("cpu"))),
                          ("ONNX Runtime (predict --onnx)", lambda: predict_paths_onnx(project, "exp001",
                                                                                      paths[:args.n]))):
            frame, timing = run()
            rows.append([name, args.n, round(timing["load"], 2), round(timing["predict"], 2),
                         round(args.n / timing["predict"], 1)])
            rows[-1].append(frame["prob"].to_numpy())
        diff = float(np.abs(rows[0].pop() - rows[1].pop()).max())
        table(f"predict exp001 (5 folds x hflip) on {args.n} CIFAKE test images; max |prob difference| {diff:.1e}",
              ["path", "images", "model loading s", "predicting s", "images/s"], rows)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
