"""Twin-aware folds (content twins that are not near-duplicates) and the train-vs-test shift check."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageEnhance

from competition.config import CompetitionConfig, Config, DataConfig, FoldsConfig, ModelConfig
from competition.folds import make_folds
from competition.grouping import components, pair_recall, twin_pairs, wrong_merges
from competition.project import Project
from competition.tables import load_train_table
from tests.conftest import FACES, WEIGHTS, call_kit, make_competition


def regenerate(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A content twin: mirrored, re-framed (93 % crop), re-coloured, re-sized - not a near-duplicate."""
    w, h = img.size
    x0, y0 = int(rng.integers(0, w * 7 // 100)), int(rng.integers(0, h * 7 // 100))
    twin = img.transpose(Image.FLIP_LEFT_RIGHT).crop((x0, y0, x0 + int(w * 0.93), y0 + int(h * 0.93)))
    return ImageEnhance.Color(twin).enhance(rng.uniform(0.9, 1.1)).resize((640, 640), Image.BICUBIC)


@pytest.fixture(scope="module")
def twins_data(tmp_path_factory):
    """24 face photos each with a regenerated twin of the other class, plus 24 unrelated faces."""
    root = tmp_path_factory.mktemp("twins")
    (root / "img").mkdir()
    faces = sorted(p for p in FACES.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:72]
    rng, rows = np.random.default_rng(0), []
    for i, src in enumerate(faces[:24]):
        img = Image.open(src).convert("RGB")
        img.save(root / "img" / f"{i}_a.jpg", quality=92)
        regenerate(img, rng).save(root / "img" / f"{i}_b.png")
        rows += [(f"img/{i}_a.jpg", i % 2, i), (f"img/{i}_b.png", 1 - i % 2, i)]
    for j, src in enumerate(faces[24:48], start=100):
        Image.open(src).convert("RGB").save(root / "img" / f"{j}.jpg", quality=92)
        rows.append((f"img/{j}.jpg", j % 2, j))
    pd.DataFrame(rows, columns=["file_name", "label", "scene"]).to_csv(root / "train.csv", index=False)
    return root


@pytest.mark.slow  # over 5 s of CPU: kept out of the fast tier
def test_twins_are_found_where_phash_finds_nothing(twins_data, tmp_path):
    truth = pd.read_csv(twins_data / "train.csv")
    pairs = truth.reset_index().groupby("scene")["index"].agg(list)
    pairs = np.array([p for p in pairs if len(p) == 2])
    for groups, expect in (("twins", 1.0), ("phash", 0.0)):
        cfg = Config(competition=CompetitionConfig(name="twins", data_dir=str(twins_data)),
                     folds=FoldsConfig(n_splits=4, seed=0, groups=groups, twin_similarity=0.7),  # faces all look alike
                     data=DataConfig(cache_dir=str(tmp_path / "cache")), model=ModelConfig(weights_dir=str(WEIGHTS)))
        folds = make_folds(cfg, load_train_table(cfg.competition, Project(tmp_path)), Project(tmp_path))
        fold = folds.set_index("id").loc[truth["file_name"], "fold"].to_numpy()
        kept = np.mean(fold[pairs[:, 0]] == fold[pairs[:, 1]])
        group = folds.set_index("id").loc[truth["file_name"], "group"].to_numpy()
        assert pair_recall(group, pairs) == expect, groups  # twins: every pair joined; pHash: none (mirrored)
        if groups == "twins":
            assert kept == 1.0 and wrong_merges(group, truth["scene"].to_numpy()) == 0.0


def test_twin_pairs_use_cosine_neighbours():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(200, 64)).astype(np.float32)
    twins = base[:50] + 0.1 * rng.normal(size=(50, 64)).astype(np.float32)
    x = np.vstack([base, twins])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    groups = components(len(x), twin_pairs(x, 0.9, neighbors=3))
    truth = np.r_[np.arange(200), np.arange(50)]
    assert pair_recall(groups, np.column_stack([np.arange(50), np.arange(200, 250)])) == 1.0
    assert wrong_merges(groups, truth) == 0.0 and len(np.unique(groups)) == 200


@pytest.fixture
def shift_home(tmp_path):
    return make_competition(tmp_path, n_per_class=60, n_test=120)


def test_shift_check_passes_a_random_split(shift_home):
    result = call_kit(shift_home, "competition.shift", "folds.embed_size=96")
    report = json.loads(next((shift_home / "folds").glob("*_shift.json")).read_text())
    assert result.returncode == 0 and not report["shifted"] and "OK" in result.stdout
    assert report["metadata_auc"] < 0.65 and report["pixel_auc"] < 0.65


def test_shift_check_flags_a_reencoded_test_set(shift_home):
    data = shift_home / "data"
    test = pd.read_csv(data / "test.csv", index_col=0)
    for rel in test["id"]:  # the test images arrive as larger PNGs: another format and size
        img = Image.open(data / rel).convert("RGB").resize((64, 64), Image.BICUBIC)
        (data / rel).unlink()
        img.save(data / rel, "PNG")
    result = call_kit(shift_home, "competition.shift", "folds.embed_size=96", check=False)
    report = json.loads(next((shift_home / "folds").glob("*_shift.json")).read_text())
    assert result.returncode == 1 and report["shifted"] and report["metadata_auc"] > 0.9
    assert "SHIFT" in result.stdout and {"width", "is_png"} & set(k for k, v in report["feature_auc"].items() if v > 0.9)


def test_shift_check_runs_beside_new_folds(shift_home):
    call_kit(shift_home, "competition.folds", "folds.shift_check=true", "folds.shift_sample=40", "folds.embed_size=64")
    assert list((shift_home / "folds").glob("*_shift.md")) and list((shift_home / "folds").glob("*_audit.md"))


@pytest.mark.slow  # over 5 s of CPU (fresh interpreters): kept out of the fast tier
def test_run_sh_audit_shift_runs_the_shift_check():
    import os
    import subprocess
    import sys

    from tests.conftest import REPO
    env = {**os.environ, "KIT_PYTHON": sys.executable}
    shift = subprocess.run(["bash", str(REPO / "run.sh"), "audit", "--shift", "--help"], env=env, capture_output=True,
                           text=True, timeout=120)
    plain = subprocess.run(["bash", str(REPO / "run.sh"), "audit", "--help"], env=env, capture_output=True, text=True,
                           timeout=120)
    assert shift.returncode == 0 and "shift.py" in shift.stdout and "adversarial validation" in shift.stdout
    assert plain.returncode == 0 and "audit.py" in plain.stdout and "Shortcut audit" in plain.stdout
