"""Issue 10's defects, one test each (every one failed on the code before the Project/inference refactor),
plus the config ranges and the Project object that replaced import-time globals."""

from __future__ import annotations

import subprocess

import numpy as np
import pandas as pd
import pytest

from competition.config import ConfigError, load_config
from competition.folds import load_tables
from competition.image_cache import open_cache
from competition.grouping import close_pairs
from competition.project import Project
from competition.tables import load_train_table
from tests.conftest import REPO, make_competition, write_yaml


def test_grouping_needs_no_numpy2_bitwise_count(monkeypatch):
    """np.bitwise_count exists only in NumPy >= 2; the kit must group hashes under NumPy 1.x too."""
    hashes = np.array([0b1011, 0b1010, 0xFFFF0000], dtype=np.uint64)
    monkeypatch.delattr(np, "bitwise_count", raising=False)
    assert close_pairs(hashes, 1).tolist() == [[0, 1]]


def test_extra_train_columns_never_overwrite_the_kits_own(home):
    """A train.csv with its own `id`, `path`, `fold` and a second label column still reads and splits right."""
    csv = home / "data" / "train.csv"
    train = pd.read_csv(csv, index_col=0)
    n = len(train)
    train = train.assign(id=range(n), path="elsewhere.jpg", fold=9, label_2=1 - train["label"])
    train.to_csv(csv, index=False)
    project = Project(home)
    cfg = load_config("", [], project, check_model=False)
    table = load_train_table(cfg.competition, project)
    assert table["id"].tolist() == train["file_name"].tolist() and table["label"].tolist() == train["label"].tolist()
    assert set(table.columns) == {"id", "label", "path"}
    with_folds, _ = load_tables(cfg, project)
    assert set(with_folds["fold"]) == {0, 1} and with_folds["path"].str.startswith(str(home / "data")).all()


def test_submissions_folder_is_part_of_a_fresh_clone():
    tracked = subprocess.run(["git", "ls-files", "submissions"], cwd=REPO, capture_output=True, text=True).stdout
    assert "submissions/.gitkeep" in tracked


def test_image_cache_is_keyed_on_the_decoder_and_stale_caches_are_removed(home, monkeypatch):
    import PIL

    paths = sorted(str(p) for p in (home / "data" / "train_data").glob("*.jpg"))
    cache_dir = home / ".cache"
    open_cache(paths, "auto", cache_dir)
    first = sorted(cache_dir.glob("images_*.npy"))
    assert len(first) == 1
    monkeypatch.setattr(PIL, "__version__", "0.0-another-pillow")  # a Pillow/libjpeg upgrade changes pixels
    open_cache(paths, "auto", cache_dir)
    second = sorted(cache_dir.glob("images_*.npy"))
    assert len(second) == 1 and second != first  # rebuilt under a new key, the old one deleted


def test_cache_of_an_edited_file_list_replaces_the_old_one(home):
    paths = sorted(str(p) for p in (home / "data" / "train_data").glob("*.jpg"))
    cache_dir = home / ".cache"
    open_cache(paths, "auto", cache_dir)
    with open(paths[0], "ab") as fh:
        fh.write(b"\0")  # same file list, one file changed
    open_cache(paths, "auto", cache_dir)
    assert len(list(cache_dir.glob("images_*.npy"))) == 1


@pytest.mark.parametrize("override, key", [
    ("train.batch_size=0", "train.batch_size"), ("train.accum_steps=0", "train.accum_steps"),
    ("train.lr=0", "train.lr"), ("train.ema_decay=1", "train.ema_decay"), ("train.ema_decay=0", "train.ema_decay"),
    ("data.img_size=4", "data.img_size"), ("train.epochs=0", "train.epochs"), ("train.epochs=-1", "train.epochs"),
    ("train.threads=-1", "train.threads"), ("data.jpeg_quality_min=150", "data.jpeg_quality_min"),
    ("data.blur_p=1.5", "data.blur_p"), ("train.min_lr=0.1", "train.min_lr"), ("tta.crops=3", "tta.crops"),
    ("train.folds=[0,0]", "train.folds"), ("folds.n_splits=1", "folds.n_splits"),
])
def test_config_ranges_are_checked_at_load(override, key):
    with pytest.raises(ConfigError) as err:
        load_config("exp001", [override], Project(REPO), check_model=False)
    text = str(err.value)
    assert key in text and "\n" not in text and "exp001.yaml" in text


def test_two_projects_live_in_one_process(tmp_path):
    a, b = make_competition(tmp_path / "a"), make_competition(tmp_path / "b", n_per_class=10)
    write_yaml(b / "competition.yaml", {"competition": {"name": "other", "data_dir": str(b / "data"), "metric": "f1"}})
    cfg_a = load_config("", [], Project(a), check_model=False)
    cfg_b = load_config("", [], Project(b), check_model=False)
    assert (cfg_a.competition.name, cfg_b.competition.name) == ("tiny", "other")
    assert len(load_train_table(cfg_a.competition, Project(a))) == 40
    assert len(load_train_table(cfg_b.competition, Project(b))) == 20
    assert Project(a).folds_file(cfg_a).parent == a / "folds"


@pytest.mark.parametrize("name", ["..", ".", "../x", "a/b", "", ".hidden", "x."])
def test_experiment_names_cannot_leave_the_experiments_folder(tmp_path, name):
    with pytest.raises(ConfigError, match="not a plain name"):
        Project(tmp_path).experiment_dir(name)
