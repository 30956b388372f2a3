"""Shortcut audit: can the label be read from the file instead of the pixels?

    python -m competition.audit                    # the competition in competition.yaml
    python -m competition.audit ../shared/datasets/faces_tpdne_ffhq [--out DIR] [--threshold 0.65]

Reads metadata only (Pillow parses headers and JPEG quantisation tables without decoding pixels):
format, mode, size, file size and bytes per pixel, JPEG quality estimated from the quantisation
tables, progressive flag, chroma subsampling, EXIF / camera make / Software tag, ICC profile. Then a
metadata-only classifier is cross-validated on the folds: if it separates the classes (AUC above the
threshold), a detector will learn that shortcut and its CV score means little. The report (markdown +
JSON) is written next to the folds, and automatically whenever folds are built.
"""

from __future__ import annotations

import logging
import os
import sys
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, JpegImagePlugin
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold
from tqdm.auto import tqdm  # a widget in a notebook, the terminal bar elsewhere

from competition import cli, options, outputs
from competition.atomic import write_json, write_text
from competition.config import CompetitionConfig, is_override, load_config, override_error
from competition.errors import ConfigError
from competition.paths import PathNotFound, output_path, user_path
from competition.project import Project
from competition.tables import load_train_table

log = logging.getLogger(__name__)

THRESHOLD = 0.65  # metadata-only AUC above this is a shortcut warning
# IJG standard luminance quantisation table (quality 50), natural order.
STD_LUMA = np.array([16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
                     14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
                     49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], dtype=np.float64)
NUMERIC = ["width", "height", "aspect", "file_kb", "bytes_per_pixel", "jpeg_quality", "progressive", "subsampling",
           "has_exif", "has_make", "has_software", "has_icc", "is_jpeg", "is_png", "is_webp", "is_rgb"]
REMEDY = ("set `data.normalize_encoding: {format: jpeg, quality: 90}` so both classes reach the model with one "
          "encoding, crop to one size (data.augment: forensic with a fixed img_size), and make sure test images "
          "look like the training ones; then check the audit of the kit's pipeline output")


def _scaled_table(quality: int) -> np.ndarray:
    """The IJG luminance table libjpeg writes at this quality."""
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality
    return np.clip(np.floor((STD_LUMA * scale + 50) / 100), 1, 255)


SCALED_SUMS = np.array([_scaled_table(q).sum() for q in range(1, 101)])


def jpeg_quality(tables: dict) -> float:
    """Estimate the IJG quality (1-100) whose luminance table is closest to the file's (order-free)."""
    if not tables:
        return float("nan")
    luma = np.asarray(tables[min(tables)], dtype=np.float64)
    return float(np.argmin(np.abs(SCALED_SUMS - luma.sum())) + 1)


def read_metadata(path: str) -> dict:
    """Header-level facts about one image file (no pixel decode)."""
    row = {"file_kb": os.path.getsize(path) / 1024 if os.path.exists(path) else float("nan")}
    try:
        with Image.open(path) as img:
            exif = img.getexif()
            row.update(format=img.format or "?", mode=img.mode, width=img.width, height=img.height,
                       jpeg_quality=jpeg_quality(getattr(img, "quantization", None) or {}),
                       progressive=int(bool(img.info.get("progressive") or img.info.get("progression"))),
                       subsampling=JpegImagePlugin.get_sampling(img) if img.format == "JPEG" else -1,
                       has_exif=int(len(exif) > 0), make=str(exif.get(0x010F, "")).strip("\x00 "),
                       software=str(exif.get(0x0131, "")).strip("\x00 "), has_icc=int("icc_profile" in img.info))
    except Exception as err:  # noqa: BLE001 - an unreadable file is a fact to report, not a crash
        row.update(format="unreadable", error=f"{type(err).__name__}: {err}")
    return row


def collect_metadata(paths: list[str], workers: int = 0) -> pd.DataFrame:
    """read_metadata for every file, in parallel, with a progress bar; derived numeric features added."""
    workers = workers or min(8, os.cpu_count() or 1)
    chunk = max(16, len(paths) // (workers * 16) or 1)
    with Pool(workers) as pool:
        rows = list(tqdm(pool.imap(read_metadata, paths, chunksize=chunk), total=len(paths),
                         desc="reading metadata", mininterval=2))
    meta = pd.DataFrame(rows)
    for col, default in (("width", np.nan), ("height", np.nan), ("jpeg_quality", np.nan), ("progressive", 0),
                         ("subsampling", -1), ("has_exif", 0), ("has_icc", 0), ("make", ""), ("software", ""),
                         ("mode", ""), ("error", "")):
        if col not in meta:
            meta[col] = default
    meta["aspect"] = meta["width"] / meta["height"]
    meta["bytes_per_pixel"] = meta["file_kb"] * 1024 / (meta["width"] * meta["height"])
    meta["has_make"] = (meta["make"].fillna("") != "").astype(int)
    meta["has_software"] = (meta["software"].fillna("") != "").astype(int)
    for fmt in ("jpeg", "png", "webp"):
        meta[f"is_{fmt}"] = (meta["format"].str.upper() == fmt.upper()).astype(int)
    meta["is_rgb"] = (meta["mode"] == "RGB").astype(int)
    return meta


def metadata_auc(meta: pd.DataFrame, label: np.ndarray, fold: np.ndarray) -> tuple[float, np.ndarray]:
    """Cross-validated AUC of a gradient-boosting classifier on metadata only (OOF over the folds)."""
    x = np.nan_to_num(meta[NUMERIC].to_numpy(dtype=np.float64), nan=-1.0)  # e.g. no JPEG quality for PNGs: -1
    oof = np.zeros(len(label))
    for k in np.unique(fold):
        held = fold == k
        model = HistGradientBoostingClassifier(max_iter=100, max_depth=4, random_state=0)
        oof[held] = model.fit(x[~held], label[~held]).predict_proba(x[held])[:, 1]
    return float(roc_auc_score(label, oof)), oof


def feature_aucs(meta: pd.DataFrame, label: np.ndarray) -> dict[str, float]:
    """Each feature alone as a classifier: AUC folded to >= 0.5 (how much of the label it carries)."""
    out = {}
    for col in NUMERIC:
        values = meta[col].to_numpy(dtype=np.float64)
        values = np.where(np.isnan(values), np.nanmin(values) - 1 if np.isfinite(values).any() else 0, values)
        if np.unique(values).size < 2:
            continue
        auc = roc_auc_score(label, values)
        out[col] = float(max(auc, 1 - auc))
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def summarize(meta: pd.DataFrame, label: np.ndarray) -> dict:
    """Per-class summary of every metadata field."""
    out = {}
    for cls in (0, 1):
        m = meta[label == cls]
        sizes = (m["width"].astype("Int64").astype(str) + "x" + m["height"].astype("Int64").astype(str))
        out[str(cls)] = {
            "n": int(len(m)),
            "format": m["format"].value_counts().to_dict(), "mode": m["mode"].value_counts().to_dict(),
            "top_sizes": sizes.value_counts().head(5).to_dict(),
            "width_median": float(m["width"].median()), "height_median": float(m["height"].median()),
            "file_kb_median": float(m["file_kb"].median()), "bytes_per_pixel_median": float(m["bytes_per_pixel"].median()),
            "jpeg_quality_median": float(m["jpeg_quality"].median()),
            "jpeg_quality_top": m["jpeg_quality"].value_counts().head(3).to_dict(),
            "progressive_share": float(m["progressive"].mean()),
            "subsampling": m["subsampling"].value_counts().to_dict(),
            "exif_share": float(m["has_exif"].mean()), "icc_share": float(m["has_icc"].mean()),
            "make_top": m["make"].replace("", np.nan).dropna().value_counts().head(3).to_dict(),
            "software_top": m["software"].replace("", np.nan).dropna().value_counts().head(3).to_dict(),
            "unreadable": int((m["format"] == "unreadable").sum()),
        }
    return out


def audit(train: pd.DataFrame, fold: np.ndarray | None = None, threshold: float = THRESHOLD) -> dict:
    """Audit a training table (`path`, `label`): per-class metadata, metadata-model AUC, verdict."""
    label = train["label"].to_numpy(int)
    if fold is None:
        fold = np.zeros(len(label), int)
        for k, (_, idx) in enumerate(StratifiedKFold(5, shuffle=True, random_state=0).split(label, label)):
            fold[idx] = k
    meta = collect_metadata(train["path"].tolist())
    auc, _ = metadata_auc(meta, label, fold)
    features = feature_aucs(meta, label)
    cues = [f for f, a in features.items() if a >= threshold][:5] or list(features)[:3]
    leak = auc > threshold
    verdict = (f"SHORTCUT: metadata alone predicts the label with AUC {auc:.3f} (> {threshold}); top cues: "
               f"{', '.join(f'{c} ({features[c]:.3f})' for c in cues)}. Remedy: {REMEDY}"
               if leak else f"OK: metadata-only AUC {auc:.3f} <= {threshold}; no file-level shortcut found")
    return {"n_images": len(train), "metadata_auc": auc, "threshold": threshold, "leak": leak, "verdict": verdict,
            "feature_auc": features, "per_class": summarize(meta, label)}


def render(report: dict, title: str) -> str:
    """The audit as markdown."""
    lines = [f"# Shortcut audit: {title}", "", f"**{report['verdict']}**", "",
             f"{report['n_images']} images. Metadata-only classifier (gradient boosting on the features below, "
             f"cross-validated on the folds): AUC **{report['metadata_auc']:.4f}** (warning above "
             f"{report['threshold']}).", "", "## Single-feature AUC (0.5 = carries nothing)", "",
             "| feature | AUC |", "|---|---|"]
    lines += [f"| {f} | {a:.4f} |" for f, a in report["feature_auc"].items()]
    lines += ["", "## Per class (0 = human, 1 = AI)", "", "| field | class 0 | class 1 |", "|---|---|---|"]
    c0, c1 = report["per_class"]["0"], report["per_class"]["1"]
    for key in c0:
        lines.append(f"| {key} | {c0[key]} | {c1[key]} |")
    return "\n".join(lines) + "\n"


def write_report(report: dict, out_dir: Path, stem: str) -> Path:
    """Write <stem>_audit.md and .json; log the verdict (a warning when it flags a leak)."""
    md = out_dir / f"{stem}_audit.md"
    write_text(md, render(report, stem))
    write_json(out_dir / f"{stem}_audit.json", report)
    (log.warning if report["leak"] else log.info)("audit %s: %s", md, report["verdict"])
    return md


def audit_folds(train: pd.DataFrame, folds: pd.DataFrame, folds_path: Path, threshold: float = THRESHOLD) -> dict:
    """Audit a training table on a folds file's split; the report goes beside the folds file."""
    fold = folds.set_index("id").loc[train["id"], "fold"].to_numpy()
    report = audit(train, fold, threshold)
    write_report(report, folds_path.parent, folds_path.stem)
    return report


def _folds_of(train: pd.DataFrame, path: Path) -> pd.DataFrame | None:
    """The folds file's split when it exists and covers this table, else None (the audit makes its own)."""
    if not path.is_file():
        return None
    folds = pd.read_csv(path, dtype={"id": str}, keep_default_na=False)
    return folds if {"id", "fold"} <= set(folds.columns) and set(folds["id"]) == set(train["id"]) else None


def data_and_overrides(words: list[str], project: Project, shift: bool = False) -> tuple[str, list[str]]:
    """(data folder or '', overrides) of audit's words in any order: a key=value word is an override, any other the
    data folder - one that exists; a word that is neither is refused naming both possibilities."""
    words = [w for w in words if w]
    folders = [w for w in words if not is_override(w)]
    found = []
    for word in folders:
        try:
            found.append(user_path(word, project, "data folder", kind="dir"))
        except PathNotFound as err:
            if "=" in word:
                raise override_error(word) from None
            raise PathNotFound(f"audit {word!r}: neither a data folder ({err}) nor a section.key=value override "
                               "(e.g. competition.train_csv=t.csv)") from None
    if len(folders) > 1:
        raise ConfigError(f"audit takes one data folder, got {', '.join(map(repr, folders))}: audit them one at a "
                          "time (`./run.sh audit FOLDER`)")
    if shift:
        where = f" competition.data_dir={found[0]}" if found else ""
        raise ConfigError(f"the shift check is its own command: `./run.sh audit --shift{where}` (python -m "
                          f"competition.shift{where}); it compares the competition's train and test sets")
    return (folders[0] if folders else ""), [w for w in words if w not in folders]


def main(argv: list[str] | None = None, project: Project | None = None) -> int:
    """CLI entry point: exit 0 when no shortcut is found, 1 when one is, 2 on bad input."""
    parser = cli.parser(__doc__)
    parser.add_argument("data", nargs="?", default="", help="data folder with train.csv (default: competition.yaml)")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. competition.train_csv=t.csv")
    parser.add_argument("--out", default=None, help="report folder (default: folds/)")
    parser.add_argument("--force", action="store_true", help="let --out replace report files audit did not write")
    parser.add_argument("--threshold", type=options.number(float, ge=0.5, lt=1.0, unit="AUC"), default=THRESHOLD,
                        help="warn when metadata alone predicts the label with an AUC above this")
    parser.add_argument("--shift", action="store_true",
                        help="the train-vs-test shift check instead: `./run.sh audit --shift` runs competition.shift")
    args = parser.parse_args(argv)

    def body() -> int:
        nonlocal project
        project = project or Project.from_env()  # inside cli.run: a bad KIT_HOME is one ERROR line
        args.data, args.overrides = data_and_overrides([args.data, *args.overrides], project, args.shift)
        cfg = load_config("", args.overrides, project, check_model=False)
        comp, stem, folds = cfg.competition, project.folds_file(cfg).stem, None
        if args.data:
            data = user_path(args.data, project, "data folder", kind="dir")
            comp = CompetitionConfig(name=data.name, data_dir=str(data), path_column=comp.path_column,
                                     label_column=comp.label_column)
            stem = data.name
        out = project.folds
        if args.out:
            out = outputs.check_folder(project, output_path(args.out, "--out"), "audit",
                                       also=(Path(project.resolve(comp.data_dir)),))
            for file in (out / f"{stem}_audit.md", out / f"{stem}_audit.json"):
                outputs.check_target(project, file, "audit", args.force)
        train = load_train_table(comp, project)
        if not args.data:
            folds = _folds_of(train, project.folds_file(cfg))
        fold = folds.set_index("id").loc[train["id"], "fold"].to_numpy() if folds is not None else None
        report = audit(train, fold, args.threshold)
        write_report(report, out, stem)
        if args.out:
            for file in (out / f"{stem}_audit.md", out / f"{stem}_audit.json"):
                outputs.record(project, file, "audit")
        print(report["verdict"])  # noqa: T201 - the CLI's answer
        return 1 if report["leak"] else 0

    return cli.run(body)


if __name__ == "__main__":
    sys.exit(main())
