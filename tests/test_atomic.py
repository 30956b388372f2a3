"""Atomic writes: a failure mid-write leaves the previous file intact; stray temp files are cleaned."""

from __future__ import annotations

import pandas as pd
import pytest

from competition.atomic import atomic_path, remove_stale_temps, write_csv


def test_failed_write_keeps_old_file(tmp_path):
    target = tmp_path / "oof.csv"
    write_csv(target, pd.DataFrame({"id": ["a"], "prob": [0.25]}))
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("id,prob\na,0.")  # half-written ...
            raise RuntimeError("killed")  # ... when the writer dies
    assert pd.read_csv(target)["prob"].tolist() == [0.25]
    assert not list(tmp_path.glob(".*.tmp"))


def test_remove_stale_temps(tmp_path):
    (tmp_path / "fold0").mkdir()
    (tmp_path / "fold0" / ".best.pt.x1y2.tmp").write_bytes(b"partial")
    (tmp_path / "fold0" / "best.pt").write_bytes(b"whole")
    assert remove_stale_temps(tmp_path) == 1
    assert [p.name for p in (tmp_path / "fold0").iterdir()] == ["best.pt"]
