"""Export an experiment's fold models to ONNX, verified against PyTorch, for deployment without the kit.

    python -m competition.export exp012 [--onnx] [--fp16] [--opset 17]
    ./run.sh export exp012 --fp16

Writes experiments/<exp>/export/:
  fold{k}.onnx      one fold model: uint8 images -> probability of AI-generated (identity view)
  model.onnx        every fold model and the experiment's TTA views (hflip / d4) averaged: the probability the
                    kit predicts for one crop; `predict exp012 PATHS --onnx` runs it with onnxruntime
  model.fp16.onnx   (--fp16) the same in half precision (weights and activations; inputs and output unchanged)
  export.json       opset, exporter, input spec, and the measured max |prob difference| against PyTorch
Input: uint8 NCHW RGB, 3 x img_size x img_size, dynamic batch axis; normalisation and input_upscale are inside
the graph. The caller cuts the eval geometry (centre crop; with tta.crops 5 or tta.tiles, each crop is one row
and the probabilities are averaged per image), as `predict --onnx` does. Each file is checked on real images of
the competition against eager PyTorch: the legacy (TorchScript) exporter first, the dynamo exporter when the
legacy one fails or does not verify. A file that does not verify is not kept. An unfinished experiment (a fold
missing, not assembled, or still training) is refused with the fix; --allow-incomplete exports it anyway, loudly.
"""

from __future__ import annotations

import logging
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from competition import cli, options
from competition.atomic import atomic_path, write_json
from competition.config import Config
from competition.errors import KitError
from competition.inference import (ALLOW_INCOMPLETE_HELP, Averaged, Experiment, eval_dataset, load_experiment,
                                   onnx_session)
from competition.paths import experiment_arg
from competition.project import Project

log = logging.getLogger(__name__)
OPSET = 17  # explicit: ONNX Runtime >= 1.14 and TensorRT 8.6 read it; the dynamo exporter may raise it to 18
FP32_TOL = 1e-4  # max |prob difference| allowed between ONNX Runtime and PyTorch in fp32
FP16_TOL = 2e-2  # ... in fp16 (10 bits of mantissa through a deep network)


class ExportError(KitError, RuntimeError):
    """The model could not be exported or did not verify; the message says which and by how much."""


def sample_images(cfg: Config, project: Project, n: int = 64) -> torch.Tensor:
    """n real test images of the competition in the eval geometry (centre crops), or random pixels when the
    competition's data is not here."""
    from competition.tables import load_test_table

    size = cfg.data.img_size
    try:
        paths = load_test_table(cfg.competition, project)["path"].tolist()[:n]
    except KitError as err:
        log.warning("verifying on random pixels: the competition's test images are not here (%s)", err)
        paths = []
    if not paths:
        return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    dataset = eval_dataset(cfg, paths, tta=False)
    return torch.stack([dataset[i][0] for i in range(len(dataset))])


def max_difference(path: Path, module: nn.Module, images: torch.Tensor) -> float:
    """max |ONNX Runtime - PyTorch| probability over images (run in two uneven batches: the batch axis is dynamic)."""
    session = onnx_session(path)
    split = max(1, len(images) // 3)
    got = np.concatenate([session.run(None, {"images": part.numpy()})[0] for part in (images[:split], images[split:])])
    with torch.no_grad():
        want = module(images).float().numpy()
    return float(np.abs(got.astype(np.float64) - want).max())


def export_legacy(module: nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    """torch.onnx.export with the TorchScript exporter, batch axis dynamic."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), str(path), dynamo=False, opset_version=opset, input_names=["images"],
                          output_names=["prob"], dynamic_axes={"images": {0: "batch"}, "prob": {0: "batch"}})


def export_dynamo(module: nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    """torch.onnx.export through torch.export (dynamo), batch axis dynamic."""
    batch = torch.export.Dim("batch", min=1, max=65536)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, (example,), dynamo=True, opset_version=max(opset, 18),
                                    input_names=["images"], output_names=["prob"],
                                    dynamic_shapes={"images": {0: batch}}, verbose=False)
        program.save(str(path))


def export_verified(module: nn.Module, images: torch.Tensor, path: Path, opset: int) -> dict:
    """Export module to path (atomically) with the first exporter whose file verifies within FP32_TOL."""
    module = module.eval().to(memory_format=torch.contiguous_format)
    failures = []
    for name, exporter in (("legacy", export_legacy), ("dynamo", export_dynamo)):
        t0 = time.perf_counter()
        try:
            with atomic_path(path) as tmp:
                exporter(module, images[:2], tmp, opset)
                diff = max_difference(tmp, module, images)
                if not diff <= FP32_TOL:
                    raise ExportError(f"max |prob difference| {diff:.2e} > {FP32_TOL:g}")
        except Exception as err:  # noqa: BLE001 - exporters raise many types; the next one is tried
            failures.append(f"{name}: {type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}")
            continue
        if name == "dynamo" and opset < 18:
            log.warning("%s: exported by the dynamo exporter at opset 18, not the %d asked for (the legacy exporter "
                        "failed: %s)", path.name, opset, failures[-1])
        return {"file": path.name, "exporter": name, "opset": opset if name == "legacy" else max(opset, 18),
                "max_abs_diff": diff, "seconds": round(time.perf_counter() - t0, 1)}
    raise ExportError(f"{path.name}: no exporter produced a verified model ({'; '.join(failures)})")


def convert_fp16(src: Path, dest: Path, module: nn.Module, images: torch.Tensor) -> dict:
    """model.onnx -> half precision (inputs and output kept), checked within FP16_TOL where ORT's CPU runs it."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    half = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    with atomic_path(dest) as tmp:
        onnx.save(half, str(tmp))
        try:
            diff = max_difference(tmp, module, images)
        except Exception as err:  # noqa: BLE001 - a CPU build may lack fp16 kernels; the GPU provider has them
            log.warning("%s: not verifiable with ONNX Runtime's CPU provider (%s)", dest.name, type(err).__name__)
            return {"file": dest.name, "max_abs_diff": None, "verified": False}
        if not diff <= FP16_TOL:
            raise ExportError(f"{dest.name}: fp16 max |prob difference| {diff:.2e} > {FP16_TOL:g}; use model.onnx")
    return {"file": dest.name, "max_abs_diff": diff, "verified": True}


def export_experiment(project: Project, name: str, fp16: bool = False, opset: int = OPSET,
                      allow_incomplete: bool = False) -> dict:
    """Every fold model, the averaged model (and its fp16 copy) into experiments/<name>/export/; export.json."""
    exp: Experiment = load_experiment(project, name, torch.device("cpu"), allow_incomplete)
    out = project.experiment_dir(name) / "export"
    out.mkdir(exist_ok=True)
    images = sample_images(exp.cfg, project)
    files = [export_verified(Averaged([m]), images, out / f"fold{k}.onnx", opset) for k, m in enumerate(exp.models)]
    averaged = Averaged(exp.models, exp.cfg.tta.views)
    files.append(export_verified(averaged, images, out / "model.onnx", opset))
    if fp16:
        files.append(convert_fp16(out / "model.onnx", out / "model.fp16.onnx", averaged, images))
    size = exp.cfg.data.img_size
    info = {"experiment": name, "input": {"name": "images", "dtype": "uint8", "shape": ["batch", 3, size, size],
                                          "layout": "NCHW RGB"},
            "output": {"name": "prob", "dtype": "float32", "shape": ["batch"], "meaning": "P(AI-generated)"},
            "views": exp.cfg.tta.views, "folds": len(exp.models), "threshold": exp.threshold,
            "geometry": {"crops": exp.cfg.tta.crops, "tiles": exp.cfg.tta.tiles, "augment": exp.cfg.data.augment},
            "verified_on": f"{len(images)} images", "torch": torch.__version__, "files": files}
    write_json(out / "export.json", info)
    for f in files:
        log.info("%s: %s exporter, max |prob difference| vs PyTorch %s", f["file"], f.get("exporter", "fp16"),
                 f"{f['max_abs_diff']:.1e}" if f.get("max_abs_diff") is not None else "not measured")
    return info


def main(argv: list[str] | None = None, project: Project | None = None) -> int:
    """CLI entry point."""
    parser = cli.parser(__doc__)
    parser.add_argument("experiment")
    parser.add_argument("--onnx", action="store_true", help="ONNX (the only format; accepted for clarity)")
    parser.add_argument("--fp16", action="store_true", help="also write model.fp16.onnx")
    parser.add_argument("--allow-incomplete", action="store_true", help=ALLOW_INCOMPLETE_HELP)
    parser.add_argument("--opset", type=options.number(int, ge=9, le=23), default=OPSET,
                        help=f"ONNX opset (default {OPSET})")
    args = parser.parse_args(argv)

    def body() -> int:
        nonlocal project
        project = project or Project.from_env()  # inside cli.run: a bad KIT_HOME is one ERROR line
        args.experiment = experiment_arg(args.experiment, project)  # a name, or its YAML typed from anywhere
        info = export_experiment(project, args.experiment, args.fp16, args.opset, args.allow_incomplete)
        log.info("exported %d file(s) to %s; predict with: ./run.sh predict %s PATH --onnx", len(info["files"]),
                 project.experiment_dir(args.experiment) / "export", args.experiment)
        return 0

    return cli.run(body)


if __name__ == "__main__":
    sys.exit(main())
