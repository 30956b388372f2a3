"""Image decoding: Pillow decode (EXIF orientation, any mode -> RGB), re-encoding, and the decoder's signature.

Every command that reads an image decodes it here, so a file reads the same in training, prediction, serving and
the caches; an undecodable file raises BadImageError (never a crash), and the caller skips it or lists it.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import warnings

import numpy as np
from PIL import ExifTags, Image, ImageFile, ImageOps

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, not a grey half-image


class BadImageError(RuntimeError):
    """An image that cannot be decoded."""


def decode_image(path, max_pixels: int | None = None, draft: int | None = None) -> np.ndarray:
    """Decode any image Pillow reads (a path or a binary file object) into uint8 RGB HWC, EXIF orientation
    applied, first frame only; images over max_pixels (e.g. a server's bound) are refused before decoding.
    draft=n lets a JPEG decode at 1/2, 1/4 or 1/8 scale while staying at least n x n (fast; content only)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if max_pixels and img.width * img.height > max_pixels:
                    raise BadImageError(f"{img.width}x{img.height} is over the {max_pixels / 1e6:g} megapixel limit")
                if draft:
                    img.draft("RGB", (draft, draft))
                if img.getexif().get(ExifTags.Base.Orientation, 1) != 1:  # exif_transpose copies even when
                    ImageOps.exif_transpose(img, in_place=True)  # there is nothing to turn; in place: the
                    # unturned pixels are freed as the turned ones take their place
                return _to_rgb(img)
    except FileNotFoundError:
        raise BadImageError("file not found") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise BadImageError(f"{type(err).__name__}: {err}") from None


def reencode(image: np.ndarray, spec: dict) -> bytes:
    """Encode pixels in memory with one fixed setting ({format, quality[, subsampling]}), stripping all metadata;
    JPEG subsampling 0 = 4:4:4, 1 = 4:2:2, 2 = 4:2:0 (the default)."""
    fmt = spec["format"].upper()
    buf = io.BytesIO()
    options = {"quality": int(spec.get("quality", 90))} if fmt in ("JPEG", "WEBP") else {}
    if fmt == "JPEG":  # baseline, 4:2:0 unless the spec says otherwise, whatever the source was
        options.update(progressive=False, subsampling=int(spec.get("subsampling", 2)), optimize=False)
    Image.fromarray(image).save(buf, fmt, **options)
    return buf.getvalue()


def normalize_encoding(image: np.ndarray, spec: dict) -> np.ndarray:
    """The pixels the model sees after re-encoding with `spec` (identity when spec is empty)."""
    if not spec:
        return image
    with Image.open(io.BytesIO(reencode(image, spec))) as img:
        return _to_rgb(img)  # = np.asarray(img.convert("RGB")) of what reencode writes; large ones in bands


def _to_rgb(img: Image.Image) -> np.ndarray:
    """Convert any Pillow mode to uint8 RGB: 16-bit scaled, transparency composited on white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(img, dtype=np.float64)
        top = 65535.0 if array.max() > 255 else 255.0
        gray = np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    if img.width * img.height > BAND_MIN_PIXELS:
        return _to_array_in_bands(img)
    array = np.asarray(img if img.mode == "RGB" else img.convert("RGB"))  # convert("RGB") of RGB is a copy
    if array.ndim != 3 or array.shape[0] < 1 or array.shape[1] < 1:
        raise BadImageError(f"decoded to shape {array.shape}")
    return array


BAND_MIN_PIXELS = 16 * 2**20  # larger images reach numpy band by band (tests/test_large_memory.py)
BAND_PIXELS = 2**20  # pixels per band


def _to_array_in_bands(img: Image.Image) -> np.ndarray:
    """A large image as uint8 RGB, converted and copied BAND_PIXELS at a time into one array: the same pixels
    as np.asarray(img.convert("RGB")), which holds Pillow's image (4 bytes/pixel), the mode conversion's copy and
    two 3-byte copies (tobytes' chunks and their join) at once: 3.3x the array for an 85 MP PNG."""
    img.load()
    width, height = img.size
    out = np.empty((height, width, 3), np.uint8)
    rows = max(1, BAND_PIXELS // width)
    for y in range(0, height, rows):
        band = img.crop((0, y, width, min(y + rows, height)))
        band = band if band.mode == "RGB" else band.convert("RGB")  # per pixel: the whole image's conversion
        out[y:y + band.height] = np.frombuffer(band.tobytes(), np.uint8).reshape(band.height, width, 3)
    return out


DECODER_VERSION = 2  # bump by hand when what a cached pixel means changes in a way the source hash cannot see


def decoder_signature() -> str:
    """What decoded pixels depend on besides the file: this module's decode code and the codec libraries."""
    from PIL import __version__ as pillow_version
    from PIL import features

    source = inspect.getsource(decode_image) + inspect.getsource(_to_rgb)
    parts = [f"v{DECODER_VERSION}", f"Pillow {pillow_version}", f"libjpeg {features.version('jpg')}",
             f"zlib {features.version('zlib')}", hashlib.sha1(source.encode()).hexdigest()[:12]]
    return "|".join(parts)
