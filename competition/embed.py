"""Frozen-backbone content embeddings of images: what twin grouping, OOD clusters and the shift check compare.

A timm backbone with local ImageNet weights (`folds.embed_model`, from models.json) and no head; each
image is decoded at reduced scale where JPEG allows (Pillow draft mode), resized whole to
`embed_size` x `embed_size` (content, not artifacts: twins differ in framing and pixels) and embedded
once per image, as the mean of the image's and its mirror image's features (mirror-invariant: a
regenerated twin is often mirrored or re-framed). Vectors are L2-normalised, so a dot product is a cosine similarity, and cached on disk
per file (path + size + mtime), so a rerun only embeds new or changed files.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm  # a widget in a notebook, the terminal bar elsewhere

from competition.config import Config, ModelConfig, listed_models
from competition.decode import BadImageError, decode_image
from competition.errors import ConfigError
from competition.grouping import stat_key
from competition.model import backbone_from_file, local_weights
from competition.project import Project

log = logging.getLogger(__name__)


class _Resized(Dataset):
    """Images decoded (at reduced JPEG scale when possible) and resized whole to size x size, as uint8 CHW."""

    def __init__(self, paths: list[str], size: int):
        self.paths, self.size = paths, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            image = decode_image(self.paths[i], draft=self.size)  # JPEGs decode at reduced scale: fast on large photos
            array, ok = np.asarray(Image.fromarray(image).resize((self.size, self.size), Image.BILINEAR)), True
        except BadImageError:  # unreadable images get a zero vector and are counted by the caller
            array, ok = np.zeros((self.size, self.size, 3), np.uint8), False
        return torch.from_numpy(array.copy()).permute(2, 0, 1), ok


def missing_weights(name: str, index: Path, file: Path | None) -> str:
    """Why folds.embed_model has no local weights, naming the key to set (model.weights_dir or folds.embed_model)."""
    if not index.is_file():
        return (f"folds.embed_model {name!r}: {index} does not exist - set model.weights_dir to the folder holding "
                f"models.json and its weight files")
    if file is not None:
        return (f"folds.embed_model {name!r}: {index} lists {file.name}, which is missing - restore it, or set "
                f"folds.embed_model to another model listed there")
    listed = ", ".join(sorted(str(e.get("timm_model")) for e in listed_models(index))) or "none"
    return f"folds.embed_model {name!r} is not in {index} - set folds.embed_model to one listed there: {listed}"


def build_embedder(name: str, project: Project, weights_dir: str = "../shared/weights") -> tuple[torch.nn.Module, tuple, tuple]:
    """(headless backbone in eval mode, mean, std) for a timm model with local ImageNet weights."""
    file, entry = local_weights(ModelConfig(name=name, weights_dir=weights_dir), project)
    if file is None or not file.is_file():
        raise ConfigError(missing_weights(name, project.resolve(weights_dir) / "models.json", file))
    model = backbone_from_file(name, file, entry, {"num_classes": 0, **entry.get("create_model_kwargs", {})})
    cfg = timm.data.resolve_data_config({}, model=model)
    return model.eval(), tuple(cfg["mean"]), tuple(cfg["std"])


@torch.no_grad()
def _embed(paths: list[str], name: str, size: int, project: Project, weights_dir: str, batch: int,
           workers: int) -> tuple[np.ndarray, np.ndarray]:
    """(L2-normalised embeddings, readable flags) for paths, computed now."""
    model, mean, std = build_embedder(name, project, weights_dir)
    model = model.to(memory_format=torch.channels_last)
    mean_t, std_t = torch.tensor(mean).view(1, 3, 1, 1) * 255, torch.tensor(std).view(1, 3, 1, 1) * 255
    loader = DataLoader(_Resized(paths, size), batch_size=batch, num_workers=workers)
    out, oks = [], []
    for images, ok in tqdm(loader, desc=f"embedding ({name}, {size}px)", mininterval=2, leave=False):
        x = ((images.float() - mean_t) / std_t).contiguous(memory_format=torch.channels_last)
        both = model(torch.cat([x, x.flip(3)])).float()  # image and mirror: a mirrored regeneration is the same content
        out.append(torch.nn.functional.normalize(both[:len(x)] + both[len(x):], dim=1).numpy())
        oks.append(ok.numpy())
    return np.concatenate(out).astype(np.float32), np.concatenate(oks).astype(bool)


def embed_images(paths: list[str], name: str, size: int, project: Project, cache_dir: Path,
                 weights_dir: str = "../shared/weights", batch: int = 64, workers: int = -1) -> np.ndarray:
    """Embeddings (n, d) for paths, reusing cached vectors whose file size and mtime still match.

    Unreadable images get a zero vector (similar to nothing) and are counted in a warning."""
    cache = cache_dir / f"embed_{name}_{size}_mirror.npz"
    keys = np.array([f"{p}|{stat_key(p)}" for p in paths])
    known: dict[str, np.ndarray] = {}
    if cache.is_file():
        with np.load(cache) as data:
            known = dict(zip(data["keys"], data["vectors"]))
    todo = [i for i, k in enumerate(keys) if k not in known]
    if todo:
        workers = min(4, max(0, (os.cpu_count() or 1) - 1)) if workers < 0 else workers
        vectors, ok = _embed([paths[i] for i in todo], name, size, project, weights_dir, batch, workers)
        vectors[~ok] = 0.0
        if (~ok).any():
            log.warning("%d image(s) unreadable for embedding (zero vector: grouped with nothing), e.g. %s",
                        int((~ok).sum()), paths[todo[int(np.flatnonzero(~ok)[0])]])
        known.update(zip(keys[todo], vectors))
        _save_cache(cache, known)
    log.info("embeddings (%s, %dpx): %d computed, %d from %s", name, size, len(todo), len(paths) - len(todo), cache)
    return np.stack([known[k] for k in keys]) if len(keys) else np.zeros((0, 0), np.float32)


def _save_cache(cache: Path, known: dict[str, np.ndarray]) -> None:
    """Write the embedding cache atomically (temp file in the same folder, then rename)."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")  # a file handle: np.savez would append .npz to a name
    with open(tmp, "wb") as fh:
        np.savez(fh, keys=np.array(list(known)), vectors=np.stack(list(known.values())))
    os.replace(tmp, cache)


def embed_config(cfg: Config, paths: list[str], project: Project) -> np.ndarray:
    """Content embeddings with the folds section's backbone and size, cached in data.cache_dir."""
    return embed_images(paths, cfg.folds.embed_model, cfg.folds.embed_size, project, project.cache_dir(cfg),
                        cfg.model.weights_dir)
