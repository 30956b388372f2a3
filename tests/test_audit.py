"""Shortcut audit on the two shared sets, and the encoding remedy that hides the leak from the model."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from competition.audit import audit, jpeg_quality, read_metadata
from competition.config import CompetitionConfig
from competition.dataset import ImageDataset
from competition.decode import decode_image, normalize_encoding, reencode
from competition.augment import build_eval_transform
from competition.config import DataConfig
from competition.tables import load_train_table
from tests.conftest import PROJECT
from tests.conftest import CIFAKE, FACES, call_kit


@pytest.mark.parametrize("quality", [30, 50, 75, 90, 95, 100])
def test_jpeg_quality_estimate(tmp_path, quality):
    rng = np.random.default_rng(0)
    path = tmp_path / "q.jpg"
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path, quality=quality)
    assert abs(read_metadata(str(path))["jpeg_quality"] - quality) <= 1


def test_audit_flags_the_faces_leak():
    report = audit(load_train_table(CompetitionConfig(data_dir=str(FACES)), PROJECT))
    assert report["leak"] and report["metadata_auc"] > 0.95
    top = list(report["feature_auc"])[:4]
    assert {"jpeg_quality", "progressive", "file_kb"} <= set(top)
    assert report["per_class"]["0"]["progressive_share"] == 0.0 and report["per_class"]["1"]["progressive_share"] == 1.0
    assert "normalize_encoding" in report["verdict"]


@pytest.mark.slow
def test_audit_does_not_flag_cifake():
    report = audit(load_train_table(CompetitionConfig(data_dir=str(CIFAKE)), PROJECT))
    assert not report["leak"] and report["metadata_auc"] < 0.65


def test_audit_cli_exit_code_and_report(tmp_path):
    proc = call_kit(tmp_path, "competition.audit", str(FACES), "--out", str(tmp_path), check=False)
    assert proc.returncode == 1 and "SHORTCUT" in proc.stdout
    assert (tmp_path / "faces_tpdne_ffhq_audit.md").is_file() and (tmp_path / "faces_tpdne_ffhq_audit.json").is_file()


def test_normalize_encoding_gives_both_classes_one_encoding():
    table = pd.read_csv(FACES / "train.csv")
    spec = {"format": "jpeg", "quality": 90}
    seen = {}
    for label in (0, 1):
        path = FACES / table[table["label"] == label]["file_name"].iloc[0]
        original = Image.open(path)
        data = reencode(decode_image(str(path)), spec)  # the bytes the pipeline decodes
        img = Image.open(io.BytesIO(data))
        seen[label] = (jpeg_quality(img.quantization), bool(img.info.get("progressive")), original.info.get("progressive"))
    assert seen[0][:2] == seen[1][:2] == (90.0, False)
    assert seen[0][2] != seen[1][2]  # while the originals differ


def test_dataset_applies_normalize_encoding():
    path = str(FACES / "images" / "00001.jpg")
    spec = {"format": "jpeg", "quality": 90}
    ds = ImageDataset([path], np.array([1]), build_eval_transform(DataConfig(img_size=1024)), encoding=spec)
    expected = normalize_encoding(decode_image(path), spec)
    assert np.array_equal(ds[0][0].permute(1, 2, 0).numpy(), expected) and not np.array_equal(expected, decode_image(path))


def test_audit_of_a_png_only_competition(tmp_path):
    """No file has a JPEG quality (all NaN): the audit still runs (it crashed in gradient boosting's binning)."""
    (tmp_path / "img").mkdir()
    rows = []
    for i, src in enumerate(sorted((CIFAKE / "train_data").glob("*.jpg"))[:40]):
        Image.open(src).convert("RGB").save(tmp_path / "img" / f"{i}.png")
        rows.append((f"img/{i}.png", i % 2))
    pd.DataFrame(rows, columns=["file_name", "label"]).to_csv(tmp_path / "train.csv", index=False)
    report = audit(load_train_table(CompetitionConfig(data_dir=str(tmp_path)), PROJECT))
    assert not report["leak"] and 0.0 <= report["metadata_auc"] <= 1.0
