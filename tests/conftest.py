"""Shared fixtures: small real competitions built from ../shared, and runners for the kit's CLIs.

`call_kit` runs a CLI's `main()` in this process against a `Project` (fast: no interpreter or torch start-up);
`run_kit` runs it as a real subprocess, as a user would, and is kept for the tests that exercise the CLIs
themselves (exit codes, stderr, signals, servers).
"""

from __future__ import annotations

import importlib
import io
import logging
import os
import shutil
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import yaml

from competition.cli import LOG_FORMAT
from competition.project import Project

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
CIFAKE = SHARED / "competitions" / "cifake"
FACES = SHARED / "datasets" / "faces_tpdne_ffhq"
WEIGHTS = SHARED / "weights"
PROJECT = Project(REPO)  # for tests that pass absolute paths everywhere


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: trains real models end to end (deselect with -m 'not slow')")


def write_yaml(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def make_competition(home: Path, n_per_class: int = 20, n_test: int = 12, **competition) -> Path:
    """A Kaggle-layout copy of a few CIFAKE images under home/data plus competition.yaml (KIT_HOME layout)."""
    train = pd.read_csv(CIFAKE / "train.csv", index_col=0)
    picked = pd.concat([train[train["label"] == k].head(n_per_class) for k in (0, 1)]).sample(frac=1, random_state=0)
    test = pd.read_csv(CIFAKE / "test.csv", index_col=0).head(n_test)
    data = home / "data"
    for rel in list(picked["file_name"]) + list(test["id"]):
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(CIFAKE / rel, data / rel)
    picked.reset_index(drop=True).to_csv(data / "train.csv")
    test.reset_index(drop=True).to_csv(data / "test.csv")
    pd.DataFrame({"id": test["id"], "label": 0}).to_csv(data / "sample_submission.csv", index=False)
    comp = {"name": "tiny", "data_dir": str(data), "metric": "auc", **competition}
    folds = {"n_splits": 2, "seed": 0, "shift_check": False}  # the shift check has its own tests (test_shift_twins)
    write_yaml(home / "competition.yaml", {"competition": comp, "folds": folds, "model": {"weights_dir": str(WEIGHTS)}})
    return home


def smoke_experiment(home: Path, name: str, model: str = "tf_mobilenetv3_small_100", **sections) -> Path:
    """A tiny, fast experiment config: 32 px native crops, 1 epoch, local ImageNet weights."""
    cfg = {"model": {"name": model, "weights_dir": str(WEIGHTS)},
           "data": {"img_size": 32, "augment": "forensic", "cache_dir": str(home / ".cache")},
           "train": {"epochs": 1, "batch_size": 8, "lr": 1e-3, "threads": 1},
           "tta": {"views": "hflip"}}
    for section, values in sections.items():
        cfg.setdefault(section, {}).update(values)
    return write_yaml(home / "experiments" / f"{name}.yaml", cfg)


def run_kit(home: Path, *args: str, timeout: int = 600, check: bool = True) -> subprocess.CompletedProcess:
    """Run `python -m competition.<module> args` in a subprocess against the project folder `home`."""
    env = {**os.environ, "KIT_HOME": str(home), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", *args], cwd=home, env=env, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


@dataclass
class Result:
    """What a CLI call left: exit code, what it printed, what it logged (stderr)."""

    returncode: int
    stdout: str
    stderr: str


def call_kit(home: Path, module: str, *args: str, check: bool = True) -> Result:
    """Run `competition.<module>.main(args)` in this process against Project(home), capturing output and logs."""
    import torch

    main = importlib.import_module(module).main
    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root, threads, cwd = logging.getLogger(), torch.get_num_threads(), os.getcwd()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        os.chdir(home)
        with redirect_stdout(out), redirect_stderr(err):
            try:
                code = main(list(args), project=Project(home))
            except SystemExit as exc:  # argparse errors
                code = exc.code if isinstance(exc.code, int) else 2
    finally:
        os.chdir(cwd)
        root.removeHandler(handler)
        root.setLevel(old_level)
        torch.set_num_threads(threads)
    result = Result(code, out.getvalue(), err.getvalue())
    if check and code != 0:
        raise AssertionError(f"{module} {' '.join(args)} exited {code}:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A project folder with a tiny real competition (20 + 20 train images, 12 test)."""
    return make_competition(tmp_path)
