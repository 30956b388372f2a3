"""A generated bad-image corpus: oddities decode, broken files are skipped/listed, test rows are never dropped."""

from __future__ import annotations

import io
import os
import struct
import zlib

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from competition.decode import BadImageError, decode_image
from competition.tables import DataError, load_train_table
from competition.config import CompetitionConfig
from tests.conftest import PROJECT
from tests.conftest import call_kit, smoke_experiment


def jpeg_bytes(size=(40, 30), color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims a huge size (a decompression bomb), with a valid CRC."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = 8 + 8  # signature, then length+type of the IHDR chunk
    data[ihdr:ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[12:ihdr + 13]))
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", crc)
    return bytes(data)


def animated(fmt: str) -> bytes:
    buf = io.BytesIO()
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 255, 0))]
    frames[0].save(buf, fmt, save_all=True, append_images=frames[1:], duration=50, loop=0)
    return buf.getvalue()


def palette_with_transparency() -> bytes:
    img = Image.new("P", (8, 8), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    buf = io.BytesIO()
    img.save(buf, "PNG", transparency=0)
    return buf.getvalue()


def png_bytes(mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (12, 10)).save(buf, "PNG")
    return buf.getvalue()


DECODABLE = {
    "png named.jpg": png_bytes(),
    "jpeg named.png": jpeg_bytes(),
    "animated.gif": animated("GIF"),
    "animated.webp": animated("WEBP"),
    "palette transparent.png": palette_with_transparency(),
    "rgba.png": png_bytes("RGBA"),
    "ümlaut façade 画像.jpg": jpeg_bytes(),
}
BROKEN = {
    "truncated.jpg": jpeg_bytes((256, 256))[:300],
    "zero.jpg": b"",
    "text.jpg": b"this is not an image\n",
    "bomb.png": png_claiming(30000, 30000),
}


@pytest.mark.parametrize("name", sorted(DECODABLE))
def test_decodable_oddities(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(DECODABLE[name])
    out = decode_image(str(path))
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_files_give_a_reason(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(BROKEN[name])
    with pytest.raises(BadImageError) as err:
        decode_image(str(path))
    assert str(err.value)
    if name == "bomb.png":
        assert "DecompressionBomb" in str(err.value)


def test_symlink_out_of_data_folder_is_refused(tmp_path):
    data = tmp_path / "data"
    (data / "img").mkdir(parents=True)
    (tmp_path / "outside.jpg").write_bytes(jpeg_bytes())
    os.symlink(tmp_path / "outside.jpg", data / "img" / "link.jpg")
    for i in range(4):
        (data / "img" / f"{i}.jpg").write_bytes(jpeg_bytes())
    pd.DataFrame({"file_name": [f"img/{i}.jpg" for i in range(4)] + ["img/link.jpg"],
                  "label": [0, 1, 0, 1, 0]}).to_csv(data / "train.csv", index=False)
    with pytest.raises(DataError, match=r"escape the data folder.*row 5 \('img/link.jpg'\)"):
        load_train_table(CompetitionConfig(data_dir=str(data)), PROJECT)


def add_bad_files(home):
    """Two broken training images and two broken test images (one missing entirely)."""
    data = home / "data"
    train = pd.read_csv(data / "train.csv", index_col=0)
    (data / "train_data" / "broken one.jpg").write_bytes(BROKEN["truncated.jpg"])
    (data / "train_data" / "text.jpg").write_bytes(BROKEN["text.jpg"])
    extra = pd.DataFrame({"file_name": ["train_data/broken one.jpg", "train_data/text.jpg"], "label": [0, 1]})
    pd.concat([train, extra], ignore_index=True).to_csv(data / "train.csv")
    test = pd.read_csv(data / "test.csv", index_col=0)
    (data / test["id"][2]).write_bytes(BROKEN["zero.jpg"])
    (data / test["id"][5]).unlink()
    return test["id"][2], test["id"][5]


@pytest.mark.slow
def test_bad_images_are_skipped_listed_and_test_rows_kept(home):
    broken_test, missing_test = add_bad_files(home)
    smoke_experiment(home, "bad")
    proc = call_kit(home, "competition.experiment", "bad")
    out = home / "experiments" / "bad"
    bad_train = pd.read_csv(out / "bad_train_images.csv")
    assert sorted(bad_train["id"]) == ["train_data/broken one.jpg", "train_data/text.jpg"]
    assert proc.stderr.count("bad training image train_data/text.jpg") == 1  # logged once
    bad_test = pd.read_csv(out / "bad_test_images.csv")
    assert sorted(bad_test["id"]) == sorted([broken_test, missing_test])
    assert "2 test image(s) could not be decoded" in proc.stderr
    test = pd.read_csv(out / "test.csv")
    assert len(test) == 12 and test["prob"].notna().all()  # every row predicted
    assert len(pd.read_csv(out / "oof.csv")) == 42
    call_kit(home, "competition.ensemble", "bad", "--name", "withbad")
    assert len(pd.read_csv(home / "submissions" / "withbad.csv")) == 12


def test_on_bad_image_fail_stops_before_training(home):
    add_bad_files(home)
    smoke_experiment(home, "strict", data={"on_bad_image": "fail"})
    proc = call_kit(home, "competition.experiment", "strict", check=False)
    assert proc.returncode == 2
    assert "2 training image(s) cannot be decoded" in proc.stderr and "train_data/text.jpg" in proc.stderr
    assert not (home / "experiments" / "strict" / "fold0").exists()
