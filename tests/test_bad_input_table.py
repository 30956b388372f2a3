"""A table of bad inputs a user makes by accident (configs, tables, images, files, CLI arguments), each run
through a real CLI `main()`. An error case must exit non-zero with no traceback and exactly one ERROR line
that names the file or key and says the fix; a skip case must exit 0 and name and count what it skipped.

KIT_TABLE_REPO=/path/to/another/checkout runs the same table as subprocesses against that checkout
(how the before/after counts in the issue note were measured).
"""

from __future__ import annotations

import fcntl
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd
import pytest
import yaml

from tests.conftest import FACES, call_kit, make_competition, run_kit, smoke_experiment, write_yaml

OTHER_REPO = os.environ.get("KIT_TABLE_REPO", "")


@dataclass
class Case:
    """setup(home) prepares the mistake and returns the CLI call (module, *args)."""

    name: str
    setup: Callable[[Path], tuple]
    words: tuple  # every one must appear in the ERROR line (error) or in the WARNING lines (skip)
    kind: str = "error"  # error | skip
    trained: bool = False  # needs a finished experiment `done` in the project


def exp(name: str = "e", **sections):
    """A setup that writes a tiny experiment and runs it."""
    def setup(home: Path) -> tuple:
        smoke_experiment(home, name, **sections)
        return ("competition.experiment", name)
    return setup


def exp_args(*args: str, name: str = "e"):
    def setup(home: Path) -> tuple:
        smoke_experiment(home, name)
        return ("competition.experiment", name, *args)
    return setup


def exp_text(text: str, name: str = "e"):
    def setup(home: Path) -> tuple:
        (home / "experiments").mkdir(exist_ok=True)
        (home / "experiments" / f"{name}.yaml").write_text(text)
        return ("competition.experiment", name)
    return setup


def edit_train(change: Callable[[pd.DataFrame], pd.DataFrame], module: str = "competition.folds", *args: str):
    def setup(home: Path) -> tuple:
        csv = home / "data" / "train.csv"
        change(pd.read_csv(csv, index_col=0, dtype=str)).to_csv(csv, index=False)
        return (module, *args)
    return setup


def edit_comp(module: str = "competition.folds", *args: str, **changes):
    def setup(home: Path) -> tuple:
        conf = yaml.safe_load((home / "competition.yaml").read_text())
        conf["competition"].update(changes)
        write_yaml(home / "competition.yaml", conf)
        if module == "competition.experiment":
            smoke_experiment(home, args[0])
        return (module, *args)
    return setup


def write_file(rel: str, data: bytes, then: tuple):
    def setup(home: Path) -> tuple:
        (home / rel).parent.mkdir(parents=True, exist_ok=True)
        (home / rel).write_bytes(data)
        if then[0] == "competition.experiment" and not (home / "experiments" / f"{then[1]}.yaml").exists():
            smoke_experiment(home, then[1])
        return then
    return setup


def at(home: Path, *args: str) -> tuple:
    """Arguments with '{home}' filled in."""
    return tuple(a.replace("{home}", str(home)) for a in args)


def grow_test(home: Path) -> tuple:
    """A finished run, then test.csv and the sample gain a row."""
    data = home / "data"
    test, sample = pd.read_csv(data / "test.csv", index_col=0), pd.read_csv(data / "sample_submission.csv")
    extra = sorted((data / "test_data_v2").glob("*.jpg"))[0].name
    shutil.copyfile(data / "test_data_v2" / extra, data / "test_data_v2" / f"new_{extra}")
    pd.concat([test, pd.DataFrame({"id": [f"test_data_v2/new_{extra}"]})], ignore_index=True).to_csv(data / "test.csv")
    pd.concat([sample, pd.DataFrame({"id": [f"test_data_v2/new_{extra}"], "label": [0]})]).to_csv(
        data / "sample_submission.csv", index=False)
    return ("competition.experiment", "done")


def relabel_after_run(home: Path) -> tuple:
    """A finished run, then one label in train.csv is corrected."""
    csv = home / "data" / "train.csv"
    train = pd.read_csv(csv, index_col=0)
    train.loc[0, "label"] = 1 - train.loc[0, "label"]
    train.to_csv(csv)
    return ("competition.experiment", "done")


def hold_lock(home: Path) -> tuple:
    """Another process holds the experiment's lock (simulated by a second open file description)."""
    smoke_experiment(home, "e")
    folder = home / "experiments" / "e"
    folder.mkdir(parents=True, exist_ok=True)
    fh = open(folder / ".lock", "a+")  # noqa: SIM115 - kept open (and locked) for the case
    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    fh.write("pid 4242 on testhost since earlier")
    fh.flush()
    HELD.append(fh)
    return ("competition.experiment", "e")


HELD: list = []


def folder_layout(home: Path, suffixes=(".jfif", ".jpe")) -> tuple:
    """Class folders with images under unusual suffixes plus a notes file; the competition points at them."""
    data = home / "folders"
    faces = pd.read_csv(FACES / "train.csv")
    for i, row in faces.head(12).iterrows():
        cls = "fake" if row["label"] else "real"
        (data / cls).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(FACES / row["file_name"], data / cls / f"{i}{suffixes[i % len(suffixes)]}")
    (data / "real" / "notes.txt").write_text("not an image")
    write_yaml(home / "competition.yaml", {"competition": {"name": "folders", "data_dir": str(data), "train_csv": "",
               "class_folders": {"real": 0, "fake": 1}, "test_csv": "", "test_folder": "real",
               "sample_submission": ""}, "folds": {"n_splits": 2, "seed": 0, "audit": False}})
    return ("competition.folds",)


CASES = [
    # --- configs: values refused at load, one line naming the key
    Case("epochs 0", exp(train={"epochs": 0}), ("train.epochs", "must be >= 1")),
    Case("epochs -1", exp(train={"epochs": -1}), ("train.epochs", ">= 1")),
    Case("batch_size 0", exp(train={"batch_size": 0}), ("train.batch_size", ">= 2")),
    Case("lr 0", exp(train={"lr": 0.0}), ("train.lr", "> 0")),
    Case("accum_steps 0", exp(train={"accum_steps": 0}), ("train.accum_steps", ">= 1")),
    Case("threads -1", exp(train={"threads": -1}), ("train.threads", ">= 0")),
    Case("img_size 0", exp(data={"img_size": 0}), ("data.img_size", ">= 8")),
    Case("jpeg_quality_min 150", exp(data={"jpeg_quality_min": 150}), ("data.jpeg_quality_min", "<= 100")),
    Case("min_lr above lr", exp(train={"min_lr": 0.5}), ("train.min_lr", "train.lr")),
    Case("ema_decay 1", exp(train={"ema_decay": 1.0}), ("train.ema_decay", "< 1")),
    Case("tta crops 3", exp(tta={"crops": 3}), ("tta.crops", "1, 5")),
    Case("fold listed twice", exp(train={"folds": [0, 0]}), ("train.folds", "twice")),
    Case("ViT at the wrong size", exp_args("model.name=vit_tiny_patch16_224", "model.pretrained=false"),
         ("vit_tiny_patch16_224", "224", "data.img_size")),
    Case("unknown key", exp(train={"epocs": 3}), ("train.epocs", "did you mean `epochs`")),
    Case("override without =", exp_args("train.epochs"), ("train.epochs", "section.key=value")),
    Case("unclosed override list", exp_args("train.folds=[0"), ("train.folds=[0", "not valid YAML")),
    Case("YAML tab", exp_text("train:\n\tepochs: 1\n"), ("e.yaml", "tabs")),
    Case("python tag", exp_text("train: !!python/object:os.system {}\n"), ("e.yaml", "tags")),
    Case("section twice", exp_text("train: {epochs: 1}\ndata: {img_size: 32}\ntrain: {lr: 0.1}\n"),
         ("e.yaml", "`train` appears twice")),
    Case("missing base", exp_text("base: nowhere.yaml\n"), ("nowhere.yaml", "does not exist")),
    Case("binary experiment file", write_file("experiments/e.yaml", b"\xff\xfe\x00bin", ("competition.experiment", "e")),
         ("e.yaml", "YAML")),
    Case("experiment named ..", lambda home: ("competition.experiment", ".."), ("'..'", "plain name")),
    Case("experiment file ..yaml", lambda home: ("competition.experiment", str(home / "experiments" / "..yaml")),
         ("..yaml", "plain name")),
    Case("weights file that is text", write_file("w.safetensors", b"not weights",
         ("competition.experiment", "e", "model.pretrained_file={home}/w.safetensors")), ("w.safetensors", "pretrained_file")),
    Case("missing weights file", exp_args("model.pretrained_file=nowhere.safetensors"), ("nowhere.safetensors", "not found")),
    # --- tables
    Case("single-class train.csv", edit_train(lambda t: t[t["label"] == "1"]), ("train.csv", "each class")),
    Case("label 2", edit_train(lambda t: t.assign(label=["2"] + list(t["label"][1:]))), ("train.csv", "0 (human) or 1")),
    Case("label column missing", edit_train(lambda t: t.drop(columns="label")), ("train.csv", "label_column")),
    Case("train image missing", edit_train(lambda t: t.assign(file_name=["train_data/gone.jpg"] + list(t["file_name"][1:]))),
         ("train.csv", "gone.jpg", "restore")),
    Case("train.csv is binary", write_file("data/train.csv", bytes(range(256)) * 4, ("competition.folds",)),
         ("train.csv", "CSV")),
    Case("empty train.csv", write_file("data/train.csv", b"", ("competition.folds",)), ("train.csv", "CSV")),
    Case("data folder missing", edit_comp(data_dir="/nowhere/data"), ("/nowhere/data", "data_dir")),
    Case("test.csv missing", edit_comp("competition.experiment", "e", test_csv="nope.csv"), ("nope.csv", "test_csv")),
    Case("duplicate ids in sample", lambda home: (
        pd.concat([pd.read_csv(home / "data" / "sample_submission.csv")] * 2).to_csv(
            home / "data" / "sample_submission.csv", index=False), smoke_experiment(home, "e"))
        and ("competition.experiment", "e"), ("sample_submission.csv", "share an id")),
    Case("blank group cells", edit_train(lambda t: t.assign(pair=[""] + ["p"] * (len(t) - 1)), "competition.folds",
                                         "folds.group_column=pair"), ("train.csv", "pair", "blank")),
    Case("group column missing", edit_train(lambda t: t, "competition.folds", "folds.group_column=pair"),
         ("folds.group_column", "pair")),
    Case("pHash joins everything", lambda home: ("competition.folds", "folds.groups=phash", "folds.phash_distance=32"),
         ("group", "phash_distance")),
    Case("symlink out of the data folder", lambda home: (
        (home / "outside.jpg").write_bytes(b"x"), os.symlink(home / "outside.jpg", home / "data" / "train_data" / "l.jpg"),
        edit_train(lambda t: t.assign(file_name=["train_data/l.jpg"] + list(t["file_name"][1:])))(home))[-1],
         ("escape the data folder", "l.jpg")),
    # --- runs and files
    Case("labels corrected after a run", relabel_after_run, ("label", "folds file", "--restart"), trained=True),
    Case("test rows added after a run", grow_test, ("test rows changed", "--restart"), trained=True),
    Case("experiment already running", hold_lock, ("in use by pid 4242", "wait")),
    Case("0-byte metrics.json blocks a blend", lambda home: (
        (home / "experiments" / "done" / "metrics.json").write_bytes(b""), ("competition.ensemble", "done"))[-1],
         ("metrics.json", "rerun"), trained=True),
    Case("0-byte metrics.json in the report", lambda home: (
        (home / "experiments" / "done" / "metrics.json").write_bytes(b""), ("competition.report", "done"))[-1],
         ("metrics.json", "rerun"), trained=True),
    Case("0-byte metrics.json on the leaderboard", lambda home: (
        (home / "experiments" / "junk").mkdir(parents=True), (home / "experiments" / "junk" / "metrics.json").write_bytes(b""),
        ("competition.leaderboard",))[-1], ("junk/metrics.json", "left out"), kind="skip"),
    Case("blend of an experiment never run", lambda home: ("competition.ensemble", "ghost"), ("ghost", "experiments")),
    Case("member listed twice", lambda home: ("competition.ensemble", "done", "done"), ("listed twice",), trained=True),
    Case("submit the .json sidecar", write_file("submissions/b.json", b"{}", ("competition.submit", "{home}/submissions/b.json",
         "--dry-run")), ("b.json", "submission CSV")),
    Case("submit a PNG", write_file("submissions/b.png", b"\x89PNG\r\n", ("competition.submit", "{home}/submissions/b.png",
         "--dry-run")), ("b.png", "CSV")),
    Case("submit an empty CSV", write_file("submissions/b.csv", b"", ("competition.submit", "{home}/submissions/b.csv",
         "--dry-run")), ("b.csv", "readable CSV")),
    Case("submit a missing file", lambda home: ("competition.submit", str(home / "nope.csv"), "--dry-run"),
         ("nope.csv", "not found")),
    Case("report before a run", lambda home: ("competition.report", "ghost"), ("ghost", "run.sh ghost")),
    Case("predict with an experiment never run", lambda home: ("competition.predict", "ghost", str(home / "data")),
         ("ghost", "run.sh ghost")),
    Case("predict with a non-sidecar json", write_file("x.json", b"[1, 2]", ("competition.predict", "{home}/x.json",
         "{home}/data")), ("x.json", "sidecar")),
    Case("predict on cuda without a GPU", lambda home: ("competition.predict", "done", str(home / "data" / "test_data_v2"),
         "--device", "cuda"), ("cuda", "--device")),
    Case("predict on an empty folder", lambda home: ((home / "empty").mkdir(), ("competition.predict", "done",
         str(home / "empty")))[-1], ("empty", "no images")),
    # --- counted, named skips
    Case("image folders with .jfif/.jpe and a notes file", folder_layout, ("notes.txt", "1 file(s) skipped"), kind="skip"),
]


def run_case(home: Path, call: tuple):
    """The CLI call in this process, or as a subprocess against KIT_TABLE_REPO."""
    call = at(home, *call)
    if OTHER_REPO:
        import tests.conftest as conftest

        saved, conftest.REPO = conftest.REPO, Path(OTHER_REPO)
        try:
            return run_kit(home, *call, check=False)
        finally:
            conftest.REPO = saved
    return call_kit(home, *call, check=False)


def lines_of(stderr: str, level: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if f" {level} " in f" {ln} " or ln.startswith(f"{level} ")]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name, marks=[pytest.mark.slow] if c.trained else []) for c in CASES])
def test_bad_input_gives_one_clear_line(case, tmp_path, request):
    if case.trained:  # a copy of the shared finished experiment `done` (conftest.trained_project; slow: it trains)
        home = request.getfixturevalue("trained_project")
    else:
        home = make_competition(tmp_path / "home")
    call = case.setup(home)
    try:
        result = run_case(home, call)
    finally:
        while HELD:
            HELD.pop().close()
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    if case.kind == "skip":
        warnings = " ".join(lines_of(result.stderr, "WARNING"))
        assert result.returncode == 0, result.stderr[-3000:]
        assert all(w in warnings for w in case.words), warnings
        return
    errors = lines_of(result.stderr, "ERROR")
    assert result.returncode != 0 and len(errors) == 1, result.stderr[-3000:]
    assert all(w in errors[0] for w in case.words), errors[0]


def test_the_table_is_at_least_forty_cases():
    assert len(CASES) >= 40 and len({c.name for c in CASES}) == len(CASES)


def test_folder_layout_reads_unusual_suffixes(tmp_path):
    """.jfif and .jpe files are images (Pillow opens them): all 12 are used, only notes.txt is skipped."""
    home = make_competition(tmp_path)
    folder_layout(home)
    result = call_kit(home, "competition.folds")
    folds = pd.read_csv(home / "folds" / "folders_k2_s0.csv", dtype=str)
    assert len(folds) == 12 and folds["id"].str.endswith((".jfif", ".jpe")).all()
    assert "notes.txt" in result.stderr
