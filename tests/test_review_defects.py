"""Defects from a code review, each with generated variants: kernel status read from its field, unfinished
experiments refused by predict/serve/export, compare's deltas both "+ = better", KIT_KAGGLE_TIMEOUT read when
used, disk-full only when the disk is full, pull --replace rolled back on a failed move, kaggle 2.x credentials
advice. In process; the kaggle CLI is a fake script on PATH, as in tests/test_kaggle_kernel.py."""

from __future__ import annotations

import errno
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from competition import atomic, inference, kaggle_cli
from competition import kaggle_kernel as kernel
from competition.config import load_config, save_config
from competition.errors import KitError
from competition.project import Project
from tests.conftest import REPO, call_kit, smoke_experiment

# ---------------------------------------------------------------- a. kernel status read from its field

FAKE_KAGGLE = r'''#!PYTHON
import os, sys
args = sys.argv[1:]
print("debug: kaggle 2.x")
if args[:2] == ["kernels", "status"]:
    print('%s has status "%s"' % (args[2], os.environ["FAKE_KERNEL_STATUS"]))
    if os.environ.get("FAKE_FAILURE"):
        print('Failure message: "%s"' % os.environ["FAKE_FAILURE"])
    sys.exit(0)
print(os.environ.get("FAKE_OUTPUT", "unknown command"), file=sys.stderr)
sys.exit(1)
'''

STATUSES = [("KernelWorkerStatus.QUEUED", "queued"), ("KernelWorkerStatus.RUNNING", "running"),
            ("KernelWorkerStatus.COMPLETE", "complete"), ("KernelWorkerStatus.ERROR", "error"),
            ("KernelWorkerStatus.CANCEL_REQUESTED", "cancelled"),
            ("KernelWorkerStatus.CANCEL_ACKNOWLEDGED", "cancelled"),
            ("KernelWorkerStatus.NEW_SCRIPT", "queued"), ("running", "running"), ("complete", "complete"),
            ("cancelAcknowledged", "cancelled"), ("error", "error"), ("KernelWorkerStatus.SOMETHING_NEW", "unknown")]
TRICKY_NAMES = ["exp-complete", "error-analysis", "running-queued", "cancel-new"]


@pytest.mark.parametrize("name", TRICKY_NAMES)
@pytest.mark.parametrize(("field", "state"), STATUSES)
def test_status_is_the_status_field_not_a_word_in_the_kernel_name(name, field, state):
    ref = f"alice/tiny-{name}"
    output = f"debug: using key ***\n{ref} has status \"{field}\"\n"
    assert kernel.parse_status(output, ref) == state
    assert kernel.parse_status(output + 'Failure message: "complete failure while running"\n', ref) == state
    assert kernel.parse_status(f"404 - kernel {ref} not found (complete, running)", ref) == "unknown"


@pytest.fixture
def fake_kaggle(tmp_path, monkeypatch):
    """A fake kaggle CLI first on PATH; its answers are set through FAKE_* variables."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "kaggle"
    exe.write_text(FAKE_KAGGLE.replace("PYTHON", sys.executable, 1))
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("KAGGLE_USERNAME", "alice")
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "nocreds"))
    monkeypatch.delenv("KIT_KAGGLE_TIMEOUT", raising=False)
    return exe


@pytest.mark.parametrize(("field", "state", "code"), [("KernelWorkerStatus.RUNNING", "running", 0),
                                                      ("KernelWorkerStatus.ERROR", "error", 1),
                                                      ("KernelWorkerStatus.COMPLETE", "complete", 0)])
def test_kaggle_status_command_reports_the_field(home, fake_kaggle, monkeypatch, field, state, code):
    smoke_experiment(home, "exp-complete")
    monkeypatch.setenv("FAKE_KERNEL_STATUS", field)
    result = call_kit(home, "competition.kaggle_kernel", "status", "exp-complete", check=False)
    assert result.returncode == code, result.stderr
    assert f"alice/tiny-exp-complete: {state}" in result.stderr
    assert ("kaggle pull exp-complete" in result.stderr) == (state == "complete")


# ---------------------------------------------------------------- b. unfinished experiments refused


class Constant(torch.nn.Module):
    """A stand-in fold model: logit 0 for every image (p = 0.5), with one parameter (serve reads its device)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.zeros(images.shape[0]) + self.w


def make_run(home: Path, name: str, state: str) -> Path:
    """experiments/<name>/ as training leaves it: 'finished', 'fold_missing' (fold 1 never finished, not
    assembled), 'not_assembled' (every fold done, no metrics.json), 'training' / 'fold_training' (finished
    files, but a run holds the experiment's / fold 0's lock: see hold_lock)."""
    smoke_experiment(home, name)
    cfg = load_config(name, [], Project(home), check_model=False)
    out = home / "experiments" / name
    save_config(cfg, out / "config.yaml")
    for k in range(cfg.folds.n_splits):
        (out / f"fold{k}").mkdir(parents=True, exist_ok=True)
        if not (state == "fold_missing" and k == 1):
            (out / f"fold{k}" / "best.pt").write_bytes(b"stand-in")
            (out / f"fold{k}" / "result.json").write_text("{}")
    if state not in ("fold_missing", "not_assembled"):
        (out / "metrics.json").write_text(json.dumps({"folds_run": [0, 1], "threshold": 0.25}))
        pd.DataFrame({"id": ["a", "b"], "target": [0, 1], "prob": [0.1, 0.9]}).to_csv(out / "oof.csv", index=False)
    return out


def hold_lock(lock: Path) -> subprocess.Popen:
    """Another process holding a training run's lock on lock's folder (run_folder.experiment_lock itself)."""
    code = ("import sys, time; from pathlib import Path; from competition.run_folder import experiment_lock\n"
            "with experiment_lock(Path(sys.argv[1])):\n    print('locked', flush=True); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(lock.parent)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout.readline().strip() == "locked"
    return proc


UNFINISHED = ["fold_missing", "not_assembled", "training", "fold_training"]


@pytest.fixture
def unfinished_run(home, request, monkeypatch):
    """(home, name, state) of an unfinished run; the lock holder (if any) is stopped afterwards."""
    state = request.param
    out = make_run(home, "partial", state)
    monkeypatch.setattr(inference, "load_detector", lambda *a, **k: Constant())
    holder = None
    if state in ("training", "fold_training"):
        holder = hold_lock(out / ".lock" if state == "training" else out / "fold0" / ".lock")
    yield home, "partial", state
    if holder is not None:
        holder.kill()
        holder.wait()


def image_of(home: Path) -> str:
    return str(next((home / "data").rglob("*.jpg")))


@pytest.mark.parametrize("unfinished_run", UNFINISHED, indirect=True)
@pytest.mark.parametrize("command", ["predict", "export", "serve", "explain"])
def test_unfinished_experiment_is_refused_with_the_fix(unfinished_run, command, monkeypatch):
    home, name, state = unfinished_run
    monkeypatch.setattr(inference, "load_detector", lambda *a, **k: pytest.fail("a model was loaded"))
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("the server started"))
    args = {"predict": [name, image_of(home)], "export": [name], "serve": [name],
            "explain": [name, image_of(home)]}[command]
    result = call_kit(home, f"competition.{command}", *args, check=False)
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert result.returncode == 2 and len(errors) == 1, result.stderr
    assert "not a finished experiment" in errors[0] and "--allow-incomplete" in errors[0]
    expect = {"fold_missing": "fold(s) 1 not finished", "not_assembled": "not assembled",
              "training": "still training", "fold_training": "still training"}[state]
    assert expect in errors[0] and "./run.sh assemble partial" in errors[0]
    assert not (home / "experiments" / name / "export").exists()


@pytest.mark.parametrize("unfinished_run", UNFINISHED, indirect=True)
def test_allow_incomplete_predicts_and_says_so_loudly(unfinished_run):
    home, name, state = unfinished_run
    result = call_kit(home, "competition.predict", name, image_of(home), "--allow-incomplete")
    warning = next(line for line in result.stderr.splitlines() if "USING AN UNFINISHED EXPERIMENT" in line)
    assert " WARNING " in warning and name in warning
    assert ("threshold 0.5 (not OOF-chosen)" in warning) == (state in ("fold_missing", "not_assembled"))
    assert "0.5000" in result.stdout  # the stand-in models' probability


@pytest.mark.parametrize("unfinished_run", ["not_assembled"], indirect=True)
def test_serve_opt_in_loads_with_the_warning(unfinished_run, caplog):
    from competition.serve import Predictor

    home, name, _ = unfinished_run
    with pytest.raises(KitError, match="not a finished experiment"):
        Predictor(Project(home), name)
    predictor = Predictor(Project(home), name, allow_incomplete=True)
    assert predictor.threshold == 0.5 and "USING AN UNFINISHED EXPERIMENT" in caplog.text


def test_finished_experiment_loads_silently_even_while_this_process_holds_its_lock(home, monkeypatch, caplog):
    """A finishing run writes its report (which loads the experiment) while it holds the experiment's lock (the
    training side's own experiment_lock, taken here in this process)."""
    from competition.run_folder import experiment_lock

    out = make_run(home, "done", "finished")
    monkeypatch.setattr(inference, "load_detector", lambda *a, **k: Constant())
    with experiment_lock(out), experiment_lock(out / "fold0"):
        assert inference.lock_held(out / ".lock") is False
        exp = inference.load_experiment(Project(home), "done", torch.device("cpu"))
    assert exp.threshold == 0.25 and len(exp.models) == 2 and "UNFINISHED" not in caplog.text
    assert inference.unfinished(out, exp.cfg) == []


# ---------------------------------------------------------------- c. compare's deltas: + = better


def make_scored_run(home: Path, name: str, metric: str, oof: float, folds: list[float]) -> None:
    smoke_experiment(home, name)
    out = home / "experiments" / name
    save_config(load_config(name, [], Project(home), check_model=False), out / "config.yaml")
    metrics = {"metric": metric, "oof_score": oof, "fold_std": 0.01, "wall_s": 60,
               "folds": [{"fold": k, "score": s} for k, s in enumerate(folds)]}
    (out / "metrics.json").write_text(json.dumps(metrics))


@pytest.mark.parametrize("metric", ["logloss", "auc", "accuracy", "f1"])
@pytest.mark.parametrize("better", [True, False])
def test_compare_deltas_are_both_positive_when_better(home, metric, better):
    lower = metric == "logloss"
    step = 0.05 if better != lower else -0.05  # the raw change in the score that is better / worse
    make_scored_run(home, "ref", metric, 0.5, [0.50, 0.52, 0.48])
    make_scored_run(home, "other", metric, 0.5 + step, [0.50 + step, 0.52 + step * 1.1, 0.48 + step * 0.9])
    table = call_kit(home, "competition.compare", "ref", "other").stdout
    header = table.splitlines()[0]
    assert "delta (+ = better)" in header and "paired fold delta, + = better" in header
    assert f"({'lower' if lower else 'higher'} is better)" in header
    row = next(line for line in table.splitlines() if line.startswith("| other "))
    cells = [c.strip() for c in row.strip("|").split("|")]
    delta, paired = float(cells[3]), float(cells[5].split("+-")[0])
    assert (delta > 0) == better and (paired > 0) == better and abs(delta) == pytest.approx(0.05)


# ---------------------------------------------------------------- d. KIT_KAGGLE_TIMEOUT read when used

BAD_TIMEOUTS = ["abc", "-5", "0", "nan", "inf", "1e9", "5s", "3,5"]


@pytest.mark.parametrize("value", BAD_TIMEOUTS)
def test_bad_kaggle_timeout_is_one_error_when_used(value, monkeypatch):
    monkeypatch.setenv("KIT_KAGGLE_TIMEOUT", value)
    with pytest.raises(kaggle_cli.KaggleError) as err:
        kaggle_cli.run(["kernels", "status", "x/y"], "kernel x/y")
    message = str(err.value)
    assert "KIT_KAGGLE_TIMEOUT" in message and repr(value) in message and "\n" not in message


@pytest.mark.parametrize(("value", "seconds"), [("", 300.0), ("12.5", 12.5), (" 60 ", 60.0)])
def test_kaggle_timeout_is_read_at_call_time(value, seconds, monkeypatch):
    monkeypatch.setenv("KIT_KAGGLE_TIMEOUT", value)
    assert kaggle_cli.timeout_s() == seconds


def test_a_bad_kaggle_timeout_breaks_no_import_and_the_command_says_which_variable(home, fake_kaggle, monkeypatch):
    env = {**os.environ, "KIT_KAGGLE_TIMEOUT": "soon", "PYTHONPATH": str(REPO)}
    code = "import competition.kaggle_cli, competition.kaggle_kernel, competition.submit"
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True).returncode == 0
    smoke_experiment(home, "exp1")
    monkeypatch.setenv("KIT_KAGGLE_TIMEOUT", "soon")
    result = call_kit(home, "competition.kaggle_kernel", "status", "exp1", check=False)
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert result.returncode == 2 and len(errors) == 1 and "KIT_KAGGLE_TIMEOUT='soon'" in errors[0]
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------- e. disk full only when the disk is full

DISK_FULL = [OSError(errno.ENOSPC, "No space left on device"), OSError(errno.EDQUOT, "Disk quota exceeded"),
             OSError("No space left on device"), RuntimeError("write: no space left on device")]
TORCH_WRITER = RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0")
OTHER = [PermissionError(errno.EACCES, "Permission denied"), OSError(errno.EIO, "Input/output error"),
         TypeError("unsupported operand"), ValueError("bad value"), KeyError("prob"), RuntimeError("CUDA error"),
         FileNotFoundError(errno.ENOENT, "No such file"), IsADirectoryError(errno.EISDIR, "Is a directory")]


@pytest.mark.parametrize("free", [0, 2**40])
@pytest.mark.parametrize("err", DISK_FULL + [TORCH_WRITER] + OTHER, ids=repr)
def test_only_a_real_disk_full_error_is_called_disk_full(err, free, monkeypatch, tmp_path):
    monkeypatch.setattr(atomic, "free_bytes", lambda folder: free)
    expected = err in DISK_FULL or (err is TORCH_WRITER and free == 0)
    assert atomic.out_of_space(err, tmp_path) is expected
    with pytest.raises(atomic.DiskFullError if expected else type(err)):
        with atomic.atomic_path(tmp_path / "out.csv") as tmp:
            tmp.write_text("partial")
            raise err
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- f. pull --replace rolled back


def runs(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(new run in staging, dest with an old run, the aside folder)."""
    new, dest = tmp_path / "staging" / "exp", tmp_path / "experiments" / "exp"
    new.mkdir(parents=True)
    (new / "metrics.json").write_text("new")
    dest.mkdir(parents=True)
    (dest / "metrics.json").write_text("old")
    return new, dest, dest.with_name(".exp.replaced")


def failing_move(kind: type[BaseException]):
    def move(src: str, dst: str) -> None:
        Path(dst).mkdir()
        (Path(dst) / "half.pt").write_text("partial copy")  # a cross-device move died half way
        raise kind(errno.ENOSPC, "No space left on device") if issubclass(kind, OSError) else kind()
    return move


@pytest.mark.parametrize("kind", [OSError, PermissionError, KeyboardInterrupt])
@pytest.mark.parametrize("existing", [True, False])
def test_failed_final_move_restores_the_old_run(tmp_path, monkeypatch, kind, existing):
    new, dest, old = runs(tmp_path)
    if not existing:
        (dest / "metrics.json").unlink()
        dest.rmdir()
    monkeypatch.setattr(kernel.shutil, "move", failing_move(kind))
    with pytest.raises(KitError if kind is not KeyboardInterrupt else KeyboardInterrupt) as err:
        kernel.swap_in(new, dest, old)
    if existing:
        assert (dest / "metrics.json").read_text() == "old" and not (dest / "half.pt").exists()
    else:
        assert not dest.exists()
    assert not old.exists() and (new / "metrics.json").read_text() == "new"
    if kind is not KeyboardInterrupt:
        assert "\n" not in str(err.value) and ("previous run is back" in str(err.value)) == existing


def test_swap_in_replaces_and_recovers_an_interrupted_swap(tmp_path):
    new, dest, old = runs(tmp_path)
    kernel.swap_in(new, dest, old)
    assert (dest / "metrics.json").read_text() == "new" and not old.exists() and not new.exists()
    # a swap killed between its two moves left the old run aside and no dest: it comes back first
    new2, dest2, old2 = runs(tmp_path / "again")
    dest2.rename(old2)
    (new2 / "metrics.json").write_text("newer")
    original = kernel.shutil.move
    try:
        kernel.shutil.move = failing_move(OSError)
        with pytest.raises(KitError):
            kernel.swap_in(new2, dest2, old2)
    finally:
        kernel.shutil.move = original
    assert (dest2 / "metrics.json").read_text() == "old" and not old2.exists()


def test_pull_install_keeps_the_local_run_when_the_move_fails(home, monkeypatch):
    smoke_experiment(home, "exp1")
    cfg = load_config("exp1", [], Project(home), check_model=False)
    staged = home / "staging"
    (staged / "experiments" / "exp1").mkdir(parents=True)
    (staged / "experiments" / "exp1" / "metrics.json").write_text("pulled")
    local = home / "experiments" / "exp1"
    local.mkdir(parents=True)
    (local / "metrics.json").write_text("local")
    monkeypatch.setattr(kernel.shutil, "move", failing_move(OSError))
    with pytest.raises(KitError, match="previous run is back in place"):
        kernel.install_outputs(Project(home), cfg, staged, replace=True)
    assert (local / "metrics.json").read_text() == "local"
    assert sorted(p.name for p in local.iterdir()) == ["metrics.json"]
    assert not (home / "experiments" / ".exp1.replaced").exists()


# ---------------------------------------------------------------- g. kaggle 2.x credentials advice

CREDENTIAL_FAILURES = [
    "Authentication required to call the Kaggle API.\n\nRecommended: log in with OAuth...\n    kaggle auth login",
    "Invalid credentials!",
    "401 Client Error: Unauthorized for url: https://www.kaggle.com/api/v1/kernels/status",
    "OSError: Could not find kaggle.json. Make sure it's located in /root/.config/kaggle.",
]


@pytest.mark.parametrize("output", CREDENTIAL_FAILURES)
@pytest.mark.parametrize("explain", ["kaggle_cli", "submit"])
def test_refused_credentials_advice_names_kaggle_2x_logins(output, explain):
    from competition import submit

    message = (kaggle_cli.explain_failure(output, "kernel a/b") if explain == "kaggle_cli"
               else submit.explain_failure(output, "slug"))
    for part in ("kaggle auth login", "~/.kaggle/access_token", "KAGGLE_API_TOKEN", "kaggle.json", "KAGGLE_KEY"):
        assert part in message
    assert "\n" not in message


def test_missing_user_name_advice_names_the_token_logins(monkeypatch, tmp_path):
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path))
    with pytest.raises(kaggle_cli.KaggleError) as err:
        kaggle_cli.username()
    for part in ("--user", "KAGGLE_USERNAME", "kaggle auth login", "access_token", "KAGGLE_API_TOKEN"):
        assert part in str(err.value)


@pytest.mark.parametrize("where", ["home", "config_dir", "env_file", "env_value"])
def test_kaggle_2x_tokens_are_masked(where, monkeypatch, tmp_path):
    token = "KGAT_0123456789abcdef"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "cfg"))
    for var in ("KAGGLE_API_TOKEN", "KAGGLE_KEY"):
        monkeypatch.delenv(var, raising=False)
    target = {"home": tmp_path / "home" / ".kaggle" / "access_token",
              "config_dir": tmp_path / "cfg" / "access_token", "env_file": tmp_path / "token.txt"}.get(where)
    if target is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(token + "\n")
    if where == "env_file":
        monkeypatch.setenv("KAGGLE_API_TOKEN", str(target))
    if where == "env_value":
        monkeypatch.setenv("KAGGLE_API_TOKEN", token)
    assert token not in kaggle_cli.redact(f"debug: token {token} used")
    assert re.search(r"\*\*\*", kaggle_cli.redact(token))


@pytest.mark.parametrize(("output", "state"), [
    ("ready\n", "ready"), ("debug: using key ***\nready\n", "ready"), ("blobs_received", "blobs_received"),
    ("Warning: a version already exists\nblobs_received\n", "blobs_received"), ("failed", "failed"),
    ("error: could not reach kaggle.com (ready soon?)", ""), ("404 Client Error: Not Found", "")])
def test_dataset_status_is_its_own_line_not_a_word_inside_another(output, state):
    assert kernel.dataset_state(output) == state
