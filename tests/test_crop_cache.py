"""The large-image data path: native training windows refreshed every N epochs, stored eval crops, tiles."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from competition.augment import build_eval_transform, build_train_transform, tile_crops
from competition.config import ConfigError, DataConfig, load_config
from competition.crop_cache import EvalCrops, TrainWindows, wants_crop_cache
from competition.dataset import ImageDataset, seed_worker
from competition.decode import decode_image
from conftest import FACES, PROJECT, write_yaml

SIZE = 64


@pytest.fixture(scope="module")
def faces() -> list[str]:
    return [str(FACES / f) for f in pd.read_csv(FACES / "train.csv")["file_name"][:12]]


def _found_in(window: np.ndarray, image: np.ndarray) -> bool:
    """Whether `window` is a verbatim native slice of `image` (no resizing, no re-encoding)."""
    h, w = window.shape[:2]
    ys, xs = np.nonzero((image[: image.shape[0] - h + 1, : image.shape[1] - w + 1] == window[0, 0]).all(axis=2))
    return any(np.array_equal(image[y:y + h, x:x + w], window) for y, x in zip(ys, xs))


def test_windows_are_native_slices_decoded_once_per_round(tmp_path, faces):
    windows = TrainWindows(faces, SIZE, epochs=4, seed=7, encoding={}, cache_dir=tmp_path)
    image = decode_image(faces[0])
    first = np.array(windows.get(0, lambda i: decode_image(faces[i]), epoch=0))  # a view until the refresh
    assert first.shape == (2 * SIZE, 2 * SIZE, 3) and _found_in(first, image)
    calls = []

    def load(i):
        calls.append(i)
        return decode_image(faces[i])

    for epoch in range(4):  # row 0 refreshes when (epoch + 0 % 4) // 4 changes: at epoch 4, not before
        assert np.array_equal(windows.get(0, load, epoch), first)
    assert calls == []
    fresh = windows.get(0, load, epoch=4)
    assert calls == [0] and _found_in(fresh, image) and not np.array_equal(fresh, first)


def test_refreshes_are_staggered_one_nth_of_rows_per_epoch(tmp_path, faces):
    windows = TrainWindows(faces, SIZE, epochs=4, seed=0, encoding={}, cache_dir=tmp_path)
    load = lambda i: decode_image(faces[i])  # noqa: E731
    for i in range(len(faces)):
        windows.get(i, load, 0)
    per_epoch = []
    for epoch in range(1, 9):
        before = windows.decodes
        for i in range(len(faces)):
            windows.get(i, load, epoch)
        per_epoch.append(windows.decodes - before)
    assert per_epoch == [len(faces) // 4] * 8  # 12 rows, every 4 epochs: 3 re-decodes per epoch


def test_windows_are_seeded_so_an_empty_cache_redraws_the_same_pixels(tmp_path, faces):
    load = lambda i: decode_image(faces[i])  # noqa: E731
    a = TrainWindows(faces, SIZE, epochs=3, seed=5, encoding={}, cache_dir=tmp_path / "a")
    for epoch in range(5):  # a run that went through epochs 0-4
        got_a = [a.get(i, load, epoch) for i in range(4)]
    b = TrainWindows(faces, SIZE, epochs=3, seed=5, encoding={}, cache_dir=tmp_path / "b")
    assert all(np.array_equal(x, b.get(i, load, 4)) for i, x in enumerate(got_a))  # resumed at epoch 4 elsewhere
    c = TrainWindows(faces, SIZE, epochs=3, seed=6, encoding={}, cache_dir=tmp_path / "c")
    assert not np.array_equal(got_a[0], c.get(0, load, 4))


def test_small_images_are_stored_whole(tmp_path):
    path = tmp_path / "small.png"
    pixels = np.random.default_rng(0).integers(0, 255, (40, 100, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    windows = TrainWindows([str(path)], SIZE, epochs=2, seed=0, encoding={}, cache_dir=tmp_path / "c")
    assert np.array_equal(windows.get(0, lambda i: decode_image(path), 0), pixels)


def test_workers_fill_one_shared_cache(tmp_path, faces):
    """Persistent DataLoader workers decode into the same memmap the main process (and a rerun) reads."""
    data = DataConfig(img_size=SIZE)
    windows = TrainWindows(faces, SIZE, epochs=2, seed=1, encoding={}, cache_dir=tmp_path)
    ds = ImageDataset(faces, np.zeros(len(faces)), build_train_transform(data), crop_store=windows)
    ds.set_epoch_seed(11, epoch=0)
    loader = DataLoader(ds, batch_size=4, num_workers=2, worker_init_fn=seed_worker, persistent_workers=True)
    shapes = [images.shape for images, *_ in loader]
    assert shapes == [torch.Size([4, 3, SIZE, SIZE])] * 3
    _, marks = windows.store.arrays()
    assert (marks[:, 0] == 0).all() and (marks[:, 1:] == 2 * SIZE).all()
    reread = TrainWindows(faces, SIZE, epochs=2, seed=1, encoding={}, cache_dir=tmp_path)
    calls = []
    for i in range(len(faces)):
        assert _found_in(reread.get(i, lambda k: calls.append(k) or decode_image(faces[k]), 0), decode_image(faces[i]))
    assert calls == []


def test_eval_crops_equal_the_eval_transform_and_decode_once(tmp_path, faces):
    data = DataConfig(img_size=SIZE)
    geometry = build_eval_transform(data)
    store = EvalCrops(faces, geometry, {}, tmp_path)
    cached = ImageDataset(faces, None, geometry, crop_store=store)
    plain = ImageDataset(faces, None, geometry)
    for _ in range(2):
        for i in range(len(faces)):
            assert torch.equal(cached[i][0], plain[i][0])
    assert store.decodes == len(faces)


def test_tiles_cover_the_image_and_end_with_the_centre_crop(faces):
    image = decode_image(faces[0])  # 1024 x 1024
    tiles = tile_crops(image, 256, 4)
    assert tiles.shape == (17, 256, 256, 3)
    covered = np.zeros(image.shape[:2], bool)
    for y in np.linspace(0, 1024 - 256, 4).round().astype(int):
        for x in np.linspace(0, 1024 - 256, 4).round().astype(int):
            covered[y:y + 256, x:x + 256] = True
    assert covered.all() and np.array_equal(tiles[0], image[:256, :256])
    assert np.array_equal(tiles[-1], build_eval_transform(DataConfig(img_size=256))(image=image)["image"])
    small = tile_crops(image[:100, :120], 64, 3)  # grid over a small image: overlapping tiles, still native
    assert small.shape == (10, 64, 64, 3) and np.array_equal(small[8], image[36:100, 56:120])


def test_auto_turns_on_for_large_images_only(faces):
    from conftest import CIFAKE
    cifake = [str(CIFAKE / f) for f in pd.read_csv(CIFAKE / "train.csv")["file_name"][:8]]
    assert wants_crop_cache("auto", "forensic", 224, faces)  # 1024^2 px >= 8 x 224^2
    assert not wants_crop_cache("auto", "forensic", 512, faces)  # 1024^2 < 8 x 512^2
    assert not wants_crop_cache("auto", "forensic", 32, cifake)
    assert not wants_crop_cache("auto", "resize", 224, faces) and not wants_crop_cache("on", "none", 224, faces)
    assert wants_crop_cache("on", "light", 32, cifake) and not wants_crop_cache("off", "forensic", 224, faces)


def test_tiles_and_five_crops_together_are_refused(tmp_path):
    exp = write_yaml(tmp_path / "experiments" / "e.yaml", {"tta": {"tiles": 3, "crops": 5}})
    with pytest.raises(ConfigError, match="tta.tiles"):
        load_config(exp, project=PROJECT, check_model=False)


@pytest.mark.slow
def test_large_image_run_trains_from_windows_and_predicts_with_tiles(tmp_path):
    """A whole run on 1024 px faces: crop_cache auto turns on, every training row's window and validation crop
    is stored, a rerun of the same config resumes without decoding again, and tiles reach metrics.json."""
    import json
    import shutil

    from conftest import WEIGHTS, call_kit, smoke_experiment

    table = pd.read_csv(FACES / "train.csv")
    picked = pd.concat([table[table["label"] == k].head(10) for k in (0, 1)])
    data = tmp_path / "data"
    for rel in picked["file_name"]:
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(FACES / rel, data / rel)
    picked.iloc[:16].to_csv(data / "train.csv", index=False)
    pd.DataFrame({"id": picked["file_name"].iloc[16:]}).to_csv(data / "test.csv", index=False)
    write_yaml(tmp_path / "competition.yaml", {
        "competition": {"name": "big", "data_dir": str(data), "sample_submission": ""},
        "folds": {"n_splits": 2, "seed": 0, "audit": False, "shift_check": False},
        "model": {"weights_dir": str(WEIGHTS)}})
    smoke_experiment(tmp_path, "e1", data={"img_size": 64, "crop_cache_epochs": 3},
                     train={"epochs": 3, "patience": 0}, tta={"views": "identity", "tiles": 3})
    first = call_kit(tmp_path, "competition.experiment", "e1")
    assert "crop cache on (data.crop_cache=auto)" in first.stderr
    stores = sorted((tmp_path / ".cache" / "crops").glob("*.rows.npy"))
    assert len(stores) == 4  # per fold: training windows + validation crops
    for rows in stores:
        marks = np.load(rows)
        assert (marks[:, 0] >= 0).all()  # every row filled
        if "windows" in rows.name:  # after epoch 2, re-decoded every 3 epochs: round (2 + row % 3) // 3 is 0 or 1
            assert set(marks[:, 0]) == {0, 1} and (marks[:, 1:] == 128).all()
    metrics = json.loads((tmp_path / "experiments" / "e1" / "metrics.json").read_text())
    assert metrics["tta"]["tiles"] == 3 and metrics["n_oof"] == 16
    assert len(pd.read_csv(tmp_path / "experiments" / "e1" / "test.csv")) == 4
