"""A damaged fold checkpoint (empty, truncated, random bytes, another program's file, a bare tensor, missing) is one
error line naming the file and the fix, from every command that loads fold models: never a torch traceback.
The finished run is tests/fixtures/old_run (no training)."""

from __future__ import annotations

import io
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from tests.conftest import call_kit, make_competition
from tests.test_old_runs import FIXTURE, OLD_TEST


def damage(file: Path, kind: str) -> None:
    """Replace a best.pt by one kind of damage."""
    good = file.read_bytes()
    if kind == "empty":
        file.write_bytes(b"")
    elif kind == "truncated":
        file.write_bytes(good[: len(good) // 2])
    elif kind == "random bytes":
        file.write_bytes(bytes(range(256)) * 40)
    elif kind == "pickle of another program":
        file.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    elif kind == "bare tensor":
        buf = io.BytesIO()
        torch.save(torch.zeros(3), buf)
        file.write_bytes(buf.getvalue())
    elif kind == "dict without config":
        buf = io.BytesIO()
        torch.save({"model": {}, "epoch": 1}, buf)
        file.write_bytes(buf.getvalue())
    elif kind == "missing":
        file.unlink()


KINDS = ["empty", "truncated", "random bytes", "pickle of another program", "bare tensor", "dict without config"]


def commands(home: Path) -> dict[str, list[str]]:
    """Every command that loads fold checkpoints, with arguments for the old run."""
    image = str(home / "data" / OLD_TEST["id"][0])
    return {"predict": ["competition.predict", "old001", image],
            "explain": ["competition.explain", "old001", image],
            "export": ["competition.export", "old001"],
            "kaggle_predict": ["competition.kaggle_predict", "old001", "--out", str(home / "sub.csv")]}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("command", ["predict", "explain", "export", "kaggle_predict"])
def test_a_damaged_checkpoint_is_one_line_naming_it(tmp_path, kind, command):
    fold = (KINDS.index(kind) + len(command)) % 2  # the first or the second fold, spread over the cases
    home = make_competition(tmp_path, n_per_class=2, n_test=8)
    out = home / "experiments" / "old001"
    shutil.copytree(FIXTURE, out)
    damage(out / f"fold{fold}" / "best.pt", kind)
    result = call_kit(home, *commands(home)[command], check=False)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, result.stderr[-2000:]
    assert f"fold{fold}/best.pt" in errors[0] and "retrain that fold" in errors[0], errors[0]
    assert "Traceback" not in result.stderr
