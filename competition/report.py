"""Per-experiment report: experiments/<exp>/report.html (self-contained) and report/*.png.

    python -m competition.report exp001          # also written after every run

Curves per fold (loss, validation metric), ROC and precision-recall on OOF, confusion matrix at the
chosen threshold, score histogram per class, class balance, and the most confidently wrong images
of each kind with Grad-CAM overlays (when the backbone allows).
"""

from __future__ import annotations

import base64
import html
import logging
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay, PrecisionRecallDisplay, RocCurveDisplay  # noqa: E402

from competition import cli  # noqa: E402
from competition.atomic import atomic_path, write_text  # noqa: E402
from competition.config import require_experiment  # noqa: E402
from competition.decode import BadImageError, decode_image  # noqa: E402
from competition.errors import ConfigError, KitError  # noqa: E402
from competition.explain import GradCamUnsupported, eval_crop, explain_images  # noqa: E402
from competition.inference import load_experiment  # noqa: E402
from competition.leaderboard import read_json  # noqa: E402
from competition.metrics import THRESHOLD_METRICS  # noqa: E402
from competition.project import Project  # noqa: E402
from competition.tables import data_dir  # noqa: E402

log = logging.getLogger(__name__)

N_WRONG = 8  # confidently wrong images shown per kind


def _save(fig, path: Path) -> Path:
    """Save a figure as PNG atomically and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_curves(out: Path, metric: str) -> plt.Figure:
    """Train/validation loss and validation metric per epoch, one line per fold."""
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(11, 4))
    for log_file in sorted(out.glob("fold*/log.csv")):
        hist = pd.read_csv(log_file)
        fold = log_file.parent.name
        line, = ax_loss.plot(hist["epoch"], hist["train_loss"], "-o", label=f"{fold} train")
        ax_loss.plot(hist["epoch"], hist["val_loss"], "--s", color=line.get_color(), label=f"{fold} val")
        ax_metric.plot(hist["epoch"], hist["val_score"], "-o", label=fold)
    ax_loss.set(title="loss per epoch", xlabel="epoch", ylabel="BCE")
    ax_metric.set(title=f"validation {metric} per epoch", xlabel="epoch", ylabel=metric)
    ax_loss.legend(fontsize=7)
    ax_metric.legend(fontsize=7)
    return fig


def plot_oof(oof: pd.DataFrame, threshold: float) -> dict[str, plt.Figure]:
    """ROC, precision-recall, confusion matrix, per-class score histogram and class balance."""
    y, p = oof["target"].to_numpy(), oof["prob"].to_numpy()
    figs = {}
    fig, ax = plt.subplots(figsize=(5, 4.5))
    RocCurveDisplay.from_predictions(y, p, ax=ax, name="OOF")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set_title("ROC (out-of-fold)")
    figs["roc"] = fig
    fig, ax = plt.subplots(figsize=(5, 4.5))
    PrecisionRecallDisplay.from_predictions(y, p, ax=ax, name="OOF")
    ax.set_title("precision-recall (out-of-fold, AI = positive)")
    figs["pr"] = fig
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ConfusionMatrixDisplay.from_predictions(y, (p >= threshold).astype(int), display_labels=["human", "AI"], ax=ax,
                                            colorbar=False)
    ax.set_title(f"confusion at threshold {threshold:.3f}")
    figs["confusion"] = fig
    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.linspace(0, 1, 41)
    ax.hist(p[y == 0], bins=bins, alpha=0.6, label="human (0)")
    ax.hist(p[y == 1], bins=bins, alpha=0.6, label="AI (1)")
    ax.axvline(threshold, color="k", ls="--", lw=1)
    ax.set(yscale="log", title="OOF probability per class", xlabel="P(AI)", ylabel="images")
    ax.legend()
    figs["histogram"] = fig
    fig, ax = plt.subplots(figsize=(6, 3.5))
    counts = oof.groupby(["fold", "target"]).size().unstack(fill_value=0)
    counts.plot.bar(ax=ax, stacked=True)
    ax.set(title="class balance per fold", xlabel="fold", ylabel="images")
    ax.legend(["human (0)", "AI (1)"])
    figs["balance"] = fig
    return figs


def confidently_wrong(oof: pd.DataFrame, threshold: float, n: int = N_WRONG) -> dict[str, pd.DataFrame]:
    """The most confident false positives (human called AI) and false negatives (AI called human)."""
    fp = oof[(oof["target"] == 0) & (oof["prob"] >= threshold)].nlargest(n, "prob")
    fn = oof[(oof["target"] == 1) & (oof["prob"] < threshold)].nsmallest(n, "prob")
    return {"false positives (human images called AI)": fp, "false negatives (AI images called human)": fn}


def plot_wrong(project: Project, name: str, wrong: dict[str, pd.DataFrame]) -> plt.Figure | None:
    """Grids of confidently wrong images with their fold-averaged Grad-CAM overlays."""
    if not any(len(frame) for frame in wrong.values()):
        return None
    exp = load_experiment(project, name, torch.device("cpu"))
    models = [m.to(memory_format=torch.contiguous_format) for m in exp.models]
    root = data_dir(exp.cfg.competition, project)
    fig, axes = plt.subplots(len(wrong) * 2, N_WRONG, figsize=(N_WRONG * 1.6, len(wrong) * 3.8), squeeze=False,
                             gridspec_kw={"hspace": 0.35})
    for ax in axes.flat:
        ax.axis("off")
    for k, (kind, frame) in enumerate(wrong.items()):
        images = [_crop_or_blank(exp.cfg, root / r.id) for r in frame.itertuples()]
        try:
            overlays = explain_images(models, images)[0] if images else []
        except GradCamUnsupported as err:
            log.info("%s", err)
            overlays = images
        for j, (r, im, ov) in enumerate(zip(frame.itertuples(), images, overlays)):
            axes[2 * k, j].imshow(im, interpolation="nearest")
            axes[2 * k, j].set_title(f"p={r.prob:.3f}", fontsize=8)
            axes[2 * k + 1, j].imshow(ov, interpolation="nearest")
        axes[2 * k, 0].text(0, 1.3, kind, transform=axes[2 * k, 0].transAxes, fontsize=10, weight="bold")
    fig.suptitle("most confidently wrong OOF images (top: image, bottom: Grad-CAM)", y=1.0)
    return fig


def _crop_or_blank(cfg, path: Path) -> np.ndarray:
    """The eval crop of an image, or a black square when it cannot be decoded."""
    try:
        return eval_crop(cfg, decode_image(str(path)))
    except BadImageError:
        return np.zeros((cfg.data.img_size, cfg.data.img_size, 3), np.uint8)


def _embed(path: Path) -> str:
    """An <img> tag with the PNG inlined as base64."""
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(path.stem)}">'


def write_report(project: Project, name: str) -> Path:
    """Write every plot of an experiment to <exp>/report/*.png and a self-contained <exp>/report.html."""
    out = project.experiment_dir(name)
    if not (out / "metrics.json").is_file() or not (out / "oof.csv").is_file():
        require_experiment(name, project)  # a name with neither outputs nor a YAML: say which exist
        raise ConfigError(f"{out}: no metrics.json/oof.csv - run `./run.sh {name}` first")
    metrics = read_json(out / "metrics.json")
    if metrics is None:
        raise ConfigError(f"{out / 'metrics.json'}: unreadable - rerun `./run.sh {name}` to rewrite it")
    oof = pd.read_csv(out / "oof.csv", dtype={"id": str})
    threshold = float(metrics.get("threshold", 0.5))
    pngs = {"curves": _save(plot_curves(out, metrics["metric"]), out / "report" / "curves.png")}
    for key, fig in plot_oof(oof, threshold).items():
        pngs[key] = _save(fig, out / "report" / f"{key}.png")
    try:
        fig = plot_wrong(project, name, confidently_wrong(oof, threshold))
        if fig is not None:
            pngs["wrong"] = _save(fig, out / "report" / "confidently_wrong.png")
    except (KitError, FileNotFoundError) as err:
        log.warning("no confidently-wrong grid: %s", err)
    folds = "".join(f"<tr><td>{f['fold']}</td><td>{f['score']:.5f}</td><td>{f['score_identity']:.5f}</td>"
                    f"<td>{f['best_epoch']}</td><td>{f['epochs_run']}</td></tr>" for f in metrics["folds"])
    at_half = ", at threshold 0.5" if metrics["metric"] in THRESHOLD_METRICS else ""
    body = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(name)} report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}img{{max-width:100%;margin:.5em 0}}
td,th{{padding:2px 10px;border-bottom:1px solid #ddd}}</style></head><body>
<h1>{html.escape(name)}: {html.escape(metrics['model'])}</h1>
<p>{html.escape(metrics.get('description', ''))}</p>
<p>OOF {html.escape(metrics.get('score_note', metrics['metric']))}: <b>{metrics['oof_score']:.5f}</b> (fold mean {metrics['fold_mean']:.5f} &plusmn;
{metrics['fold_std']:.5f}); AUC {metrics['oof']['auc']:.5f}, accuracy {metrics['oof']['accuracy']:.4f},
log loss {metrics['oof']['logloss']:.4f}; TTA ({metrics['tta']['views']}) gain {metrics['tta']['gain']:+.5f};
threshold {threshold:.3f}; wall time {metrics['wall_s'] / 60:.1f} min.</p>
<table><tr><th>fold</th><th>score (TTA{at_half})</th><th>score (identity{at_half})</th><th>best epoch</th><th>epochs run</th></tr>
{folds}</table>
{''.join(f'<h2>{html.escape(k)}</h2>' + _embed(p) for k, p in pngs.items())}
</body></html>"""
    report = out / "report.html"
    write_text(report, body)
    log.info("report: %s (%d figures)", report, len(pngs))
    return report


def main(argv: list[str] | None = None, project: Project | None = None) -> int:
    """CLI entry point."""
    parser = cli.parser(__doc__)
    parser.add_argument("experiment")
    args = parser.parse_args(argv)

    def body() -> int:
        nonlocal project
        project = project or Project.from_env()  # inside cli.run: a bad KIT_HOME is one ERROR line
        print(write_report(project, args.experiment))  # noqa: T201
        return 0

    return cli.run(body)


if __name__ == "__main__":
    sys.exit(main())
