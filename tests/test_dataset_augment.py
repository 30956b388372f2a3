"""Decoding (orientation, modes, broken files), augmentation presets on real images, the uint8 cache."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from competition.augment import build_eval_transform, build_train_transform, five_crops, tta_views
from competition.config import DataConfig
from competition.dataset import ImageDataset
from competition.decode import BadImageError, decode_image
from competition.image_cache import BAD, CACHED, ImageCache, open_cache
from tests.conftest import CIFAKE, FACES


def save(img: Image.Image, path, **kw):
    img.save(path, **kw)
    return str(path)


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    path = save(img, tmp_path / "rot.jpg", exif=exif.tobytes())
    assert decode_image(path).shape == (40, 20, 3)


@pytest.mark.parametrize("make", [
    lambda: Image.new("RGBA", (9, 7), (10, 20, 30, 0)),
    lambda: Image.new("L", (9, 7), 128),
    lambda: Image.new("CMYK", (9, 7), (0, 0, 0, 0)),
    lambda: Image.new("P", (9, 7), 3),
    lambda: Image.fromarray(np.full((7, 9), 40000, np.uint16)),
    lambda: Image.new("RGB", (1, 1), (1, 2, 3)),
])
def test_any_mode_decodes_to_uint8_rgb(tmp_path, make):
    img = make()
    fmt = "JPEG" if img.mode == "CMYK" else "PNG"
    path = save(img, tmp_path / f"x.{fmt.lower()}", format=fmt)
    out = decode_image(path)
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
    assert out.shape[:2] == (img.height, img.width)


def test_transparent_pixels_become_white_and_16bit_is_scaled(tmp_path):
    rgba = decode_image(save(Image.new("RGBA", (4, 4), (10, 20, 30, 0)), tmp_path / "t.png"))
    assert (rgba == 255).all()
    sixteen = decode_image(save(Image.fromarray(np.full((4, 4), 65535, np.uint16)), tmp_path / "s.png"))
    assert (sixteen == 255).all()


def test_broken_files_raise_bad_image(tmp_path):
    good = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(good, "JPEG")
    (tmp_path / "trunc.jpg").write_bytes(good.getvalue()[:200])
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    for name in ("trunc.jpg", "empty.jpg", "text.jpg", "missing.jpg"):
        with pytest.raises(BadImageError):
            decode_image(str(tmp_path / name))


def test_forensic_preset_crops_native_resolution_of_large_faces():
    face = decode_image(str(FACES / "images" / "00000.jpg"))
    assert face.shape == (1024, 1024, 3)
    data = DataConfig(img_size=224, augment="forensic", jpeg_p=0.0, blur_p=0.0)
    out = build_train_transform(data, seed=0)(image=face)["image"]
    assert out.shape == (224, 224, 3)
    # a native-resolution crop: the output is an exact window of the original (maybe flipped), not a resize
    exact = []
    for w in (face, np.ascontiguousarray(face[:, ::-1])):
        _, _, (x, y), _ = cv2.minMaxLoc(cv2.matchTemplate(w, out, cv2.TM_SQDIFF))
        exact.append(np.array_equal(w[y:y + 224, x:x + 224], out))
    assert any(exact)


def test_resize_preset_downsamples_whole_image():
    face = decode_image(str(FACES / "images" / "00001.jpg"))
    out = build_eval_transform(DataConfig(img_size=128, augment="resize"))(image=face)["image"]
    assert out.shape == (128, 128, 3)
    assert abs(out.mean() - face.mean()) < 3  # the whole image, shrunk


def test_small_images_are_padded_not_resized():
    small = decode_image(str(CIFAKE / "train_data" / "e8a016bb2072f35d0cad306db42f289d.jpg"))
    out = build_eval_transform(DataConfig(img_size=48, augment="forensic"))(image=small)["image"]
    assert out.shape == (48, 48, 3)
    assert (out[8:40, 8:40] == small).all()  # original pixels untouched in the centre
    assert five_crops(small, 32).shape == (5, 32, 32, 3)


def test_tta_views():
    x = np.arange(2 * 3 * 4 * 4).reshape(2, 3, 4, 4)
    import torch
    t = torch.from_numpy(x)
    views = tta_views("d4")
    outs = {tuple(v(t).flatten().tolist()) for v in views}
    assert len(views) == 8 and len(outs) == 8  # eight distinct dihedral views
    assert len(tta_views("hflip")) == 2 and torch.equal(tta_views("identity")[0](t), t)


def test_cache_decodes_once_and_flags_bad_files(tmp_path):
    paths = sorted(str(p) for p in (CIFAKE / "train_data").glob("*.jpg"))[:30]
    bad = tmp_path / "bad.jpg"
    bad.write_text("nope")
    cache = open_cache(paths + [str(bad)], "auto", tmp_path / "cache")
    assert cache is not None and cache.array.shape == (31, 32, 32, 3)
    assert (cache.states[:30] == CACHED).all() and cache.states[30] == BAD
    assert (cache.image(3) == decode_image(paths[3])).all()
    files = list((tmp_path / "cache").glob("*.npy"))
    mtime = files[0].stat().st_mtime_ns
    again = open_cache(paths + [str(bad)], "auto", tmp_path / "cache")
    assert files[0].stat().st_mtime_ns == mtime and isinstance(again, ImageCache)  # reused, not rebuilt
    view = cache.subset(np.array([30, 3]))
    ds = ImageDataset([str(bad), paths[3]], np.array([1, 0]), build_eval_transform(DataConfig(img_size=32)), view)
    image, label, index, error = ds[0]
    assert error and image.shape == (3, 32, 32)
    assert ds[1][3] == "" and (ds[1][0].permute(1, 2, 0).numpy() == decode_image(paths[3])).all()


def test_large_images_are_not_cached():
    paths = [str(p) for p in sorted((FACES / "images").glob("*.jpg"))[:3]]
    assert open_cache(paths, "auto", FACES / "never-written") is None
