"""benchmarks/resize_cost.py: one timed record per scale and kernel, each against area and the photo's decode."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import resize_cost  # noqa: E402 - benchmarks/ is not a package
from competition.test_encoding import RESIZE_KERNELS  # noqa: E402


@pytest.mark.parametrize("megapixels", [0.05, 0.2])
def test_the_photo_has_the_asked_size_and_texture(megapixels):
    image = resize_cost.photo(megapixels)
    assert image.dtype == np.uint8 and image.shape[2] == 3
    assert image.shape[0] * image.shape[1] == pytest.approx(megapixels * 1e6, rel=0.02)
    assert image.shape[1] / image.shape[0] == pytest.approx(4 / 3, rel=0.02)
    assert image.std() > 20  # not one flat colour: JPEG has work to do


@pytest.mark.parametrize("scales", [[0.5], [0.5, 0.75]])
def test_every_kernel_is_timed_at_every_scale_against_area_and_the_decode(tmp_path, scales):
    records = resize_cost.measure(0.1, scales, 1, tmp_path)
    assert [(r["scale"], r["kernel"]) for r in records] == [(s, k) for s in scales for k in RESIZE_KERNELS]
    assert all(r["ms"] > 0 and r["decode_ms"] > 0 for r in records)
    for r in records:
        assert r["vs_decode"] == pytest.approx(r["ms"] / r["decode_ms"])
        area = next(a for a in records if a["scale"] == r["scale"] and a["kernel"] == "area")
        assert r["vs_area"] == pytest.approx(r["ms"] / area["ms"])
    assert (tmp_path / "photo_0.1mp.jpg").is_file()
