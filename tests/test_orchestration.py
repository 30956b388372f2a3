"""Orchestration defects: --restart in every mode (the "changed since these outputs were made" advice always leads
to a command that works, never round in a loop), and fold workers (`--devices`) stopped when one of them fails.

The restart tests stub the training of a fold (competition.experiment.run_fold) and the assembly: they check what
the run folder does (what is deleted, what is refused, what is trained), in-process, in seconds.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from competition import experiment
from competition.config import load_config, save_config
from competition.fold_workers import Worker, WorkerError, device_plan, stop_workers, wait_workers
from competition.folds import load_tables
from competition.project import Project
from competition.run_folder import experiment_lock, inputs_fingerprint
from tests.conftest import call_kit, smoke_experiment

MODES = {  # how the run is started: every mode a user may combine with --restart
    "all": [],
    "all, some folds": ["--folds", "1"],
    "train only": ["--no-assemble"],
    "train some folds": ["--folds", "0", "--no-assemble"],
    "assemble": ["--assemble"],
}
CHANGES = ("config", "training rows", "test rows")  # what changed since the outputs were made
DROP_ASSEMBLE = ("without --assemble", "on a training run")  # advice phrases that mean: not with --assemble


@pytest.fixture
def trained(home, monkeypatch):
    """experiments/e/ as a run left it (config, inputs, a checkpoint), with training and assembly stubbed."""
    smoke_experiment(home, "e")
    project = Project(home)
    cfg = load_config("e", [], project)
    train, test = load_tables(cfg, project)
    out = home / "experiments" / "e"
    (out / "fold0").mkdir(parents=True)
    (out / "fold0" / "best.pt").write_bytes(b"old")
    save_config(cfg, out / "config.yaml")
    (out / "inputs.json").write_text(json.dumps(inputs_fingerprint(train, test)))
    calls = {"trained": [], "assembled": 0}
    monkeypatch.setattr(experiment, "run_fold", lambda cfg, project, fold, run, out: calls["trained"].append(fold))

    def finish(*args, **kwargs) -> dict:
        calls["assembled"] += 1
        return {}

    monkeypatch.setattr(experiment, "finish", finish)
    return home, out, calls


def make_change(out, change: str) -> list[str]:
    """Make the outputs stale in one way; the overrides the new run passes."""
    if change == "config":
        return ["train.epochs=2"]
    saved = json.loads((out / "inputs.json").read_text())
    saved["train" if change == "training rows" else "test"] = "made-from-other-rows"
    (out / "inputs.json").write_text(json.dumps(saved))
    return []


def follow(args: list[str], message: str) -> list[str]:
    """What a user types next after reading an error's advice."""
    new = list(args)
    if "--restart" in message and "--restart" not in new:
        new.append("--restart")
    if "--assemble" in new and any(p in message for p in DROP_ASSEMBLE):
        new.remove("--assemble")
    return new


@pytest.mark.parametrize("change", CHANGES)
@pytest.mark.parametrize("mode", MODES)
def test_the_advice_of_a_changed_run_leads_to_a_command_that_works(trained, mode, change):
    home, out, calls = trained
    args = ["e", *make_change(out, change), *MODES[mode]]
    tried, messages = [], []
    for _ in range(3):
        result = call_kit(home, "competition.experiment", *args, check=False)
        if result.returncode == 0:
            break
        assert result.returncode == 2 and "Traceback" not in result.stderr
        tried.append(args)
        messages.append(result.stderr)
        args = follow(args, result.stderr)
        assert args not in tried, f"the advice loops: {args} again after:\n{result.stderr[-600:]}"
    assert result.returncode == 0, result.stderr[-1500:]
    assert len(tried) == 1 and "changed since these outputs were made" in messages[0]  # one step: the advice works
    assert not (out / "fold0" / "best.pt").exists()  # started over: the stale checkpoint is gone
    folds = [0] if "0" in args else [1] if "1" in args else [0, 1]
    assert calls["trained"] == folds


@pytest.mark.parametrize("mode", [m for m in MODES if m != "assemble"])
def test_restart_in_every_training_mode_starts_the_whole_experiment_over(trained, mode):
    home, out, calls = trained
    (out / "fold1").mkdir()
    (out / "fold1" / "result.json").write_text("{}")  # another fold, made earlier (by another process)
    call_kit(home, "competition.experiment", "e", "train.epochs=2", *MODES[mode], "--restart")
    assert not (out / "fold0" / "best.pt").exists() and not (out / "fold1" / "result.json").exists()
    assert "epochs: 2" in (out / "config.yaml").read_text()
    assert calls["assembled"] == (0 if "--no-assemble" in MODES[mode] else 1)


TRAINING = [m for m in MODES if m != "assemble"]
HELD = [(m, fold) for m in TRAINING for fold in ("fold0", "fold1")] + [  # a fold being trained elsewhere, or
    (m, ".") for m in TRAINING if "--no-assemble" in MODES[m]]  # a whole run holding the experiment's lock


@pytest.mark.parametrize("mode, held", HELD)
def test_restart_is_refused_while_another_process_uses_the_experiment(trained, mode, held):
    home, out, calls = trained
    args = ["e", "train.epochs=2", *MODES[mode], "--restart"]
    with experiment_lock(out / held):
        refused = call_kit(home, "competition.experiment", *args, check=False)
    assert refused.returncode == 2 and "is in use by pid" in refused.stderr and "then rerun" in refused.stderr
    assert (out / "fold0" / "best.pt").exists() and calls["trained"] == []  # nothing deleted, nothing trained
    call_kit(home, "competition.experiment", *args)  # the advice: once the other run ended, rerun
    assert not (out / "fold0" / "best.pt").exists()


@pytest.mark.parametrize("extra", [[], ["--folds", "0"], ["train.epochs=2"]])
def test_restart_with_assemble_is_refused_and_deletes_nothing(trained, extra):
    home, out, calls = trained
    refused = call_kit(home, "competition.experiment", "e", *extra, "--assemble", "--restart", check=False)
    assert refused.returncode == 2 and "--assemble" in refused.stderr and "./run.sh e --restart" in refused.stderr
    assert (out / "fold0" / "best.pt").exists() and calls == {"trained": [], "assembled": 0}


def test_the_help_says_what_restart_deletes(capsys):
    with pytest.raises(SystemExit):
        experiment.main(["--help"], project=Project("."))
    text = "".join(capsys.readouterr().out.split())  # argparse wraps lines, also at hyphens
    assert "everyfold,alsowith--folds/--no-assemble" in text and "whenonefails,theothersarestopped" in text


# --- fold workers --------------------------------------------------------------------------------------------------

def fake_worker(device: str, folds: list[int], behaviour: str) -> Worker:
    """A stand-in worker process: `ok`, `fails N` (exit N soon), `long` (runs for minutes), `stubborn` (long and
    ignoring SIGTERM), `crash` (killed by a signal)."""
    code = {"ok": "pass", "long": "time.sleep(300)", "crash": "time.sleep(0.3); os.kill(os.getpid(), 9)",
            "stubborn": "signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(300)"}
    body = f"time.sleep(0.5); sys.exit({behaviour.split()[1]})" if behaviour.startswith("fails") else code[behaviour]
    proc = subprocess.Popen([sys.executable, "-c", f"import os, signal, sys, time\n{body}"],
                            stdout=subprocess.PIPE if behaviour == "stubborn" else None, text=True)
    if behaviour == "stubborn":
        proc.stdout.readline()  # SIGTERM is ignored from here on
    return Worker(device, folds, proc)


FAILURES = {  # the other workers' behaviours, the failing one's, where it sits
    "second fails, first trains on": (["long", "fails 2"]),
    "first fails, second trains on": (["fails 1", "long"]),
    "middle of three crashes": (["long", "crash", "long"]),
    "one fails, one ignores SIGTERM": (["stubborn", "fails 2"]),
    "one fails, one had finished": (["ok", "long", "fails 3"]),
}


@pytest.mark.parametrize("case", FAILURES)
def test_a_failed_worker_stops_the_others_and_is_named(case):
    behaviours = FAILURES[case]
    workers = [fake_worker(f"dev{i}", [i], b) for i, b in enumerate(behaviours)]
    t0 = time.monotonic()
    with pytest.raises(WorkerError) as err:
        wait_workers(workers, grace=1.0, poll=0.05)
    assert time.monotonic() - t0 < 15  # not the 300 s the healthy ones would have run
    assert all(w.proc.returncode is not None for w in workers)  # nobody left running
    message = str(err.value)
    for w, b in zip(workers, behaviours):
        if b.startswith("fails") or b == "crash":
            assert f"{w.device} (folds {w.folds}, exit {w.proc.returncode})" in message.split("; stopped")[0]
        elif b in ("long", "stubborn"):
            assert w.proc.returncode < 0 and w.device in message.split("; stopped")[1]
    assert "rerun the same command to resume" in message and "\n" not in message


def test_workers_that_all_succeed_are_simply_waited_for():
    workers = [fake_worker(f"dev{i}", [i], "ok") for i in range(3)]
    wait_workers(workers, grace=1.0, poll=0.05)
    assert [w.proc.returncode for w in workers] == [0, 0, 0]


def test_ctrl_c_in_the_parent_stops_the_workers(monkeypatch):
    import competition.fold_workers as fold_workers

    workers = [fake_worker("a", [0], "long"), fake_worker("b", [1], "stubborn")]

    real_sleep, calls = time.sleep, []

    def interrupted(seconds):  # Ctrl-C in the parent's first wait; later sleeps (subprocess's own) are real
        calls.append(seconds)
        if len(calls) == 1:
            raise KeyboardInterrupt
        real_sleep(seconds)

    monkeypatch.setattr(fold_workers.time, "sleep", interrupted)
    with pytest.raises(KeyboardInterrupt):
        wait_workers(workers, grace=0.5)
    assert all(w.proc.returncode is not None and w.proc.returncode < 0 for w in workers)


def test_stop_workers_kills_what_ignores_sigterm_after_the_grace_period():
    workers = [fake_worker("a", [0], "stubborn")]
    t0 = time.monotonic()
    assert stop_workers(workers, grace=0.5) == workers
    assert 0.4 < time.monotonic() - t0 < 10 and workers[0].proc.returncode == -9


@pytest.mark.parametrize("devices, folds, plan", [
    ("0,1", [0, 1, 2], [("cuda:0", [0, 2]), ("cuda:1", [1])]),
    ("cpu,cpu", [0, 1], [("cpu", [0]), ("cpu", [1])]),
    ("cuda:0, cuda:1,,", [3], [("cuda:0", [3])]),
])
def test_device_plan_deals_folds_round_robin(devices, folds, plan, monkeypatch):
    monkeypatch.setattr("torch.cuda.device_count", lambda: 2)  # the plan's arithmetic, on a CPU-only machine
    assert device_plan(devices, folds) == plan


@pytest.mark.slow
def test_a_run_whose_worker_fails_stops_the_healthy_one_fast(home, monkeypatch):
    """`--devices cpu,cuda:99`: the worker on a GPU that is not there fails at start; the cpu one (50 epochs) is
    stopped instead of training on. The parent is told 100 GPUs exist (so the up-front device check passes); the
    worker process sees the real machine and fails."""
    monkeypatch.setattr("torch.cuda.device_count", lambda: 100)
    smoke_experiment(home, "par", train={"epochs": 50})
    t0 = time.monotonic()
    result = call_kit(home, "competition.experiment", "par", "--devices", "cpu,cuda:99", check=False)
    assert time.monotonic() - t0 < 180
    assert result.returncode == 2 and "Traceback" not in result.stderr
    failed = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert len(failed) == 1 and "worker(s) failed: cuda:99 (folds [1], exit 2)" in failed[0]
    assert "stopped the other worker(s): cpu (folds [0]" in failed[0]
    out = home / "experiments" / "par"
    assert not (out / "oof.csv").exists()  # not assembled
    for fold in ("fold0", "fold1"):
        with experiment_lock(out / fold):  # free again: a rerun resumes them
            pass
