"""An experiment's output folder, experiments/<exp>/: where it lies, its locks, what it was made from (the config and
the input tables, checked before a run resumes), which folds are finished, and starting over (--restart).

Several processes may share one folder (`--devices`, or `--folds K --no-assemble` on machines sharing it): a
whole run (train + assemble, or assemble) holds experiments/<exp>/.lock, and each fold is trained under
fold{k}/.lock, so two processes never train one fold and --restart never deletes a fold being trained.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import yaml

from competition.atomic import remove_stale_temps, write_json
from competition.config import PREDICTION_KEYS, RUNTIME_KEYS, Config, ConfigError, save_config, to_dict
from competition.decode import BadImageError, decode_image
from competition.errors import DataError
from competition.image_cache import BAD, ImageCache
from competition.project import Project, inside
from competition.test_encoding import test_files_digest

log = logging.getLogger(__name__)

# What the "changed since these outputs were made" errors advise: it works in every mode (train, train + assemble,
# train only); `assemble` refuses --restart with the same advice, since it only gathers finished folds.
RESTART_ADVICE = "start over with --restart (on a training run: `assemble` only gathers finished folds)"


def check_config_unchanged(cfg: Config, out: Path) -> None:
    """Refuse to resume outputs made with a different config; RUNTIME_KEYS may differ."""
    saved_file = out / "config.yaml"
    if not saved_file.is_file() or not any(out.glob("fold*/*.pt")):
        return  # nothing trained yet: a config fixed after a failed start simply replaces the saved one
    defaults = to_dict(Config())
    try:
        saved = yaml.safe_load(saved_file.read_text()) or {}
    except yaml.YAMLError:
        saved = {}
    saved = {s: ({**defaults[s], **v} if isinstance(v, dict) and isinstance(defaults.get(s), dict) else v)
             for s, v in {**defaults, **saved}.items()}  # keys and sections added later read as their defaults
    now = to_dict(cfg)
    for conf in (saved, now):
        for section, key in RUNTIME_KEYS + PREDICTION_KEYS:  # prediction keys: folds re-predicted
            conf.get(section, {}).pop(key, None)
    if saved != now:
        diff = [f"{s}.{k}: {saved.get(s, {}).get(k)!r} -> {v!r}" for s, sec in now.items() if isinstance(sec, dict)
                for k, v in sec.items() if saved.get(s, {}).get(k) != v]
        raise ConfigError(f"{saved_file}: config changed since these outputs were made ({'; '.join(diff[:4])}); "
                          f"{RESTART_ADVICE}, or use a new experiment name")


def table_digest(frame: pd.DataFrame) -> str:
    """A short hash of a table's rows in order (its CSV text)."""
    return hashlib.sha1(frame.to_csv(index=False).encode()).hexdigest()[:16]


def train_digest(train: pd.DataFrame) -> str:
    """The fingerprint of the training rows: ids, labels and folds."""
    return table_digest(train[["id", "label", "fold"]])


def inputs_fingerprint(train: pd.DataFrame, test: pd.DataFrame) -> dict:
    """Hashes of what changes results besides the config: training ids, labels and folds; test ids in order; the
    test files' content (test_encoding.test_files_digest: id, size, mtime of each)."""
    return {"train": train_digest(train), "test": table_digest(test[["id"]]),
            "test_files": test_files_digest(test) if "path" in test else None, "n_train": len(train), "n_test": len(test)}


def check_inputs_unchanged(out: Path, train: pd.DataFrame, test: pd.DataFrame, forget: bool = True) -> None:
    """Refuse to resume when train.csv, the folds or test.csv changed since the outputs were made; when only the
    test files' content changed (same names), forget the test predictions (forget_test_predictions) - or, when
    `forget` is False (--assemble, which predicts nothing), refuse and say how to predict them again; record them."""
    now, file = inputs_fingerprint(train, test), out / "inputs.json"
    if file.is_file():
        try:
            saved = json.loads(file.read_text())
        except ValueError:
            saved = {}
        changed = [k for k in ("train", "test") if saved.get(k) != now[k]]
        if changed:
            what = " and ".join({"train": "training rows/labels/folds", "test": "test rows"}[k] for k in changed)
            raise DataError(f"{out}: the {what} changed since these outputs were made ({saved.get('n_train')} -> "
                            f"{now['n_train']} train, {saved.get('n_test')} -> {now['n_test']} test rows); "
                            f"{RESTART_ADVICE}, or use a new experiment name")
        if (saved.get("test_files") or now["test_files"]) != now["test_files"]:  # older records lack it: stamped
            if not forget:
                raise DataError(f"{out}: the test files changed since these outputs were made (same names, other "
                                f"content), so its test predictions are stale: run `./run.sh {out.name}` to predict "
                                f"them again from the fold checkpoints (no training), which also assembles")
            forget_test_predictions(out)
    write_json(file, now)


def forget_test_predictions(out: Path) -> None:
    """The test files changed in place: delete the folds' (and the run's) test predictions, so every fold is
    predicted again - test predictions and the test-like OOF, which imitates the test profile - from its
    checkpoints (last.pt: no retraining); one INFO line says why."""
    stale = sorted(out.glob("fold*/test.csv"))
    log.info("%s: the test files changed since these outputs were made (same names, other content): the test "
             "predictions of %s and the test-like OOF are computed again from the fold checkpoints", out,
             ", ".join(f.parent.name for f in stale) or "no finished fold")
    for path in stale + [out / "test.csv"]:
        path.unlink(missing_ok=True)


@contextmanager
def experiment_lock(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on an experiment folder for a whole run; a second run is refused with the holder."""
    out.mkdir(parents=True, exist_ok=True)
    lock_file = out / ".lock"
    with open(lock_file, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise ConfigError(f"{out} is in use by {holder}; wait for that run to end (or stop it), then rerun") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {os.uname().nodename} since {time.strftime('%Y-%m-%d %H:%M:%S')}")
        fh.flush()
        try:
            yield
        finally:
            fh.truncate(0)
            fcntl.flock(fh, fcntl.LOCK_UN)


def fold_done(fold_dir: Path) -> bool:
    """A fold is finished when its result, OOF and test predictions are all written."""
    return all((fold_dir / f).is_file() for f in ("result.json", "oof.csv", "test.csv"))


def output_dir(cfg: Config, project: Project, ood: bool) -> Path:
    """experiments/<exp>/ (or its ood/ sub-folder), proved to lie inside experiments/."""
    out = project.experiment_dir(cfg.name)
    return inside(out / "ood", out) if ood else out


def clear_outputs(out: Path) -> None:
    """--restart: delete everything in the folder but its lock; refused while another process trains a fold."""
    with ExitStack() as held:
        for fold_dir in sorted(p for p in out.rglob("fold*") if p.is_dir()):
            held.enter_context(experiment_lock(fold_dir))  # raises, naming the process that trains it
        doomed = [child for child in out.iterdir() if child.name != ".lock"]
        if doomed:
            log.warning("--restart: deleting %s (%d entries: %s)", out, len(doomed),
                        ", ".join(sorted(c.name for c in doomed)[:8]) + (", ..." if len(doomed) > 8 else ""))
        for child in doomed:
            shutil.rmtree(child) if child.is_dir() else child.unlink()


def open_outputs(cfg: Config, out: Path, restart: bool, shared: bool = False) -> Path:
    """The experiment's output folder, emptied on restart (the caller holds its lock), checked, config saved.

    shared=True (a train-only process: other processes may be writing here) leaves their temp files alone."""
    out.mkdir(parents=True, exist_ok=True)
    if restart:
        clear_outputs(out)
    check_config_unchanged(cfg, out)
    if not shared and (stale := remove_stale_temps(out)):
        log.info("removed %d temp file(s) left by an interrupted run", stale)
    save_config(cfg, out / "config.yaml")
    return out


def open_shared_outputs(cfg: Config, out: Path, restart: bool) -> Path:
    """open_outputs for a train-only process (others may be training here too): with restart, under the folder's
    lock (refused while a whole run holds it) and refused while another process trains one of its folds."""
    with experiment_lock(out) if restart else nullcontext():
        return open_outputs(cfg, out, restart, shared=True)


def scan_bad_images(paths: list[str], cache: ImageCache | None) -> dict[int, str]:
    """Decode every image once (or read the cache's verdict): row index -> reason, for on_bad_image=fail."""
    if cache is not None:
        return {int(i): cache.reasons.get(int(i), "undecodable") for i in np.flatnonzero(cache.states == BAD)}
    bad = {}
    for i, path in enumerate(paths):
        try:
            decode_image(path)
        except BadImageError as err:
            bad[i] = str(err)
    return bad


def check_decodable(cfg: Config, train: pd.DataFrame, cache: ImageCache | None) -> None:
    """With data.on_bad_image=fail: stop before training when any training image cannot be decoded."""
    if cfg.data.on_bad_image != "fail":
        return
    bad = scan_bad_images(train["path"].tolist(), cache)
    if bad:
        listing = "; ".join(f"{train['id'].iloc[i]}: {r}" for i, r in list(bad.items())[:10])
        raise DataError(f"{len(bad)} training image(s) cannot be decoded ({listing}) - fix or remove them, "
                        f"or set data.on_bad_image=skip")
