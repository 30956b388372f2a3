"""The script a Kaggle kernel runs (written by `./run.sh kaggle push`, SETTINGS filled in): install the kit
offline from its bundle dataset, train one experiment on the competition's data, pack the outputs.

Standard library only: it runs before anything is installed. Where Kaggle mounts inputs and keeps outputs
can be moved with KIT_KAGGLE_INPUT / KIT_KAGGLE_WORKING (what the tests do to run it on this machine).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

SETTINGS: dict = {}  # replaced by competition.kaggle_kernel at push: experiment, competition slug, train_csv, bundle slug


def log(message: str) -> None:
    """One timestamped line on the kernel's log."""
    print(time.strftime("%H:%M:%S"), "kit-job:", message, flush=True)  # noqa: T201


def find_dir(root: Path, marker: str, depth: int = 4, want: dict | None = None) -> Path | None:
    """The first folder under root (breadth first, up to depth) holding the file `marker` (whose JSON has the
    `want` items, when given)."""
    level = [root]
    for _ in range(depth + 1):
        nxt = []
        for folder in sorted(level):
            if (folder / marker).is_file():
                if not want:
                    return folder
                try:
                    data = json.loads((folder / marker).read_text())
                except ValueError:
                    data = {}
                if all(data.get(k) == v for k, v in want.items()):
                    return folder
            nxt += [p for p in folder.iterdir() if p.is_dir()] if folder.is_dir() else []
        level = nxt
    return None


def locate_inputs(inputs: Path, s: dict) -> tuple[Path, Path]:
    """(bundle folder, competition data folder) under Kaggle's input mount."""
    bundle = find_dir(inputs, "kit-bundle.json", want={"experiment": s["experiment"]})
    if bundle is None:
        raise SystemExit(f"kit-job: no bundle of {s['experiment']} (kit-bundle.json) under {inputs}; attach the "
                         f"dataset {s['bundle']} to the kernel")
    data = inputs / s["slug"]
    if not (data / s["train_csv"]).is_file():
        data = find_dir(inputs, s["train_csv"]) if s["train_csv"] else data
    if data is None or not data.is_dir():
        raise SystemExit(f"kit-job: the competition's data ({s['train_csv']}) is not under {inputs}; attach the "
                         f"competition {s['slug']} to the kernel")
    return bundle, data


def unpack(bundle: Path, scratch: Path) -> dict[str, Path]:
    """The bundle's kit/, wheels/ and weights/ folders; a sub-folder Kaggle kept as <name>.zip is extracted into
    scratch (the input mount is read-only)."""
    parts = {}
    for name in ("kit", "wheels", "weights"):
        folder, archive = bundle / name, bundle / f"{name}.zip"
        if not folder.is_dir() and archive.is_file():
            folder = scratch / "bundle" / name
            shutil.unpack_archive(archive, folder)
        parts[name] = folder
    return parts


def install(bundle: Path, wheels: Path) -> None:
    """pip install the kit's requirements from the bundle's wheels only (no registry)."""
    cmd = [sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(wheels),
           "-r", str(bundle / "requirements.txt"), "--quiet", "--disable-pip-version-check"]
    log(" ".join(cmd))
    subprocess.run(cmd, check=True)


def gpu_count() -> int:
    """CUDA devices torch sees (0 without torch or GPU)."""
    probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.device_count())"],
                           capture_output=True, text=True)
    try:
        return int(probe.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return 0


def train(weights: Path, data: Path, home: Path, scratch: Path, s: dict, gpus: int) -> int:
    """Run the experiment (one fold per GPU when there are several); return its exit code."""
    overrides = [f"competition.data_dir={data}", f"model.weights_dir={weights}", f"data.cache_dir={scratch / 'cache'}"]
    if s.get("pretrained_file"):
        overrides.append(f"model.pretrained_file={weights / s['pretrained_file']}")
    devices = ["--devices", ",".join(map(str, range(gpus)))] if gpus > 1 else []
    cmd = [sys.executable, "-m", "competition.experiment", s["experiment"], *overrides, *devices]
    env = {**os.environ, "KIT_HOME": str(home), "PYTHONPATH": str(home), "OMP_WAIT_POLICY": "PASSIVE"}
    log(f"{gpus} GPU(s); " + " ".join(cmd))
    return subprocess.run(cmd, env=env, cwd=home).returncode


def pack(home: Path, working: Path, name: str, meta: dict) -> Path:
    """experiments/<name>/ (without the resume-only last.pt) and folds/ into <working>/<name>.tar, plus a
    kit-job.json describing the run."""
    out = working / f"{name}.tar"
    tmp = out.with_suffix(".tar.tmp")
    with tarfile.open(tmp, "w") as tar:
        exp = home / "experiments" / name
        if exp.is_dir():
            tar.add(exp, arcname=f"experiments/{name}", filter=lambda t: None if t.name.endswith("last.pt") else t)
        if (home / "folds").is_dir():
            tar.add(home / "folds", arcname="folds")
    tmp.rename(out)
    (working / "kit-job.json").write_text(json.dumps(meta, indent=1))
    return out


def run_job() -> int:
    """Install, train, pack; the exit code is the training's."""
    s = SETTINGS
    inputs = Path(os.environ.get("KIT_KAGGLE_INPUT", "/kaggle/input"))
    working = Path(os.environ.get("KIT_KAGGLE_WORKING", "/kaggle/working"))
    bundle, data = locate_inputs(inputs, s)
    log(f"bundle {bundle}, competition data {data}")
    scratch = Path(tempfile.mkdtemp(prefix="kit-"))  # not /kaggle/working: caches must not become outputs
    parts = unpack(bundle, scratch)
    install(bundle, parts["wheels"])
    home = scratch / "kit"
    shutil.copytree(parts["kit"], home)
    t0, code, gpus = time.time(), 1, gpu_count()
    try:
        code = train(parts["weights"], data, home, scratch, s, gpus)
    finally:
        meta = {"experiment": s["experiment"], "returncode": code, "minutes": round((time.time() - t0) / 60, 2),
                "gpus": gpus, "python": sys.version.split()[0]}
        log(f"packed {pack(home, working, s['experiment'], meta)} (exit {code})")
    return code


if __name__ == "__main__":
    sys.exit(run_job())
