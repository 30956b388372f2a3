"""Code competitions: `./run.sh kaggle push <blend> --inference`, the inference kernel, `status --inference` and
`submit-kernel`, against a fake `kaggle` on PATH that records its arguments and keeps what it was given; the pushed
kernel then runs here, without network (`unshare -rn` where the machine allows it), on a copy of the competition laid
out as Kaggle mounts it, and its submission.csv is compared with `predict` and `ensemble` on the same images."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from competition import kaggle_inference
from tests.conftest import REPO, call_kit, make_competition
from tests.test_kaggle_kernel import FAKE, KEY, install_fake_kaggle

SUBMIT = '''if verb == "competitions submit":
    if os.environ.get("FAKE_SUBMIT_FAIL"):
        print("Could not submit to competition: 400 Client Error: Bad Request"); sys.exit(0)
    print("Successfully submitted to " + args[args.index("-c") + 1]); sys.exit(0)
'''
FAKE_WITH_SUBMIT = FAKE.replace('print("unknown command"', SUBMIT + 'print("unknown command"', 1)


def one_error_line(result) -> str:
    """The single ERROR line of a refused command (exit 2, no traceback)."""
    errors = [line for line in result.stderr.splitlines() if "ERROR" in line or "error:" in line]
    assert result.returncode == 2 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    return errors[0]


@pytest.fixture
def fake_kaggle(tmp_path, monkeypatch):
    """A fake kaggle CLI on PATH (its records in the returned folder) and credentials for user alice."""
    bin_dir, state = install_fake_kaggle(tmp_path, FAKE_WITH_SUBMIT)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    for key, value in {"FAKE_KAGGLE_DIR": str(state), "KAGGLE_USERNAME": "alice", "KAGGLE_KEY": KEY,
                       "KAGGLE_CONFIG_DIR": str(tmp_path / "nocreds")}.items():
        monkeypatch.setenv(key, value)
    return state


def calls(state: Path) -> list[list[str]]:
    file = state / "calls.jsonl"
    return [json.loads(line) for line in file.read_text().splitlines()] if file.is_file() else []


def set_slug(home: Path, slug: str = "tiny-comp") -> Path:
    """competition.slug in the project's competition.yaml."""
    data = yaml.safe_load((home / "competition.yaml").read_text())
    data["competition"]["slug"] = slug
    (home / "competition.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return home


@pytest.fixture
def slug_home(tmp_path):
    """The tiny competition with a slug, nothing trained."""
    return set_slug(make_competition(tmp_path / "home"))


def kit(home: Path, *args: str, check: bool = False):
    out = call_kit(home, "competition.kaggle_kernel", *args, check=check)
    assert KEY not in out.stdout + out.stderr, "a credential was printed"
    return out


# ---------------------------------------------------------------- bad inputs: one line each, generated variants

UNKNOWN_TARGETS = ["nosuch", "submissions/nosuch.csv", "nosuch.json", "submissions/nosuch", "NoSuch.CSV"]


@pytest.mark.parametrize("spelling", UNKNOWN_TARGETS)
@pytest.mark.parametrize("command", [("competition.kaggle_kernel", "push", "{}", "--inference", "--no-wheels"),
                                     ("competition.kaggle_predict", "{}")])
def test_an_unknown_blend_or_experiment_is_one_line_naming_what_exists(slug_home, fake_kaggle, spelling, command):
    module, *args = command
    result = call_kit(slug_home, module, *[a.format(spelling) for a in args], check=False)
    line = one_error_line(result)
    assert "nosuch" in line.lower() and "no blend" in line and "none yet" in line
    assert not any(c[:2] == ["kernels", "push"] for c in calls(fake_kaggle))


@pytest.mark.parametrize("kernel, says", [("nosuch", "nothing was pushed"), ("submissions/nosuch.csv", "nothing was pushed"),
                                          ("alice/", "USER/KERNEL-SLUG"), ("a/b/c", "USER/KERNEL-SLUG"),
                                          ("/kernel", "USER/KERNEL-SLUG"), ("alice/bad slug", "USER/KERNEL-SLUG"),
                                          ("bad name!", "not a plain name")])
def test_an_unknown_kernel_is_one_line(slug_home, fake_kaggle, kernel, says):
    line = one_error_line(kit(slug_home, "submit-kernel", kernel, "--version", "1"))
    assert says in line
    assert calls(fake_kaggle) == []  # refused before any kaggle call


@pytest.mark.parametrize("value", ["0", "-1", "abc", "1.5", "nan", "100000", ""])
@pytest.mark.parametrize("option, command", [("--version", "submit-kernel"), ("--test-rows", "push"),
                                             ("--sample", "push")])
def test_counts_out_of_range_are_refused_while_parsing(slug_home, fake_kaggle, value, option, command):
    extra = ["--inference"] if command == "push" else []
    value = "1000000" if value == "100000" and option != "--version" else value
    line = one_error_line(kit(slug_home, command, "alice/some-kernel", *extra, f"{option}={value}"))
    assert option in line and "not allowed" in line
    assert calls(fake_kaggle) == []


def test_submit_kernel_without_a_slug_or_a_version_is_one_line(tmp_path, fake_kaggle):
    home = make_competition(tmp_path / "noslug")
    assert "competition.slug is empty" in one_error_line(kit(home, "submit-kernel", "alice/k", "--version", "2"))
    set_slug(home)
    assert "pass --version N" in one_error_line(kit(home, "submit-kernel", "alice/k"))


BAD_SIDECARS = {"member never trained": ('{"members": ["ghost"], "blend": {"members": ["ghost"], "method": "mean", '
                                          '"metric": "auc", "threshold": 0.5}}', "member ghost is not a finished"),
                "older kit, no fitted blend": ('{"members": ["ghost"]}', "without the fitted blend"),
                "not JSON": ("members: [ghost]", "not a readable blend sidecar")}


@pytest.mark.parametrize("case", list(BAD_SIDECARS))
@pytest.mark.parametrize("command", [("competition.kaggle_kernel", "push", "{}", "--inference", "--no-wheels"),
                                     ("competition.kaggle_predict", "{}")])
@pytest.mark.parametrize("spelling", ["bad", "submissions/bad.csv", "bad.json"])
def test_a_blend_that_cannot_be_predicted_is_one_line(slug_home, fake_kaggle, case, command, spelling):
    text, says = BAD_SIDECARS[case]
    (slug_home / "submissions").mkdir(exist_ok=True)
    (slug_home / "submissions" / "bad.json").write_text(text)
    module, *args = command
    assert says in one_error_line(call_kit(slug_home, module, *[a.format(spelling) for a in args], check=False))
    assert not any(c[:2] == ["kernels", "push"] for c in calls(fake_kaggle))


def fake_finished(home: Path, name: str) -> None:
    """An experiment folder that looks finished (files only: nothing can be predicted with it)."""
    from competition.config import load_config, save_config
    from competition.project import Project
    from tests.conftest import smoke_experiment

    smoke_experiment(home, name)
    out = home / "experiments" / name
    for k in (0, 1):
        (out / f"fold{k}").mkdir(parents=True)
        (out / f"fold{k}" / "best.pt").write_bytes(b"not a checkpoint")
        (out / f"fold{k}" / "result.json").write_text("{}")
    save_config(load_config(name, [], Project(home), check_model=False), out / "config.yaml")
    (out / "metrics.json").write_text(json.dumps({"folds_run": [0, 1], "threshold": 0.5}))


@pytest.mark.parametrize("test_csv", ["missing.csv", "train.csv.bak"])
def test_without_a_local_test_table_push_asks_for_test_rows(slug_home, fake_kaggle, test_csv):
    fake_finished(slug_home, "fk")
    data = yaml.safe_load((slug_home / "competition.yaml").read_text())
    data["competition"]["test_csv"] = test_csv
    (slug_home / "competition.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    line = one_error_line(kit(slug_home, "push", "fk", "--inference", "--no-wheels"))
    assert "pass --test-rows N" in line and test_csv in line
    assert calls(fake_kaggle) == []


# ---------------------------------------------------------------- submit-kernel against the fake CLI

def test_submit_kernel_runs_the_competition_submit_with_the_kernel_and_reads_success_like_submit(slug_home, fake_kaggle):
    ok = kit(slug_home, "submit-kernel", "alice/tiny-b-infer", "--version", "3", "-m", "first try")
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert calls(fake_kaggle)[-1] == ["competitions", "submit", "-c", "tiny-comp", "-k", "alice/tiny-b-infer", "-v", "3",
                                      "-f", "submission.csv", "-m", "first try"]
    os.environ["FAKE_SUBMIT_FAIL"] = "1"  # kaggle 2.x exits 0 after "Could not submit": not a success
    try:
        failed = kit(slug_home, "submit-kernel", "alice/tiny-b-infer", "--version", "3")
    finally:
        del os.environ["FAKE_SUBMIT_FAIL"]
    assert "400 Bad Request" in one_error_line(failed)


# ---------------------------------------------------------------- the runtime estimate's decision

@pytest.mark.parametrize("seconds, force, refused", [(8 * 3600, False, False), (10 * 3600, False, True),
                                                     (10 * 3600, True, False), (1e9, True, False)])
def test_the_estimate_refuses_over_nine_hours_unless_forced(monkeypatch, capsys, seconds, force, refused):
    est = {"rows": 5, "sampled": 2, "images_per_s_here": 1.0, "factor": 8.0, "accelerator": "NvidiaTeslaT4",
           "seconds": seconds, "limit_s": kaggle_inference.LIMIT_S, "fits": seconds <= kaggle_inference.LIMIT_S,
           "geometry": "m: 2 folds x TTA hflip"}
    monkeypatch.setattr(kaggle_inference, "estimate_runtime", lambda *a: est)
    target = kaggle_inference.Target("b", ["m"])
    if refused:
        with pytest.raises(kaggle_inference.KitError, match="would not finish in Kaggle's 9 h.*--force"):
            kaggle_inference.check_runtime(None, target, None, 5, "NvidiaTeslaT4", 2, force)
    else:
        assert kaggle_inference.check_runtime(None, target, None, 5, "NvidiaTeslaT4", 2, force) is est
    assert "runtime estimate:" in capsys.readouterr().out  # printed either way


def test_kernel_script_is_stdlib_only_and_has_its_settings_line():
    script = REPO / "competition" / "kaggle_predict_script.py"
    tree = ast.parse(script.read_text())
    top = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    top |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0}
    assert top - {"__future__", "competition"} <= set(sys.stdlib_module_names), top
    assert "SETTINGS: dict = {}" in script.read_text()


# ---------------------------------------------------------------- the whole path on the shared trained run

def tree_stamp(root: Path) -> dict:
    """sha256 of every file under root (what the read-only inputs must still be after the kernel ran)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def mount_inputs(root: Path, bundle: Path, data: Path) -> Path:
    """Kaggle's /kaggle/input: the bundle dataset and the competition, both copied and made read-only."""
    inputs = root / "input"
    shutil.copytree(bundle, inputs / "tiny-b1-infer-kit")
    shutil.copytree(data, inputs / "tiny-comp")
    for path in sorted(inputs.rglob("*"), reverse=True) + [inputs]:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    return inputs


def run_kernel(script: Path, inputs: Path, working: Path) -> subprocess.CompletedProcess:
    """The pushed script as Kaggle runs it: no KIT_HOME, no PYTHONPATH, no network (unshare -rn when possible)."""
    env = {k: v for k, v in os.environ.items() if k not in ("KIT_HOME", "PYTHONPATH", "KIT_NO_TRAINING")}
    env.update(KIT_KAGGLE_INPUT=str(inputs), KIT_KAGGLE_WORKING=str(working), OMP_NUM_THREADS="1")
    isolate = ["unshare", "-rn"] if shutil.which("unshare") and subprocess.run(
        ["unshare", "-rn", "true"], capture_output=True).returncode == 0 else []
    if not isolate:
        print("unshare -rn is not allowed here: the kernel runs with the network present")  # noqa: T201
    return subprocess.run([*isolate, sys.executable, str(script)], cwd=working, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow  # predicts with a trained run (and the shared run trains once)
def test_push_inference_kernel_offline_submission_equals_predict_then_submit_kernel(trained_project, fake_kaggle,
                                                                                    tmp_path):
    home = set_slug(trained_project)
    call_kit(home, "competition.ensemble", "done", "--method", "mean", "--name", "b1")
    pushed = kit(home, "push", "submissions/b1.csv", "--inference", "--no-wheels", "--allow-dirty", check=True)
    print(pushed.stdout)  # noqa: T201 - the estimate, for a -s run
    assert "runtime estimate: 12 test rows at" in pushed.stdout and "done: 2 folds x TTA hflip" in pushed.stdout
    meta = json.loads((fake_kaggle / "kernel" / "kernel-metadata.json").read_text())
    assert meta["id"] == "alice/tiny-b1-infer" and meta["enable_internet"] is False and meta["enable_gpu"] is True
    assert meta["competition_sources"] == ["tiny-comp"] and meta["dataset_sources"] == ["alice/tiny-b1-infer-kit"]
    made = calls(fake_kaggle)
    assert ["datasets", "create", "-p"] == made[1][:3] and made[1][made[1].index("-r") + 1] == "zip"
    assert any(c[:2] == ["kernels", "push"] and c[c.index("--accelerator") + 1] == "NvidiaTeslaT4" for c in made)
    bundle = fake_kaggle / "dataset"
    manifest = json.loads((bundle / "kit-bundle.json").read_text())
    assert manifest["inference"] == "b1" and manifest["members"] == ["done"] and manifest["wheels"] == []
    for rel in ("experiments/done/fold0/best.pt", "experiments/done/fold1/best.pt", "submissions/b1.json",
                "competition/kaggle_predict.py", "competition.yaml"):
        assert (bundle / "kit" / rel).is_file(), rel

    inputs = mount_inputs(tmp_path, bundle, home / "data")
    before = tree_stamp(inputs)
    working = tmp_path / "working"
    working.mkdir()
    proc = run_kernel(next((fake_kaggle / "kernel").glob("*.py")), inputs, working)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert tree_stamp(inputs) == before  # the read-only mount is untouched
    got = pd.read_csv(working / "submission.csv", dtype={"id": str})
    sample = pd.read_csv(home / "data" / "sample_submission.csv", dtype={"id": str})
    assert list(got.columns) == list(sample.columns) and list(got["id"]) == list(sample["id"])

    test = pd.read_csv(home / "data" / "test.csv", dtype={"id": str})
    paths = [str(home / "data" / i) for i in test["id"]]
    call_kit(home, "competition.predict", "submissions/b1.json", *paths, "--csv", str(tmp_path / "pred.csv"))
    pred = pd.read_csv(tmp_path / "pred.csv")
    assert (got["label"] - pred["prob"]).abs().max() <= 1e-6
    blended = pd.read_csv(home / "submissions" / "b1.csv", dtype={"id": str})
    assert list(blended["id"]) == list(got["id"]) and (got["label"] - blended["label"]).abs().max() <= 1e-6

    status = kit(home, "status", "b1", "--inference", check=True)
    assert "alice/tiny-b1-infer: complete" in status.stderr and "submit-kernel b1" in status.stderr
    kit(home, "submit-kernel", "b1", "-m", "code run", check=True)
    assert calls(fake_kaggle)[-1] == ["competitions", "submit", "-c", "tiny-comp", "-k", "alice/tiny-b1-infer", "-v",
                                      "1", "-f", "submission.csv", "-m", "code run"]


@pytest.mark.slow  # times predict with a trained run
def test_push_inference_is_refused_when_the_estimate_exceeds_nine_hours_and_force_pushes(trained_project, fake_kaggle,
                                                                                         monkeypatch):
    home = set_slug(trained_project)
    monkeypatch.setitem(kaggle_inference.SPEED_FACTORS, "NvidiaTeslaT4", 1e-4)  # a target 10 000x slower than here
    refused = kit(home, "push", "done", "--inference", "--no-wheels", "--allow-dirty", "--test-rows", "999999")
    line = one_error_line(refused)
    assert "would not finish in Kaggle's 9 h" in line and "999999 test rows" in line and "--force" in line
    assert "runtime estimate:" in refused.stdout and calls(fake_kaggle) == []
    forced = kit(home, "push", "done", "--inference", "--no-wheels", "--allow-dirty", "--test-rows", "999999",
                 "--force", check=True)
    assert "runtime estimate:" in forced.stdout and "over the 9 h limit" in forced.stderr
    meta = json.loads((fake_kaggle / "kernel" / "kernel-metadata.json").read_text())
    assert meta["id"] == "alice/tiny-done-infer"
