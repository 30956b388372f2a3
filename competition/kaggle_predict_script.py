"""The script an inference kernel runs (written by `./run.sh kaggle push <blend|exp> --inference`, SETTINGS filled
in): find the inference bundle and the competition's data under Kaggle's input mount, install the kit offline,
predict the test set as Kaggle mounts it (hidden test images included, in a code competition's rerun) with
`python -m competition.kaggle_predict`, and leave <working>/submission.csv: the submission.

Standard library only: it runs before anything is installed. It finds the bundle by its kit-bundle.json, then
borrows the training kernel's helpers (competition/kaggle_script.py: the marker search, the offline install) from
the bundled kit. KIT_KAGGLE_INPUT / KIT_KAGGLE_WORKING move Kaggle's /kaggle/input and /kaggle/working (the tests).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

SETTINGS: dict = {}  # replaced at push by competition.kaggle_inference: target, slug, markers, bundle slug
MANIFEST = "kit-bundle.json"


def find_bundle(inputs: Path, target: str, depth: int = 4) -> Path:
    """The folder under inputs (up to depth levels) whose kit-bundle.json is the inference bundle of target."""
    level = [inputs]
    for _ in range(depth + 1):
        for folder in sorted(level):
            try:
                if json.loads((folder / MANIFEST).read_text()).get("inference") == target:
                    return folder
            except (OSError, ValueError, AttributeError):
                pass
        level = [p for folder in level if folder.is_dir() for p in folder.iterdir() if p.is_dir()]
    raise SystemExit(f"kit-predict: no inference bundle of {target} ({MANIFEST}) under {inputs}; attach the "
                     f"dataset {SETTINGS.get('bundle')} to the kernel")


def part(bundle: Path, name: str, scratch: Path) -> Path:
    """The bundle's sub-folder `name`, or its <name>.zip (Kaggle's `-r zip` upload) extracted into scratch."""
    folder, archive = bundle / name, bundle / f"{name}.zip"
    if not folder.is_dir() and archive.is_file():
        folder = scratch / "bundle" / name
        shutil.unpack_archive(archive, folder)
    return folder


def find_data(inputs: Path, s: dict, find_dir) -> Path:
    """The competition's data folder: <inputs>/<slug> when it holds a marker (sample submission, test table or
    test folder), else the first folder under inputs holding the first marker (kaggle_script's search)."""
    markers = [m for m in s["markers"] if m]
    if any((inputs / s["slug"] / m).exists() for m in markers):
        return inputs / s["slug"]
    found = next((d for d in (find_dir(inputs, m) for m in markers) if d is not None), None)
    if found is None:
        raise SystemExit(f"kit-predict: the competition's data ({', '.join(markers)}) is not under {inputs}; attach "
                         f"the competition {s['slug']} to the kernel")
    return found


def run_job() -> int:
    """Install offline, predict the test set, write submission.csv; the exit code is the prediction's."""
    s = SETTINGS
    inputs = Path(os.environ.get("KIT_KAGGLE_INPUT", "/kaggle/input"))
    working = Path(os.environ.get("KIT_KAGGLE_WORKING", "/kaggle/working"))
    bundle = find_bundle(inputs, s["target"])
    scratch = Path(tempfile.mkdtemp(prefix="kit-"))  # not /kaggle/working: only submission.csv is an output
    home = scratch / "kit"
    shutil.copytree(part(bundle, "kit", scratch), home)
    for path in [home, *home.rglob("*")]:  # copied from a read-only mount: the kit writes its ledger and caches here
        path.chmod(path.stat().st_mode | stat.S_IWUSR)
    sys.path.insert(0, str(home))
    from competition import kaggle_script as job  # stdlib only: importable before the install

    data = find_data(inputs, s, job.find_dir)
    job.log(f"inference bundle {bundle}, competition data {data}")
    job.install(bundle, part(bundle, "wheels", scratch))
    working.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "competition.kaggle_predict", s["target"], f"competition.data_dir={data}",
           "--out", str(working / "submission.csv"), "--force"]
    env = {**os.environ, "KIT_HOME": str(home), "PYTHONPATH": str(home), "OMP_WAIT_POLICY": "PASSIVE"}
    job.log(" ".join(cmd))
    code = subprocess.run(cmd, env=env, cwd=home).returncode
    job.log(f"exit {code}; submission {'written' if (working / 'submission.csv').is_file() else 'NOT written'}")
    return code


if __name__ == "__main__":
    sys.exit(run_job())
