"""How much OOF test-like depends on the resize kernel it imitates (data.test_like_resize), on a finished shift.py run.

    cd benchmarks
    PYTHONPATH=.. ../.venv/bin/python resize_kernels.py /tmp/shift_replica --shifts resize0.5,resize0.75+jpeg65

For each resize shift S of a shift.py folder (its base experiment's fold models, trained once on clean images), the
fold models score their validation rows (1) re-encoded by the true shift (the files shift.py wrote to val_<S>/) and
(2) re-encoded like the measured test profile with each kernel the kit offers. Nothing is trained: a few minutes.
A kernel's test-like AUC is also what the true shift would score had the test set been resized with that kernel
(the Lanczos row against the true Lanczos shift measures how close an imitation with the right kernel comes), so
the spread of the column is the error to expect when the test's resizer is unknown. Saves resize_kernels.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import table  # noqa: E402 - common puts the repository on the path
from competition.atomic import write_json  # noqa: E402
from competition.config import load_config  # noqa: E402
from competition.folds import load_tables  # noqa: E402
from competition.inference import eval_dataset, predict_dataset  # noqa: E402
from competition.metrics import score  # noqa: E402
from competition.model import load_detector  # noqa: E402
from competition.project import Project  # noqa: E402
from competition.test_encoding import RESIZE_KERNELS, test_like_dataset, test_profile  # noqa: E402
from shift import SHIFTS, shifted_validation  # noqa: E402

log = logging.getLogger("resize_kernels")
KERNELS = (*RESIZE_KERNELS, "mix")


def fold_scores(home: Path, root: Path, shift: str) -> pd.DataFrame:
    """The base experiment's OOF rows with the true shifted prediction and one test-like prediction per kernel."""
    project = Project(home)
    cfg = load_config("base", [], project)
    train, test = load_tables(cfg, project, "fold")
    profile = test_profile(cfg, project, train, test)
    paths = dict(zip(train["id"], train["path"]))
    shifted = shifted_validation(root, train.rename(columns={"id": "file_name"}), SHIFTS[shift])  # written by shift.py
    frames = []
    for fold_dir in sorted(p for p in (home / "experiments" / "base").glob("fold*") if p.is_dir()):
        oof = pd.read_csv(fold_dir / "oof.csv", dtype={"id": str}, keep_default_na=False)
        ids = oof["id"].tolist()
        prior = float(train.loc[train["fold"] != oof["fold"].iloc[0], "label"].mean())
        model = load_detector(fold_dir / "best.pt", torch.device("cpu"), project)
        run = lambda ds: predict_dataset(model, ds, cfg, torch.device("cpu"), prior, fold_dir.name).prob  # noqa: E731
        frame = {"id": ids, "target": oof["target"], "plain": oof["prob"],
                 "shifted": run(eval_dataset(cfg, [shifted[i] for i in ids]))}
        for kernel in KERNELS:
            kcfg = replace(cfg, data=replace(cfg.data, test_like_resize=kernel))
            frame[kernel] = run(test_like_dataset(kcfg, [paths[i] for i in ids], ids, profile, cfg.train.seed))
        frames.append(pd.DataFrame(frame))
    return pd.concat(frames, ignore_index=True)


def shift_rows(frame: pd.DataFrame, shift: str) -> list[dict]:
    """One row per kernel: its test-like AUC and its distance to the true shifted AUC."""
    auc = lambda col: score("auc", frame["target"].to_numpy(), frame[col].to_numpy(float))  # noqa: E731
    true = auc("shifted")
    return [{"shift": shift, "kernel": k, "true_shifted": true, "plain": auc("plain"), "oof_test_like": auc(k),
             "error": auc(k) - true} for k in KERNELS]


def main() -> None:
    """Score every kernel on every named shift; print the table, save resize_kernels.json."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="a finished shift.py folder")
    parser.add_argument("--shifts", default="resize0.5,resize0.75+jpeg65", help="its resize shifts to score")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    torch.set_num_threads(2)
    root, rows = args.folder.resolve(), []
    plan = json.loads(next(p for p in (root / "shift.json", root / "shift_partial.json") if p.is_file()).read_text())
    for shift in args.shifts.split(","):
        if not (root / shift / "experiments" / "base").is_dir() or not (root / f"val_{shift}").is_dir():
            raise SystemExit(f"{root}: no finished shift {shift} there (run shift.py with --shifts {shift})")
        rows += shift_rows(fold_scores(root / shift, root, shift), shift)
    where = Path(plan["plan"].get("data") or "CIFAKE").name
    table(f"OOF test-like per resize kernel on {where} (true shift: tools {plan['plan'].get('tools', 'other')}), AUC",
          ["shift", "kit kernel", "plain OOF", "true shifted", "OOF test-like", "test-like - shifted"],
          [[r["shift"], r["kernel"], f"{r['plain']:.4f}", f"{r['true_shifted']:.4f}", f"{r['oof_test_like']:.4f}",
            f"{r['error']:+.4f}"] for r in rows])
    write_json(root / "resize_kernels.json", {"plan": plan["plan"], "rows": rows})


if __name__ == "__main__":
    main()
