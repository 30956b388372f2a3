"""Twin grouping measured against a replica's known scenes (benchmarks/make_replica.py), and its speed.

    python benchmarks/twins.py /tmp/replica [--model tf_efficientnet_lite0] [--size 224] [--neighbors 5]
                                            [--similarity 0.8 0.85 0.9] [--scale-to 80000]

For each similarity: recall of the known human-AI twin pairs (both in one group), recall of every
same-scene pair, and wrong merges (share of found multi-image groups that join different scenes); pHash
grouping (distance 6) beside it. Then the embedding and neighbour-search speed, scaled to --scale-to
images (neighbour search by timing random unit vectors of the same width at that size), and peak memory.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from competition.embed import embed_images  # noqa: E402
from competition.grouping import (components, compute_hashes, group_hashes, pair_recall, twin_pairs,  # noqa: E402
                                  wrong_merges)
from competition.project import Project  # noqa: E402

log = logging.getLogger("twins")


def known_pairs(scenes: pd.DataFrame, cross_class: bool) -> np.ndarray:
    """Index pairs of images of one scene (only human-AI pairs when cross_class)."""
    pairs = []
    for _, rows in scenes.groupby("scene"):
        for (i, a), (j, b) in itertools.combinations(zip(rows.index, rows["label"]), 2):
            if not cross_class or a != b:
                pairs.append((i, j))
    return np.array(pairs, dtype=np.int64).reshape(-1, 2)


def quality(groups: np.ndarray, scenes: pd.DataFrame) -> dict:
    """Twin recall, same-scene recall and wrong merges of a grouping."""
    return {"twin_recall": pair_recall(groups, known_pairs(scenes, True)),
            "scene_recall": pair_recall(groups, known_pairs(scenes, False)),
            "wrong_merges": wrong_merges(groups, scenes["scene"].to_numpy()),
            "groups": int(len(np.unique(groups)))}


def search_seconds(n: int, dim: int, neighbors: int) -> float:
    """Seconds of twin_pairs on n random unit vectors of width dim (the neighbour search at that scale)."""
    x = np.random.default_rng(0).normal(size=(n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    t0 = time.perf_counter()
    twin_pairs(x, 0.99, neighbors)
    return time.perf_counter() - t0


def main() -> None:
    """CLI."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("replica", type=Path)
    parser.add_argument("--model", default="tf_efficientnet_lite0")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--neighbors", type=int, default=5)
    parser.add_argument("--similarity", type=float, nargs="+", default=[0.5, 0.55, 0.6, 0.65, 0.7])
    parser.add_argument("--scale-to", type=int, default=80000)
    parser.add_argument("--search-sample", type=int, default=20000, help="random vectors timed for the search")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    scenes = pd.read_csv(args.replica / "scenes.csv")
    paths = [str(args.replica / f) for f in scenes["file_name"]]
    project = Project(Path(__file__).resolve().parent.parent)
    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        emb = embed_images(paths, args.model, args.size, project, Path(cache))
        embed_s = time.perf_counter() - t0
        hashes = compute_hashes(paths, Path(cache) / "phash.csv")
    rows = []
    for sim in args.similarity:
        t0 = time.perf_counter()
        groups = components(len(paths), twin_pairs(emb, sim, args.neighbors))
        rows.append({"grouping": f"twins cos>={sim}", **quality(groups, scenes), "seconds": time.perf_counter() - t0})
    rows.append({"grouping": "phash d<=6", **quality(group_hashes(hashes, 6), scenes)})
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.4f}"))  # noqa: T201
    n, scale = len(paths), args.scale_to / len(paths)
    search = search_seconds(args.search_sample, min(256, emb.shape[1]), args.neighbors)
    search_full = search * (args.scale_to / args.search_sample) ** 2  # brute-force search grows with n^2
    print(f"\nembedding: {n} images in {embed_s:.1f}s = {n / embed_s:.1f} images/s ({args.model}, {args.size}px, "  # noqa: T201
          f"model load included); at {args.scale_to}: {embed_s * scale / 60:.1f} min")
    print(f"neighbour search: {args.search_sample} vectors in {search:.1f}s; at {args.scale_to} (x n^2): "  # noqa: T201
          f"{search_full / 60:.1f} min")
    print(f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB; "  # noqa: T201
          f"embeddings at {args.scale_to}: {args.scale_to * emb.shape[1] * 4 / 2**20:.0f} MB")


if __name__ == "__main__":
    main()
