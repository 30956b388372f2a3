"""pHash grouping of 100,000 hashes: multi-index hashing vs an all-pairs comparison (same run).

    .venv/bin/python benchmarks/grouping.py [--n 100000] [--distance 6]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from common import table
from competition.grouping import group_hashes


def synthetic_hashes(n: int, seed: int = 0) -> np.ndarray:
    """70 % unrelated hashes, 30 % near-duplicates of them (0-4 flipped bits), like a paired dataset."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 2**63, int(n * 0.7), dtype=np.int64).view(np.uint64)
    src = base[rng.integers(0, len(base), n - len(base))]
    flips = np.zeros(len(src), dtype=np.uint64)
    for _ in range(4):
        on = rng.random(len(src)) < 0.6
        flips[on] ^= np.uint64(1) << rng.integers(0, 64, int(on.sum())).astype(np.uint64)
    return np.concatenate([base, src ^ flips])


def all_pairs_seconds(hashes: np.ndarray, distance: int, block: int = 2000) -> float:
    """Time of the brute-force comparison of every pair (blocked numpy popcount)."""
    start = time.perf_counter()
    for i in range(0, len(hashes), block):
        d = np.bitwise_count(hashes[i:i + block, None] ^ hashes[None, :])
        np.nonzero(d <= distance)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--distance", type=int, default=6)
    args = parser.parse_args()
    hashes = synthetic_hashes(args.n)
    start = time.perf_counter()
    groups = group_hashes(hashes, args.distance)
    mih = time.perf_counter() - start
    sub = 20_000
    brute_sub = all_pairs_seconds(hashes[:sub], args.distance)
    brute = brute_sub * (args.n / sub) ** 2  # all-pairs is quadratic
    table(f"pHash grouping, {args.n:,} hashes, distance <= {args.distance}",
          ["method", "seconds", "ratio vs all-pairs"],
          [["multi-index hashing + connected components (kit)", mih, brute / mih],
           [f"all-pairs (measured on {sub:,}, scaled x{(args.n / sub) ** 2:.0f})", brute, 1.0]])
    print(f"{len(np.unique(groups)):,} groups")  # noqa: T201


if __name__ == "__main__":
    main()
