"""Upload through a fake `kaggle` executable on PATH: arguments, refusals and mapped errors; no network."""

from __future__ import annotations

import os
import stat

import numpy as np
import pandas as pd
import pytest

from tests.conftest import call_kit, write_yaml

FAKE = """#!/usr/bin/env python3
import os, sys
with open(os.environ["FAKE_KAGGLE_LOG"], "a") as fh:
    fh.write("\\t".join(sys.argv[1:]) + "\\n")
mode = os.environ.get("FAKE_KAGGLE_MODE", "ok")
if mode == "ok":
    print("Successfully submitted to Some Competition")
    sys.exit(0)
if mode == "error_in_title":  # a good upload whose output contains "error"
    print("100%|##########| 1.2k/1.2k")
    print("Successfully submitted to Error Level Analysis Challenge")
    sys.exit(0)
if mode in ("cannot_submit_exit0", "no_competition_exit0"):  # kaggle 2.x prints a failure and exits 0
    print({"cannot_submit_exit0": "Could not submit to competition",
           "no_competition_exit0": "Could not find competition - please verify that you entered the correct id"}[mode])
    sys.exit(0)
if mode == "hang":
    import time
    time.sleep(60)
messages = {
    "nocreds": "OSError: Could not find kaggle.json. Make sure it's located in /root/.config/kaggle.",
    "403": "403 Client Error: Forbidden for url: https://www.kaggle.com/api/v1/competitions/submissions/url",
    "400": "400 Client Error: Bad Request for url: https://www.kaggle.com/api/v1/competitions/submissions/submit",
}
print(messages[mode], file=sys.stderr)
sys.exit(1)
"""


@pytest.fixture
def kit(home, tmp_path, monkeypatch):
    """(run, submission, kaggle log): run(*args) is `competition.submit` in this process with the fake kaggle on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "kaggle"
    exe.write_text(FAKE)
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    comp = {"name": "tiny", "data_dir": str(home / "data"), "slug": "tiny-comp"}
    write_yaml(home / "competition.yaml", {"competition": comp})
    sample = pd.read_csv(home / "data" / "sample_submission.csv")
    sub = home / "sub.csv"
    sample.assign(label=np.linspace(0, 1, len(sample))).to_csv(sub, index=False)
    log = tmp_path / "kaggle.log"

    path = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"

    def run(*args, mode="ok", timeout_s="300"):
        env = {"KIT_KAGGLE_TIMEOUT": timeout_s, "FAKE_KAGGLE_LOG": str(log), "FAKE_KAGGLE_MODE": mode, "PATH": path,
               "KAGGLE_KEY": "s3cr3t-key-value"}
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        return call_kit(home, "competition.submit", *args, check=False)
    return run, sub, log


def test_upload_passes_arguments_without_a_shell(kit):
    run, sub, log = kit
    proc = run(str(sub), "-m", "blend; rm -rf / $(whoami)")
    assert proc.returncode == 0, proc.stderr
    assert log.read_text().strip().split("\t") == ["competitions", "submit", "-c", "tiny-comp", "-f", str(sub), "-m",
                                                  "blend; rm -rf / $(whoami)"]


def test_dry_run_validates_only(kit):
    run, sub, log = kit
    proc = run(str(sub), "--dry-run")
    assert proc.returncode == 0 and "dry run" in proc.stderr and not log.exists()


@pytest.mark.parametrize("mode, advice", [
    ("nocreds", "put kaggle.json"),
    ("403", "accept the rules of 'tiny-comp'"),
    ("400", "daily submission limit"),
])
def test_upload_errors_are_explained(kit, mode, advice):
    run, sub, _ = kit
    proc = run(str(sub), "-m", "x", mode=mode)
    assert proc.returncode == 2 and advice in proc.stderr
    assert "s3cr3t-key-value" not in proc.stderr + proc.stdout


def test_invalid_file_is_never_uploaded(kit):
    run, sub, log = kit
    frame = pd.read_csv(sub)
    frame.iloc[::-1].to_csv(sub, index=False)
    proc = run(str(sub), "-m", "x")
    assert proc.returncode == 2 and "not in the sample submission's order" in proc.stderr and not log.exists()


@pytest.mark.parametrize("mode, advice", [
    ("cannot_submit_exit0", "upload not confirmed"),
    ("no_competition_exit0", "no competition 'tiny-comp'"),
])
def test_exit_code_zero_without_a_success_line_is_a_failure(kit, mode, advice):
    run, sub, _ = kit
    proc = run(str(sub), "-m", "x", mode=mode)
    assert proc.returncode == 2 and advice in proc.stderr and "Traceback" not in proc.stderr


def test_success_line_wins_over_the_word_error(kit):
    run, sub, _ = kit
    proc = run(str(sub), "-m", "x", mode="error_in_title")
    assert proc.returncode == 0 and "Successfully submitted" in proc.stderr


def test_hanging_cli_times_out_with_a_warning_about_the_quota(kit):
    run, sub, _ = kit
    proc = run(str(sub), "-m", "x", mode="hang", timeout_s="2")
    assert proc.returncode == 2 and "MAY have gone through" in proc.stderr and "Traceback" not in proc.stderr


# hard 0/1 values in a probability file, several spellings, x the metric -> warned?
HARD = {"ints": lambda n: np.arange(n) % 2, "floats": lambda n: (np.arange(n) % 2).astype(float),
        "mostly ones": lambda n: (np.arange(n) > 1).astype(int)}


@pytest.mark.parametrize("values", list(HARD))
@pytest.mark.parametrize("metric,warned", [("auc", True), ("logloss", True), ("f1", False), ("accuracy", False)])
def test_hard_labels_in_a_probability_file_are_warned_where_the_metric_scores_probabilities(kit, home, values,
                                                                                             metric, warned):
    run, sub, log = kit
    comp = {"name": "tiny", "data_dir": str(home / "data"), "slug": "tiny-comp", "metric": metric}
    write_yaml(home / "competition.yaml", {"competition": comp})
    sample = pd.read_csv(home / "data" / "sample_submission.csv")
    sample.assign(label=HARD[values](len(sample))).to_csv(sub, index=False)
    proc = run(str(sub), "--dry-run")
    assert proc.returncode == 0 and "dry run" in proc.stderr
    assert ("every value is 0 or 1, though competition.submission_values is prob" in proc.stderr) is warned
    sample.assign(label=np.linspace(0.1, 0.9, len(sample))).to_csv(sub, index=False)  # probabilities: never warned
    assert "every value is 0 or 1" not in run(str(sub), "--dry-run").stderr
