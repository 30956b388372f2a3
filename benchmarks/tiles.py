"""Eval geometry on large images: OOF score of the centre crop vs 5 crops vs whole-image tiles, same models.

    KIT_HOME=/tmp/large_photos_runs/runsh ../.venv/bin/python tiles.py big [--tiles 2 3 4]
Loads every fold's best model of a finished experiment and predicts each fold's validation rows (identity
view only, so only the geometry differs) with: the centre crop, tta.crops=5 (corners + centre), and
tta.tiles=n (an n x n native grid over the whole image + the centre crop). Prints the pooled OOF score, the
fold mean +- std, the gain over the centre crop, and the seconds per image of each.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from common import table  # (importing common puts the repository on sys.path)
from competition.config import replace
from competition.folds import load_tables
from competition.inference import eval_dataset, load_experiment, predict_dataset
from competition.metrics import score
from competition.project import Project


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment")
    parser.add_argument("--tiles", type=int, nargs="+", default=[2, 3, 4])
    args = parser.parse_args()
    project, device = Project.from_env(), torch.device("cpu")
    exp = load_experiment(project, args.experiment, device)
    train, _ = load_tables(exp.cfg, project)
    metric = exp.cfg.competition.metric
    geometries = [("centre crop", {"crops": 1, "tiles": 0}), ("5 crops (corners + centre)", {"crops": 5, "tiles": 0})]
    geometries += [(f"tiles {n}x{n} + centre ({n * n + (n % 2 == 0)} crops)", {"crops": 1, "tiles": n})
                   for n in args.tiles]
    rows, base = [], None
    for name, tta in geometries:
        cfg = replace(exp.cfg, tta={**tta, "views": "identity"})
        prob, fold_scores, start = np.zeros(len(train)), [], time.perf_counter()
        for k, model in enumerate(exp.models):
            val = (train["fold"] == k).to_numpy()
            ds = eval_dataset(cfg, train.loc[val, "path"].tolist(), train.loc[val, "label"].to_numpy())
            prob[val] = predict_dataset(model, ds, cfg, device, exp.prior, desc=f"{name} fold {k}").prob
            fold_scores.append(score(metric, train.loc[val, "label"].to_numpy(), prob[val]))
        seconds = (time.perf_counter() - start) / len(train)
        pooled = score(metric, train["label"].to_numpy(), prob)
        base = pooled if base is None else base
        rows.append([name, pooled, f"{np.mean(fold_scores):.4f} +- {np.std(fold_scores):.4f}", pooled - base, seconds])
    table(f"{args.experiment}: OOF {metric} by eval geometry (identity view, same fold models)",
          ["geometry", f"OOF {metric}", "fold mean +- std", "gain vs centre", "s/image"], rows)


if __name__ == "__main__":
    main()
