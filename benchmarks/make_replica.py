"""A realistic replica of "Detect AI vs. Human-Generated Images", made from CIFAKE's real photos.

    python benchmarks/make_replica.py OUT [--scenes 800] [--seed 0] [--workers 2]

What it has, like the real competition:
- large images (long side 512-2048 px, mixed aspect), JPEG of mixed quality and some PNG;
- content twins across classes: most scenes (a 2x2 mosaic of four CIFAKE real photos, used once each:
  64 px of distinct content, upscaled) appear as a "human" photo and as
  an "AI" regeneration of it, mirrored, re-framed (85-95 % crop), re-coloured and re-sized: the same
  content, not a near-duplicate (pHash cannot pair them); some AI scenes come in 2 variants;
- a generator fingerprint in the pixels (AI: half-resolution render, 2x nearest upsampling, blur, no
  sensor noise; human: full-resolution render with sensor noise), with the same encodings and sizes in
  both classes; the shortcut audit still finds one cue, as with real generators: noise-free renders
  compress better, so bytes per pixel differ by class;
- an F1 metric with 0/1 submissions, and a test set encoded differently (WebP / low-quality JPEG,
  smaller sizes) from new scenes, so the shift check has something to find.
Writes OUT/train.csv (file_name,label), OUT/test.csv (id), OUT/sample_submission.csv, OUT/scenes.csv
(file_name, scene: the generator's truth for twin recall) and OUT/competition.yaml.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from PIL import Image, ImageEnhance, ImageFilter

log = logging.getLogger("make_replica")
CIFAKE = Path(__file__).resolve().parent.parent.parent / "shared" / "competitions" / "cifake"


def random_size(rng: np.random.Generator, low: int, high: int) -> tuple[int, int]:
    """(width, height): long side log-uniform in [low, high], aspect 3:4 to 4:3."""
    long_side = int(np.exp(rng.uniform(np.log(low), np.log(high))))
    short = int(long_side * rng.uniform(0.75, 1.0))
    return (long_side, short) if rng.random() < 0.5 else (short, long_side)


def render_human(src: Image.Image, size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """A 'camera photo' of the scene: full-resolution bicubic render plus sensor noise."""
    img = np.asarray(src.resize(size, Image.BICUBIC), dtype=np.float32)
    img += rng.normal(0, 3.0, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def render_ai(src: Image.Image, size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """A 'regeneration' of the scene: mirrored, re-framed, re-coloured; half-res render, 2x nearest, blur."""
    w, h = src.size
    keep = rng.uniform(0.85, 0.95)
    cw, ch = int(w * keep), int(h * keep)
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    scene = src.transpose(Image.FLIP_LEFT_RIGHT).crop((x0, y0, x0 + cw, y0 + ch))
    scene = ImageEnhance.Color(ImageEnhance.Brightness(scene).enhance(rng.uniform(0.9, 1.1))).enhance(rng.uniform(0.85, 1.15))
    half = scene.resize((max(1, size[0] // 2), max(1, size[1] // 2)), Image.BICUBIC)
    return half.resize((half.width * 2, half.height * 2), Image.NEAREST).filter(ImageFilter.GaussianBlur(0.6))


def encode(img: Image.Image, style: str, rng: np.random.Generator) -> tuple[bytes, str]:
    """(file bytes, suffix): train style = JPEG q88-96 or PNG (15 %); test style = WebP q80 or JPEG q60-75."""
    buf = io.BytesIO()
    if style == "train":
        if rng.random() < 0.15:
            img.save(buf, "PNG", compress_level=1)
            return buf.getvalue(), ".png"
        img.save(buf, "JPEG", quality=int(rng.integers(88, 97)))
        return buf.getvalue(), ".jpg"
    if rng.random() < 0.5:
        img.save(buf, "WEBP", quality=80)
        return buf.getvalue(), ".webp"
    img.save(buf, "JPEG", quality=int(rng.integers(60, 76)))
    return buf.getvalue(), ".jpg"


def make_scene(job: tuple) -> list[dict]:
    """Render and write every image of one scene; rows of (file_name, label, scene, split)."""
    out, scene, sources, kinds, split, seed = job
    rng = np.random.default_rng(seed)
    src = Image.new("RGB", (64, 64))
    for k, source in enumerate(sources):
        src.paste(Image.open(source).convert("RGB").resize((32, 32)), ((k % 2) * 32, (k // 2) * 32))
    low, high = (512, 2048) if split == "train" else (384, 1024)
    rows = []
    for v, kind in enumerate(kinds):
        img = (render_human if kind == 0 else render_ai)(src, random_size(rng, low, high), rng)
        data, suffix = encode(img, split, rng)
        name = f"{split}_data/s{scene:05d}_{v}{suffix}"
        (out / name).write_bytes(data)
        rows.append({"file_name": name, "label": kind, "scene": scene, "split": split})
    return rows


def plan(n_scenes: int, n_test: int, seed: int) -> list[tuple[int, list[int], str]]:
    """(scene, kinds, split): 70 % twin pairs (human + AI; a tenth of them with a 2nd AI variant), 30 % singles."""
    rng = np.random.default_rng(seed)
    jobs = []
    for s in range(n_scenes):
        r = rng.random()
        kinds = ([0, 1, 1] if rng.random() < 0.1 else [0, 1]) if r < 0.7 else [int(r < 0.85)]
        jobs.append((s, kinds, "train"))
    for s in range(n_scenes, n_scenes + n_test):
        jobs.append((s, [int(rng.integers(0, 2))], "test"))
    return jobs


def main() -> None:
    """CLI: write the replica competition to OUT."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--scenes", type=int, default=800, help="training scenes (each 1-3 images)")
    parser.add_argument("--test", type=int, default=300, help="test images (new scenes, encoded differently)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    train = pd.read_csv(CIFAKE / "train.csv", index_col=0)
    sources = train.loc[train["label"] == 0, "file_name"].sample(frac=1, random_state=args.seed).tolist()
    jobs = plan(args.scenes, args.test, args.seed)
    if 4 * len(jobs) > len(sources):
        raise SystemExit(f"at most {len(sources) // 4} scenes: CIFAKE has {len(sources)} real training photos")
    for sub in ("train_data", "test_data"):
        (args.out / sub).mkdir(parents=True, exist_ok=True)
    work = [(args.out, s, [str(CIFAKE / f) for f in sources[4 * s:4 * s + 4]], kinds, split, args.seed * 100003 + s)
            for s, kinds, split in jobs]
    with Pool(args.workers) as pool:
        rows = [r for scene in pool.imap(make_scene, work, chunksize=8) for r in scene]
    frame = pd.DataFrame(rows)
    tr, te = frame[frame["split"] == "train"], frame[frame["split"] == "test"]
    tr[["file_name", "label"]].to_csv(args.out / "train.csv", index=False)
    pd.DataFrame({"id": te["file_name"]}).to_csv(args.out / "test.csv", index=False)
    pd.DataFrame({"id": te["file_name"], "label": 0}).to_csv(args.out / "sample_submission.csv", index=False)
    tr[["file_name", "label", "scene"]].to_csv(args.out / "scenes.csv", index=False)
    te[["file_name", "label"]].to_csv(args.out / "test_labels.csv", index=False)
    comp = {"competition": {"name": "replica", "data_dir": str(args.out.resolve()), "test_path_column": "id",
                            "metric": "f1", "submission_values": "label"}}
    (args.out / "competition.yaml").write_text(yaml.safe_dump(comp, sort_keys=False))
    log.info("replica in %s: %d train images (%d scenes, %d AI), %d test images", args.out, len(tr),
             tr["scene"].nunique(), int(tr["label"].sum()), len(te))


if __name__ == "__main__":
    main()
