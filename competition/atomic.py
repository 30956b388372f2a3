"""Atomic writes: every output goes to a temp file in the same folder, then is renamed into place.

A run killed at any moment leaves either the old file or the new one, never a truncated one.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

from competition.errors import KitError


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success fsync and rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600; an output is readable as the umask says (0644)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    except Exception as err:
        if out_of_space(err, path.parent):
            raise DiskFullError(f"no space left on {path.parent} while writing {path.name} - free some space "
                                f"(old experiments, .cache/) and rerun: the run resumes") from None
        raise
    finally:
        tmp_path.unlink(missing_ok=True)


def current_umask() -> int:
    """The process umask, read without changing it (/proc), or by setting and restoring it where /proc lacks it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class DiskFullError(KitError, OSError):
    """A write failed because the disk is full; nothing half-written is left behind."""


DISK_FULL_WORDS = ("no space left", "disk quota exceeded", "enospc", "edquot")  # what a writer says on a full disk
WRITER_FAILED = ("inline_container", "write failed", "failed writing")  # torch's writer, which does not say why


def out_of_space(err: BaseException, folder: Path) -> bool:
    """Whether a failed write means the disk is full: an OSError with errno ENOSPC/EDQUOT, an OSError or writer
    error whose message says so, or torch's cryptic writer failure (`inline_container`) while the folder's disk
    has under 1 MiB free. Any other error (PermissionError, TypeError, a bug) stays itself, even on a full disk."""
    if isinstance(err, OSError) and err.errno is not None:
        return err.errno in (errno.ENOSPC, errno.EDQUOT)  # the errno says exactly what happened
    if not isinstance(err, (OSError, RuntimeError)):
        return False
    text = str(err).lower()
    if any(word in text for word in DISK_FULL_WORDS):
        return True
    return isinstance(err, RuntimeError) and any(w in text for w in WRITER_FAILED) and free_bytes(folder) < 2**20


def free_bytes(folder: Path) -> int:
    """Bytes free for writing on folder's disk (a large number when it cannot be measured)."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return 2**62
    return st.f_bavail * st.f_frsize


def remove_stale_temps(folder: Path) -> int:
    """Delete temp files a killed writer left under folder (the real files were never touched); return count."""
    stale = list(Path(folder).rglob(".*.tmp")) if Path(folder).is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


def write_text(path: Path, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: Path, obj: Any) -> None:
    """Write JSON (indented, keys in insertion order) atomically."""
    write_text(path, json.dumps(obj, indent=2, default=_jsonable) + "\n")


def write_csv(path: Path, frame: pd.DataFrame) -> None:
    """Write a DataFrame as CSV without its index, atomically; floats keep full precision."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.9g")


def save_torch(path: Path, obj: Any) -> None:
    """torch.save atomically."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _jsonable(value: Any) -> Any:
    """Make numpy scalars and paths JSON-serialisable."""
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
