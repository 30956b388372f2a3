"""competition.test_encoding: the test set's encoding measured, cached and imitated (test-like OOF, data.match_test)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from competition import test_encoding
from competition.audit import read_metadata
from competition.config import load_config
from competition.dataset import ImageDataset
from competition.errors import ConfigError
from competition.folds import load_tables
from competition.inference import eval_dataset
from competition.project import Project
from competition.test_encoding import (MatchTest, TestLikeEncoder, measure_encoding, profile_file, run_profile,
                                       test_like_dataset, test_profile, wants_test_like)
from tests.conftest import call_kit, smoke_experiment

RNG = np.random.default_rng(0)


def picture(h: int = 96, w: int = 128) -> np.ndarray:
    """A smooth gradient with noise: JPEG quality shows in it, and it is never one flat colour."""
    base = np.linspace(0, 200, w)[None, :, None] + np.linspace(0, 55, h)[:, None, None]
    return np.clip(base + RNG.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)


def save(path: Path, image: np.ndarray, fmt: str, **options) -> str:
    """Write an image file with Pillow's options (quality, subsampling)."""
    Image.fromarray(image).save(path, fmt, **options)
    return str(path)


# name: (format, Pillow options, size) -> what the profile must read back: format, quality, subsampling, pixels
ENCODINGS = {
    "png": ("PNG", {}, (96, 128), ("PNG", None, -1, 96 * 128)),
    "jpeg_q60_420": ("JPEG", {"quality": 60, "subsampling": 2}, (96, 128), ("JPEG", 60, 2, 96 * 128)),
    "jpeg_q90_444": ("JPEG", {"quality": 90, "subsampling": 0}, (96, 128), ("JPEG", 90, 0, 96 * 128)),
    "jpeg_q90_420": ("JPEG", {"quality": 90, "subsampling": 2}, (96, 128), ("JPEG", 90, 2, 96 * 128)),
    "webp_q70": ("WEBP", {"quality": 70}, (96, 128), ("WEBP", None, -1, 96 * 128)),
    "jpeg_half_size": ("JPEG", {"quality": 75, "subsampling": 2}, (48, 64), ("JPEG", 75, 2, 48 * 64)),
}


@pytest.mark.parametrize("name", ENCODINGS)
def test_measured_profile_recovers_the_encoding(tmp_path, name):
    fmt, options, (h, w), expected = ENCODINGS[name]
    paths = [save(tmp_path / f"{i}.img", picture(h, w), fmt, **options) for i in range(5)]
    profile = measure_encoding(paths)
    json.dumps(profile)  # JSON-serialisable as promised
    rows = {(r["format"], r["quality"], r["subsampling"], r["pixels"]) for r in profile["rows"]}
    assert rows == {expected}
    assert profile["summary"]["median_pixels"] == expected[3] and profile["summary"]["formats"] == {fmt: 1.0}


def test_a_mixed_set_is_measured_row_by_row_and_sampled(tmp_path):
    paths = [save(tmp_path / f"{n}{i}.img", picture(*ENCODINGS[n][2]), ENCODINGS[n][0], **ENCODINGS[n][1])
             for n in ENCODINGS for i in range(2)]
    profile = measure_encoding(paths)
    assert profile["summary"]["n"] == len(paths)
    assert profile["summary"]["formats"] == {"JPEG": round(4 / 6, 4), "PNG": round(1 / 6, 4), "WEBP": round(1 / 6, 4)}
    assert profile["summary"]["subsampling"] == {"2": 0.5, "0": 0.25, "1": 0.0} or \
        profile["summary"]["subsampling"] == {"2": 0.75, "0": 0.25}
    assert len(measure_encoding(paths, sample=5)["rows"]) == 5
    assert measure_encoding(paths, sample=5, seed=1) == measure_encoding(paths, sample=5, seed=1)


def profile_of(fmt: str, quality: int | None, subsampling: int, scale: float) -> dict:
    """A one-encoding test profile."""
    return {"rows": [{"format": fmt, "quality": quality, "subsampling": subsampling, "pixels": 1}], "scale": scale,
            "shifted": True}


# format, quality, subsampling, scale -> the encoded file must read back as this
PROFILES = [("JPEG", 60, 2, 0.5), ("JPEG", 90, 0, 1.0), ("JPEG", 70, 1, 0.75), ("WEBP", 70, -1, 0.5),
            ("PNG", None, -1, 2.0), ("JPEG", None, 2, 1.0)]


@pytest.mark.parametrize("fmt,quality,subsampling,scale", PROFILES)
def test_encoded_images_have_the_profiles_encoding_and_size(tmp_path, fmt, quality, subsampling, scale):
    image = picture(100, 160)
    encoder = TestLikeEncoder(profile_of(fmt, quality, subsampling, scale), seed=0)
    (tmp_path / "x").write_bytes(encoder.encode(image, "row-1"))
    meta = read_metadata(str(tmp_path / "x"))
    assert (meta["format"], meta["width"], meta["height"]) == (fmt, round(160 * scale), round(100 * scale))
    if fmt == "JPEG":
        assert (meta["jpeg_quality"], meta["subsampling"]) == (quality or 90, subsampling)
    decoded = encoder(image, "row-1")
    assert decoded.shape == (round(100 * scale), round(160 * scale), 3) and decoded.dtype == np.uint8


def test_the_encoder_draws_the_same_encoding_per_key_and_varies_across_keys():
    rows = [{"format": "JPEG", "quality": q, "subsampling": s, "pixels": 1} for q in (50, 70, 95) for s in (0, 2)]
    profile = {"rows": rows, "scale": 1.0, "shifted": True}
    image = picture()
    a, b = TestLikeEncoder(profile, seed=7), TestLikeEncoder(profile, seed=7)
    assert all(np.array_equal(a(image, f"k{i}"), b(image, f"k{i}")) for i in range(5))
    assert a.draw("same") == a.draw("same") == b.draw("same")
    assert len({tuple(a.draw(f"k{i}").items()) for i in range(60)}) == len(rows)  # every row gets drawn
    assert [TestLikeEncoder(profile, s).draw("x") for s in range(12)] != [a.draw("x")] * 12  # the seed matters


# ------------------------------------------------------------------ the resize kernel (data.test_like_resize)


def reference_resize(image: np.ndarray, scale: float, kernel: str) -> np.ndarray:
    """What each kernel name promises, written out with the libraries directly."""
    import cv2

    size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
    pillow = {"lanczos": Image.LANCZOS, "bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}
    if kernel in pillow:
        return np.asarray(Image.fromarray(image).resize(size, pillow[kernel]))
    flag = cv2.INTER_LINEAR if kernel == "linear" else cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    return cv2.resize(image, size, interpolation=flag)


@pytest.fixture(scope="module")
def face() -> np.ndarray:
    """A real 1024 px photo (FFHQ or StyleGAN2, a JPEG), cut to 257 x 321 so every kernel runs fast (odd sides: at
    exactly 0.5x OpenCV's linear averages 2 x 2 blocks, as area does)."""
    from tests.conftest import FACES

    with Image.open(FACES / "images" / "00000.jpg") as img:
        return np.asarray(img.convert("RGB"))[300:557, 200:521].copy()


@pytest.mark.parametrize("scale", [0.5, 0.75, 1.5])
@pytest.mark.parametrize("kernel", test_encoding.RESIZE_KERNELS)
def test_each_resize_kernel_is_the_library_filter_it_names(face, kernel, scale):
    encoder = TestLikeEncoder(profile_of("PNG", None, -1, scale), 0, kernel)
    assert encoder.kernel_for("any") == kernel
    np.testing.assert_array_equal(encoder.resize(face, "any"), reference_resize(face, scale, kernel))
    others = [k for k in test_encoding.RESIZE_KERNELS if k != kernel]
    assert all(not np.array_equal(encoder.resize(face, "any"), reference_resize(face, scale, k)) for k in others)


@pytest.mark.parametrize("made_with", test_encoding.RESIZE_KERNELS)
@pytest.mark.parametrize("imitated_with", test_encoding.RESIZE_KERNELS)
def test_a_test_copy_is_reproduced_byte_for_byte_only_with_its_own_kernel(face, made_with, imitated_with):
    from competition.decode import reencode

    spec = {"format": "JPEG", "quality": 70, "subsampling": 2}
    test_copy = reencode(np.ascontiguousarray(reference_resize(face, 0.5, made_with)), spec)
    imitation = TestLikeEncoder(profile_of("JPEG", 70, 2, 0.5), 0, imitated_with).encode(face, "k")
    assert (imitation == test_copy) is (made_with == imitated_with)


def test_mix_draws_one_kernel_per_key_seeded_and_uses_every_kernel(face):
    profile = profile_of("JPEG", 80, 2, 0.5)
    a, b = TestLikeEncoder(profile, 3, "mix"), TestLikeEncoder(profile, 3, "mix")
    drawn = [a.kernel_for(f"k{i}") for i in range(80)]
    assert drawn == [b.kernel_for(f"k{i}") for i in range(80)] and set(drawn) == set(test_encoding.RESIZE_KERNELS)
    assert drawn != [TestLikeEncoder(profile, 4, "mix").kernel_for(f"k{i}") for i in range(80)]  # the seed matters
    key = next(f"k{i}" for i, k in enumerate(drawn) if k == "linear")
    np.testing.assert_array_equal(a.resize(face, key), reference_resize(face, 0.5, "linear"))


@pytest.mark.parametrize("value", ["lanczo", "Lanczos3", "nearest", "cubic", ""])
def test_an_unknown_resize_kernel_is_refused_by_the_config(tmp_path, value):
    with pytest.raises(ConfigError, match=r"`data.test_like_resize`: .* is not one of lanczos, bicubic, bilinear, area,"
                                          r" linear, mix"):
        load_config("", [f"data.test_like_resize={value}"], None, check_model=False)
    with pytest.raises(ValueError, match="resize kernel"):
        TestLikeEncoder(profile_of("JPEG", 80, 2, 0.5), 0, value)


@pytest.mark.parametrize("kernel", ["bicubic", "mix"])
def test_test_like_rows_and_match_test_use_the_configured_kernel(home, kernel):
    cfg, project, train, test = tables(home, "data.img_size=32", f"data.test_like_resize={kernel}",
                                       "data.match_test=1")
    profile = profile_of("JPEG", 70, 2, 0.5)
    like = test_like_dataset(cfg, train["path"].tolist()[:2], train["id"].tolist()[:2], profile, seed=1)
    assert like.image_filter.encoder.kernel == kernel
    assert test_encoding.match_test_filter(cfg, profile, 1).encoder.kernel == kernel


@pytest.mark.parametrize("profile", [{"rows": [], "scale": 0.5, "shifted": True},
                                     {**profile_of("JPEG", 60, 2, 0.5), "shifted": False}], ids=["empty", "unshifted"])
def test_an_unshifted_or_empty_profile_leaves_images_alone(profile):
    image = picture()
    assert TestLikeEncoder(profile, 0)(image, "k") is image
    assert not wants_test_like("auto", profile if profile["rows"] else None)


@pytest.mark.parametrize("mode,shifted,expected", [("auto", True, True), ("auto", False, False), ("on", False, True),
                                                   ("on", True, True), ("off", True, False)])
def test_test_like_oof_modes(mode, shifted, expected):
    assert wants_test_like(mode, {"shifted": shifted, "rows": [{}]}) is expected
    assert wants_test_like(mode, None) is False  # no test set: never


def reencode_test_images(home: Path, quality: int = 60, scale: float = 0.5) -> None:
    """Replace the competition's test images by copies re-encoded as JPEG at `quality`, `scale` x the size."""
    test = pd.read_csv(home / "data" / "test.csv", index_col=0)
    for rel in test["id"]:
        path = home / "data" / rel
        with Image.open(path) as img:
            small = img.convert("RGB").resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))))
        small.save(path, "JPEG", quality=quality)


def tables(home: Path, *overrides: str):
    """(cfg, project, train with folds, test) of a test project."""
    project = Project(home)
    cfg = load_config("", list(overrides), project, check_model=False)
    train, test = load_tables(cfg, project)
    return cfg, project, train, test


def test_profile_is_cached_and_recomputed_when_the_test_set_changes(home, monkeypatch):
    cfg, project, train, test = tables(home)
    first = test_profile(cfg, project, train, test)
    assert profile_file(cfg, project).is_file() and first["scale"] == 1.0 and first["shifted"] is False
    calls = []
    real = test_encoding.measure_encoding
    monkeypatch.setattr(test_encoding, "measure_encoding", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert test_profile(cfg, project, train, test) == first and calls == []  # cached
    reencode_test_images(home)  # same test.csv, new files
    second = test_profile(cfg, project, train, test)
    assert calls and second["shifted"] is True and second["scale"] == 0.5
    assert second["summary"]["jpeg_quality_median"] == 60.0
    calls.clear()
    fewer = test.head(5)  # test.csv changed: another digest
    third = test_profile(cfg, project, train, fewer)
    assert calls and third["summary"]["n"] == 5 and json.loads(profile_file(cfg, project).read_text()) == third


def test_no_test_set_has_no_profile_and_match_test_is_refused_in_one_line(home):
    cfg, project, train, test = tables(home, "data.match_test=0.5")
    assert test_profile(cfg, project, train, test.head(0)) is None
    with pytest.raises(ConfigError) as err:
        run_profile(cfg, project, train, test.head(0))
    assert "data.match_test" in str(err.value) and "\n" not in str(err.value)
    assert run_profile(load_config("", ["data.test_like_oof=off"], project, check_model=False), project, train,
                       test) is None  # nothing asked for: not even measured


BAD_VALUES = {"data.test_like_oof": ["yes", "maybe", "true", "1", "ON!"],
              "data.match_test": ["-0.1", "1.5", "half", "nan", "[0.5]"]}
COMMANDS = ["competition.experiment", "competition.shift", "competition.audit"]


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("key,value", [(k, v) for k, values in BAD_VALUES.items() for v in values])
def test_bad_values_of_the_new_keys_are_one_error_line(home, command, key, value):
    smoke_experiment(home, "e1")
    args = (["e1"] if command == "competition.experiment" else []) + [f"{key}={value}"]
    result = call_kit(home, command, *args, check=False)
    errors = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert result.returncode == 2 and len(errors) == 1 and key.split(".")[1] in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def test_image_filter_hook_keys_rows_by_id_and_epoch_and_may_swap_the_transform():
    seen = []

    class Filter:
        transform = None

        def __call__(self, image, key):
            seen.append(key)
            return (image * 0, self.other) if key.startswith("b") else image

    other = type("T", (), {"__call__": lambda self, image: {"image": image[:8, :8] + 1}})()
    flt = Filter()
    flt.other = other
    ds = ImageDataset(["p0", "p1"], None, lambda image: {"image": image[:8, :8]}, image_filter=flt, keys=["a", "b"])
    ds.load = lambda index: np.full((16, 16, 3), 5, np.uint8)
    assert int(ds[0][0].max()) == 5 and int(ds[1][0].max()) == 1  # row b: filtered, then the filter's transform
    ds.set_epoch_seed(123, 2)
    ds[0]
    assert seen == ["a", "b", "a@123"]


def test_match_test_reencodes_its_share_and_replaces_the_preset_jpeg(home):
    cfg, project, train, test = tables(home)
    profile = {**profile_of("JPEG", 40, 2, 0.5), "shifted": True}
    matched = MatchTest(TestLikeEncoder(profile, 0), 1.0, "no-jpeg")
    out = matched(picture(64, 64), "k@1")
    assert isinstance(out, tuple) and out[0].shape == (32, 32, 3) and out[1] == "no-jpeg"
    assert MatchTest(TestLikeEncoder(profile, 0), 0.0, "t")(picture(), "k@1").shape == (96, 128, 3)
    draws = [isinstance(MatchTest(TestLikeEncoder(profile, 0), 0.3, "t")(picture(8, 8), f"k{i}@5"), tuple)
             for i in range(200)]
    assert 0.2 < np.mean(draws) < 0.4
    from competition.experiment import fold_inputs

    cfg = load_config("", ["data.match_test=0.5", "data.img_size=32"], project, check_model=False)
    inputs = fold_inputs(cfg, 0, train, None, None, None, profile)
    assert isinstance(inputs.train.image_filter, MatchTest) and inputs.train.image_filter.share == 0.5
    assert inputs.train[0][0].shape == (3, 32, 32)
    assert fold_inputs(load_config("", [], project, check_model=False), 0, train, None).train.image_filter is None


def test_match_test_sees_whole_images_from_the_decoded_image_cache(home):
    from competition.image_cache import open_cache

    cfg, project, train, test = tables(home, "data.img_size=32")
    paths = train["path"].tolist()[:4]
    cache = open_cache(paths, "memmap", home / ".cache")
    assert cache is not None  # CIFAKE: small same-sized images
    seen = []
    encoder = TestLikeEncoder(profile_of("JPEG", 50, 2, 0.5), 0)
    matched = MatchTest(encoder, 1.0, None)
    spy = lambda image, key: seen.append(image.shape) or matched(image, key)  # noqa: E731
    ds = ImageDataset(paths, None, lambda image: {"image": image}, cache, image_filter=spy)
    ds.set_epoch_seed(3)
    assert ds[0][0].shape == (3, 16, 16) and seen == [(32, 32, 3)]  # the whole cached image, then halved


def test_match_test_turns_the_crop_cache_off_with_one_log_line(home, caplog):
    from competition.experiment import prepare_run

    reencode_test_images(home)
    project = Project(home)
    cfg = load_config("", ["data.match_test=0.5", "data.crop_cache=on", "data.augment=forensic"], project,
                      check_model=False)
    with caplog.at_level(logging.INFO):
        run = prepare_run(cfg, project, home / "experiments" / "x", False, "cpu")
    assert run.crop_dir is None and run.encoding["shifted"] is True
    assert sum("crop cache off: data.match_test" in r.getMessage() for r in caplog.records) == 1


def test_test_like_dataset_has_the_eval_geometry_and_reencoded_pixels(home):
    cfg, project, train, test = tables(home, "data.img_size=32", "tta.crops=5")
    paths, ids = train["path"].tolist()[:3], train["id"].tolist()[:3]
    profile = profile_of("JPEG", 30, 2, 1.0)
    like, plain = test_like_dataset(cfg, paths, ids, profile, seed=1), eval_dataset(cfg, paths)
    assert all(like[i][0].shape == plain[i][0].shape for i in range(3))
    assert any(not np.array_equal(like[i][0].numpy(), plain[i][0].numpy()) for i in range(3))
    again = test_like_dataset(cfg, paths, ids, profile, seed=1)
    assert all(np.array_equal(like[i][0].numpy(), again[i][0].numpy()) for i in range(3))


# ------------------------------------------------------------------ a trained run whose test set is re-encoded


def blend_sidecar(home: Path, name: str) -> dict:
    return json.loads((home / "submissions" / f"{name}.json").read_text())


@pytest.mark.slow  # assembles a trained run again (predicts its validation rows re-encoded)
def test_trained_run_gains_the_test_like_column_without_retraining(trained_project):
    home = trained_project
    out = home / "experiments" / "done"
    call_kit(home, "competition.experiment", "done", "--assemble", "data.test_like_oof=off")  # a runtime key
    assert "prob_test_like" not in pd.read_csv(out / "fold0" / "oof.csv")
    board = (home / "experiments" / "LEADERBOARD.md").read_text()
    assert "OOF test-like" in board
    best = {k: (out / f"fold{k}" / "best.pt").stat().st_mtime_ns for k in (0, 1)}
    reencode_test_images(home, quality=60, scale=0.5)
    refused = call_kit(home, "competition.experiment", "done", "--assemble", check=False)  # stale test predictions
    assert refused.returncode == 2 and "test files changed" in refused.stderr and (out / "fold0" / "test.csv").is_file()
    call_kit(home, "competition.experiment", "done")  # predicts the changed test files again, then assembles
    assert {k: (out / f"fold{k}" / "best.pt").stat().st_mtime_ns for k in (0, 1)} == best  # nothing retrained
    oof = pd.read_csv(out / "oof.csv")
    assert "prob_test_like" in oof and oof["prob_test_like"].between(0, 1).all()
    assert not np.allclose(oof["prob_test_like"], oof["prob"])
    metrics = json.loads((out / "metrics.json").read_text())
    like = metrics["oof_test_like"]
    assert like["gap"] == pytest.approx(metrics["oof_score"] - like["score"])
    assert like["profile"]["scale"] == 0.5 and like["profile"]["jpeg_quality_median"] == 60.0
    assert like["metrics"]["auc"] == pytest.approx(like["score"]) and like["resize_kernel"] == "lanczos"
    row = next(line for line in (home / "experiments" / "LEADERBOARD.md").read_text().splitlines()
               if line.startswith("| 1 | done |"))
    assert f"{like['score']:.5f} (gap {like['gap']:+.4f})" in row
    first = oof["prob_test_like"].to_numpy()
    call_kit(home, "competition.experiment", "done", "--assemble")  # present: kept, not recomputed
    assert np.array_equal(pd.read_csv(out / "oof.csv")["prob_test_like"].to_numpy(), first)
    call_kit(home, "competition.ensemble", "done", "--method", "mean", "--name", "likeblend")
    side = blend_sidecar(home, "likeblend")
    assert side["nested_test_like"]["mean"] is not None and "held_out" not in side["nested_test_like"]
    blend_row = next(line for line in (home / "experiments" / "LEADERBOARD.md").read_text().splitlines()
                     if "likeblend.csv" in line)
    assert f"{side['nested_test_like']['mean']:.5f}" in blend_row


# the kernel a test-like column was made with (None: unrecorded) x the configured one x the test profile -> stale?
KERNEL_CASES = [(made, wanted, scale, shifted) for made in (None, "area", "lanczos", "bicubic", "mix")
                for wanted in ("lanczos", "area", "mix") for scale in (0.5, 1.0, 2.0) for shifted in (True, False)]


@pytest.mark.parametrize("made,wanted,scale,shifted", KERNEL_CASES)
def test_a_test_like_column_is_stale_only_when_its_kernel_touched_pixels_differently(made, wanted, scale, shifted):
    profile = {**profile_of("JPEG", 70, 2, scale), "shifted": shifted}
    expected = shifted and scale != 1.0 and (made or "area") != wanted
    assert test_encoding.kernel_is_stale(made, wanted, profile) is expected
    assert test_encoding.kernel_is_stale(made, wanted, None) is False  # no test set: no column to remake


# where the kernel is recorded (fold result.json, else the experiment's metrics.json) -> what add_test_like reads
RECORDS = {"fold record": ({"test_like_resize": "bicubic"}, {"oof_test_like": {"resize_kernel": "lanczos"}}, "bicubic"),
           "metrics only": ({}, {"oof_test_like": {"score": 0.9, "resize_kernel": "mix"}}, "mix"),
           "metrics without kernel": ({}, {"oof_test_like": {"score": 0.9}}, None),
           "no test-like score": ({}, {"oof_test_like": None}, None),
           "nothing": (None, None, None)}


@pytest.mark.parametrize("name", RECORDS)
def test_the_kernel_of_a_finished_folds_column_is_read_from_its_records(tmp_path, name):
    from competition.experiment import test_like_kernel

    result, metrics, expected = RECORDS[name]
    (tmp_path / "fold0").mkdir()
    for path, content in ((tmp_path / "fold0" / "result.json", result), (tmp_path / "metrics.json", metrics)):
        if content is not None:
            path.write_text(json.dumps({"fold": 0, **content} if path.name == "result.json" else content))
    assert test_like_kernel(tmp_path, tmp_path / "fold0") == expected


@pytest.mark.slow  # predicts a trained run's validation rows re-encoded (no training)
def test_a_column_made_with_another_kernel_is_remade_and_one_made_with_this_kernel_kept(trained_project, caplog):
    home, out = trained_project, trained_project / "experiments" / "done"
    reencode_test_images(home, quality=60, scale=0.5)
    call_kit(home, "competition.experiment", "done")  # predicts the changed test files, adds the column (lanczos)
    made = {k: pd.read_csv(out / f"fold{k}" / "oof.csv")["prob_test_like"].to_numpy() for k in (0, 1)}
    assert all(json.loads((out / f"fold{k}" / "result.json").read_text())["test_like_resize"] == "lanczos"
               for k in (0, 1))
    # fold 0's record, metrics.json's record -> remade? (a sentinel column shows which were remade)
    cases = [("area", "lanczos", True), (None, None, True), ("bicubic", "lanczos", True), (None, "lanczos", False),
             ("lanczos", None, False)]
    for fold_record, metrics_record, remade in cases:
        oof_file, result_file = out / "fold0" / "oof.csv", out / "fold0" / "result.json"
        oof = pd.read_csv(oof_file, dtype={"id": str})
        pd.DataFrame({**oof, "prob_test_like": 0.5, "prob_test_like_adapted": 0.5}).to_csv(oof_file, index=False)
        result = {k: v for k, v in json.loads(result_file.read_text()).items() if k != "test_like_resize"}
        result_file.write_text(json.dumps({**result, **({"test_like_resize": fold_record} if fold_record else {})}))
        metrics = json.loads((out / "metrics.json").read_text())
        like = {k: v for k, v in metrics["oof_test_like"].items() if k != "resize_kernel"}
        (out / "metrics.json").write_text(json.dumps({**metrics, "oof_test_like": {
            **like, **({"resize_kernel": metrics_record} if metrics_record else {})}}))
        caplog.clear()
        with caplog.at_level(logging.INFO):
            call_kit(home, "competition.experiment", "done", "--assemble")
        after = pd.read_csv(oof_file)
        case = (fold_record, metrics_record)
        if remade:
            np.testing.assert_allclose(after["prob_test_like"], made[0], err_msg=str(case))
            assert after["prob_test_like_adapted"].between(0, 1).all() and after["prob_test_like_adapted"].nunique() > 1
            assert json.loads(result_file.read_text())["test_like_resize"] == "lanczos", case
            assert any(f"fold0: test-like OOF column made with {fold_record or metrics_record or 'area'} remade with "
                       f"data.test_like_resize=lanczos" in r.getMessage() for r in caplog.records), case
        else:
            assert (after["prob_test_like"] == 0.5).all() and (after["prob_test_like_adapted"] == 0.5).all(), case
        # fold 1's record matched: kept
        assert not any("fold1: test-like OOF column made" in r.getMessage() for r in caplog.records)
        assert json.loads((out / "metrics.json").read_text())["oof_test_like"]["resize_kernel"] == "lanczos"
    np.testing.assert_array_equal(pd.read_csv(out / "fold1" / "oof.csv")["prob_test_like"], made[1])


@pytest.mark.slow  # blends a trained run
def test_runs_without_the_column_keep_working(trained_project):
    home = trained_project
    assert "prob_test_like" not in pd.read_csv(home / "experiments" / "done" / "oof.csv")
    call_kit(home, "competition.ensemble", "done", "--method", "mean", "--name", "plain")
    assert blend_sidecar(home, "plain")["nested_test_like"] is None
    board = (home / "experiments" / "LEADERBOARD.md").read_text()
    row = next(line for line in board.splitlines() if line.startswith("| 1 | done |"))
    assert [c.strip() for c in row.strip("|").split("|")][5] == ""  # OOF test-like: blank


@pytest.mark.slow  # trains a tiny experiment (2 folds, 1 epoch)
def test_a_run_on_a_reencoded_test_set_writes_the_column_per_fold_and_trains_with_match_test(home):
    reencode_test_images(home, quality=60, scale=0.5)
    smoke_experiment(home, "mt", data={"match_test": 0.5, "crop_cache": "off"})
    result = call_kit(home, "competition.experiment", "mt", "--no-assemble")  # folds only: no assemble backfill
    assert result.stderr.count("data.match_test=0.5: that share of training images is re-encoded") == 2  # per fold
    out = home / "experiments" / "mt"
    for k in (0, 1):
        fold = pd.read_csv(out / f"fold{k}" / "oof.csv")
        assert fold["prob_test_like"].between(0, 1).all() and len(fold) == 20
    call_kit(home, "competition.experiment", "mt", "--assemble")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["oof_test_like"]["profile"]["shifted"] is True
    assert list(pd.read_csv(out / "oof.csv").columns) == ["id", "fold", "target", "prob", "prob_test_like"]
