"""Accident classes of `./run.sh kaggle ...` (push / status / pull / submit-kernel, with and without --inference), each
refused or normalised by ONE mechanism, tested with generated variants against the fake `kaggle` on PATH:

1. --accelerator: one option type (options.accelerator) for push and push --inference: Kaggle's spelling whatever the
   case/spaces/dashes, near misses refused naming the shape meant, CPU/TPU refused for the training kernel;
2. options that do not apply to the action (the APPLIES table of kaggle_kernel, checked right after parsing);
3. a blend named without --inference;
4. two names whose Kaggle slugs coincide (the push records under the cache), refused unless --force;
5. submit-kernel of a kernel that is not complete, refused unless --force.
No training: pushes stand in their bundle builders and the runtime estimate (monkeypatched), the rest is real."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from competition import kaggle_inference, kaggle_kernel, options
from competition.config import load_config
from competition.project import Project
from tests.conftest import make_competition, smoke_experiment
from tests.test_kaggle_inference import calls, fake_finished, kit, one_error_line, set_slug
from tests.test_kaggle_inference import fake_kaggle  # noqa: F401 - the fixture: fake kaggle CLI on PATH, user alice


@pytest.fixture
def slug_home(tmp_path):
    """The tiny competition with a slug, nothing trained."""
    return set_slug(make_competition(tmp_path / "home"))


@pytest.fixture
def cheap_push(monkeypatch):
    """Pushes without bundles or runtime estimate: the bundle builders make an empty folder, no estimate is made."""
    def bundle(*args, **kwargs) -> dict:
        dest = next(a for a in args if isinstance(a, Path) and a.name == "bundle")
        dest.mkdir(parents=True, exist_ok=True)
        return {"commit": "0" * 40}

    monkeypatch.setattr(kaggle_inference, "build_inference_bundle", bundle)
    monkeypatch.setattr(kaggle_inference, "check_runtime", lambda *a, **k: {})
    monkeypatch.setattr(kaggle_kernel, "build_bundle", bundle)
    monkeypatch.setattr(kaggle_kernel, "ensure_local_folds", lambda *a: None)


def pushes(state: Path) -> list[list[str]]:
    return [c for c in calls(state) if c[:2] == ["kernels", "push"]]


def write_blend(home: Path, name: str, members: list[str]) -> Path:
    """submissions/<name>.json as `ensemble` writes it (the fitted blend; its members must be finished)."""
    (home / "submissions").mkdir(exist_ok=True)
    side = home / "submissions" / f"{name}.json"
    side.write_text(json.dumps({"members": members, "blend": {"members": members, "method": "mean", "metric": "auc",
                                                              "threshold": 0.5}}))
    return side


# ---------------------------------------------------------------- 1. --accelerator: one option type

NORMALISED = {"nvidiateslat4": "NvidiaTeslaT4", "NvidiaTesla-T4": "NvidiaTeslaT4", "NVIDIA TESLA T4": "NvidiaTeslaT4",
              "nvidia_tesla_t4": "NvidiaTeslaT4", " NvidiaTeslaT4 ": "NvidiaTeslaT4", "nvidial4x1": "NvidiaL4X1",
              "Nvidia-L4": "NvidiaL4", "nvidiateslat4highmem": "NvidiaTeslaT4Highmem", "nvidia-h100": "NvidiaH100",
              "NVIDIARTXPRO6000": "NvidiaRtxPro6000"}
MEANT = "did you mean {}?"
NEAR_MISSES = {"NvidiaTeslaT4x2": MEANT.format("NvidiaTeslaT4"), "T4": MEANT.format("NvidiaTeslaT4"),
               "t4x2": MEANT.format("NvidiaTeslaT4"), "gpu": MEANT.format("NvidiaTeslaT4"),
               "NvidaTeslaT4": MEANT.format("NvidiaTeslaT4"), "NvidiaTeslT4": MEANT.format("NvidiaTeslaT4"),
               "a100": MEANT.format("NvidiaTeslaA100"), "H100": MEANT.format("NvidiaH100"),
               "NvidiaL4x4": MEANT.format("NvidiaL4"), "nvidia-l4-x2": MEANT.format("NvidiaL4"),
               "P100": "NvidiaTeslaP100 is retired on Kaggle", "nvidia tesla p100": "NvidiaTeslaP100 is retired",
               "TpuV38": "TpuV38 is retired", "tpu": "TpuV5E8 is a TPU shape", "TpuV5E8": "TpuV5E8 is a TPU shape",
               "tpu-v6e8": "TpuV6E8 is a TPU shape", "bogus": "", "": "", "Nvidia": ""}
PUSHES = {"push": ["push", "fk"], "push --inference": ["push", "fk", "--inference"]}


@pytest.mark.parametrize("typed", list(NORMALISED))
@pytest.mark.parametrize("action", list(PUSHES))
def test_case_space_and_dash_variants_reach_kaggle_in_its_spelling(slug_home, fake_kaggle, cheap_push, typed, action):
    fake_finished(slug_home, "fk")
    out = kit(slug_home, *PUSHES[action], "--no-wheels", "--accelerator", typed)
    assert out.returncode == 0, out.stderr[-2000:]
    push = pushes(fake_kaggle)[-1]
    assert push[push.index("--accelerator") + 1] == NORMALISED[typed]
    meta = json.loads((fake_kaggle / "kernel" / "kernel-metadata.json").read_text())
    assert meta["machine_shape"] == NORMALISED[typed] and meta["enable_gpu"] is True
    assert "not among the Kaggle machine shapes" not in out.stderr and "ASSUMED" not in out.stderr


@pytest.mark.parametrize("typed", list(NEAR_MISSES))
@pytest.mark.parametrize("action", list(PUSHES))
def test_near_misses_are_one_line_naming_the_shape_meant(slug_home, fake_kaggle, typed, action):
    fake_finished(slug_home, "fk")
    line = one_error_line(kit(slug_home, *PUSHES[action], "--no-wheels", "--accelerator", typed))
    assert "--accelerator" in line and repr(typed) in line and "expected a Kaggle machine shape:" in line
    assert NEAR_MISSES[typed] in line, line
    if "retired" in NEAR_MISSES[typed] or "TPU" in NEAR_MISSES[typed]:
        assert "pass NvidiaTeslaT4" in line  # what to type instead
    assert calls(fake_kaggle) == []  # refused before any kaggle call


@pytest.mark.parametrize("typed", ["cpu", "CPU", " Cpu ", "TpuV5E8", "tpuv6e8"])
def test_a_cpu_or_tpu_shape_is_refused_for_the_training_kernel_which_needs_cuda(slug_home, fake_kaggle, typed):
    smoke_experiment(slug_home, "e1")
    line = one_error_line(kit(slug_home, "push", "e1", "--accelerator", typed))
    assert "--accelerator" in line and "pass NvidiaTeslaT4" in line
    assert "CUDA" in line or "cpu" in line.lower()
    assert calls(fake_kaggle) == []


@pytest.mark.parametrize("typed", ["cpu", "CPU"])
def test_an_inference_kernel_may_run_on_the_cpu_without_accelerator(slug_home, fake_kaggle, cheap_push, typed):
    fake_finished(slug_home, "fk")
    out = kit(slug_home, "push", "fk", "--inference", "--no-wheels", "--accelerator", typed)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "--accelerator" not in pushes(fake_kaggle)[-1]
    meta = json.loads((fake_kaggle / "kernel" / "kernel-metadata.json").read_text())
    assert meta["enable_gpu"] is False and meta["machine_shape"] == ""


@pytest.mark.parametrize("typed", ["NvidiaB200", "NvidiaH200", "NvidiaGb300X8"])
@pytest.mark.parametrize("action", list(PUSHES))
def test_an_unlisted_well_formed_nvidia_shape_is_passed_on_with_a_warning(slug_home, fake_kaggle, cheap_push, typed,
                                                                          action):
    fake_finished(slug_home, "fk")
    out = kit(slug_home, *PUSHES[action], "--no-wheels", "--accelerator", typed)
    assert out.returncode == 0, out.stderr[-2000:]
    push = pushes(fake_kaggle)[-1]
    assert push[push.index("--accelerator") + 1] == typed
    says = "not among the Kaggle machine shapes" if action == "push" else "speed factor is ASSUMED"
    assert says in out.stderr and "WARNING" in out.stderr


def test_speed_factors_cover_exactly_the_shapes_an_inference_kernel_accepts():
    accepted = {name for name in options.KAGGLE_MACHINES if kaggle_inference.ACCELERATOR.parse(name) == name}
    assert set(kaggle_inference.SPEED_FACTORS) == accepted
    assert not set(options.RETIRED_MACHINES) & set(kaggle_inference.SPEED_FACTORS)
    for name in options.KAGGLE_MACHINES:  # every listed shape is its own canonical spelling, in any case
        kinds = ("gpu", "cpu", "tpu")
        assert options.accelerator(kinds)(name.lower()) == name == options.accelerator(kinds)(name.upper())


# ---------------------------------------------------------------- 2. options that do not apply to the action

GIVEN = {"user": ["--user", "bob"], "accelerator": ["--accelerator", "NvidiaL4"], "no_wheels": ["--no-wheels"],
         "target_freeze": ["--target-freeze", "freeze.txt"], "allow_dirty": ["--allow-dirty"], "replace": ["--replace"],
         "test_rows": ["--test-rows", "10"], "sample": ["--sample", "5"], "force": ["--force"],
         "version": ["--version", "2"], "message": ["-m", "msg"]}
ACTIONS = {"push": ["push", "nosuch"], "push --inference": ["push", "nosuch", "--inference"],
           "status": ["status", "nosuch"], "status --inference": ["status", "nosuch", "--inference"],
           "pull": ["pull", "nosuch"], "submit-kernel": ["submit-kernel", "nosuch"]}
MISPLACED = [(dest, action) for dest, uses in kaggle_kernel.APPLIES.items() for action in ACTIONS if action not in uses]
PLACED = [(dest, action) for dest, uses in kaggle_kernel.APPLIES.items() for action in uses]


def test_the_table_names_every_option_of_the_command_and_real_actions():
    from tests.test_options import build_parser

    dests = {a.dest for a in build_parser("kaggle_kernel")._actions if a.option_strings and a.dest != "help"}
    assert dests - {"inference"} == set(kaggle_kernel.APPLIES) == set(GIVEN)
    assert {a for uses in kaggle_kernel.APPLIES.values() for a in uses} == set(ACTIONS)
    assert len(MISPLACED) >= 30


@pytest.mark.parametrize("dest, action", MISPLACED)
def test_an_option_given_to_an_action_it_does_not_apply_to_is_one_line(slug_home, fake_kaggle, dest, action):
    line = one_error_line(kit(slug_home, *ACTIONS[action], *GIVEN[dest]))
    option = GIVEN[dest][0] if GIVEN[dest][0] != "-m" else "--message"
    assert f"{option} does not apply to `kaggle {action}`" in line
    assert all(use in line for use in kaggle_kernel.APPLIES[dest])  # where it does apply
    assert calls(fake_kaggle) == []


@pytest.mark.parametrize("dest, action", PLACED)
def test_an_option_on_an_action_it_applies_to_passes_the_check(slug_home, fake_kaggle, dest, action):
    out = kit(slug_home, *ACTIONS[action], *GIVEN[dest])
    assert "does not apply" not in out.stderr  # it may fail later, for the unknown name: never for the option


# ---------------------------------------------------------------- 3. a blend named without --inference

@pytest.mark.parametrize("spelling", ["best", "submissions/best.csv", "best.json", "submissions/best.json",
                                      "best.csv"])
@pytest.mark.parametrize("action", ["push", "status", "pull"])
def test_a_blend_without_inference_is_one_line_saying_add_inference(slug_home, fake_kaggle, spelling, action):
    fake_finished(slug_home, "fk")
    write_blend(slug_home, "best", ["fk"])
    line = one_error_line(kit(slug_home, action, spelling))
    assert "is a blend" in line and "submissions/best.json" in line and "--inference" in line
    assert calls(fake_kaggle) == []


@pytest.mark.parametrize("action", ["status", "pull"])
def test_an_experiment_with_the_name_of_a_blend_is_still_the_experiment(slug_home, fake_kaggle, action):
    smoke_experiment(slug_home, "best")
    fake_finished(slug_home, "fk")
    write_blend(slug_home, "best", ["fk"])
    assert "is a blend" not in kit(slug_home, action, "best").stderr


# ---------------------------------------------------------------- 4. two names, one Kaggle slug

INFERENCE_PAIRS = [("exp_1", "exp-1"), ("Exp1", "exp1"), ("m.1", "m_1"), ("a" * 44 + "x", "a" * 44 + "y")]


@pytest.mark.parametrize("first, second", INFERENCE_PAIRS)
def test_push_inference_of_a_second_name_with_the_same_slug_is_refused_unless_forced(slug_home, fake_kaggle,
                                                                                     cheap_push, first, second):
    for name in (first, second):
        fake_finished(slug_home, name)
    assert kit(slug_home, "push", first, "--inference", "--no-wheels").returncode == 0
    line = one_error_line(kit(slug_home, "push", second, "--inference", "--no-wheels"))
    assert f"experiment {second} (inference kernel)" in line and f"experiment {first} (inference kernel)" in line
    assert "--force" in line and len(pushes(fake_kaggle)) == 1
    forced = kit(slug_home, "push", second, "--inference", "--no-wheels", "--force")
    assert forced.returncode == 0 and "overwriting" in forced.stderr and len(pushes(fake_kaggle)) == 2


def test_a_blend_pushed_under_the_name_an_experiment_was_pushed_under_is_refused(slug_home, fake_kaggle, cheap_push):
    fake_finished(slug_home, "m1")
    assert kit(slug_home, "push", "m1", "--inference", "--no-wheels").returncode == 0
    fake_finished(slug_home, "m2")
    write_blend(slug_home, "m1", ["m2"])  # now `m1` names a blend (blends win): its kernel slug is the same
    line = one_error_line(kit(slug_home, "push", "m1", "--inference", "--no-wheels"))
    assert "blend m1 (inference kernel)" in line and "experiment m1 (inference kernel)" in line


@pytest.mark.parametrize("first, second, second_args", [
    ("exp_1", "exp-1", ["push", "exp-1"]), ("Exp2", "exp2", ["push", "exp2"]),
    ("b-infer", "b", ["push", "b", "--inference"])])  # a training kernel and an inference kernel
def test_a_training_push_takes_part_in_the_same_check(slug_home, fake_kaggle, cheap_push, first, second, second_args):
    smoke_experiment(slug_home, first)
    smoke_experiment(slug_home, second)
    if "--inference" in second_args:
        fake_finished(slug_home, second)
    assert kit(slug_home, "push", first, "--no-wheels").returncode == 0
    line = one_error_line(kit(slug_home, *second_args, "--no-wheels"))
    assert f"experiment {first} (training kernel)" in line and f"{second} (" in line and "--force" in line
    assert len(pushes(fake_kaggle)) == 1


def test_the_same_name_pushed_again_is_not_a_collision(slug_home, fake_kaggle, cheap_push):
    fake_finished(slug_home, "fk")
    for _ in range(2):
        assert kit(slug_home, "push", "fk", "--inference", "--no-wheels").returncode == 0
    assert len(pushes(fake_kaggle)) == 2


# ---------------------------------------------------------------- 5. submit-kernel asks the kernel's state first

STATES = {"KernelWorkerStatus.QUEUED": "queued", "KernelWorkerStatus.RUNNING": "running", "running": "running",
          "KernelWorkerStatus.ERROR": "error", "KernelWorkerStatus.CANCEL_ACKNOWLEDGED": "cancelled",
          "KernelWorkerStatus.CANCEL_REQUESTED": "cancelled", "something new": "unknown"}


def pushed_kernel(home: Path, name: str = "b9", kernel: str = "alice/tiny-b9-infer") -> None:
    """A push record for name (what `push --inference` leaves), version 4."""
    cfg = load_config("", [], Project(home), check_model=False)
    folder = kaggle_inference.work_dir(Project(home), cfg, name)
    folder.mkdir(parents=True)
    (folder / "push.json").write_text(json.dumps({"kernel": kernel, "dataset": kernel + "-kit", "version": 4,
                                                  "target": name, "members": [name]}))


@pytest.mark.parametrize("status", list(STATES))
@pytest.mark.parametrize("typed", [["b9"], ["alice/tiny-b9-infer", "--version", "4"]])
def test_submit_kernel_refuses_a_kernel_that_is_not_complete_unless_forced(slug_home, fake_kaggle, monkeypatch,
                                                                           status, typed):
    pushed_kernel(slug_home)
    monkeypatch.setenv("FAKE_KERNEL_STATUS", status)
    line = one_error_line(kit(slug_home, "submit-kernel", *typed))
    assert f"is {STATES[status]}, not complete" in line and "alice/tiny-b9-infer" in line and "--force" in line
    assert [c[:2] for c in calls(fake_kaggle)] == [["kernels", "status"]]
    forced = kit(slug_home, "submit-kernel", *typed, "--force")
    assert forced.returncode == 0, forced.stderr[-2000:]
    assert calls(fake_kaggle)[-1][:2] == ["competitions", "submit"] and "anyway (--force)" in forced.stderr


@pytest.mark.parametrize("status", ["KernelWorkerStatus.COMPLETE", "complete"])
def test_submit_kernel_of_a_complete_kernel_submits_after_asking(slug_home, fake_kaggle, monkeypatch, status):
    pushed_kernel(slug_home)
    monkeypatch.setenv("FAKE_KERNEL_STATUS", status)
    assert kit(slug_home, "submit-kernel", "b9").returncode == 0
    made = calls(fake_kaggle)
    assert made[0] == ["kernels", "status", "alice/tiny-b9-infer"] and made[-1][:2] == ["competitions", "submit"]
    assert made[-1][made[-1].index("-v") + 1] == "4"
