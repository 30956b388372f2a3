"""What each test-like resize kernel (data.test_like_resize) costs per image on large photos, against the area kernel
(the kit's only one before 2026-12-01) and against decoding the photo, which every prediction pass pays anyway.

    cd benchmarks
    PYTHONPATH=.. ../.venv/bin/python resize_cost.py                 # 2, 12 and 30 MP; 0.5x and 0.75x; JPEG q70
    PYTHONPATH=.. ../.venv/bin/python resize_cost.py --mp 85 --scales 0.5 --reps 2

Each photo is a synthetic 4:3 RGB picture (smooth gradients, texture and noise, so JPEG has work to do), saved as
JPEG q90. Per kernel: the median over --reps of one test-like re-encode (competition.test_encoding.TestLikeEncoder:
resize by the scale with the kernel, encode as JPEG q70 4:2:0, decode), in ms per image; its ratio to area's; and
its ratio to decoding the q90 photo (competition.decode.decode_image). Saves resize_cost.json beside --json.
"""

from __future__ import annotations

import argparse
import io
import logging
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import table  # noqa: E402 - common puts the repository on the path
from competition.atomic import write_json  # noqa: E402
from competition.decode import decode_image  # noqa: E402
from competition.test_encoding import RESIZE_KERNELS, TestLikeEncoder  # noqa: E402

log = logging.getLogger("resize_cost")


def photo(megapixels: float, seed: int = 0) -> np.ndarray:
    """A 4:3 uint8 RGB picture of about `megapixels`: gradients, a sine texture and noise."""
    h = int(round((megapixels * 1e6 * 3 / 4) ** 0.5))
    w = int(round(h * 4 / 3))
    y, x = np.ogrid[:h, :w]
    rng = np.random.default_rng(seed)
    base = 90 + 80 * np.sin(x / 37.0) * np.cos(y / 53.0) + 60 * (x / w) + 30 * (y / h)
    image = np.empty((h, w, 3), np.uint8)
    for c in range(3):  # one channel at a time: a 30 MP float image would need 3 x 240 MB at once
        image[..., c] = np.clip(base * (0.8 + 0.2 * c) + rng.normal(0, 10, (h, w)), 0, 255).astype(np.uint8)
    return image


def median_ms(fn, reps: int) -> float:
    """Median wall time of fn() over reps calls, in ms (one warm-up call first)."""
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def measure(megapixels: float, scales: list[float], reps: int, work: Path) -> list[dict]:
    """One record per (scale, kernel): ms per image, ratio to area, ratio to decoding the photo."""
    image = photo(megapixels)
    path = work / f"photo_{megapixels:g}mp.jpg"
    Image.fromarray(image).save(path, "JPEG", quality=90)
    decode_ms = median_ms(lambda: decode_image(path), reps)
    records = []
    for scale in scales:
        profile = {"rows": [{"format": "JPEG", "quality": 70, "subsampling": 2, "pixels": 1}], "scale": scale,
                   "shifted": True}
        timed = {k: median_ms(lambda k=k: TestLikeEncoder(profile, 0, k)(image, "key"), reps) for k in RESIZE_KERNELS}
        for kernel, ms in timed.items():
            records.append({"megapixels": round(image.shape[0] * image.shape[1] / 1e6, 1), "scale": scale,
                            "kernel": kernel, "ms": ms, "vs_area": ms / timed["area"], "vs_decode": ms / decode_ms,
                            "decode_ms": decode_ms})
        log.info("%.1f MP x%.2f: %s", megapixels, scale, {k: round(v) for k, v in timed.items()})
    del image
    return records


def main() -> None:
    """Time every kernel on each photo size and scale; print one table, save the records."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mp", default="2,12,30", help="comma-separated photo sizes in megapixels")
    parser.add_argument("--scales", default="0.5,0.75", help="comma-separated test resize scales")
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions per cell (median reported)")
    parser.add_argument("--json", default="/tmp/resize_cost.json", help="where to save the records")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    work = Path(args.json).parent / "resize_cost_photos"
    work.mkdir(parents=True, exist_ok=True)
    records = [r for mp in args.mp.split(",") for r in measure(float(mp), [float(s) for s in args.scales.split(",")],
                                                                args.reps, work)]
    write_json(Path(args.json), {"records": records, "reps": args.reps})
    table("Test-like re-encode per image (resize + JPEG q70 encode + decode), median ms; ratio to area and to "
          "decoding the q90 photo", ["MP", "scale", "kernel", "ms", "x area", "x decode"],
          [[r["megapixels"], r["scale"], r["kernel"], round(r["ms"]), f"{r['vs_area']:.2f}", f"{r['vs_decode']:.2f}"]
           for r in records])


if __name__ == "__main__":
    main()
