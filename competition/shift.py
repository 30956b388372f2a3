"""Train-vs-test shift check ("adversarial validation"): can a classifier tell training images from test images?

    ./run.sh audit --shift            # python -m competition.audit --shift; also run whenever folds are built

Up to `folds.shift_sample` images of each side are compared two ways, each cross-validated (5 folds):
- metadata (the shortcut audit's header features: format, size, JPEG quality, EXIF...) with gradient
  boosting; the features that separate the sides are listed as cues;
- pixels, through frozen backbone embeddings (`folds.embed_model`), with a logistic regression.
An AUC near 0.5 means the test set looks like the training set; above the threshold (0.65) it does not,
and CV will overstate the leaderboard. The report goes beside the folds file: <folds stem>_shift.md/.json, which
records the test set it measured (test_digest): when the test files change in place, the next `./run.sh folds` or
run measures again (refresh_shift). With fewer than MIN_PER_SIDE images on a side the check is skipped (one WARNING).
"""

from __future__ import annotations

import json
import logging
import sys

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from competition import cli, options
from competition.atomic import write_json, write_text
from competition.audit import THRESHOLD, collect_metadata, feature_aucs, metadata_auc
from competition.config import Config, load_config
from competition.embed import embed_config
from competition.errors import ConfigError, DataError
from competition.project import Project
from competition.tables import load_test_table, load_train_table
from competition.test_encoding import test_files_digest

log = logging.getLogger(__name__)

ADVICE = ("the test set differs from the training set: CV will overstate the leaderboard. Trust 'OOF test-like' "
          "(metrics.json oof_test_like, the leaderboard column) over plain OOF; remedies measured in README 'When the "
          "shift check warns': pseudo-labels, data.match_test, tta.adapt_bn. Metadata cues: give both "
          "sides one encoding (data.normalize_encoding) and one geometry (native crops of one size). Pixel shift "
          "(other generators, other content): trust the OOD score (`--ood`) and augmentation over small CV gains, "
          "and validate on the training images the shift classifier finds most test-like")


MIN_PER_SIDE = 2  # fewer training or test images than this: nothing to cross-validate, the check is skipped


def too_few(n_train: int, n_test: int) -> str | None:
    """Why the check cannot run on these side sizes (None when it can): each side needs MIN_PER_SIDE images."""
    if min(n_train, n_test) >= MIN_PER_SIDE:
        return None
    return (f"too few images to compare ({n_train} training, {n_test} test; at least {MIN_PER_SIDE} each) - "
            f"a placeholder test set (code competitions) cannot be checked; run `./run.sh audit --shift` on the "
            f"real test set")


def sample_rows(n: int, size: int, seed: int = 0) -> np.ndarray:
    """At most `size` row indices of n, sorted, seeded."""
    return np.sort(np.random.default_rng(seed).permutation(n)[:size]) if n > size else np.arange(n)


def side_folds(is_test: np.ndarray) -> np.ndarray:
    """5 stratified folds over the train/test indicator."""
    fold = np.zeros(len(is_test), int)
    k = int(min(5, np.bincount(is_test).min()))
    for f, (_, idx) in enumerate(StratifiedKFold(k, shuffle=True, random_state=0).split(is_test, is_test)):
        fold[idx] = f
    return fold


def pixel_auc(emb: np.ndarray, is_test: np.ndarray, fold: np.ndarray) -> float:
    """Cross-validated AUC of a regularised logistic regression on embeddings (train vs test)."""
    oof = np.zeros(len(is_test))
    for k in np.unique(fold):
        held = fold == k
        model = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=2000))
        oof[held] = model.fit(emb[~held], is_test[~held]).predict_proba(emb[held])[:, 1]
    return float(roc_auc_score(is_test, oof))


def check_shift(cfg: Config, project: Project, train_paths: list[str], test_paths: list[str],
                threshold: float = THRESHOLD) -> dict:
    """Metadata and pixel AUCs of telling train from test, the metadata cues, and a verdict."""
    train_paths = [train_paths[i] for i in sample_rows(len(train_paths), cfg.folds.shift_sample)]
    test_paths = [test_paths[i] for i in sample_rows(len(test_paths), cfg.folds.shift_sample, 1)]
    if reason := too_few(len(train_paths), len(test_paths)):
        raise DataError(f"shift check: {reason}")
    paths = train_paths + test_paths
    is_test = np.r_[np.zeros(len(train_paths), int), np.ones(len(test_paths), int)]
    fold = side_folds(is_test)
    meta = collect_metadata(paths)
    meta_auc, _ = metadata_auc(meta, is_test, fold)
    cues = feature_aucs(meta, is_test)
    pix_auc, pix_txt = pixels_view(cfg, project, paths, is_test, fold)
    top = [f"{c} ({a:.3f})" for c, a in list(cues.items())[:5] if a >= threshold]
    shifted = max(meta_auc, pix_auc if pix_auc is not None else 0.0) > threshold
    verdict = (f"SHIFT: train and test can be told apart (metadata AUC {meta_auc:.3f}, {pix_txt}; warning above "
               f"{threshold}); cues: {', '.join(top) or 'pixels only'} - {ADVICE}" if shifted else
               f"SKIPPED (pixels): metadata alone looks like train (metadata AUC {meta_auc:.3f}; warning above "
               f"{threshold}); {pix_txt}" if pix_auc is None else
               f"OK: test looks like train (metadata AUC {meta_auc:.3f}, {pix_txt}; warning above {threshold})")
    return {"n_train": len(train_paths), "n_test": len(test_paths), "metadata_auc": meta_auc, "pixel_auc": pix_auc,
            "embed_model": cfg.folds.embed_model, "threshold": threshold, "shifted": shifted, "verdict": verdict,
            "feature_auc": cues, "per_side": side_summary(meta, is_test)}


def pixels_view(cfg: Config, project: Project, paths: list[str], is_test: np.ndarray,
                fold: np.ndarray) -> tuple[float | None, str]:
    """(pixel AUC, its description); (None, why) when the embedding backbone has no local weights."""
    try:
        auc = pixel_auc(embed_config(cfg, paths, project), is_test, fold)
    except ConfigError as err:
        log.warning("shift check: pixel view SKIPPED, metadata only (%s)", err)
        return None, f"pixels SKIPPED: {err}"
    return auc, f"pixels AUC {auc:.3f}"


def side_summary(meta: pd.DataFrame, is_test: np.ndarray) -> dict:
    """A few per-side facts: formats, median size, JPEG quality."""
    out = {}
    for side, flag in (("train", 0), ("test", 1)):
        m = meta[is_test == flag]
        out[side] = {"format": m["format"].value_counts().to_dict(), "width_median": float(m["width"].median()),
                     "height_median": float(m["height"].median()),
                     "jpeg_quality_median": float(m["jpeg_quality"].median()), "file_kb_median": float(m["file_kb"].median())}
    return out


def render(report: dict, title: str) -> str:
    """The shift check as markdown."""
    lines = [f"# Train-vs-test shift check: {title}", "", f"**{report['verdict']}**", "",
             f"{report['n_train']} training and {report['n_test']} test images, each classifier cross-validated "
             f"(5 folds) at telling them apart. 0.5 = indistinguishable.", "",
             "| view | AUC |", "|---|---|", f"| metadata (gradient boosting) | {report['metadata_auc']:.4f} |",
             f"| pixels ({report['embed_model']} embeddings, logistic regression) | "
             f"{'SKIPPED' if report['pixel_auc'] is None else format(report['pixel_auc'], '.4f')} |", "",
             "## Metadata features alone (AUC of telling train from test)", "", "| feature | AUC |", "|---|---|"]
    lines += [f"| {f} | {a:.4f} |" for f, a in report["feature_auc"].items()]
    lines += ["", "| field | train | test |", "|---|---|---|"]
    for key in report["per_side"]["train"]:
        lines.append(f"| {key} | {report['per_side']['train'][key]} | {report['per_side']['test'][key]} |")
    return "\n".join(lines) + "\n"


def write_shift_report(report: dict, out_dir, stem: str):
    """Write <stem>_shift.md and .json; log the verdict (a warning when the sides differ)."""
    md = out_dir / f"{stem}_shift.md"
    write_text(md, render(report, stem))
    write_json(out_dir / f"{stem}_shift.json", report)
    (log.warning if report["shifted"] or report["pixel_auc"] is None else log.info)("shift check %s: %s", md, report["verdict"])
    return md


def test_digest(cfg: Config, test: pd.DataFrame) -> str:
    """What a shift report was measured on: every test file's id, size and mtime (a test set changed in place
    changes it) and the sample size."""
    return f"{cfg.folds.shift_sample}:{test_files_digest(test)}"


def shift_beside_folds(cfg: Config, project: Project, train: pd.DataFrame, test: pd.DataFrame) -> dict | None:
    """Run the shift check for a competition and write its report beside the folds file (recording the test set it
    measured); with too few images, one WARNING and no report (an older one is removed: it measured another set)."""
    stem = project.folds_file(cfg).stem
    if reason := too_few(min(len(train), cfg.folds.shift_sample), min(len(test), cfg.folds.shift_sample)):
        log.warning("shift check SKIPPED: %s", reason)
        for suffix in ("md", "json"):
            (project.folds / f"{stem}_shift.{suffix}").unlink(missing_ok=True)
        return None
    report = check_shift(cfg, project, train["path"].tolist(), test["path"].tolist())
    report["test_digest"] = test_digest(cfg, test)
    write_shift_report(report, project.folds, stem)
    return report


def refresh_shift(cfg: Config, project: Project, train: pd.DataFrame, test: pd.DataFrame) -> None:
    """Existing folds: run the shift check again when its report measured another test set (files changed in place,
    or a report from before the kit recorded it) - one INFO line says why. No report: nothing to refresh."""
    file = project.folds / f"{project.folds_file(cfg).stem}_shift.json"
    if not (cfg.folds.shift_check and file.is_file()):
        return
    try:
        recorded = json.loads(file.read_text()).get("test_digest")
    except (OSError, ValueError, AttributeError):
        recorded = None
    if recorded == test_digest(cfg, test):
        return
    log.info("%s measured another test set (the test files changed since): running the shift check again", file)
    shift_beside_folds(cfg, project, train, test)


def main(argv: list[str] | None = None, project: Project | None = None) -> int:
    """CLI entry point: exit 0 when test looks like train, 1 when it does not, 2 on bad input."""
    parser = cli.parser(__doc__)
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. folds.shift_sample=500")
    parser.add_argument("--threshold", type=options.number(float, ge=0.5, lt=1.0, unit="AUC"), default=THRESHOLD,
                        help="warn above this AUC")
    args = parser.parse_args(argv)

    def body() -> int:
        nonlocal project
        project = project or Project.from_env()  # inside cli.run: a bad KIT_HOME is one ERROR line
        cfg = load_config("", args.overrides, project, check_model=False)
        train = load_train_table(cfg.competition, project)
        test = load_test_table(cfg.competition, project)
        if not len(test):
            raise DataError("the competition has no test images to compare with the training set")
        report = check_shift(cfg, project, train["path"].tolist(), test["path"].tolist(), args.threshold)
        report["test_digest"] = test_digest(cfg, test)
        write_shift_report(report, project.folds, project.folds_file(cfg).stem)
        print(report["verdict"])  # noqa: T201 - the CLI's answer
        return 1 if report["shifted"] else 0

    return cli.run(body)


if __name__ == "__main__":
    sys.exit(main())
