"""Near-duplicate groups from perceptual hashes, so that pairs (a real image and its AI twin, re-encodes,
crops) never land in different folds.

- `compute_hashes`: 64-bit pHash per image (imagehash), in parallel, cached on disk per file keyed by
  path + size + mtime, so a rerun only hashes new or changed files.
- `group_hashes`: connected components of every pair within a Hamming distance, without comparing all pairs:
  multi-index hashing. Split the 64 bits into d+1 chunks; two hashes within distance d agree exactly on
  at least one chunk (pigeonhole), so only hashes sharing a chunk value are compared.
"""

from __future__ import annotations

import logging
import os
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm  # a widget in a notebook, the terminal bar elsewhere

from competition.atomic import write_csv

log = logging.getLogger(__name__)


def phash_file(path: str) -> int:
    """64-bit perceptual hash of an image as a signed int64 (0 for unreadable files)."""
    import imagehash
    from PIL import Image

    try:
        with Image.open(path) as img:
            bits = imagehash.phash(img.convert("L")).hash.flatten()
    except Exception:  # noqa: BLE001 - unreadable images hash to 0; the tables/dataset report them
        return 0
    value = 0
    for bit in bits:
        value = (value << 1) | int(bit)
    return int(np.uint64(value).astype(np.int64))


def stat_key(path: str) -> str:
    """size:mtime of a file (changes when the file does)."""
    try:
        st = os.stat(path)
        return f"{st.st_size}:{st.st_mtime_ns}"
    except OSError:
        return "missing"


def compute_hashes(paths: list[str], cache_file: Path, workers: int = 0) -> np.ndarray:
    """pHashes (uint64) for paths, reusing cache_file entries whose size and mtime still match."""
    keys = [stat_key(p) for p in paths]
    cached: dict[tuple[str, str], int] = {}
    if cache_file.is_file():
        old = pd.read_csv(cache_file, dtype={"path": str, "key": str, "hash": np.int64})
        cached = dict(zip(zip(old["path"], old["key"]), old["hash"]))
    todo = [i for i, (p, k) in enumerate(zip(paths, keys)) if (p, k) not in cached]
    if todo:
        workers = workers or min(8, os.cpu_count() or 1)
        with Pool(workers) as pool:
            new = list(tqdm(pool.imap(phash_file, [paths[i] for i in todo], chunksize=64), total=len(todo),
                            desc="perceptual hashes", mininterval=2))
        for i, h in zip(todo, new):
            cached[(paths[i], keys[i])] = h
        frame = pd.DataFrame([(p, k, h) for (p, k), h in cached.items()], columns=["path", "key", "hash"])
        write_csv(cache_file, frame)
    log.info("perceptual hashes: %d computed, %d from %s", len(todo), len(paths) - len(todo), cache_file)
    return np.array([cached[(p, k)] for p, k in zip(paths, keys)], dtype=np.int64).view(np.uint64)


_BYTE_BITS = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)  # set bits per byte value


def popcount64(values: np.ndarray) -> np.ndarray:
    """Set bits of each uint64 (any shape): NumPy 2's bitwise_count (7x faster on 100,000 hashes), else a byte
    lookup table (NumPy 1.x)."""
    values = np.ascontiguousarray(values, dtype=np.uint64)
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(values).astype(np.int64)
    return _BYTE_BITS[values.view(np.uint8)].reshape(*values.shape, 8).sum(axis=-1, dtype=np.int64)


def _chunks(distance: int) -> list[tuple[int, int]]:
    """(shift, width) of the d+1 bit chunks covering 64 bits."""
    n = distance + 1
    widths = [64 // n + (1 if i < 64 % n else 0) for i in range(n)]
    shifts = np.cumsum([0] + widths[:-1])
    return list(zip(map(int, shifts), widths))


def close_pairs(hashes: np.ndarray, distance: int, block: int = 2048) -> np.ndarray:
    """(i, j) index pairs of distinct hashes within `distance` bits, found by multi-index hashing."""
    pairs = []
    for shift, width in _chunks(distance):
        key = (hashes >> np.uint64(shift)) & np.uint64((1 << width) - 1)
        order = np.argsort(key, kind="stable")
        sorted_key = key[order]
        bounds = np.flatnonzero(np.diff(sorted_key)) + 1
        for run in np.split(order, bounds):
            if len(run) < 2:
                continue
            for start in range(0, len(run), block):
                part = run[start:start + block]
                dist = popcount64(hashes[part][:, None] ^ hashes[run][None, :])
                a, b = np.nonzero(dist <= distance)
                keep = part[a] < run[b]
                pairs.append(np.column_stack([part[a][keep], run[b][keep]]))
    if not pairs:
        return np.empty((0, 2), dtype=np.int64)
    return np.unique(np.concatenate(pairs), axis=0)


def group_hashes(hashes: np.ndarray, distance: int) -> np.ndarray:
    """Group id per hash: connected components of 'within `distance` bits' (exact duplicates included)."""
    unique, inverse = np.unique(hashes, return_inverse=True)
    return components(len(unique), close_pairs(unique, distance))[inverse.ravel()]


def describe_groups(groups: np.ndarray, labels: np.ndarray) -> dict:
    """Group count, largest group, and groups holding both classes (likely real/AI pairs)."""
    frame = pd.DataFrame({"group": groups, "label": labels})
    sizes = frame.groupby("group")["label"].agg(["size", "nunique"])
    return {"images": int(len(frame)), "groups": int(len(sizes)), "largest_group": int(sizes["size"].max()),
            "multi_image_groups": int((sizes["size"] > 1).sum()), "mixed_label_groups": int((sizes["nunique"] > 1).sum())}


def twin_pairs(embeddings: np.ndarray, similarity: float, neighbors: int = 5, max_dim: int = 256) -> np.ndarray:
    """(i, j) pairs whose centred cosine similarity is >= `similarity` among each image's `neighbors` nearest.

    The embeddings are centred on their mean first (what every image shares, e.g. "a blurry photo", would
    otherwise make all pairs look alike), reduced by PCA to `max_dim` dimensions when wider (fitted on
    <= 20,000 rows) and renormalised. sklearn NearestNeighbors, brute force and chunked: memory stays
    bounded and no all-pairs matrix is kept."""
    from sklearn.decomposition import PCA
    from sklearn.neighbors import NearestNeighbors

    x = np.asarray(embeddings, dtype=np.float32)
    x = x - x.mean(axis=0)
    if x.shape[1] > max_dim and len(x) > max_dim:
        sample = x[np.random.default_rng(0).permutation(len(x))[:20000]]
        x = PCA(max_dim, random_state=0).fit(sample).transform(x).astype(np.float32)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    k = min(neighbors + 1, len(x))
    dist, idx = NearestNeighbors(n_neighbors=k, metric="cosine", algorithm="brute").fit(x).kneighbors(x)
    rows = np.repeat(np.arange(len(x)), k)
    keep = (1 - dist.ravel() >= similarity) & (rows != idx.ravel())
    pairs = np.sort(np.column_stack([rows[keep], idx.ravel()[keep]]), axis=1)
    return np.unique(pairs, axis=0) if len(pairs) else np.empty((0, 2), dtype=np.int64)


def components(n: int, pairs: np.ndarray) -> np.ndarray:
    """Group id per item: connected components of the (i, j) pair graph (scipy, sparse), each component named
    by its smallest member index."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    labels = connected_components(graph, directed=False)[1]
    first = np.full(labels.max() + 1 if n else 0, n, dtype=np.int64)
    np.minimum.at(first, labels, np.arange(n))
    return first[labels]


def pair_recall(groups: np.ndarray, true_pairs: np.ndarray) -> float:
    """Share of known pairs whose two images landed in one group."""
    return float(np.mean(groups[true_pairs[:, 0]] == groups[true_pairs[:, 1]])) if len(true_pairs) else float("nan")


def wrong_merges(groups: np.ndarray, true_groups: np.ndarray) -> float:
    """Share of found multi-image groups that join images from more than one true group."""
    frame = pd.DataFrame({"found": groups, "true": true_groups})
    sizes = frame.groupby("found")["true"].agg(["size", "nunique"])
    multi = sizes[sizes["size"] > 1]
    return float((multi["nunique"] > 1).mean()) if len(multi) else 0.0
