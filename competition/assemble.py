"""Fold outputs -> the experiment's outputs: each fold's oof.csv, test.csv and result.json as it finishes, then
all folds gathered into oof.csv, test.csv (fold mean), the bad-image lists and metrics.json.

Assembly is refused while a fold is missing; it runs once, after every fold, in whichever process assembles
(the run itself, or `./run.sh assemble <exp>` after folds trained elsewhere).
"""

from __future__ import annotations

import json
import logging
import shlex
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from competition.atomic import write_csv, write_json
from competition.config import RUNTIME_KEYS, Config, load_config, replace, save_config, to_dict
from competition.errors import DataError, KitError
from competition.metrics import (THRESHOLD_METRICS, best_threshold, greater_is_better, positive_rates, score,
                                 score_all, score_note, warn_positive_rates)
from competition.project import Project
from competition.pseudo import pseudo_file
from competition.run_folder import RESTART_ADVICE, fold_done
from competition.train import select_metric

log = logging.getLogger(__name__)


def require_finished(cfg: Config, out: Path, folds: list[int]) -> None:
    """Refuse to assemble while a fold is missing, saying how to run it."""
    missing = [k for k in folds if not fold_done(out / f"fold{k}")]
    if missing:
        raise DataError(f"{out}: fold(s) {missing} not finished - run them (e.g. `./run.sh {cfg.name} --folds "
                        f"{','.join(map(str, missing))} --no-assemble`), then `./run.sh assemble {cfg.name}`")


def write_fold_outputs(cfg: Config, fold_dir: Path, val: pd.DataFrame, test: pd.DataFrame, oof, tst,
                       seconds: float, test_like: np.ndarray | None = None, adapted: dict | None = None) -> None:
    """fold{k}/oof.csv, test.csv (every row, with decode errors) and result.json; test_like: the validation rows'
    probabilities when re-encoded like test images (competition.test_encoding), column prob_test_like; adapted
    (tta.adapt_bn, competition.adapt): its test_like -> column prob_test_like_adapted, recorded in result.json."""
    fold = int(fold_dir.name[4:])
    frame = pd.DataFrame({
        "id": val["id"].values, "fold": fold, "target": val["label"].values, "prob": oof.prob,
        "prob_identity": oof.prob_identity, "error": [oof.errors.get(i, "") for i in range(len(val))]})
    if test_like is not None:
        frame["prob_test_like"] = test_like
    if adapted is not None and adapted["test_like"] is not None:
        frame["prob_test_like_adapted"] = adapted["test_like"]
    write_csv(fold_dir / "oof.csv", frame)
    write_csv(fold_dir / "test.csv", pd.DataFrame({
        "id": test["id"].values, "prob": tst.prob, "error": [tst.errors.get(i, "") for i in range(len(test))]}))
    write_fold_result(cfg, fold_dir, val["label"].to_numpy(), oof, seconds,
                      adapted and {"batchnorm_layers": adapted["batchnorm_layers"]}, test_like is not None)


def write_fold_result(cfg: Config, fold_dir: Path, target: np.ndarray, oof, seconds: float,
                      adapt_bn: dict | None = None, test_like: bool = False) -> None:
    """fold{k}/result.json: scores (TTA and identity view), best epoch and timings; adapt_bn: present when the
    predictions were made with tta.adapt_bn (competition.adapt.adapted_fold reads it); test_like_resize: the kernel
    that made the fold's test-like column, when it has one (experiment.add_test_like remakes it on another)."""
    metric = cfg.competition.metric
    history = pd.read_csv(fold_dir / "log.csv")
    best_epoch = torch.load(fold_dir / "best.pt", map_location="cpu", weights_only=True)["epoch"]
    result = {"fold": int(fold_dir.name[4:]), "best_epoch": best_epoch, "epochs_run": len(history),
              "score": score(metric, target, oof.prob), "score_identity": score(metric, target, oof.prob_identity),
              **score_all(target, oof.prob), "train_s": float(history["epoch_s"].sum()), "predict_s": seconds}
    if pseudo_file(fold_dir).is_file():
        result["pseudo_rows"] = len(pd.read_csv(pseudo_file(fold_dir)))
    if adapt_bn:
        result["adapt_bn"] = adapt_bn
    if test_like:
        result["test_like_resize"] = cfg.data.test_like_resize
    write_json(fold_dir / "result.json", result)
    log.info("%s done: OOF %s %.5f (identity %.5f)%s", fold_dir.name, metric, result["score"], result["score_identity"],
             " at threshold 0.5; the experiment's threshold is tuned on all folds' OOF" if metric in THRESHOLD_METRICS else "")


def read_folds(out: Path, folds_run: list[int], test: pd.DataFrame) -> tuple[pd.DataFrame, list, list]:
    """Every finished fold's OOF rows, test predictions (checked in test order) and result."""
    read = lambda f: pd.read_csv(f, dtype={"id": str}, keep_default_na=False)  # noqa: E731
    oof = pd.concat([read(out / f"fold{k}" / "oof.csv") for k in folds_run], ignore_index=True)
    tests = [read(out / f"fold{k}" / "test.csv") for k in folds_run]
    results = [json.loads((out / f"fold{k}" / "result.json").read_text()) for k in folds_run]
    for k, frame in zip(folds_run, tests):
        if len(frame) != len(test) or not (frame["id"].values == test["id"].values).all():
            raise DataError(f"{out / f'fold{k}' / 'test.csv'} does not list the current test rows in order - the test "
                            f"table changed since this fold ran; {RESTART_ADVICE}")
    return oof, tests, results


def assemble(cfg: Config, out: Path, folds_run: list[int], n_folds: int, test: pd.DataFrame, wall_s: float,
             encoding: dict | None = None) -> dict:
    """The experiment's outputs from its finished folds (refused while one is missing); metrics.json's content."""
    require_finished(cfg, out, folds_run)
    metrics = write_outputs(cfg, out, folds_run, n_folds, test, wall_s, encoding)  # encoding: the test profile
    log.info("%s: assembled %d fold(s): OOF %s %.5f (folds %.5f +- %.5f), TTA gain %+.5f, %.1f min", cfg.name,
             len(folds_run), metrics["score_note"], metrics["oof_score"], metrics["fold_mean"], metrics["fold_std"],
             metrics["tta"]["gain"], wall_s / 60)
    return metrics


def write_outputs(cfg: Config, out: Path, folds_run: list[int], n_folds: int, test: pd.DataFrame,
                  wall_s: float, encoding: dict | None = None) -> dict:
    """Gather fold outputs into oof.csv, test.csv (fold mean), bad-image lists and metrics.json."""
    oof, fold_tests, results = read_folds(out, folds_run, test)
    test_prob = np.mean([f["prob"].to_numpy(dtype=float) for f in fold_tests], axis=0)
    cfg = check_adaptation(cfg, out, folds_run, results)  # the run's recorded tta.adapt_bn
    bad = {"train": oof.loc[oof["error"] != "", ["id", "error"]],
           "test": fold_tests[0].loc[fold_tests[0]["error"] != "", ["id", "error"]]}
    write_csv(out / "bad_train_images.csv", bad["train"])
    write_csv(out / "bad_test_images.csv", bad["test"])
    check_classes_seen(oof, out / "bad_train_images.csv")
    like = [c for c in ("prob_test_like", "prob_test_like_adapted") if c in oof and oof[c].notna().all()]
    write_csv(out / "oof.csv", oof[["id", "fold", "target", "prob", *like]])  # test-like: when every fold has it
    write_csv(out / "test.csv", pd.DataFrame({"id": test["id"].values, "prob": test_prob}))
    metrics = summarize(cfg, oof, results, folds_run, n_folds, wall_s, test_prob)
    if "prob_test_like" in like:
        metrics["oof_test_like"] = test_like_scores(cfg, oof, metrics, encoding)
    if cfg.tta.adapt_bn:
        metrics["adapt_bn"] = adapt_bn_scores(cfg, oof, metrics, results, "prob_test_like_adapted" in like)
    metrics.update(bad_train_images=len(bad["train"]), bad_test_images=len(bad["test"]))
    write_json(out / "metrics.json", metrics)
    if cfg.competition.metric in THRESHOLD_METRICS:
        warn_positive_rates(metrics["positive_rate"], metrics["threshold"], cfg.name)
    warn_bad_images(bad, out)
    return metrics


def check_classes_seen(oof: pd.DataFrame, listing: Path) -> None:
    """Refuse to score a run where over half of a class's training images could not be decoded: the model barely
    saw that class, and its rows, predicted at the prior, can make any score look perfect (all human images
    unreadable scored AUC 1.0)."""
    bad = (oof["error"] != "").to_numpy()
    for label, name in ((0, "human (0)"), (1, "AI (1)")):
        rows = (oof["target"] == label).to_numpy()
        if rows.any() and 2 * (bad & rows).sum() > rows.sum():
            raise DataError(f"{listing}: {int((bad & rows).sum())} of {int(rows.sum())} {name} training images could "
                            f"not be decoded, so the model barely saw that class and the OOF score would mean nothing "
                            f"- restore those files (or drop their rows from train.csv), then rerun with --restart")


def summarize(cfg: Config, oof: pd.DataFrame, results: list[dict], folds_run: list[int], n_folds: int,
              wall_s: float, test_prob: np.ndarray) -> dict:
    """metrics.json's content: OOF score at the file's threshold, fold spread, TTA gain, positive rates, timings.

    For f1/accuracy every score is at the one threshold tuned on all OOF rows: the threshold a submission
    of this experiment uses. Fold mean/std are at that threshold too."""
    metric = cfg.competition.metric
    target, prob = oof["target"].to_numpy(), oof["prob"].to_numpy(dtype=float)
    identity = oof["prob_identity"].to_numpy(dtype=float)
    threshold = best_threshold(metric, target, prob)
    fold = oof["fold"].to_numpy()
    fold_scores = [score(metric, target[fold == k], prob[fold == k], threshold) for k in folds_run]
    tta_id, tta = score(metric, target, identity, best_threshold(metric, target, identity)), score(metric, target, prob, threshold)
    return {
        "experiment": cfg.name, "description": cfg.description, "metric": metric,
        "complete": sorted(folds_run) == list(range(n_folds)), "folds_run": folds_run, "n_oof": len(oof),
        "oof_score": tta, "fold_mean": float(np.mean(fold_scores)), "fold_std": float(np.std(fold_scores)),
        "score_note": score_note(metric, threshold), "oof": score_all(target, prob, threshold), "folds": results,
        "tta": {"views": cfg.tta.views, "crops": cfg.tta.crops, "tiles": cfg.tta.tiles, "oof_identity": tta_id, "oof_tta": tta,
                "gain": (tta - tta_id) if greater_is_better(metric) else (tta_id - tta)},
        "threshold": threshold, "positive_rate": positive_rates(prob, test_prob, threshold),
        "model": cfg.model.name, "img_size": cfg.data.img_size, "input_upscale": cfg.model.input_upscale,
        "augment": cfg.data.augment, "epochs": cfg.train.epochs, "epochs_run": [r["epochs_run"] for r in results],
        "select_by": select_metric(cfg), "train_s": float(sum(r["train_s"] for r in results)), "wall_s": wall_s,
    }


def test_like_scores(cfg: Config, oof: pd.DataFrame, metrics: dict, encoding: dict | None) -> dict:
    """metrics.json's oof_test_like: the OOF scored on validation images re-encoded like the test images, at the
    experiment's threshold; gap = how much better the plain OOF looks (plain - test-like; flipped for lower-is-better
    metrics); the test encoding profile's summary (competition.test_encoding) and the resize kernel imitated."""
    metric, threshold = cfg.competition.metric, metrics["threshold"]
    target, prob = oof["target"].to_numpy(), oof["prob_test_like"].to_numpy(dtype=float)
    value = score(metric, target, prob, threshold)
    gap = metrics["oof_score"] - value if greater_is_better(metric) else value - metrics["oof_score"]
    log.info("%s: OOF test-like %s %.5f (plain %.5f, gap %+.5f)", cfg.name, metric, value, metrics["oof_score"], gap)
    return {"score": value, "metrics": score_all(target, prob, threshold), "gap": gap,
            "profile": (encoding or {}).get("summary", {}), "resize_kernel": cfg.data.test_like_resize}


def check_adaptation(cfg: Config, out: Path, folds_run: list[int], results: list[dict]) -> Config:
    """The config to assemble with: when every fold was predicted with another tta.adapt_bn than the config's (`./run.sh
    assemble <exp>` without the run's override), the run's recorded setting (fold result.json), saved back to its
    config.yaml; a mix is refused with a fix that repeats the run's overrides (rerun_words)."""
    flags = {k: bool(r.get("adapt_bn")) for k, r in zip(folds_run, results)}
    other = [k for k, flag in flags.items() if flag != cfg.tta.adapt_bn]
    if not other:
        return cfg
    if len(other) == len(flags):
        recorded = replace(cfg, tta={"adapt_bn": not cfg.tta.adapt_bn})
        log.info("%s: assembling as its folds were predicted, tta.adapt_bn=%s (the run's recorded setting); to "
                 "recompute them with %s from their checkpoints (no retraining): `./run.sh %s`", cfg.name,
                 recorded.tta.adapt_bn, cfg.tta.adapt_bn, rerun_words(cfg, out))
        save_config(recorded, out / "config.yaml")
        return recorded
    same = [k for k in flags if k not in other]
    raise DataError(f"{out}: fold(s) {other} were predicted with tta.adapt_bn={not cfg.tta.adapt_bn}, fold(s) {same} "
                    f"with {cfg.tta.adapt_bn}; run `./run.sh {rerun_words(cfg, out)}` without --folds (it recomputes "
                    f"every fold's predictions from its checkpoints, no retraining)")


def rerun_words(cfg: Config, out: Path, extra: tuple[str, ...] = (), name: str = "") -> str:
    """`<exp> section.key=value ...`: the experiment and every override that turns its YAML into `cfg` (the run's
    resolved config), so that a fix text followed as printed reproduces the run instead of undoing an override;
    `extra` words (the fix's own, e.g. data.test_like_oof=on) replace the run's value of their keys; `name`: the
    experiment's folder name when its saved config was copied from another."""
    name = name or cfg.name
    root = next((p for p in out.parents if (p / "competition.yaml").is_file()), None)
    try:
        base = to_dict(load_config(name, [], Project(root) if root else None, check_model=False))
    except (KitError, OSError):
        base = to_dict(cfg)  # the YAML is gone or broken: no override can be told apart
    fixed = {word.partition("=")[0] for word in extra}
    kept = [w for w in overrides_between(base, to_dict(cfg)) if w.strip("'").partition("=")[0] not in fixed]
    return " ".join([name, *kept, *extra])


# Where a run looked (folders, device, threads, tracking), not what it computed: never repeated in a fix text.
PLACE_KEYS = {f"{s}.{k}" for s, k in RUNTIME_KEYS} - {"data.test_like_oof"}


def overrides_between(base: dict, run: dict) -> list[str]:
    """The `section.key=value` words (shell-quoted) that turn the resolved config `base` into `run`, PLACE_KEYS
    left out (a saved relative folder and today's resolved one are the same place)."""
    words = []
    for section, keys in run.items():
        for key, value in (keys.items() if isinstance(keys, dict) else ()):
            if f"{section}.{key}" not in PLACE_KEYS and (base.get(section) or {}).get(key) != value:
                text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
                words.append(shlex.quote(f"{section}.{key}={text}"))
    return words


def adapt_bn_scores(cfg: Config, oof: pd.DataFrame, metrics: dict, results: list[dict], scored: bool) -> dict:
    """metrics.json's adapt_bn: BatchNorm layers adapted, and the OOF test-like score without / with adaptation (on
    the validation rows re-encoded like the test) and the gain (positive = better), at the experiment's threshold;
    scores None without a test-like OOF (data.test_like_oof)."""
    layers = results[0].get("adapt_bn", {}).get("batchnorm_layers", 0) if results else 0
    summary = {"batchnorm_layers": layers, "oof_test_like": None, "oof_test_like_adapted": None, "gain": None}
    if not scored:
        return summary
    metric, target = cfg.competition.metric, oof["target"].to_numpy()
    without, with_ = (score(metric, target, oof[c].to_numpy(dtype=float), metrics["threshold"])
                      for c in ("prob_test_like", "prob_test_like_adapted"))
    gain = with_ - without if greater_is_better(metric) else without - with_
    log.info("%s: tta.adapt_bn: OOF test-like %s %.5f -> %.5f adapted (gain %+.5f, %d BatchNorm layers)", cfg.name,
             metric, without, with_, gain, layers)
    if gain < 0:
        log.warning("%s: tta.adapt_bn made the test-like OOF worse (%s %.5f -> %.5f): the test predictions are adapted "
                    "too; set tta.adapt_bn=false unless the test set is far larger or more shifted than the validation "
                    "rows", cfg.name, metric, without, with_)
    return {**summary, "oof_test_like": without, "oof_test_like_adapted": with_, "gain": gain}


def warn_bad_images(bad: dict[str, pd.DataFrame], out: Path) -> None:
    """Log every undecodable image once, then a loud summary per split."""
    for split, frame in bad.items():
        for row in frame.itertuples():
            log.warning("bad %s image %s: %s", "training" if split == "train" else split, row.id, row.error)
    if len(bad["train"]):
        log.warning("%d training image(s) skipped (weight 0, OOF = prior); listed in %s", len(bad["train"]),
                    out / "bad_train_images.csv")
    if len(bad["test"]):
        log.warning("!!! %d test image(s) could not be decoded and got the training prior as prediction; "
                    "listed in %s", len(bad["test"]), out / "bad_test_images.csv")

