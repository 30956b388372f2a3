"""glibc malloc control: fast reuse of freed memory while training, freed memory returned between phases.

run.sh raises glibc's mmap and trim thresholds (MALLOC_MMAP_THRESHOLD_=1 GB, MALLOC_TRIM_THRESHOLD_=4 GB) so
the same large activation buffers are reused step after step instead of being unmapped and page-faulted
back in (zeroed by the kernel: system time) every step: a whole run on 1-8 MP photos is 1.6x faster
(benchmarks/README.md, "Large photos"). Left alone, that keeps every freed byte: the main process grew
to 9.7 GB, and each DataLoader worker forked from it inherited the retained heap and copied it page by
page as it reused it (7.4 GB). So the kit returns freed memory at phase boundaries:
- `trim()` in the main process before a loader forks workers and after each prediction pass;
- `worker_limits()` in every DataLoader worker: the heap it inherited is released and large buffers
  (decoded photos) go straight to mmap, so a worker holds what it decodes, not what its parent freed.
Without glibc (musl, macOS) both are no-ops.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameter numbers (malloc.h)
WORKER_MMAP_THRESHOLD = 4 * 2**20  # in workers, buffers from 4 MB (a decoded photo) are mapped and unmapped
WORKER_TRIM_THRESHOLD = 64 * 2**20  # and at most 64 MB of freed heap is kept


def _libc():
    """glibc through ctypes, or None where malloc_trim/mallopt do not exist."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None
    except OSError:
        return None


_LIBC = _libc()


def trim() -> bool:
    """Return this process's free heap memory to the OS (glibc malloc_trim); whether any was released."""
    return bool(_LIBC.malloc_trim(0)) if _LIBC is not None else False


def worker_limits() -> None:
    """In a DataLoader worker: release the free heap inherited from the parent and cap what is kept."""
    if _LIBC is None:
        return
    _LIBC.mallopt(M_MMAP_THRESHOLD, WORKER_MMAP_THRESHOLD)
    _LIBC.mallopt(M_TRIM_THRESHOLD, WORKER_TRIM_THRESHOLD)
    _LIBC.malloc_trim(0)
