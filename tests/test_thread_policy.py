"""benchmarks/thread_policy.py's plumbing, without training: the run matrix and its order (--dry-run), the
environment each child gets, and whole `--quick` measurements through the real run.sh with a stand-in Python
(KIT_PYTHON) that records what it was given instead of training."""

from __future__ import annotations

import itertools
import json
import os
import stat
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

import thread_policy  # noqa: E402 - benchmarks/ is not a package

POLICIES = ["PASSIVE", "ACTIVE"]
RUNSH_MMAP = "1073741824"  # run.sh's MALLOC_MMAP_THRESHOLD_ default: it must apply, not this shell's

STAND_IN = """#!{python}
import json, os, sys, time
start = time.time()
sum(i * i for i in range(200_000))  # some CPU, so wait4 has user time to report
time.sleep(0.15)
home = os.environ["KIT_HOME"]
name = "big" if sys.argv[3].endswith("big.yaml") else sys.argv[3]
os.makedirs(f"{{home}}/experiments/{{name}}", exist_ok=True)
with open(f"{{home}}/experiments/{{name}}/metrics.json", "w") as f:
    json.dump({{"oof_score": 0.75}}, f)
with open(f"{{home}}/seen.json", "w") as f:
    json.dump({{"argv": sys.argv[1:], "policy": os.environ.get("OMP_WAIT_POLICY"), "start": start, "end": time.time(),
               "mmap": os.environ.get("MALLOC_MMAP_THRESHOLD_"), "kmp": os.environ.get("KMP_BLOCKTIME")}}, f)
sys.exit(int(os.environ.get("STAND_IN_EXIT_" + os.environ["OMP_WAIT_POLICY"], "0")))
"""


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """A folder that looks like large_photos.py's `make` output (only competition.yaml is read here)."""
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "competition.yaml").write_text("competition: {name: photos, data_dir: /nowhere, metric: auc}\n")
    return folder


@pytest.fixture
def stand_in(tmp_path: Path) -> Path:
    """An executable standing in for Python under run.sh: records argv, env and its start/end, trains nothing."""
    path = tmp_path / "stand_in_python"
    path.write_text(STAND_IN.format(python=sys.executable))
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def alone_order(runs: list[dict], workload: str) -> list[str]:
    """The policies of a workload's alone runs, in the order they run."""
    return [r["policy"] for r in runs if r["workload"] == workload and r["condition"] == "alone"]


@pytest.mark.parametrize("quick", [False, True])
@pytest.mark.parametrize("reps", [1, 2, 3, 4])
def test_dry_run_lists_the_matrix_in_abba_order(tmp_path: Path, photos: Path, reps: int, quick: bool) -> None:
    """Per workload: `reps` alone runs per policy, the order reversed every repetition, then one pair per
    policy; every child has its own fresh folder and its policy in OMP_WAIT_POLICY; nothing is started."""
    work = tmp_path / "work"
    args = ["--dry-run", "--reps", str(reps), "--work", str(work), "--photos", str(photos)] + (["--quick"] if quick else [])
    out = thread_policy.main(args)
    runs = out["runs"]
    assert json.loads((work / "thread_policy.json").read_text())["runs"] == runs
    for workload, script in (("cifake", "exp001"), ("photos", str(work))):
        expected = [p for rep in range(reps) for p in (POLICIES if rep % 2 == 0 else POLICIES[::-1])]
        assert alone_order(runs, workload) == expected
        beside = [r for r in runs if r["workload"] == workload and r["condition"] == "beside"]
        assert [(r["policy"], r["index"]) for r in beside] == [(p, m) for p in POLICIES for m in (0, 1)]
        assert len({r["slot"] for r in beside}) == 2  # each pair shares one slot: started together
        assert all(r["argv"][0] == str(REPO / "run.sh") and r["argv"][1].startswith(script)
                   for r in runs if r["workload"] == workload)
    assert [r["slot"] for r in runs] == sorted(r["slot"] for r in runs)
    assert all(r["env"]["OMP_WAIT_POLICY"] == r["policy"] for r in runs)
    assert len({r["env"]["KIT_HOME"] for r in runs}) == len(runs) == 2 * (2 * reps + 4)
    assert not any(Path(r["home"]).exists() for r in runs)
    cifake = next(r for r in runs if r["workload"] == "cifake")
    assert cifake["argv"][1:5] == ["exp001", "--folds", "0", "train.epochs=1"]
    assert ("train.batch_size=8" in cifake["argv"]) == quick


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("inherited", [
    {"OMP_WAIT_POLICY": "ACTIVE"}, {"OMP_WAIT_POLICY": "passive"}, {"OMP_WAIT_POLICY": ""},
    {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}, {"GOMP_SPINCOUNT": "0", "KMP_BLOCKTIME": "0"},
    {"MALLOC_MMAP_THRESHOLD_": "1", "MALLOC_ARENA_MAX": "2"}, {"KIT_HOME": "/elsewhere", "KIT_CWD": "/x"},
    {"KIT_PYTHON": "python3", "PYTHONPATH": "/y"}])
def test_child_env_sets_the_policy_and_drops_this_shells_thread_settings(policy: str, inherited: dict) -> None:
    """Whatever this shell exports, the child sees exactly the policy under test and run.sh's own defaults."""
    env = thread_policy.child_env(policy, Path("/h"), "/py", {"PATH": "/bin", "HOME": "/root", **inherited})
    assert env == {"PATH": "/bin", "HOME": "/root", "OMP_WAIT_POLICY": policy, "KIT_HOME": "/h", "KIT_PYTHON": "/py"}


def test_quick_measures_every_run_through_run_sh(tmp_path: Path, photos: Path, stand_in: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """--quick with both workloads and two repetitions: each child really ran under its policy (read back from
    /proc and by the child), with run.sh's malloc defaults, alone runs one after another, pairs overlapping;
    wall and CPU come from wait4 and the table compares the policies within each condition."""
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "1")
    monkeypatch.setenv("KMP_BLOCKTIME", "0")
    work = tmp_path / "work"
    out = thread_policy.main(["--quick", "--reps", "2", "--work", str(work), "--photos", str(photos),
                              "--kit-python", str(stand_in)])
    runs = out["runs"]
    assert len(runs) == 16
    seen = {r["home"]: json.loads((Path(r["home"]) / "seen.json").read_text()) for r in runs}
    for r in runs:
        child = seen[r["home"]]
        assert r["returncode"] == 0 and r["seen_policy"] == child["policy"] == r["policy"]
        assert child["mmap"] == RUNSH_MMAP and child["kmp"] is None
        assert child["argv"][:2] == ["-m", "competition.experiment"] and child["argv"][2:] == r["argv"][1:]
        assert r["wall_s"] >= 0.15 and r["cpu_s"] == pytest.approx(r["user_s"] + r["sys_s"]) and r["user_s"] > 0
        assert r["oof_score"] == 0.75 and not (Path(r["home"]) / ".cache").exists()
    assert (work / "quick_data" / "train.csv").is_file()
    assert "audit: false" in (Path(runs[0]["home"]) / "competition.yaml").read_text()
    by_slot: dict[int, list[dict]] = {}
    for r in runs:
        by_slot.setdefault(r["slot"], []).append(seen[r["home"]])
    spans = [(min(c["start"] for c in cs), max(c["end"] for c in cs)) for _, cs in sorted(by_slot.items())]
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))  # slots never overlap
    pairs = [cs for cs in by_slot.values() if len(cs) == 2]
    assert len(pairs) == 4 and all(max(c["start"] for c in cs) < min(c["end"] for c in cs) for cs in pairs)
    rows = {(row[0], row[1], row[2]): row for row in out["summary"]}
    assert len(rows) == 8
    for (workload, policy, condition), row in rows.items():
        other = rows[(workload, POLICIES[1 - POLICIES.index(policy)], condition)]
        assert row[6] == pytest.approx(row[4] / other[4]) and row[9] == ", ".join(["0"] * 2)
    assert "ratio vs other policy" in out["table"]
    assert json.loads((work / "thread_policy.json").read_text())["summary"] == json.loads(json.dumps(out["summary"]))


@pytest.mark.parametrize("failing", POLICIES)
def test_a_failed_run_is_recorded_not_hidden(tmp_path: Path, stand_in: Path, failing: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A run that exits non-zero keeps its exit code in the records and the table; the others still run."""
    monkeypatch.setenv(f"STAND_IN_EXIT_{failing}", "3")
    out = thread_policy.main(["--quick", "--work", str(tmp_path / "work"), "--kit-python", str(stand_in)])
    assert {r["policy"]: r["returncode"] for r in out["runs"]} == {failing: 3, POLICIES[1 - POLICIES.index(failing)]: 0}
    assert {(row[1], row[2]): row[9] for row in out["summary"]} == {
        (p, c): ", ".join(["3" if p == failing else "0"] * (2 if c == "beside" else 1))
        for p in POLICIES for c in ("alone", "beside")}
    assert os.path.isfile(tmp_path / "work" / "thread_policy.json")


@pytest.mark.parametrize("failing", [None, *POLICIES])
def test_resume_keeps_finished_cells_and_runs_only_the_missing_ones(tmp_path: Path, stand_in: Path, failing,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """--reps 2 --resume <a --reps 1 result>: the first repetition and the pairs are kept (not rerun), the second,
    reversed repetition runs; a cell that failed before (exit != 0) runs again."""
    if failing:
        monkeypatch.setenv(f"STAND_IN_EXIT_{failing}", "3")
    first = thread_policy.main(["--quick", "--work", str(tmp_path / "one"), "--kit-python", str(stand_in)])
    monkeypatch.delenv(f"STAND_IN_EXIT_{failing}", raising=False)
    again = thread_policy.main(["--quick", "--reps", "2", "--work", str(tmp_path / "two"), "--kit-python",
                                str(stand_in), "--resume", str(tmp_path / "one" / "thread_policy.json")])
    ran = [r for r in again["runs"] if "resumed_from" not in r]
    expected = {("cifake", p, "alone", 1) for p in POLICIES}
    if failing:
        expected |= {("cifake", failing, "alone", 0), ("cifake", failing, "beside", 0), ("cifake", failing, "beside", 1)}
    assert {thread_policy.cell(r) for r in ran} == expected
    assert all(Path(r["home"]).parent == tmp_path / "two" for r in ran)
    kept = {thread_policy.cell(r): r for r in again["runs"] if "resumed_from" in r}
    assert kept and all(r["wall_s"] == next(f["wall_s"] for f in first["runs"] if thread_policy.cell(f) == c)
                        for c, r in kept.items())
    assert [r["policy"] for r in again["runs"] if r["condition"] == "alone"] == ["PASSIVE", "ACTIVE", "ACTIVE", "PASSIVE"]
    assert all(r["returncode"] == 0 for r in again["runs"]) and len(again["summary"]) == 4


@pytest.mark.parametrize("text", ["[1, 2]", '{"runs": [{}]}', '{"runs": [1]}', '{"no": 1}', "not json"])
def test_resume_refuses_a_file_that_is_not_a_result(tmp_path: Path, text: str) -> None:
    (tmp_path / "x.json").write_text(text)
    with pytest.raises(SystemExit, match="--resume .*x.json: not a thread_policy.py result"):
        thread_policy.main(["--quick", "--work", str(tmp_path / "w"), "--resume", str(tmp_path / "x.json")])
