"""`./run.sh kaggle push|status|pull` against a fake `kaggle` on PATH that records its arguments and the folders it
was given; the pushed kernel script is then run here as Kaggle would run it (its inputs mounted from what the fake
received), and pull brings the outputs back. No network."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import REPO, call_kit, make_competition, smoke_experiment

KEY = "topsecret-kaggle-key-123"
FAKE = r'''#!/usr/bin/env python3
import json, os, shutil, sys
from pathlib import Path
state = Path(os.environ["FAKE_KAGGLE_DIR"])
args = sys.argv[1:]
with open(state / "calls.jsonl", "a") as fh:
    fh.write(json.dumps(args) + "\n")
print("debug: using key " + os.environ.get("KAGGLE_KEY", ""))  # a leaky CLI: the kit must mask this
verb = " ".join(args[:2])
def folder():
    return Path(args[args.index("-p") + 1])
if verb == "datasets status":
    if (state / "dataset").is_dir():
        print("ready"); sys.exit(0)
    print("404 Client Error: Not Found for url", file=sys.stderr); sys.exit(1)
if verb in ("datasets create", "datasets version"):
    shutil.rmtree(state / "dataset", ignore_errors=True)
    shutil.copytree(folder(), state / "dataset", symlinks=True)
    print("Dataset version is being created. Please check progress at https://www.kaggle.com/datasets/x"); sys.exit(0)
if verb == "kernels push":
    shutil.rmtree(state / "kernel", ignore_errors=True)
    shutil.copytree(folder(), state / "kernel")
    meta = json.loads((folder() / "kernel-metadata.json").read_text())
    print("Kernel version 1 successfully pushed.  Please check progress at https://www.kaggle.com/code/" + meta["id"])
    sys.exit(0)
if verb == "kernels status":
    print('%s has status "%s"' % (args[2], os.environ.get("FAKE_KERNEL_STATUS", "KernelWorkerStatus.COMPLETE")))
    sys.exit(0)
if verb == "kernels output":
    for item in (state / "output").iterdir():
        shutil.copy2(item, folder() / item.name)
    (folder() / (args[2].split("/")[1] + ".log")).write_text("[log]")
    sys.exit(0)
print("unknown command", file=sys.stderr); sys.exit(1)
'''


def install_fake_kaggle(root: Path, script: str) -> tuple[Path, Path]:
    """root/bin/kaggle running `script` with this interpreter, and root/fake for its records: (bin folder, records)."""
    bin_dir, state = root / "bin", root / "fake"
    bin_dir.mkdir()
    state.mkdir()
    exe = bin_dir / "kaggle"
    exe.write_text(script.replace("#!/usr/bin/env python3", f"#!{sys.executable}", 1))
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return bin_dir, state


@pytest.fixture(scope="module")
def kaggle_env(tmp_path_factory):
    """A project, a fake kaggle on PATH with its state folder, and a runner of the kit's CLIs in a subprocess."""
    root = tmp_path_factory.mktemp("kaggle")
    home = make_competition(root / "home", slug="tiny-comp")
    smoke_experiment(home, "exp_k", model="regnetx_002")
    bin_dir, state = install_fake_kaggle(root, FAKE)
    env = {**os.environ, "KIT_HOME": str(home), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
           "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_KAGGLE_DIR": str(state),
           "KAGGLE_USERNAME": "alice", "KAGGLE_KEY": KEY, "KAGGLE_CONFIG_DIR": str(root / "nocreds")}

    def kit(*args: str, **extra: str) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "competition.kaggle_kernel", *args], cwd=home, env={**env, **extra},
                              capture_output=True, text=True, timeout=600)
        assert KEY not in proc.stdout + proc.stderr, "a credential was printed"
        return proc

    return home, state, root, kit, env


def calls(state: Path) -> list[list[str]]:
    return [json.loads(line) for line in (state / "calls.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def pushed(kaggle_env):
    """`kaggle push exp_k` against the fake (no wheels: this machine has every requirement)."""
    home, state, _, kit, _ = kaggle_env
    proc = kit("push", "exp_k", "--no-wheels", "--allow-dirty")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow  # over 5 s of CPU: kept out of the fast tier
def test_push_uploads_bundle_and_gpu_kernel_with_offline_metadata(kaggle_env, pushed):
    home, state, _, _, _ = kaggle_env
    meta = json.loads((state / "kernel" / "kernel-metadata.json").read_text())
    assert meta["id"] == "alice/tiny-exp-k" and meta["kernel_type"] == "script" and meta["language"] == "python"
    assert meta["enable_gpu"] is True and meta["enable_internet"] is False and meta["is_private"] is True
    assert meta["machine_shape"] == "NvidiaTeslaT4"
    assert meta["competition_sources"] == ["tiny-comp"] and meta["dataset_sources"] == ["alice/tiny-exp-k-kit"]
    assert (state / "kernel" / meta["code_file"]).is_file()
    data_meta = json.loads((state / "dataset" / "dataset-metadata.json").read_text())
    assert data_meta["id"] == "alice/tiny-exp-k-kit" and data_meta["licenses"]
    made = calls(state)
    create = next(c for c in made if c[:2] == ["datasets", "create"])
    assert create[create.index("-r") + 1] == "zip"  # sub-folders kept (the default skips them)
    push = next(c for c in made if c[:2] == ["kernels", "push"])
    assert push[push.index("--accelerator") + 1] == "NvidiaTeslaT4"
    bundle = json.loads((state / "dataset" / "kit-bundle.json").read_text())
    assert bundle["experiment"] == "exp_k" and "regnetx_002.safetensors" in bundle["weights"]
    assert (state / "dataset" / "kit" / "competition" / "experiment.py").is_file()
    assert (state / "dataset" / "kit" / "experiments" / "exp_k.yaml").is_file()
    assert "https://www.kaggle.com/code/alice/tiny-exp-k" in pushed.stderr and "kaggle status exp_k" in pushed.stderr
    # a second push adds a version to the existing dataset instead of creating it again
    assert kaggle_env[3]("push", "exp_k", "--no-wheels", "--allow-dirty").returncode == 0
    assert [c[:2] for c in calls(state)].count(["datasets", "version"]) == 1


def run_kernel(kaggle_env, working: Path) -> subprocess.CompletedProcess:
    """Run the pushed script as Kaggle would: the bundle dataset and the competition mounted under an input folder."""
    home, state, root, _, env = kaggle_env
    inputs = root / "input"
    shutil.rmtree(inputs, ignore_errors=True)
    inputs.mkdir()
    (inputs / "tiny-exp-k-kit").symlink_to(state / "dataset")
    (inputs / "tiny-comp").symlink_to(home / "data")
    working.mkdir(parents=True, exist_ok=True)
    script = next((state / "kernel").glob("*.py"))
    clean = {k: v for k, v in env.items() if k not in ("KIT_HOME", "PYTHONPATH")}
    return subprocess.run([sys.executable, str(script)], cwd=working, capture_output=True, text=True, timeout=900,
                          env={**clean, "KIT_KAGGLE_INPUT": str(inputs), "KIT_KAGGLE_WORKING": str(working)})


@pytest.mark.slow
def test_kernel_runs_offline_then_pull_installs_outputs_and_leaderboard(kaggle_env, pushed):
    home, state, root, kit, _ = kaggle_env
    proc = run_kernel(kaggle_env, state / "output")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert (state / "output" / "exp_k.tar").is_file()
    assert json.loads((state / "output" / "kit-job.json").read_text())["returncode"] == 0
    with tarfile.open(state / "output" / "exp_k.tar") as tar:
        names = tar.getnames()
    assert "experiments/exp_k/fold1/best.pt" in names and not any(n.endswith("last.pt") for n in names)

    status = kit("status", "exp_k")
    assert status.returncode == 0 and "complete" in status.stderr and "kaggle pull exp_k" in status.stderr
    failed = kit("status", "exp_k", FAKE_KERNEL_STATUS="KernelWorkerStatus.ERROR")
    assert failed.returncode == 1 and "error" in failed.stderr

    pulled = kit("pull", "exp_k")
    assert pulled.returncode == 0, pulled.stderr[-3000:]
    out = home / "experiments" / "exp_k"
    oof = pd.read_csv(out / "oof.csv")
    train = pd.read_csv(home / "data" / "train.csv")
    assert len(oof) == len(train) and set(oof["id"]) == set(train["file_name"])
    assert len(pd.read_csv(out / "test.csv")) == 12
    assert "exp_k" in (home / "experiments" / "LEADERBOARD.md").read_text()
    assert (home / "folds").is_dir() and any((home / "folds").glob("tiny_k2_s0*.csv"))
    again = kit("pull", "exp_k")
    assert again.returncode == 2 and "--replace" in again.stderr


@pytest.mark.slow
def test_pull_of_incomplete_outputs_is_refused_naming_what_is_missing(kaggle_env, pushed):
    home, state, root, kit, _ = kaggle_env
    full = state / "output" / "exp_k.tar"
    if not full.is_file():  # this test alone: run the kernel first
        assert run_kernel(kaggle_env, state / "output").returncode == 0
    broken = root / "broken"
    broken.mkdir(exist_ok=True)
    with tarfile.open(full) as src, tarfile.open(broken / "exp_k.tar", "w") as dst:
        for member in src.getmembers():
            if "/fold1/" in member.name or member.name.endswith("exp_k/oof.csv"):
                continue
            dst.addfile(member, src.extractfile(member) if member.isfile() else None)
    saved = state / "output"
    os.rename(saved, root / "output_full")
    shutil.copytree(broken, saved)
    try:
        shutil.rmtree(home / "experiments" / "exp_k", ignore_errors=True)
        proc = kit("pull", "exp_k")
    finally:
        shutil.rmtree(saved)
        os.rename(root / "output_full", saved)
    assert proc.returncode == 2 and "incomplete" in proc.stderr
    assert "fold1: best.pt, oof.csv, test.csv, result.json missing" in proc.stderr and "oof.csv missing" in proc.stderr
    assert not (home / "experiments" / "exp_k").exists()


def test_push_needs_a_competition_slug_and_a_user(tmp_path, monkeypatch):
    home = make_competition(tmp_path / "home")
    smoke_experiment(home, "exp_s")
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "none"))
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    proc = call_kit(home, "competition.kaggle_kernel", "push", "exp_s", check=False)
    assert proc.returncode == 2 and "competition.slug is empty" in proc.stderr and "Traceback" not in proc.stderr
    text = (home / "competition.yaml").read_text().replace("name: tiny", "name: tiny\n  slug: tiny-comp")
    (home / "competition.yaml").write_text(text)
    proc = call_kit(home, "competition.kaggle_kernel", "push", "exp_s", check=False)
    assert proc.returncode == 2 and "KAGGLE_USERNAME" in proc.stderr and "Traceback" not in proc.stderr
    assert not (home / ".cache" / "kaggle").exists()  # refused before anything was built


def test_the_kaggle_cli_is_found_beside_the_interpreter_when_not_on_path(tmp_path, monkeypatch):
    from competition.kaggle_cli import find_cli

    monkeypatch.setenv("PATH", str(tmp_path))  # run.sh runs .venv/bin/python without .venv/bin on PATH
    assert Path(find_cli()) == Path(sys.executable).parent / "kaggle"
