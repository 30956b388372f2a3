"""`./run.sh bundle`: what a bundle holds, and that its wheels install with --no-index into a fresh venv that has
only what the brief's GPU machine has (torch, torchvision, timm, pandas, scikit-learn, opencv, pillow, tqdm,
pyyaml), after which the kit, run from the bundle, trains a tiny experiment."""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from competition.bundle import closure, experiment_chain
from competition.project import Project
from tests.conftest import call_kit, make_competition, smoke_experiment, write_yaml

GPU_IMAGE = ["torch", "torchvision", "timm", "pandas", "scikit-learn", "opencv-python-headless", "pillow", "tqdm",
             "pyyaml"]  # what the brief says the GPU machine's python3 has (albumentations is not there)


def test_bundle_holds_code_chain_folds_weights_and_pins(tmp_path):
    home = make_competition(tmp_path / "home")
    smoke_experiment(home, "exp_a", model="regnetx_002")
    write_yaml(home / "experiments" / "exp_b.yaml", {"base": "exp_a", "train": {"epochs": 2}})
    call_kit(home, "competition.folds")
    call_kit(home, "competition.bundle", "exp_b", str(tmp_path / "b"), "--no-wheels", "--allow-dirty")
    b = tmp_path / "b"
    manifest = json.loads((b / "kit-bundle.json").read_text())
    assert [p.name for p in experiment_chain(Project(home), "exp_b")] == ["exp_a.yaml", "exp_b.yaml"]
    assert (b / "kit" / "experiments" / "exp_a.yaml").is_file() and (b / "kit" / "experiments" / "exp_b.yaml").is_file()
    assert (b / "kit" / "competition" / "train.py").is_file() and (b / "kit" / "run.sh").is_file()
    assert (b / "kit" / "folds" / "tiny_k2_s0.csv").read_text() == (home / "folds" / "tiny_k2_s0.csv").read_text()
    assert sorted(manifest["weights"]) == ["regnetx_002.safetensors", "tf_mobilenetv3_small_100.safetensors"]
    assert {m["timm_model"] for m in json.loads((b / "weights" / "models.json").read_text())["models"]} == \
        {"regnetx_002", "tf_mobilenetv3_small_100"}
    assert manifest["n_train"] == 40 and manifest["n_test"] == 12 and len(manifest["commit"]) == 40
    reqs = (b / "requirements.txt").read_text()
    assert "albumentations==2.0.8" in reqs and "torch" not in reqs.replace("torchvision", "").split("\n")[0]
    assert not any(Requirement(r).name in ("torch", "torchvision", "pytest", "kaggle") for r in reqs.split())
    pins = manifest["pins"]
    assert pins["albumentations"] == md.version("albumentations") and "torch" not in pins and "numpy" in pins
    assert all(manifest["files"][f] for f in ("kit/run.sh", "requirements.txt", "weights/regnetx_002.safetensors"))


def test_code_at_a_commit_comes_from_git_archive(tmp_path):
    from competition.bundle import BundleError, copy_code

    repo = tmp_path / "repo"
    (repo / "competition").mkdir(parents=True)
    (repo / "competition" / "x.py").write_text("A = 1\n")
    (repo / "run.sh").write_text("echo\n")
    (repo / "requirements.txt").write_text("numpy\n")
    git = lambda *a: subprocess.run(["git", "-C", str(repo), *a], check=True, capture_output=True)  # noqa: E731
    git("init", "-q")
    git("add", ".")
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "x")
    (tmp_path / "d1").mkdir()
    info = copy_code(repo, tmp_path / "d1", allow_dirty=False)
    assert not info["dirty"] and (tmp_path / "d1" / "competition" / "x.py").read_text() == "A = 1\n"
    (repo / "competition" / "x.py").write_text("A = 2\n")
    (tmp_path / "d2").mkdir()
    with pytest.raises(BundleError, match="uncommitted changes"):
        copy_code(repo, tmp_path / "d2", allow_dirty=False)
    assert copy_code(repo, tmp_path / "d2", allow_dirty=True)["dirty"] is True
    assert (tmp_path / "d2" / "competition" / "x.py").read_text() == "A = 2\n"


def image_site(dest: Path) -> list[str]:
    """A site-packages folder of symlinks holding the GPU image's packages (and what they need) from this venv;
    returns their `name==version` lines (the image's pip freeze)."""
    names = closure([Requirement(n) for n in GPU_IMAGE], exclude=set())
    dest.mkdir()
    for name in names:
        dist = md.distribution(name)
        for top in {Path(str(f)).parts[0] for f in dist.files or [] if ".." not in Path(str(f)).parts}:
            src = Path(dist.locate_file(top))
            if src.exists() and not (dest / top).exists():
                (dest / top).symlink_to(src)
    return [f"{n}=={v}" for n, v in names.items()]


@pytest.mark.slow
def test_wheels_install_offline_into_a_fresh_venv_and_the_kit_trains(tmp_path):
    home = make_competition(tmp_path / "home")
    smoke_experiment(home, "exp_o", model="regnetx_002")
    freeze = tmp_path / "image-freeze.txt"
    freeze.write_text("\n".join(image_site(tmp_path / "image")) + "\n")
    b = tmp_path / "bundle"
    call_kit(home, "competition.bundle", "exp_o", str(b), "--target-freeze", str(freeze), "--allow-dirty")
    manifest = json.loads((b / "kit-bundle.json").read_text())
    wheels = {canonicalize_name(w.split("-")[0]) for w in manifest["wheels"]}
    assert "albumentations" in wheels and "timm" not in wheels and "numpy" not in wheels  # the image has those

    venv = tmp_path / "fresh"
    subprocess.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "gpu_image.pth").write_text(str(tmp_path / "image") + "\n")
    for own in [*site.glob("setuptools*"), *site.glob("_distutils_hack"), *site.glob("distutils-precedence.pth")]:
        shutil.rmtree(own) if own.is_dir() else own.unlink()  # the venv's old setuptools would hide the image's
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "KIT_HOME", "VIRTUAL_ENV")
             and not k.startswith("PIP_")}  # no find-links (this machine sets PIP_FIND_LINKS) or config: the bundle only
    clean["PIP_CONFIG_FILE"] = os.devnull
    pip = subprocess.run([str(py), "-m", "pip", "install", "--no-index", "--find-links", str(b / "wheels"), "-r",
                          str(b / "requirements.txt"), "--disable-pip-version-check"], capture_output=True, text=True,
                         env=clean, timeout=900)
    assert pip.returncode == 0, pip.stdout[-2000:] + pip.stderr[-2000:]
    where = subprocess.run([str(py), "-c", "import albumentations, torch; print(albumentations.__file__)"],
                           capture_output=True, text=True, env=clean)
    assert where.returncode == 0 and where.stdout.startswith(str(venv)), where.stderr[-2000:]

    run = subprocess.run(["bash", str(b / "kit" / "run.sh"), "exp_o", f"model.weights_dir={b / 'weights'}",
                          f"data.cache_dir={tmp_path / 'cache'}"], capture_output=True, text=True, timeout=900,
                         env={**clean, "KIT_PYTHON": str(py), "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    out = b / "kit" / "experiments" / "exp_o"
    assert len(pd.read_csv(out / "oof.csv")) == 40 and json.loads((out / "metrics.json").read_text())["oof_score"] > 0
    assert f"ImageNet weights from {b / 'weights' / 'regnetx_002.safetensors'}" in run.stderr
