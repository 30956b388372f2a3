"""A labelled encoding-shift benchmark: how far the OOF score is from the score on test images encoded differently,
whether OOF test-like (competition.test_encoding) predicts it, and how much each remedy gives back.

    cd benchmarks
    export PYTHONPATH=.. MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=4294967296   # as run.sh sets
    ../.venv/bin/python shift.py /tmp/shift            # full: 2,000 CIFAKE images, 2 folds, mobilenetv3 x2, 2 epochs
    ../.venv/bin/python shift.py /tmp/shift_q --quick  # 3 min: 160 images, 2 folds, 1 epoch, 1 shift (the test's)
    ../.venv/bin/python shift.py /tmp/shift_replica --data /tmp/replica --retrain largest   # large images

--data DIR takes a Kaggle-layout folder instead of CIFAKE (train.csv file_name,label; test.csv id), such as the
replica (make_replica.py). Its defaults suit large images: 600 training images drawn as whole scenes (scenes.csv,
the replica's twin truth, becomes the copies' train.csv `scene` column and folds.group_column, so twins never
cross folds; the source competition.yaml's folds settings are copied too), 128 px native crops of the `forensic`
preset, no upscale, batch 16, and test images drawn from training rows of held-out scenes (--test-from train):
the replica's own test set is already re-encoded, so the "clean" copy would not be clean. --retrain largest
trains match_test and pseudo on the shift with the largest base drop, once every shift is scored.

A CIFAKE subset is the training set of one "clean" competition copy (test images as they come), where the base
experiment is trained once. For each shift S (JPEG q60-75 / q70, WebP, 0.5x / 0.75x resize, 0.75x + JPEG q65),
a competition copy with the same training rows whose test images are the test set re-encoded by S; the test
profile is measured from those files (competition.test_encoding.test_profile). Then, per remedy:
- clean OOF: the fold models' plain OOF score (validation rows as they are);
- true shifted: the same fold models on their validation rows re-encoded by S (another seed than the test's),
  scored with the labels: the score the test set would give;
- OOF test-like: the fold models on their validation rows re-encoded like the measured test profile (as they are
  when the kit finds the test encoded like train; "encoder forced on" re-encodes them like the profile anyway).
Remedies: none; adapt_bn (BatchNorm statistics re-estimated on S's test images, competition.adapt; test-like:
on the re-encoded validation rows); match_test (trained with data.match_test); pseudo (trained with pseudo.teacher
= the base experiment's predictions of S's test images); and those with adapt_bn. Eval-only remedies reuse the
base fold models; the base experiment is copied into each shift's competition and only its predictions are
recomputed (train_fold resumes after its last epoch). Retraining remedies run on --retrain shifts only.
Recovered = (shifted(remedy) - shifted(none)) / (clean(none) - shifted(none)). Prints a table per metric and saves
everything to <folder>/shift.json.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
import pandas as pd
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CIFAKE, SHARED, table  # noqa: E402 - common puts the repository on the path
from competition.adapt import adapt_batchnorm  # noqa: E402
from competition.atomic import write_json  # noqa: E402
from competition.config import DataConfig, load_config  # noqa: E402
from competition.decode import decode_image, reencode  # noqa: E402
from competition.folds import load_tables  # noqa: E402
from competition.inference import eval_dataset, predict_dataset  # noqa: E402
from competition.metrics import score  # noqa: E402
from competition.model import load_detector  # noqa: E402
from competition.project import Project  # noqa: E402
from competition.test_encoding import resize_image, test_like_dataset, test_profile  # noqa: E402

log = logging.getLogger("shift")
WEIGHTS = SHARED / "weights"
TEST_SEED, VAL_SEED = 1, 2  # S re-encodes the test and the validation rows with other draws (test-like: train.seed)


@dataclass(frozen=True)
class Shift:
    """A re-encoding: resize by `scale`, then `fmt` at a quality drawn from [q_lo, q_hi]."""

    name: str
    scale: float = 1.0
    fmt: str = "JPEG"
    q_lo: int = 75
    q_hi: int = 75

    def apply(self, image: np.ndarray, rng: np.random.Generator, tools: str = "other") -> bytes:
        """The bytes of the re-encoded image. tools "kit": the resizer and encoder the kit's test-like encoder uses
        by default (competition.test_encoding.resize_image with data.test_like_resize's default, Pillow's encoders),
        so a fixed shift is imitated bit for bit; "other" (default): Pillow's Lanczos resize and OpenCV's encoders
        (libjpeg-turbo, libwebp through cv2), as a test set made elsewhere would be. (Until 2026-12-01 the kit, and
        so "kit", resized with OpenCV INTER_AREA.)"""
        quality = int(rng.integers(self.q_lo, self.q_hi + 1))
        size = lambda h, w: (max(1, round(w * self.scale)), max(1, round(h * self.scale)))  # noqa: E731
        if tools == "kit":
            image = resize_image(image, self.scale, DataConfig.test_like_resize)
            return reencode(np.ascontiguousarray(image), {"format": self.fmt, "quality": quality})
        if self.scale != 1.0:
            image = np.asarray(Image.fromarray(image).resize(size(*image.shape[:2]), Image.LANCZOS))
        flag = cv2.IMWRITE_WEBP_QUALITY if self.fmt == "WEBP" else cv2.IMWRITE_JPEG_QUALITY
        ok, buf = cv2.imencode(self.ext, cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR), [flag, quality])
        if not ok:
            raise RuntimeError(f"cv2 could not encode {self.fmt}")
        return buf.tobytes()

    @property
    def ext(self) -> str:
        return ".webp" if self.fmt == "WEBP" else ".jpg"


SHIFTS = {s.name: s for s in (Shift("jpeg60-75", q_lo=60), Shift("jpeg70", q_lo=70, q_hi=70),
                              Shift("webp80", fmt="WEBP", q_lo=80, q_hi=80), Shift("resize0.5", 0.5),
                              Shift("resize0.75", 0.75), Shift("resize0.75+jpeg65", 0.75, q_lo=65, q_hi=65))}


@dataclass(frozen=True)
class Plan:
    """Sizes of one benchmark run."""

    n_train: int
    n_test: int
    folds: int
    epochs: int
    model: str
    upscale: int
    shifts: tuple[str, ...]
    retrain: tuple[str, ...]
    tools: str = "other"  # how the true shift is made: "other" tools than the kit's test-like encoder, or "kit"
    data: str = ""  # source competition folder (Kaggle layout: train.csv file_name,label; test.csv id); "" = CIFAKE
    img_size: int = 32  # data.img_size of the experiments (native crops with the forensic preset)
    augment: str = "forensic"  # data.augment preset of the experiments
    test_from: str = "test"  # "test": the source's test images; "train": training rows of held-out groups (as
    # encoded as train, so the clean copy has no shift of its own: the replica's test set is already re-encoded)
    group_column: str = ""  # a train.csv column of the copies (from the source's scenes.csv) that folds group by
    batch_size: int = 64  # train.batch_size (--data: 16, so 300 images a fold still make ~19 steps an epoch)


FULL = Plan(2000, 1000, 2, 2, "tf_mobilenetv3_small_100", 2, tuple(SHIFTS), ("jpeg70", "resize0.75+jpeg65"))
QUICK = Plan(160, 80, 2, 1, "tf_mobilenetv3_small_100", 1, ("resize0.75+jpeg65",), ("resize0.75+jpeg65",))
# --data defaults (large images: native 128 px crops, whole scenes, test images encoded like train)
LARGE = {"n_train": 600, "n_test": 200, "upscale": 1, "img_size": 128, "test_from": "train", "batch_size": 16}


def source_dir(plan: Plan) -> Path:
    """The folder the benchmark's images come from: --data, or CIFAKE."""
    return Path(plan.data) if plan.data else CIFAKE


def sample_data(plan: Plan) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The (train, test) rows of the run: the CIFAKE subset, or a grouped subset of the --data folder."""
    return sample_folder(plan) if plan.data else sample_cifake(plan)


def read_source_train(src: Path) -> pd.DataFrame:
    """src/train.csv as file_name, label (+ scene from src/scenes.csv when it has one: the twins' truth)."""
    train = pd.read_csv(src / "train.csv")
    train = train.loc[:, [c for c in train.columns if not str(c).startswith("Unnamed")]]
    scenes = src / "scenes.csv"
    if scenes.is_file():
        truth = pd.read_csv(scenes).set_index("file_name")["scene"]
        train["scene"] = train["file_name"].map(truth)
        if train["scene"].isna().any():
            raise SystemExit(f"{scenes}: {int(train['scene'].isna().sum())} training images have no scene")
        train["scene"] = train["scene"].astype(int)
    return train


def sample_folder(plan: Plan) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Seeded whole groups (scenes; single images without scenes.csv) until n_train rows; the test rows: n_test
    of the source's test.csv, or (test_from "train") n_test training rows of groups left out of the subset."""
    src = source_dir(plan)
    train = read_source_train(src)
    groups = train["scene"] if "scene" in train.columns else pd.Series(range(len(train)), index=train.index)
    order = groups.drop_duplicates().sample(frac=1, random_state=0).tolist()
    sizes = groups.value_counts()
    cum = sizes.reindex(order).cumsum()
    chosen = set(cum.index[: int((cum < plan.n_train).sum()) + 1])
    inside = groups.isin(chosen)
    sub = train[inside].sample(frac=1, random_state=0).reset_index(drop=True)
    if plan.test_from == "train":
        rest = train[~inside]
        test = pd.DataFrame({"id": rest["file_name"]}).sample(min(plan.n_test, len(rest)), random_state=0)
    else:
        test = pd.read_csv(src / "test.csv")[["id"]].sample(plan.n_test, random_state=0)
    log.info("%s: %d train rows (%d groups, %d AI), %d test rows (from its %s set)", src, len(sub), len(chosen),
             int(sub["label"].sum()), len(test), plan.test_from)
    return sub, test.reset_index(drop=True)


def sample_cifake(plan: Plan) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A class-balanced seeded subset of CIFAKE's training rows and a seeded subset of its test rows."""
    train = pd.read_csv(CIFAKE / "train.csv", index_col=0)
    train = pd.concat([train[train["label"] == k].sample(plan.n_train // 2, random_state=0) for k in (0, 1)])
    test = pd.read_csv(CIFAKE / "test.csv", index_col=0).sample(plan.n_test, random_state=0)
    return train.sample(frac=1, random_state=0).reset_index(drop=True), test.reset_index(drop=True)


def write_shifted(src: Path, dst: Path, shift: Shift, seed: int, key: str, tools: str = "other") -> None:
    """dst: the image src re-encoded by `shift` (one quality draw per (seed, file))."""
    rng = np.random.default_rng([seed, int.from_bytes(key.encode()[-8:].ljust(8, b"0"), "little") % 2**32])
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(shift.apply(decode_image(src), rng, tools))


def experiment_yaml(plan: Plan, home: Path, **extra: dict) -> dict:
    """The benchmark's experiment: exp001's recipe, smaller (plan's model, epochs)."""
    cfg = {"model": {"name": plan.model, "input_upscale": plan.upscale, "weights_dir": str(WEIGHTS)},
           "data": {"img_size": plan.img_size, "augment": plan.augment, "cache_dir": str(home / ".cache")},
           "train": {"epochs": plan.epochs, "batch_size": plan.batch_size, "lr": 2.0e-3, "warmup_epochs": 0.3,
                     "threads": 2},
           "tta": {"views": "hflip"}}
    for section, values in extra.items():
        cfg.setdefault(section, {}).update(values)
    return cfg


def make_competition(home: Path, plan: Plan, train: pd.DataFrame, test: pd.DataFrame, shift: Shift | None) -> Path:
    """A Kaggle-layout competition copy in home: the training images as they are, the test images re-encoded by
    `shift` (as they are when None), competition.yaml and the experiments (base, match, pseudo)."""
    data, src = home / "data", source_dir(plan)
    for rel in train["file_name"]:
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / rel, data / rel)
    ids = []
    for rel in test["id"]:
        out = rel if shift is None else str(Path(rel).with_suffix(shift.ext))
        if shift is None:
            (data / out).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / rel, data / out)
        else:
            write_shifted(src / rel, data / out, shift, TEST_SEED, rel, plan.tools)
        ids.append(out)
    train.to_csv(data / "train.csv")
    pd.DataFrame({"id": ids}).to_csv(data / "test.csv")
    pd.DataFrame({"id": ids, "label": 0}).to_csv(data / "sample_submission.csv", index=False)
    dump = lambda path, obj: path.write_text(yaml.safe_dump(obj, sort_keys=False))  # noqa: E731
    dump(home / "competition.yaml", {"competition": {"name": "shiftbench", "data_dir": str(data), "metric": "auc"},
                                     "folds": folds_settings(plan),
                                     "model": {"weights_dir": str(WEIGHTS)}})
    (home / "experiments").mkdir(exist_ok=True)
    dump(home / "experiments" / "base.yaml", experiment_yaml(plan, home))
    dump(home / "experiments" / "match.yaml", experiment_yaml(plan, home, data={"match_test": 0.5}))
    dump(home / "experiments" / "pseudo.yaml", experiment_yaml(plan, home, pseudo={"teacher": "base", "threshold": 0.95}))
    return home


def folds_settings(plan: Plan) -> dict:
    """The copies' folds section: the plan's split, the source competition.yaml's folds settings (grouping) and
    folds.group_column when the plan groups by a column (the replica's scenes: twins never cross folds)."""
    settings = {"n_splits": plan.folds, "seed": 0}
    source_yaml = source_dir(plan) / "competition.yaml"
    if plan.data and source_yaml.is_file():
        settings.update((yaml.safe_load(source_yaml.read_text()) or {}).get("folds") or {})
    if plan.group_column:
        settings["group_column"] = plan.group_column
    return {**settings, "n_splits": plan.folds, "seed": 0, "shift_check": False}


def run_kit(home: Path, name: str) -> None:
    """`./run.sh <name>` in this process against the project `home` (no report.html: matplotlib is not measured)."""
    from competition import experiment, report

    report.write_report = lambda project, exp: None
    code = experiment.main([name], project=Project(home))
    if code != 0:
        raise SystemExit(f"{home}: experiment {name} failed (exit {code})")


def repredict_base(clean: Path, home: Path) -> None:
    """The clean base experiment's fold models in `home`'s competition: its predictions are recomputed there (test
    predictions of S's test images, the pseudo teacher) without retraining: train_fold resumes after its last epoch."""
    src, dst = clean / "experiments" / "base", home / "experiments" / "base"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".lock", "report*"))
    for name in ("inputs.json", "metrics.json", "oof.csv", "test.csv", "wall_s.json"):
        (dst / name).unlink(missing_ok=True)
    for fold_dir in dst.glob("fold*"):
        for name in ("oof.csv", "test.csv", "result.json"):
            (fold_dir / name).unlink(missing_ok=True)
    text = (dst / "config.yaml").read_text().replace(str(clean), str(home))
    (dst / "config.yaml").write_text(text)
    run_kit(home, "base")


def shifted_validation(root: Path, train: pd.DataFrame, shift: Shift, tools: str = "other",
                       src: Path = CIFAKE) -> dict[str, str]:
    """Every training image (under src) re-encoded by `shift` with the validation seed (root/val_<S>/): id -> path."""
    out = {}
    for rel in train["file_name"]:
        dst = root / f"val_{shift.name}" / Path(rel).with_suffix(shift.ext).name
        if not dst.is_file():
            write_shifted(src / rel, dst, shift, VAL_SEED, rel, tools)
        out[rel] = str(dst)
    return out


def fold_predictions(home: Path, name: str, shifted: dict[str, str], profile: dict) -> pd.DataFrame:
    """One experiment's OOF rows with: plain (its oof.csv), test_like and shifted (its fold models on the rows
    re-encoded like the measured profile / by the true shift), and both again after BatchNorm adaptation (on the
    re-encoded rows for test-like, on the competition's shifted test images for shifted)."""
    cfg = load_config(name, [], Project(home))
    train, test = load_tables(cfg, Project(home), "fold")
    paths = dict(zip(train["id"], train["path"]))
    device, frames = torch.device("cpu"), []
    adapt_on = eval_dataset(cfg, test["path"].tolist(), tta=False)
    for fold_dir in sorted(p for p in (home / "experiments" / name).glob("fold*") if p.is_dir()):
        oof = pd.read_csv(fold_dir / "oof.csv", dtype={"id": str}, keep_default_na=False)
        ids, prior = oof["id"].tolist(), float(train.loc[train["fold"] != oof["fold"].iloc[0], "label"].mean())
        model = load_detector(fold_dir / "best.pt", device, Project(home))
        like = test_like_dataset(cfg, [paths[i] for i in ids], ids, profile, cfg.train.seed)
        true = eval_dataset(cfg, [shifted[i] for i in ids])
        forced = like if profile["shifted"] else test_like_dataset(cfg, [paths[i] for i in ids], ids,
                                                                   {**profile, "shifted": True}, cfg.train.seed)
        adapted_like = adapt_batchnorm(model, like, cfg, device, f"{fold_dir.name} adapt test-like")
        adapted_test = adapt_batchnorm(model, adapt_on, cfg, device, f"{fold_dir.name} adapt test")
        run = lambda m, ds: predict_dataset(m, ds, cfg, device, prior, fold_dir.name).prob  # noqa: E731
        frames.append(pd.DataFrame({"id": ids, "target": oof["target"], "plain": oof["prob"],
                                    "test_like": run(model, like), "shifted": run(model, true),
                                    "test_like_forced": run(model, forced),
                                    "test_like_bn": run(adapted_like, like), "shifted_bn": run(adapted_test, true)}))
    return pd.concat(frames, ignore_index=True)


REMEDIES = {"none": ("base", ""), "adapt_bn": ("base", "_bn"), "match_test": ("match", ""),
            "match_test+adapt_bn": ("match", "_bn"), "pseudo": ("pseudo", ""), "pseudo+adapt_bn": ("pseudo", "_bn")}


def remedy_rows(shift: str, preds: dict[str, pd.DataFrame], metric: str = "auc") -> list[dict]:
    """Scores per remedy of one shift: clean OOF, true shifted, recovered share of the drop, OOF test-like and
    the two estimate errors."""
    auc = lambda frame, col: score(metric, frame["target"].to_numpy(), frame[col].to_numpy(float))  # noqa: E731
    base = preds["base"]
    clean0, shifted0 = auc(base, "plain"), auc(base, "shifted")
    rows = []
    for remedy, (exp, suffix) in REMEDIES.items():
        if exp not in preds:
            continue
        frame = preds[exp]
        clean, shifted, like = auc(frame, "plain"), auc(frame, "shifted" + suffix), auc(frame, "test_like" + suffix)
        forced = auc(frame, "test_like_forced") if not suffix else float("nan")
        drop = clean0 - shifted0
        rows.append({"shift": shift, "remedy": remedy, "clean_oof": clean, "true_shifted": shifted,
                     "drop": clean - shifted, "recovered": (shifted - shifted0) / drop if drop > 0 else float("nan"),
                     "oof_test_like": like, "test_like_error": abs(like - shifted), "plain_error": abs(clean - shifted),
                     "oof_test_like_forced": forced, "forced_error": abs(forced - shifted)})
    return rows


def run_shift(root: Path, plan: Plan, shift: Shift, train: pd.DataFrame, test: pd.DataFrame) -> list[dict]:
    """One shift: its competition copy, the base predictions recomputed there, the retraining remedies (on
    --retrain shifts), every experiment's OOF / test-like / true shifted predictions, the remedy rows."""
    home = make_competition(root / shift.name, plan, train, test, shift)
    repredict_base(root / "clean", home)
    return evaluate_shift(root, plan, shift, train, retrain=shift.name in plan.retrain)


def evaluate_shift(root: Path, plan: Plan, shift: Shift, train: pd.DataFrame, retrain: bool) -> list[dict]:
    """The remedy rows of a shift whose competition copy root/<S> holds the base run: match and pseudo are
    trained first when `retrain`; every experiment's OOF / test-like / true shifted predictions are scored."""
    home = root / shift.name
    names = ["base"] + (["match", "pseudo"] if retrain else [])
    for name in names[1:]:
        t0 = time.perf_counter()
        run_kit(home, name)
        log.info("%s: %s trained in %.0f s", shift.name, name, time.perf_counter() - t0)
    cfg = load_config("base", [], Project(home))
    profile = test_profile(cfg, Project(home), *load_tables(cfg, Project(home), "fold"))
    log.info("%s: measured test profile %s", shift.name, profile["summary"])
    shifted = shifted_validation(root, train, shift, plan.tools, source_dir(plan))
    preds = {name: fold_predictions(home, name, shifted, profile) for name in names}
    rows = remedy_rows(shift.name, preds)
    for row in rows:
        row["profile"] = {k: profile["summary"].get(k) for k in ("formats", "jpeg_quality_median", "scale", "shifted")}
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="working folder (competition copies, experiments, shift.json)")
    parser.add_argument("--quick", action="store_true", help="a tiny run (the test's): 160 images, 1 epoch, 1 shift")
    parser.add_argument("--shifts", default="", help=f"comma-separated subset of {', '.join(SHIFTS)}")
    parser.add_argument("--retrain", default=None, help="shifts where match_test and pseudo are trained "
                                                        "(default: jpeg70,resize0.75+jpeg65; '' = none; 'largest' = "
                                                        "the shift with the largest base drop, after all shifts)")
    parser.add_argument("--tools", choices=("other", "kit"), default="other",
                        help="make the true shift with other tools than the kit's test-like encoder (Pillow Lanczos "
                             "resize, OpenCV encoders; default) or with the same ones (bit-for-bit imitation)")
    parser.add_argument("--data", type=Path, default=None,
                        help="a Kaggle-layout folder (train.csv file_name,label; test.csv id; optional scenes.csv "
                             "file_name,scene: twins kept in one fold) instead of CIFAKE, e.g. the replica")
    parser.add_argument("--n-train", type=int, default=None, help="training images (--data default 600; whole scenes)")
    parser.add_argument("--n-test", type=int, default=None, help="test images (--data default 200)")
    parser.add_argument("--img-size", type=int, default=None, help="data.img_size (CIFAKE 32, --data 128)")
    parser.add_argument("--augment", default="forensic", help="data.augment preset (competition.augment)")
    parser.add_argument("--upscale", type=int, default=None, help="model.input_upscale (CIFAKE 2, --data 1)")
    parser.add_argument("--epochs", type=int, default=None, help="train.epochs (default 2; --quick 1)")
    parser.add_argument("--batch-size", type=int, default=None, help="train.batch_size (CIFAKE 64, --data 16)")
    parser.add_argument("--test-from", choices=("test", "train"), default=None,
                        help="--data: test images from its test.csv, or from training rows of held-out scenes "
                             "(default: train, so the clean copy's test set is encoded like train)")
    return parser.parse_args(argv)


def build_plan(args: argparse.Namespace) -> Plan:
    """The run's sizes: FULL / QUICK, the --data defaults for large images, then each option given."""
    plan = {**(QUICK if args.quick else FULL).__dict__, "tools": args.tools, "augment": args.augment}
    if args.data is not None:
        if not (args.data / "train.csv").is_file():
            raise SystemExit(f"--data {args.data}: no train.csv there (python benchmarks/make_replica.py DIR)")
        plan.update({**LARGE, "data": str(args.data.resolve())})
        plan["group_column"] = "scene" if (args.data / "scenes.csv").is_file() else ""
    given = {"shifts": tuple(args.shifts.split(",")) if args.shifts else None,
             "retrain": None if args.retrain is None else tuple(s for s in args.retrain.split(",") if s),
             "n_train": args.n_train, "n_test": args.n_test, "img_size": args.img_size, "upscale": args.upscale,
             "test_from": args.test_from, "epochs": args.epochs, "batch_size": args.batch_size}
    plan.update({k: v for k, v in given.items() if v is not None})
    unknown = [s for s in plan["shifts"] + plan["retrain"] if s not in SHIFTS and s != "largest"]
    if unknown:
        raise SystemExit(f"unknown shift(s) {unknown}: choose among {', '.join(SHIFTS)}")
    return Plan(**plan)


def main() -> None:
    """Build the clean competition, train the base experiment once, then every shift; print and save the table."""
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    torch.set_num_threads(2)
    plan = build_plan(args)
    log.info("plan: %s", plan)
    t0, root = time.perf_counter(), args.folder.resolve()
    shutil.rmtree(root, ignore_errors=True)
    train, test = sample_data(plan)
    run_kit(make_competition(root / "clean", plan, train, test, None), "base")
    log.info("clean base trained: %.1f min", (time.perf_counter() - t0) / 60)
    rows = []
    for name in plan.shifts:
        rows += run_shift(root, plan, SHIFTS[name], train, test)
        log.info("%s done: %.1f min", name, (time.perf_counter() - t0) / 60)
        write_json(root / "shift_partial.json", {"plan": plan.__dict__, "rows": rows})
    if plan.retrain == ("largest",):
        worst = max((r for r in rows if r["remedy"] == "none"), key=lambda r: r["drop"])["shift"]
        log.info("--retrain largest: match_test and pseudo on %s (the largest drop of the base run)", worst)
        rows = [r for r in rows if r["shift"] != worst] + evaluate_shift(root, plan, SHIFTS[worst], train, True)
        rows.sort(key=lambda r: plan.shifts.index(r["shift"]))  # stable: remedies stay in order
    report(root, plan, rows, time.perf_counter() - t0)


def report(root: Path, plan: Plan, rows: list[dict], seconds: float) -> None:
    """The table (AUC), printed; everything in root/shift.json."""
    header = ["shift", "remedy", "clean OOF", "true shifted", "drop recovered", "OOF test-like",
              "abs(test-like - shifted)", "abs(plain OOF - shifted)", "kit: test shifted?",
              "abs(test-like, encoder forced on - shifted)"]
    where = Path(plan.data).name if plan.data else "CIFAKE"
    table(f"Encoding shift on {where} ({plan.n_train} train / {plan.n_test} test images, {plan.folds} folds, "
          f"{plan.model} x{plan.upscale}, {plan.img_size} px, {plan.epochs} epochs): AUC, {seconds / 60:.1f} min",
          header, [[r["shift"], r["remedy"], f"{r['clean_oof']:.4f}", f"{r['true_shifted']:.4f}",
                    "-" if r["remedy"] == "none" or np.isnan(r["recovered"]) else f"{r['recovered']:.0%}",
                    f"{r['oof_test_like']:.4f}", f"{r['test_like_error']:.4f}", f"{r['plain_error']:.4f}",
                    "yes" if r["profile"]["shifted"] else "no",
                    "-" if np.isnan(r["forced_error"]) else f"{r['forced_error']:.4f}"]
                   for r in rows])
    write_json(root / "shift.json", {"plan": plan.__dict__, "seconds": seconds, "rows": rows})


if __name__ == "__main__":
    main()
