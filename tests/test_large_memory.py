"""Memory on large photos: decoding, tiling and tile-TTA prediction stay bounded by the image's own size.

- decode: a 21 MP PNG / JPEG decodes with Python-visible allocations (tracemalloc: numpy arrays, bytes) of about
  the array itself, not Pillow's np.asarray (tobytes' chunks + their join: 2x), and to the same pixels;
- the band conversion gives np.asarray(img.convert("RGB"))'s pixels for every mode x format x EXIF orientation;
- tiles: cutting 4x4 tiles out of the decoded image allocates the tiles only; a dataset row (decode + tiles)
  stays near the image's size;
- prediction: views x crops reach the model in chunks of at most max_batch, the views are never built whole,
  and predictions equal the one-image-at-a-time reference and the old forward cap of 2 x batch (1e-6).
No timed tests: every bound is a ratio of bytes.
"""

from __future__ import annotations

import io
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from competition import decode
from competition.augment import tile_crops, tta_views
from competition.config import CompetitionConfig, Config, replace
from competition.dataset import make_loader
from competition.decode import decode_image
from competition.inference import eval_dataset, forward_cap, predict, predict_views

BIG = (4100, 5200)  # 21.3 MP: above decode.BAND_MIN_PIXELS (16.8 MP)


def tiled(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A cheap large RGB image: a random 256 px block tiled (plus a gradient so rows differ)."""
    block = np.random.default_rng(seed).integers(0, 200, (256, 256, 3), dtype=np.uint8)
    h, w = shape
    image = np.tile(block, (h // 256 + 1, w // 256 + 1, 1))[:h, :w]
    return image + (np.arange(h, dtype=np.uint16)[:, None, None] * 50 // h).astype(np.uint8)


@pytest.fixture(scope="module")
def big_files(tmp_path_factory) -> dict[str, Path]:
    """A 21 MP PNG and JPEG, written once for the module."""
    folder = tmp_path_factory.mktemp("big")
    image = tiled(BIG)
    Image.fromarray(image).save(folder / "big.png", compress_level=1)
    Image.fromarray(image).save(folder / "big.jpg", quality=90)
    return {"png": folder / "big.png", "jpg": folder / "big.jpg"}


def traced_peak(fn):
    """(fn's result, the peak of Python-visible allocations while it ran, in bytes)."""
    tracemalloc.start()
    try:
        out = fn()
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_a_large_image_decodes_at_about_its_own_size(big_files, fmt):
    image, peak = traced_peak(lambda: decode_image(big_files[fmt]))
    assert image.shape == (*BIG, 3) and image.dtype == np.uint8
    assert peak < 1.15 * image.nbytes, f"decode held {peak / image.nbytes:.2f}x the image"
    with Image.open(big_files[fmt]) as img:
        assert np.array_equal(image, np.asarray(img.convert("RGB")))


def encoded(mode: str, fmt: str, orientation: int) -> bytes:
    """A 61 x 37 image of `mode` saved as `fmt` with an EXIF orientation tag (1 = none)."""
    rgb = tiled((37, 61), seed=len(mode) + orientation)
    img = Image.fromarray(rgb)
    if mode == "P":
        img = img.quantize(16)
    elif mode == "RGBA":
        img = img.convert("RGBA")
        img.putalpha(Image.fromarray((np.arange(37 * 61).reshape(37, 61) % 256).astype(np.uint8)))
    elif mode != "RGB":
        img = img.convert(mode)
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, fmt, exif=exif.tobytes(), **({"quality": 92} if fmt == "JPEG" else {}))
    return buf.getvalue()


VARIANTS = [(mode, fmt) for mode in ("RGB", "L", "P", "1", "LA", "RGBA", "I;16") for fmt in ("PNG",)]
VARIANTS += [(mode, "JPEG") for mode in ("RGB", "L", "CMYK")]


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
@pytest.mark.parametrize("mode,fmt", VARIANTS)
def test_band_conversion_gives_the_whole_image_conversion(monkeypatch, mode, fmt, orientation):
    data = encoded(mode, fmt, orientation)
    whole = decode_image(io.BytesIO(data))  # small: the one-piece path
    monkeypatch.setattr(decode, "BAND_MIN_PIXELS", 0)
    monkeypatch.setattr(decode, "BAND_PIXELS", 100)  # 1-2 rows per band: many bands, a ragged last one
    banded = decode_image(io.BytesIO(data))
    assert banded.shape == whole.shape and banded.dtype == np.uint8
    assert np.array_equal(banded, whole)
    if orientation in (6, 8):
        assert banded.shape[:2] == (61, 37)  # turned


@pytest.mark.parametrize("spec", [{"format": "jpeg", "quality": 75}, {"format": "jpeg", "quality": 95, "subsampling": 0},
                                  {"format": "png"}, {"format": "webp", "quality": 80}])
def test_reencoded_pixels_are_the_same_in_bands(monkeypatch, spec):
    image = tiled((45, 70), seed=7)
    with Image.open(io.BytesIO(decode.reencode(image, spec))) as img:
        reference = np.asarray(img.convert("RGB"))
    monkeypatch.setattr(decode, "BAND_MIN_PIXELS", 0)
    monkeypatch.setattr(decode, "BAND_PIXELS", 150)
    assert np.array_equal(decode.normalize_encoding(image, spec), reference)


def test_tiles_allocate_the_tiles_only(big_files):
    image = decode_image(big_files["png"])
    tiles, peak = traced_peak(lambda: tile_crops(image, 224, 4))
    assert tiles.shape == (17, 224, 224, 3)
    assert peak < 1.5 * tiles.nbytes, f"tiling held {peak / 2**20:.0f} MB for {tiles.nbytes / 2**20:.1f} MB of tiles"


@pytest.fixture
def tile_cfg() -> Config:
    """The photo recipe's eval geometry: 224 px native crops, 4x4 tiles, hflip, batch 32, no worker processes."""
    cfg = Config(competition=CompetitionConfig(name="mem", data_dir="."))
    return replace(cfg, data={"img_size": 224, "augment": "forensic", "num_workers": 0},
                   train={"batch_size": 32}, tta={"views": "hflip", "crops": 1, "tiles": 4})


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_a_dataset_row_of_a_large_image_stays_near_its_size(big_files, tile_cfg, fmt):
    dataset = eval_dataset(tile_cfg, [str(big_files[fmt])])
    (tensor, _, _, error), peak = traced_peak(lambda: dataset[0])
    assert error == "" and tuple(tensor.shape) == (17, 3, 224, 224)
    assert peak < 1.2 * BIG[0] * BIG[1] * 3, f"a row held {peak / (BIG[0] * BIG[1] * 3):.2f}x the image"


class Tiny(torch.nn.Module):
    """A small deterministic convolutional logit model that records the batch sizes it sees."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.head = torch.nn.Linear(4, 1)
        self.seen: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(len(x))
        return self.head(self.conv(x.float() / 255).mean((2, 3))).squeeze(1)


def recording(views: list) -> tuple[list, list[int]]:
    """The views, each wrapped to record how many rows it is asked to build."""
    sizes: list[int] = []

    def wrap(view):
        return lambda x: (sizes.append(len(x)), view(x))[1]
    return [wrap(v) for v in views], sizes


@pytest.mark.parametrize("views", ["identity", "hflip", "d4"])
@pytest.mark.parametrize("crops", [1, 5, 17])
@pytest.mark.parametrize("max_batch", [1, 7, 1000])
def test_predict_views_builds_only_each_forward_chunk(views, crops, max_batch):
    images = torch.randint(0, 256, (2, crops, 3, 12, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    model, (transforms, built) = Tiny().eval(), recording(tta_views(views))
    got = predict_views(model, images, transforms, max_batch=max_batch)
    assert got.shape == (len(transforms), 2, crops)
    assert max(model.seen) <= max_batch and sum(model.seen) == len(transforms) * 2 * crops
    assert max(built) <= max_batch, "a view was built for more rows than one forward takes"
    with torch.no_grad():
        reference = np.array([[[torch.sigmoid(model(view(images[i, c][None]))).item() for c in range(crops)]
                               for i in range(2)] for view in tta_views(views)])
    np.testing.assert_allclose(got, reference, atol=1e-6, rtol=0)


@pytest.mark.parametrize("batch,max_batch,cap", [(32, 0, 32), (8, 0, 8), (32, 100, 100), (2, 0, 2)])
def test_a_forward_takes_one_training_batch_unless_told(tile_cfg, batch, max_batch, cap):
    cfg = replace(tile_cfg, train={"batch_size": batch}, tta={"max_batch": max_batch})
    assert forward_cap(cfg) == cap


def test_tile_predictions_equal_the_old_forward_cap(tmp_path, tile_cfg):
    rng = np.random.default_rng(3)
    paths = []
    for i, (h, w) in enumerate([(40, 36), (70, 90), (32, 32), (20, 120), (80, 60), (110, 40), (32, 64)]):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(paths[-1])
    cfg = replace(tile_cfg, data={"img_size": 32}, train={"batch_size": 4})
    cpu = torch.device("cpu")
    loader = make_loader(eval_dataset(cfg, paths), cfg, cpu, train=False)
    new = predict(Tiny(), loader, cpu, "hflip", max_batch=forward_cap(cfg))
    old = predict(Tiny(), loader, cpu, "hflip", max_batch=2 * cfg.train.batch_size)
    np.testing.assert_allclose(new.prob, old.prob, atol=1e-6, rtol=0)
    np.testing.assert_allclose(new.prob_identity, old.prob_identity, atol=1e-6, rtol=0)
    assert not new.errors
