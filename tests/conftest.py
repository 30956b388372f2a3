"""Shared fixtures: small real competitions built from ../shared, and runners for the kit's CLIs.

`call_kit` runs a CLI's `main()` in this process against a `Project` (fast: no interpreter or torch start-up);
`run_kit` runs it as a real subprocess, as a user would, and is kept for the tests that exercise the CLIs
themselves (exit codes, stderr, signals, servers).

Speed rules (pytest.ini): a test that trains a model, or needs over ~5 s of CPU, is marked `slow`; every other
test runs with training forbidden ($KIT_NO_TRAINING, checked by competition.train in this process and in every
process the test starts: a fast test that trains fails). Trained runs are shared: `trained_project` hands a test its
own copy of one tiny experiment trained once per test run across pytest-xdist workers (`shared_project`, under a
file lock); an experiment run through `call_kit` skips its matplotlib report unless asked (report=True).
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import importlib
import io
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager, nullcontext, redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pandas as pd
import pytest
import yaml

from competition.cli import LOG_FORMAT
from competition.project import Project

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
CIFAKE = SHARED / "competitions" / "cifake"
FACES = SHARED / "datasets" / "faces_tpdne_ffhq"
WEIGHTS = SHARED / "weights"
PROJECT = Project(REPO)  # for tests that pass absolute paths everywhere
NO_TRAINING = "KIT_NO_TRAINING"  # = competition.train.NO_TRAINING (tests/test_training_guard.py checks they agree)
_RECORDS = pytest.StashKey[Path]()


def pytest_configure(config: pytest.Config) -> None:
    """A folder for the training records of this process; under xdist, torch threads split between the workers."""
    config.stash[_RECORDS] = Path(tempfile.mkdtemp(prefix="kit-training-records-"))
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // workers))


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(config.stash.get(_RECORDS, Path("/nonexistent")), ignore_errors=True)


# Test files whose tests must share one pytest-xdist worker (module fixtures hold state the tests build on). With
# pytest 9 the `xdist_group` mark does nothing (xdist 3.8 tags the node id through an attribute pytest 9 no longer
# reads), so `--dist loadgroup` reads this list instead.
ONE_WORKER_FILES = {"tests/test_kaggle_kernel.py",  # pushed once, the kernel run once, then pulled
                    "tests/test_serve.py"}  # one server for the module


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):  # noqa: ANN001, ANN201 - xdist's own types
    """`--dist loadgroup`: every test its own unit of work, except the files in ONE_WORKER_FILES (one unit each)."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class FileGroups(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            scope, file = super()._split_scope(nodeid), nodeid.split("::", 1)[0]
            return file if scope == nodeid and file in ONE_WORKER_FILES else scope

    return FileGroups(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Slow tests first (otherwise in order): pytest-xdist then ends the run on short tests, not on a long one."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def training_record(item: pytest.Item) -> Path:
    """The file competition.train writes to when `item` (a test not marked slow) tries to train."""
    return item.config.stash[_RECORDS] / f"{hashlib.sha1(item.nodeid.encode()).hexdigest()[:16]}.log"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    """A test not marked slow runs its setup (fixtures of every scope), body and teardown, and every process they
    start, with $KIT_NO_TRAINING set: competition.train then records the attempt and refuses to train."""
    saved = os.environ.pop(NO_TRAINING, None)
    if item.get_closest_marker("slow") is None:
        os.environ[NO_TRAINING] = str(training_record(item))
    try:
        return (yield)
    finally:
        os.environ.pop(NO_TRAINING, None)
        if saved is not None:
            os.environ[NO_TRAINING] = saved


@pytest.fixture(autouse=True)
def _fast_tests_train_nothing(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test not marked slow that trained, even where the refusal was caught (check=False, a child's exit)."""
    yield
    record = training_record(request.node)
    if record.is_file():
        pytest.fail(f"{request.node.nodeid} is not marked slow but trained a model ({record.read_text().strip()}): "
                    "mark it @pytest.mark.slow, or use a fake run instead of training", pytrace=False)


def write_yaml(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@functools.lru_cache(maxsize=1)
def cifake_tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    """CIFAKE's train.csv (20 000 rows) and test.csv, read once per process (callers must not modify them)."""
    return pd.read_csv(CIFAKE / "train.csv", index_col=0), pd.read_csv(CIFAKE / "test.csv", index_col=0)


def make_competition(home: Path, n_per_class: int = 20, n_test: int = 12, **competition) -> Path:
    """A Kaggle-layout copy of a few CIFAKE images under home/data plus competition.yaml (KIT_HOME layout)."""
    train, test = cifake_tables()
    picked = pd.concat([train[train["label"] == k].head(n_per_class) for k in (0, 1)]).sample(frac=1, random_state=0)
    test = test.head(n_test).copy()
    data = home / "data"
    for rel in list(picked["file_name"]) + list(test["id"]):
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(CIFAKE / rel, data / rel)
    picked.reset_index(drop=True).to_csv(data / "train.csv")
    test.reset_index(drop=True).to_csv(data / "test.csv")
    pd.DataFrame({"id": test["id"], "label": 0}).to_csv(data / "sample_submission.csv", index=False)
    comp = {"name": "tiny", "data_dir": str(data), "metric": "auc", **competition}
    folds = {"n_splits": 2, "seed": 0, "shift_check": False}  # the shift check has its own tests (test_shift_twins)
    write_yaml(home / "competition.yaml", {"competition": comp, "folds": folds, "model": {"weights_dir": str(WEIGHTS)}})
    return home


def smoke_experiment(home: Path, name: str, model: str = "tf_mobilenetv3_small_100", **sections) -> Path:
    """A tiny, fast experiment config: 32 px native crops, 1 epoch, local ImageNet weights."""
    cfg = {"model": {"name": model, "weights_dir": str(WEIGHTS)},
           "data": {"img_size": 32, "augment": "forensic", "cache_dir": str(home / ".cache")},
           "train": {"epochs": 1, "batch_size": 8, "lr": 1e-3, "threads": 1},
           "tta": {"views": "hflip"}}
    for section, values in sections.items():
        cfg.setdefault(section, {}).update(values)
    return write_yaml(home / "experiments" / f"{name}.yaml", cfg)


def run_kit(home: Path, *args: str, timeout: int = 600, check: bool = True) -> subprocess.CompletedProcess:
    """Run `python -m competition.<module> args` in a subprocess against the project folder `home`."""
    env = {**os.environ, "KIT_HOME": str(home), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", *args], cwd=home, env=env, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


@dataclass
class Result:
    """What a CLI call left: exit code, what it printed, what it logged (stderr)."""

    returncode: int
    stdout: str
    stderr: str


@contextmanager
def no_report() -> Iterator[None]:
    """Experiment runs in this block skip their report.html (matplotlib: seconds a run, read by few tests)."""
    report = importlib.import_module("competition.report")
    saved = report.write_report
    report.write_report = lambda project, name: None
    try:
        yield
    finally:
        report.write_report = saved


def call_kit(home: Path, module: str, *args: str, check: bool = True, report: bool = False) -> Result:
    """Run `competition.<module>.main(args)` in this process against Project(home), capturing output and logs.
    An experiment run writes its report only with report=True."""
    import torch

    main = importlib.import_module(module).main
    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root, threads, cwd = logging.getLogger(), torch.get_num_threads(), os.getcwd()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        os.chdir(home)
        with redirect_stdout(out), redirect_stderr(err):
            try:
                with nullcontext() if report or module != "competition.experiment" else no_report():
                    code = main(list(args), project=Project(home))
            except SystemExit as exc:  # argparse errors
                code = exc.code if isinstance(exc.code, int) else 2
    finally:
        os.chdir(cwd)
        root.removeHandler(handler)
        root.setLevel(old_level)
        torch.set_num_threads(threads)
    result = Result(code, out.getvalue(), err.getvalue())
    if check and code != 0:
        raise AssertionError(f"{module} {' '.join(args)} exited {code}:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A project folder with a tiny real competition (20 + 20 train images, 12 test)."""
    return make_competition(tmp_path)


def shared_folder(factory: pytest.TempPathFactory) -> Path:
    """A folder every pytest-xdist worker of this test run shares (this run's own base folder without xdist)."""
    base = factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if missing) across processes."""
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def shared_project(factory: pytest.TempPathFactory, name: str, build: Callable[[Path], object]) -> Path:
    """The project folder `build(folder)` made, built once per test run across xdist workers. Read it; change only
    a `copy_project` of it. Only a slow test may ask for one (building it trains)."""
    if os.environ.get(NO_TRAINING):
        pytest.fail(f"the shared project {name!r} is trained: only a test marked slow may use it", pytrace=False)
    root = shared_folder(factory) / "shared-projects"
    root.mkdir(exist_ok=True)
    home, built = root / name, root / f"{name}.built"
    with file_lock(root / f"{name}.lock"):
        if not built.is_file():
            shutil.rmtree(home, ignore_errors=True)
            build(home)
            built.touch()
    return home


def copy_project(src: Path, dst: Path) -> Path:
    """A copy of a project folder (lock files left out) whose configs and JSON files name the copy, not `src`."""
    shutil.copytree(src, dst, symlinks=True, ignore=shutil.ignore_patterns(".lock"))
    for path in dst.rglob("*"):
        if path.suffix in (".yaml", ".json") and path.is_file() and str(src) in (text := path.read_text()):
            path.write_text(text.replace(str(src), str(dst)))
    return dst


def build_smoke_run(home: Path) -> None:
    """The shared trained project: the tiny competition and `smoke_experiment` `done` (2 folds, 1 epoch), with its
    report."""
    make_competition(home)
    smoke_experiment(home, "done")
    call_kit(home, "competition.experiment", "done", report=True)


def trained_copy(factory: pytest.TempPathFactory, dst: Path) -> Path:
    """A copy at `dst` of the shared trained project (`build_smoke_run`, trained once per test run)."""
    return copy_project(shared_project(factory, "smoke", build_smoke_run), dst)


@pytest.fixture
def trained_project(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This test's own copy (tmp_path/home) of the tiny competition with experiment `done` trained and assembled
    (`build_smoke_run`, once per test run). The test must be marked slow."""
    return trained_copy(tmp_path_factory, tmp_path / "home")
