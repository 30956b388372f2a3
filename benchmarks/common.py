"""Shared helpers for the benchmark scripts: timing, peak RSS, and a markdown table printer."""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SHARED = Path(__file__).resolve().parent.parent.parent / "shared"
CIFAKE = SHARED / "competitions" / "cifake"
FACES = SHARED / "datasets" / "faces_tpdne_ffhq"


def rate(fn: Callable[[], int], min_seconds: float = 3.0) -> float:
    """Items per second of fn (which returns how many items it processed), repeated for min_seconds."""
    fn()  # warm-up
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < min_seconds:
        done += fn()
    return done / (time.perf_counter() - start)


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def table(title: str, header: list[str], rows: list[list]) -> str:
    """A markdown table, printed and returned."""
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(f"{c:.3g}" if isinstance(c, float) else str(c) for c in row) + " |" for row in rows]
    text = "\n".join(lines) + "\n"
    print(text, flush=True)  # noqa: T201 - benchmark output
    return text
