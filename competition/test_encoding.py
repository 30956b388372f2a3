"""The test set's encoding, measured and imitated: closes the train-to-test encoding shift.

The shift check (competition.shift) tells when test images are encoded differently from the training ones (e.g.
re-encoded at half size as JPEG q70). Then the plain OOF score promises what the test set will not give. Here:
- `measure_encoding`: the encoding profile of a set of images from their headers (format, JPEG quality, chroma
  subsampling, pixel count per sampled image; competition.audit reads them);
- `test_profile`: the test set's profile relative to train (a resize scale from the median pixel counts), cached
  beside the folds file as <folds stem>_test_encoding.json, recomputed when the test (or train) table or a test
  file's content (size/mtime: files_digest) changes, and when the cached file fails validation (profile_problem:
  one WARNING naming it);
- `TestLikeEncoder`: re-encodes a decoded image like a test image (one test encoding drawn per key, seeded);
- `test_like_dataset`: the eval geometry with every image re-encoded like a test image first (OOF test-like).

"No encoding shift" (`profile["shifted"]` False; test-like = plain, nothing is re-encoded): the resize scale snaps
to 1 (median test pixels within ~10 % of train's: sqrt ratio within 5 %), each format's share differs by at most
10 points, the JPEGs' 4:2:0 / 4:2:2 / 4:4:4 shares by at most 10 points, and the median JPEG quality by at most 5.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from competition.atomic import write_json
from competition.audit import collect_metadata
from competition.augment import build_eval_transform
from competition.config import Config
from competition.dataset import ImageDataset
from competition.decode import reencode
from competition.errors import ConfigError
from competition.project import Project

log = logging.getLogger(__name__)

VERSION = 1  # bump when the profile's content or meaning changes (older cached profiles are recomputed)
SNAP = 0.05  # a resize scale within 5 % of 1 is 1 (no resize)
SHARE_TOLERANCE = 0.10  # format / subsampling shares may differ this much and still count as the same encoding
QUALITY_TOLERANCE = 5.0  # median JPEG qualities may differ this much and still count as the same encoding
LOSSY = {"JPEG": "JPEG", "MPO": "JPEG", "WEBP": "WEBP"}  # what a header format re-encodes as; others: lossless PNG
DEFAULT_QUALITY = {"JPEG": 90, "WEBP": 80}  # when a header does not tell (WebP quality is not in the file)
# data.test_like_resize: how a test resize is imitated. Pillow's filters antialias (libvips and ImageMagick shrink this
# way; lanczos is their usual default); OpenCV's "area" averages pixel blocks and "linear"
# (cv2.resize's default) samples without antialiasing, keeping aliasing that a detector can read. The choice moved OOF
# test-like by up to 0.05 AUC on the replica's 0.5x / 0.75x shifts (benchmarks/README.md section 12, resize_kernels.py); "mix" draws one
# of the five per image (seeded), hedging when the test's resizer is unknown.
PILLOW_KERNELS = {"lanczos": "LANCZOS", "bicubic": "BICUBIC", "bilinear": "BILINEAR"}
RESIZE_KERNELS = (*PILLOW_KERNELS, "area", "linear")


def measure_encoding(paths: list[str], sample: int = 2000, seed: int = 0) -> dict:
    """The encoding profile of images from their headers: rows (format, quality, subsampling, pixels) of up to
    `sample` seeded images, and a summary (median pixels, format shares, JPEG subsampling shares and quality)."""
    chosen = list(paths)
    if len(chosen) > sample:
        chosen = [chosen[i] for i in np.sort(np.random.default_rng(seed).permutation(len(chosen))[:sample])]
    meta = collect_metadata(chosen, workers=min(4, os.cpu_count() or 1)) if chosen else pd.DataFrame()
    rows = [encoding_row(r) for r in meta.to_dict("records")] if len(meta) else []
    rows = [r for r in rows if r["pixels"] > 0]
    return {"rows": rows, "summary": summarize(rows)}


def encoding_row(meta: dict) -> dict:
    """One image's encoding from its audit metadata (unreadable files give pixels 0 and are dropped)."""
    fmt = str(meta.get("format") or "?").upper()
    quality = meta.get("jpeg_quality")
    width, height = meta.get("width"), meta.get("height")
    pixels = int(width * height) if pd.notna(width) and pd.notna(height) else 0
    return {"format": "JPEG" if fmt == "MPO" else fmt,
            "quality": None if quality is None or pd.isna(quality) else int(quality),
            "subsampling": int(meta.get("subsampling", -1)) if pd.notna(meta.get("subsampling", -1)) else -1,
            "pixels": pixels}


def summarize(rows: list[dict]) -> dict:
    """Median pixels, format shares, JPEG subsampling shares and median JPEG quality of profile rows."""
    if not rows:
        return {"n": 0, "median_pixels": 0.0, "formats": {}, "subsampling": {}, "jpeg_quality_median": None}
    frame = pd.DataFrame(rows)
    jpeg = frame[frame["format"] == "JPEG"]
    quality = jpeg["quality"].dropna()
    return {"n": len(frame), "median_pixels": float(frame["pixels"].median()),
            "formats": shares(frame["format"]), "subsampling": shares(jpeg["subsampling"].astype(str)),
            "jpeg_quality_median": float(quality.median()) if len(quality) else None}


def shares(values: pd.Series) -> dict:
    """Each value's share of a column (rounded to 4 places)."""
    return {str(k): round(float(v), 4) for k, v in values.value_counts(normalize=True).items()}


def resize_scale(test_pixels: float, train_pixels: float) -> float:
    """sqrt(test median px / train median px), snapped to 1 within SNAP (1 when either is unknown)."""
    if test_pixels <= 0 or train_pixels <= 0:
        return 1.0
    scale = float(np.sqrt(test_pixels / train_pixels))
    return 1.0 if abs(scale - 1.0) <= SNAP else round(scale, 4)


def encoding_differs(test: dict, train: dict, scale: float) -> bool:
    """Whether two profile summaries count as different encodings (see the module docstring)."""
    def apart(a: dict, b: dict) -> bool:
        return any(abs(a.get(k, 0.0) - b.get(k, 0.0)) > SHARE_TOLERANCE for k in set(a) | set(b))

    qa, qb = test.get("jpeg_quality_median"), train.get("jpeg_quality_median")
    quality_apart = qa is not None and qb is not None and abs(qa - qb) > QUALITY_TOLERANCE
    return scale != 1.0 or apart(test["formats"], train["formats"]) or \
        apart(test["subsampling"], train["subsampling"]) or quality_apart


def files_digest(paths: list[str], keys: list[str] | None = None) -> str:
    """A cheap fingerprint of files' content: each file's key (its id; the path when none) with its size and
    mtime_ns - a file rewritten in place under the same name changes it, a project folder moved or copied with
    its times kept does not; a missing file counts as missing."""
    digest = hashlib.sha1()
    for path, key in zip(paths, keys if keys is not None else paths):
        try:
            st = os.stat(path)
            digest.update(f"{key}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{key}|missing\n".encode())
    return digest.hexdigest()[:16]


def test_files_digest(test: pd.DataFrame) -> str:
    """files_digest of a test table, keyed by id (what inputs.json and the shift report record)."""
    return files_digest(test["path"].astype(str).tolist(), test["id"].astype(str).tolist())


def table_digest(train: pd.DataFrame, test: pd.DataFrame, measured: int = 0, sample: int = 200) -> str:
    """What the cached profile depends on (metrics.json's oof_test_like.profile.digest): both tables' ids, every
    test file's size/mtime and those of up to `sample` training files (keyed by id, so a project folder moved with
    its file times kept keeps it), and how many images per side are measured."""
    digest = hashlib.sha1(f"v{VERSION}|{measured}".encode())
    for frame in (train, test):
        digest.update(pd.util.hash_pandas_object(frame["id"].astype(str), index=False).values.tobytes())
    some = train.iloc[np.unique(np.linspace(0, len(train) - 1, min(sample, len(train))).astype(int))] if len(train) \
        else train
    digest.update(f"{test_files_digest(test)}|{test_files_digest(some)}".encode())
    return digest.hexdigest()[:16]


def is_number(value, low: float, high: float, low_open: bool = False) -> bool:
    """Whether a JSON value is a real number (not a bool or text) within [low, high] ((low, high] when low_open)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        return False
    return (low < value if low_open else low <= value) and value <= high


def row_problem(row) -> str | None:
    """What is wrong with one cached profile row (None when it is a valid measured row)."""
    if not isinstance(row, dict):
        return f"a row is {type(row).__name__}, not an object"
    if not isinstance(row.get("format"), str) or not row["format"]:
        return f"row format {row.get('format')!r} is not a format name"
    quality = row.get("quality")
    if quality is not None and not (is_number(quality, 1, 100) and float(quality).is_integer()):
        return f"row quality {quality!r} is not a whole number 1-100 (or null)"
    if not (is_number(row.get("subsampling"), -1, 2) and float(row["subsampling"]).is_integer()):
        return f"row subsampling {row.get('subsampling')!r} is not -1, 0, 1 or 2"
    if not (is_number(row.get("pixels"), 0, float("inf"), low_open=True) and float(row["pixels"]).is_integer()):
        return f"row pixels {row.get('pixels')!r} is not a whole number > 0"
    return None


def summary_problem(summary, name: str) -> str | None:
    """What is wrong with a cached profile summary (`name` says which) - None when valid."""
    if not isinstance(summary, dict):
        return f"{name} is {type(summary).__name__}, not an object"
    checks = {"n": is_number(summary.get("n"), 0, float("inf")) and float(summary["n"]).is_integer(),
              "median_pixels": is_number(summary.get("median_pixels"), 0, float("inf")),
              "jpeg_quality_median": summary.get("jpeg_quality_median") is None
              or is_number(summary.get("jpeg_quality_median"), 1, 100)}
    for key in ("formats", "subsampling"):
        shares_ = summary.get(key)
        checks[key] = isinstance(shares_, dict) and all(is_number(v, 0, 1) for v in shares_.values())
    bad = [key for key, ok in checks.items() if not ok]
    return f"{name}.{bad[0]} {summary.get(bad[0])!r} is missing, of the wrong type or out of range" if bad else None


def profile_problem(profile) -> str | None:
    """What is wrong with a cached test profile (types, ranges, and scale/shifted agreeing with its own summaries,
    as test_profile computes them); None when it can be used."""
    if not isinstance(profile, dict):
        return f"it holds {type(profile).__name__}, not an object"
    rows = profile.get("rows")
    if not isinstance(rows, list):
        return f"rows {rows!r} is not a list"
    problem = next((p for p in map(row_problem, rows) if p), None) or \
        summary_problem(profile.get("summary"), "summary") or summary_problem(profile.get("train"), "train")
    if problem:
        return problem
    test, train, scale = profile["summary"], profile["train"], profile.get("scale")
    if test["n"] != len(rows):
        return f"summary.n {test['n']} is not the number of rows ({len(rows)})"
    if not is_number(scale, 0, float("inf"), low_open=True) or \
            abs(scale - resize_scale(test["median_pixels"], train["median_pixels"])) > 1e-3:
        return f"scale {scale!r} is not the resize scale of its median pixel counts (a number > 0)"
    shifted = bool(rows) and encoding_differs(test, train, float(scale))
    if profile.get("shifted") is not shifted:
        return f"shifted {profile.get('shifted')!r} does not follow from its summaries ({shifted})"
    return None


def profile_file(cfg: Config, project: Project) -> Path:
    """folds/<folds stem>_test_encoding.json: where the test profile is cached."""
    return project.folds / f"{project.folds_file(cfg).stem}_test_encoding.json"


def test_profile(cfg: Config, project: Project, train: pd.DataFrame, test: pd.DataFrame) -> dict | None:
    """The test set's encoding profile relative to train (cached beside the folds file; None without a test set):
    the test rows and summary, train's summary, the resize `scale` and whether the encoding is `shifted`."""
    if test is None or not len(test):
        return None
    file, digest = profile_file(cfg, project), table_digest(train, test, measured=cfg.folds.shift_sample)
    if file.is_file():
        cached = read_profile(file, digest)
        if cached is not None:
            return cached
    test_side = measure_encoding(test["path"].tolist(), cfg.folds.shift_sample, seed=1)
    train_side = measure_encoding(train["path"].tolist(), cfg.folds.shift_sample, seed=0)
    scale = resize_scale(test_side["summary"]["median_pixels"], train_side["summary"]["median_pixels"])
    shifted = bool(test_side["rows"]) and encoding_differs(test_side["summary"], train_side["summary"], scale)
    profile = {"version": VERSION, "digest": digest, "rows": test_side["rows"], "summary": test_side["summary"],
               "train": train_side["summary"], "scale": scale, "shifted": shifted}
    profile["summary"]["scale"], profile["summary"]["shifted"] = scale, profile["shifted"]
    profile["summary"]["digest"] = digest  # metrics.json oof_test_like.profile.digest: the profile a score used
    file.parent.mkdir(parents=True, exist_ok=True)
    write_json(file, profile)
    log.info("test encoding %s: %s (scale %.3f) -> %s", "SHIFTED" if profile["shifted"] else "like train",
             profile["summary"]["formats"], scale, file)
    return profile


def read_profile(file: Path, digest: str) -> dict | None:
    """The cached profile when it is for these tables (digest) and valid (profile_problem); else None, after one
    WARNING naming the file when it is unreadable or invalid (the caller measures again)."""
    try:
        cached = json.loads(file.read_text())
    except (OSError, ValueError) as err:
        log.warning("%s unreadable (%s): measuring the test encoding again", file, err)
        return None
    if not isinstance(cached, dict) or cached.get("digest") != digest:
        return None  # made from other tables: measured again (not a mistake)
    problem = profile_problem(cached)
    if problem:
        log.warning("%s: %s - ignoring it and measuring the test encoding again", file, problem)
        return None
    cached["summary"]["digest"] = digest
    return cached


def seeded_rng(seed: int, key: str) -> np.random.Generator:
    """A generator seeded by (seed, key): the same row always draws the same."""
    return np.random.default_rng([seed % 2**32, int(hashlib.sha1(str(key).encode()).hexdigest()[:15], 16)])


def resize_image(image: np.ndarray, scale: float, kernel: str) -> np.ndarray:
    """An RGB uint8 image resized by `scale` with a named kernel (RESIZE_KERNELS; "area" enlarges with OpenCV's
    cubic); unchanged at scale 1."""
    if scale == 1.0:
        return image
    h, w = image.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if kernel in PILLOW_KERNELS:
        from PIL import Image

        resample = getattr(Image.Resampling, PILLOW_KERNELS[kernel])
        return np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize(size, resample))
    import cv2

    flag = cv2.INTER_LINEAR if kernel == "linear" else cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    return cv2.resize(image, size, interpolation=flag)


class TestLikeEncoder:
    """Re-encode a decoded RGB uint8 image like a test image: one test encoding (format, quality, subsampling)
    drawn per key from the profile's rows, seeded by (seed, key); resized by the profile's scale with `kernel`
    (data.test_like_resize; "mix": one of RESIZE_KERNELS drawn per key), then encoded and decoded in memory.
    Identity when the profile is not shifted or has no rows."""

    __test__ = False  # not a pytest class

    def __init__(self, profile: dict, seed: int, kernel: str = "lanczos"):
        if kernel not in (*RESIZE_KERNELS, "mix"):
            raise ValueError(f"resize kernel {kernel!r} is not one of {RESIZE_KERNELS + ('mix',)}")
        self.rows = list(profile.get("rows") or [])
        self.scale = float(profile.get("scale", 1.0))
        self.active = bool(profile.get("shifted", True)) and bool(self.rows)
        self.seed, self.kernel = int(seed), kernel

    def draw(self, key: str) -> dict:
        """The encoding spec ({format, quality, subsampling}) drawn for a key."""
        row = self.rows[int(seeded_rng(self.seed, key).integers(len(self.rows)))]
        fmt = LOSSY.get(row["format"], "PNG")
        spec = {"format": fmt}
        if fmt in DEFAULT_QUALITY:
            spec["quality"] = int(row["quality"]) if row.get("quality") is not None else DEFAULT_QUALITY[fmt]
        if fmt == "JPEG" and row.get("subsampling", -1) in (0, 1, 2):
            spec["subsampling"] = int(row["subsampling"])
        return spec

    def kernel_for(self, key: str) -> str:
        """The resize kernel of a key: the encoder's, or one drawn per key (seeded) when it is "mix"."""
        if self.kernel != "mix":
            return self.kernel
        return RESIZE_KERNELS[int(seeded_rng(self.seed, f"kernel:{key}").integers(len(RESIZE_KERNELS)))]

    def resize(self, image: np.ndarray, key: str = "") -> np.ndarray:
        """The image resized by the profile's scale with the key's kernel (unchanged at scale 1)."""
        return resize_image(image, self.scale, self.kernel_for(key))

    def encode(self, image: np.ndarray, key: str) -> bytes:
        """The file bytes a test-like copy of the image would have."""
        return reencode(np.ascontiguousarray(self.resize(image, key)), self.draw(key))

    def __call__(self, image: np.ndarray, key: str) -> np.ndarray:
        if not self.active:
            return image
        from PIL import Image

        with Image.open(io.BytesIO(self.encode(image, key))) as img:
            return np.asarray(img.convert("RGB"))


LEGACY_KERNEL = "area"  # the only kernel before data.test_like_resize: test-like columns made without a record


def kernel_is_stale(made_with: str | None, wanted: str, profile: dict | None) -> bool:
    """Whether a test-like column made with resize kernel `made_with` (None: unrecorded, LEGACY_KERNEL assumed)
    differs from one made with `wanted`: only when the profile resizes (shifted, scale != 1), as the kernel
    touches no pixel otherwise."""
    if not profile or not profile.get("shifted", True) or float(profile.get("scale", 1.0)) == 1.0:
        return False
    return (made_with or LEGACY_KERNEL) != wanted


class KeyedFilter:
    """An ImageDataset image_filter: the encoder applied with each row's key (picklable, for DataLoader workers)."""

    def __init__(self, encoder: TestLikeEncoder):
        self.encoder = encoder

    def __call__(self, image: np.ndarray, key: str) -> np.ndarray:
        return self.encoder(image, key)


def test_like_dataset(cfg: Config, paths: list[str], ids: list[str], profile: dict, seed: int) -> ImageDataset:
    """The eval dataset (inference.eval_dataset's geometry, with TTA) whose images are re-encoded like test
    images first (keyed by id, so a row always gets the same draw)."""
    transform = build_eval_transform(cfg.data, cfg.tta.crops, cfg.tta.tiles)
    encoder = TestLikeEncoder(profile, seed, cfg.data.test_like_resize)
    return ImageDataset(paths, None, transform, encoding=cfg.data.normalize_encoding,
                        image_filter=KeyedFilter(encoder), keys=[str(i) for i in ids])


test_profile.__test__ = test_like_dataset.__test__ = False  # named for the test set, not pytest tests (when imported)
test_files_digest.__test__ = False


class MatchTest:
    """A training image_filter (data.match_test): a seeded share of rows (per key, so per epoch and row) re-encoded
    like a test image and then augmented by `transform` (the preset without its fixed JPEG range); the other
    rows are left to the preset as configured."""

    def __init__(self, encoder: TestLikeEncoder, share: float, transform):
        self.encoder, self.share, self.transform = encoder, float(share), transform

    def __call__(self, image: np.ndarray, key: str):
        if not self.encoder.active or seeded_rng(self.encoder.seed + 1, key).random() >= self.share:
            return image
        return self.encoder(image, key), self.transform


def match_test_filter(cfg: Config, profile: dict | None, seed: int) -> MatchTest | None:
    """The training filter of data.match_test (None when 0); refused with the fix when there is no test profile."""
    from dataclasses import replace

    from competition.augment import build_train_transform

    if not cfg.data.match_test:
        return None
    check_match_test(cfg, profile)
    log.info("data.match_test=%s: that share of training images is re-encoded like a test image (%s, scale %.3f)%s",
             cfg.data.match_test, profile.get("summary", {}).get("formats"), profile.get("scale", 1.0),
             "" if profile.get("shifted", True) else "; the test set is encoded like train, so they are left as they are")
    return MatchTest(TestLikeEncoder(profile, seed, cfg.data.test_like_resize), cfg.data.match_test,
                     build_train_transform(replace(cfg.data, jpeg_p=0.0)))


def check_match_test(cfg: Config, profile: dict | None) -> None:
    """Refuse data.match_test > 0 without a test set to imitate (one line naming the key and the fix)."""
    if cfg.data.match_test and (not profile or not profile.get("rows")):
        raise ConfigError(f"data.match_test={cfg.data.match_test} re-encodes training images like the test images, "
                          f"but this competition has no (readable) test images - set data.match_test: 0 or add the "
                          f"test set (competition.test_csv)")


def wants_test_like(mode: str, profile: dict | None) -> bool:
    """Whether data.test_like_oof (auto | on | off) asks for the test-like OOF column with this profile."""
    return mode != "off" and profile is not None and (mode == "on" or bool(profile.get("shifted")))


def run_profile(cfg: Config, project: Project, train: pd.DataFrame, test: pd.DataFrame) -> dict | None:
    """The test profile when a run needs it (data.test_like_oof not off, or data.match_test), else None; refuses
    match_test without a test set before anything trains."""
    if cfg.data.test_like_oof == "off" and not cfg.data.match_test:
        return None
    profile = test_profile(cfg, project, train, test)
    check_match_test(cfg, profile)
    return profile
