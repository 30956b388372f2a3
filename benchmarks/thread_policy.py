"""The thread wait policy, chosen by whole runs: OMP_WAIT_POLICY=PASSIVE vs ACTIVE, alone and beside a twin run.

    cd benchmarks && export PYTHONPATH=..
    ../.venv/bin/python large_photos.py make /tmp/photos                      # once, ~4 minutes
    ../.venv/bin/python thread_policy.py --photos /tmp/photos --json /tmp/thread_policy.json   # the machine alone
    ../.venv/bin/python thread_policy.py --quick                              # plumbing check on a tiny competition
    ../.venv/bin/python thread_policy.py --dry-run [--quick] [--photos DIR]   # list the runs, start nothing

benchmarks/threads.py timed single training steps: beside a second training a step slowed 4.8x with spinning
OpenMP threads (ACTIVE) and 2.1x with PASSIVE, so run.sh exports PASSIVE. Alone, train_throughput.py's loop
ran 1.15-1.56x faster with ACTIVE. This script settles the default on what a person waits for: whole
`./run.sh` runs, each in a fresh project folder (KIT_HOME; folds, caches and outputs built from nothing), timed
from start to exit (wall) and by CPU (user + sys of the run's whole process tree, DataLoader workers and the
audit's pool included, from wait4).

Workloads:
- cifake: `./run.sh exp001 --folds 0 train.epochs=1` on CIFAKE (20,000 train, 5,500 test, 32 px). A full exp001
  (5 folds x 4 epochs) takes ~40 min here; one fold of one epoch keeps every phase of a whole run (folds file,
  shortcut audit and shift check, the uint8 cache, training, validation, OOF + test hflip TTA, assembly,
  leaderboard, report) for 1/20 of the training (16,000 images once: ~110 s at the 145-152 images/s that
  benchmarks/README.md section 2 records for exp001's epochs, the largest phase; an estimate, not measured here).
- photos: large_photos.py's experiment (lite0, 224 px native crops, 2 folds x 2 epochs, 5-crop hflip TTA) on
  its `make` folder (--photos), the experiment passed to run.sh by its YAML path.

Matrix, per workload: two repetitions alone, back to back, in the order PASSIVE, ACTIVE, ACTIVE, PASSIVE (each
policy once first and once last, so a linear drift - page cache warming, a neighbour leaving - cancels in the
means); then, per policy, a pair of identical runs started together (both timed; two project folders). Each child
gets OMP_WAIT_POLICY explicitly (run.sh keeps a value it is given) and no OMP_NUM_THREADS, GOMP_SPINCOUNT,
KMP_*, MALLOC_* or KIT_* of this shell, so run.sh's own defaults are what is measured; the policy the child
really ran with is read back from /proc/<pid>/environ once run.sh has exec'd Python.
--quick: a 48-image CIFAKE copy (2 folds, no audit/shift check), batch 8, one repetition: six tiny whole runs,
each mostly interpreter start-up, imports and the report (~25 s wall, 13 s CPU each on this 2-core machine under
other load): a check that the plumbing works, not a measurement. --dry-run lists the runs and starts nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import yaml
from common import CIFAKE, SHARED, table
from large_photos import EXPERIMENT as PHOTOS_EXPERIMENT

from competition.atomic import write_json

REPO = Path(__file__).resolve().parent.parent
WEIGHTS = SHARED / "weights"
POLICIES = ("PASSIVE", "ACTIVE")
STRIPPED = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "GOMP_SPINCOUNT", "KIT_HOME", "KIT_CWD",
            "KIT_PYTHON", "PYTHONPATH")
STRIPPED_PREFIXES = ("KMP_", "MALLOC_")
CIFAKE_ARGS = ["exp001", "--folds", "0", "train.epochs=1"]
QUICK_ARGS = [*CIFAKE_ARGS, "train.batch_size=8"]
PHOTOS_TTA = {"views": "hflip", "crops": 5, "tiles": 0}  # the photos workload's TTA (the docstring's 5-crop hflip)
log = logging.getLogger("thread_policy")


@dataclass(frozen=True)
class Run:
    """One ./run.sh invocation of the matrix; runs sharing a slot start together."""

    slot: int
    workload: str
    policy: str
    condition: str  # alone | beside
    index: int  # repetition (alone) or pair member (beside)

    @property
    def folder(self) -> str:
        """The fresh project folder's name under --work."""
        return f"{self.slot:02d}-{self.workload}-{self.policy.lower()}-{self.condition}{self.index}"


def plan(workloads: list[str], reps: int) -> list[list[Run]]:
    """The slots to run, in order: per workload `reps` alone runs per policy (ABBA...), then one pair per policy."""
    slots: list[list[Run]] = []
    for name in workloads:
        for rep in range(reps):
            for policy in POLICIES if rep % 2 == 0 else POLICIES[::-1]:
                slots.append([Run(len(slots), name, policy, "alone", rep)])
        for policy in POLICIES:
            slots.append([Run(len(slots), name, policy, "beside", member) for member in (0, 1)])
    return slots


def child_env(policy: str, home: Path, kit_python: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of one run: this shell's, minus thread/allocator/kit settings, plus the policy and KIT_HOME."""
    base = dict(os.environ if base is None else base)
    env = {k: v for k, v in base.items() if k not in STRIPPED and not k.startswith(STRIPPED_PREFIXES)}
    return {**env, "OMP_WAIT_POLICY": policy, "KIT_HOME": str(home), "KIT_PYTHON": kit_python}


@dataclass(frozen=True)
class Workload:
    """A whole run the matrix repeats: run.sh's arguments for a project folder, and how to lay that folder out."""

    name: str
    argv: Callable[[Path], list[str]]
    prepare: Callable[[Path], None]


def kit_competition(data: Path, folds: dict) -> dict:
    """The kit's competition.yaml pointed at `data` (absolute) and the shared weights, folds settings updated."""
    comp = yaml.safe_load((REPO / "competition.yaml").read_text())
    comp["competition"]["data_dir"] = str(data)
    comp["folds"] = {**comp.get("folds", {}), **folds}
    comp.setdefault("model", {})["weights_dir"] = str(WEIGHTS)
    return comp


def cifake_project(home: Path, data: Path, folds: dict) -> None:
    """Lay out a fresh project folder running the kit's exp001 (and its base.yaml) on `data`."""
    (home / "experiments").mkdir(parents=True)
    (home / "competition.yaml").write_text(yaml.safe_dump(kit_competition(data, folds), sort_keys=False))
    for name in ("exp001.yaml", "base.yaml"):
        shutil.copyfile(REPO / "experiments" / name, home / "experiments" / name)


def photos_project(home: Path, photos: Path) -> None:
    """Lay out a fresh project folder running large_photos.py's experiment on its `make` folder."""
    (home / "experiments").mkdir(parents=True)
    shutil.copyfile(photos / "competition.yaml", home / "competition.yaml")
    experiment = {**PHOTOS_EXPERIMENT, "tta": PHOTOS_TTA,  # 5 crops, not large_photos.py's 4x4 tiles (3x longer)
                  "train": {**PHOTOS_EXPERIMENT["train"], "grad_checkpointing": False}}  # as timed (README)
    (home / "experiments" / "big.yaml").write_text(yaml.safe_dump(experiment, sort_keys=False))


def quick_data(out: Path, n_per_class: int = 24, n_test: int = 8) -> Path:
    """A Kaggle-layout copy of a few CIFAKE images (the --quick competition), built once under --work."""
    if (out / "sample_submission.csv").is_file():
        return out
    train, test = pd.read_csv(CIFAKE / "train.csv"), pd.read_csv(CIFAKE / "test.csv").head(n_test)
    picked = pd.concat([train[train["label"] == k].head(n_per_class) for k in (0, 1)]).sample(frac=1, random_state=0)
    for rel in [*picked["file_name"], *test["id"]]:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(CIFAKE / rel, out / rel)
    picked[["file_name", "label"]].to_csv(out / "train.csv", index=False)
    test[["id"]].to_csv(out / "test.csv", index=False)
    pd.DataFrame({"id": test["id"], "label": 0.5}).to_csv(out / "sample_submission.csv", index=False)
    return out


def workloads(args: argparse.Namespace) -> list[Workload]:
    """The workloads this invocation measures (cifake always; photos with --photos)."""
    if args.quick:
        quick = {"n_splits": 2, "audit": False, "shift_check": False}
        data = args.work / "quick_data"
        out = [Workload("cifake", lambda home: list(QUICK_ARGS),
                        lambda home: cifake_project(home, quick_data(data), quick))]
    else:
        out = [Workload("cifake", lambda home: list(CIFAKE_ARGS), lambda home: cifake_project(home, CIFAKE, {}))]
    if args.photos:
        photos = args.photos.resolve()
        if not (photos / "competition.yaml").is_file():
            raise SystemExit(f"--photos {args.photos}: no competition.yaml there - write the photos first with "
                             f"`large_photos.py make {args.photos}`")
        out.append(Workload("photos", lambda home: [str(home / "experiments" / "big.yaml")],
                            lambda home: photos_project(home, photos)))
    return out


def seen_policy(pid: int) -> str | None:
    """OMP_WAIT_POLICY in pid's environment once run.sh has exec'd Python (`-m` on its command line), else None."""
    try:
        if b"-m" not in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"):
            return None
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    return next((e.split(b"=", 1)[1].decode() for e in environ if e.startswith(b"OMP_WAIT_POLICY=")), "")


def launch(commands: list[tuple[list[str], dict[str, str], Path]]) -> list[dict]:
    """Start (argv, env, home) commands together and wait for each with wait4: exit code, wall/user/sys seconds."""
    procs, results = [], [{"seen_policy": None} for _ in commands]
    try:
        for (argv, env, home), result in zip(commands, results):
            with open(home / "run.log", "w") as output:
                result["t0"] = time.perf_counter()
                procs.append(subprocess.Popen(argv, cwd=home, env=env, stdin=subprocess.DEVNULL, stdout=output,
                                              stderr=subprocess.STDOUT, start_new_session=True))
        while any("wall_s" not in r for r in results):
            for proc, result in zip(procs, results):
                if "wall_s" in result:
                    continue
                result["seen_policy"] = result["seen_policy"] or seen_policy(proc.pid)
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    proc.returncode = os.waitstatus_to_exitcode(status)
                    result.update(returncode=proc.returncode, wall_s=time.perf_counter() - result["t0"],
                                  user_s=usage.ru_utime, sys_s=usage.ru_stime)
            time.sleep(0.05)
    finally:
        for proc in procs:
            if proc.returncode is None:  # interrupted: stop the whole run (its DataLoader workers too)
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return [{k: v for k, v in r.items() if k != "t0"} for r in results]


def oof_score(home: Path) -> float | None:
    """The OOF score the run assembled (metrics.json), None when it wrote none."""
    found = sorted(home.glob("experiments/*/metrics.json"))
    return json.loads(found[0].read_text()).get("oof_score") if found else None


def record(run: Run, work: Path, workload: Workload, kit_python: str) -> tuple[dict, list[str], dict[str, str]]:
    """One run's JSON record (matrix cell, folder, command, the env that matters), its argv and its env."""
    home = work / run.folder
    argv = [str(REPO / "run.sh"), *workload.argv(home)]
    env = child_env(run.policy, home, kit_python)
    shown = {k: env[k] for k in ("OMP_WAIT_POLICY", "KIT_HOME", "KIT_PYTHON")}
    return {**asdict(run), "home": str(home), "argv": argv, "env": shown}, argv, env


def execute(slot: list[Run], work: Path, by_name: dict[str, Workload], kit_python: str, keep: bool) -> list[dict]:
    """Run one slot (its runs together, each in a fresh project folder) and return the runs' records."""
    records, commands = [], []
    for run in slot:
        rec, argv, env = record(run, work, by_name[run.workload], kit_python)
        home = Path(rec["home"])
        shutil.rmtree(home, ignore_errors=True)
        by_name[run.workload].prepare(home)
        records.append(rec)
        commands.append((argv, env, home))
    for rec, (_, _, home), timing in zip(records, commands, launch(commands)):
        rec.update(timing, cpu_s=timing["user_s"] + timing["sys_s"], oof_score=oof_score(home))
        if not keep:
            shutil.rmtree(home / ".cache", ignore_errors=True)  # CIFAKE's memmap, the photos' crop windows
        log.info("%s: exit %s, wall %.1f s, cpu %.1f s, policy seen %s", rec["home"], rec["returncode"],
                 rec["wall_s"], rec["cpu_s"], rec["seen_policy"])
    return records


def cell(run: dict) -> tuple:
    """A run's matrix cell: (workload, policy, condition, index)."""
    return run["workload"], run["policy"], run["condition"], run["index"]


def finished_runs(path: Path | None) -> dict[tuple, dict]:
    """--resume: the runs of an earlier result JSON that exited 0, by cell (none without the option)."""
    if path is None:
        return {}
    try:
        runs = json.loads(path.read_text())["runs"]
        cells = [cell(r) for r in runs]  # every record must name its cell, finished or not
        return {c: r for c, r in zip(cells, runs) if r.get("returncode") == 0}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise SystemExit(f"--resume {path}: not a thread_policy.py result ({err!r})") from err


def mean(values: list[float]) -> float:
    """The mean, NaN for no values."""
    return statistics.fmean(values) if values else float("nan")


def summary(runs: list[dict]) -> list[list]:
    """Table rows per workload, condition and policy: each wall, mean wall and CPU, ratio vs the other policy in
    the same condition, beside/alone (same policy), OOF scores, exit codes."""
    cells: dict[tuple[str, str, str], list[dict]] = {}
    for r in runs:
        cells.setdefault((r["workload"], r["condition"], r["policy"]), []).append(r)
    wall = {key: mean([r["wall_s"] for r in cell]) for key, cell in cells.items()}
    rows = []
    for (workload, condition, policy), cell in cells.items():
        other = POLICIES[1 - POLICIES.index(policy)]
        here = wall[(workload, condition, policy)]
        rows.append([workload, policy, condition, ", ".join(f"{r['wall_s']:.1f}" for r in cell), here,
                     mean([r["cpu_s"] for r in cell]), here / wall.get((workload, condition, other), float("nan")),
                     here / wall.get((workload, "alone", policy), float("nan")) if condition == "beside" else "-",
                     ", ".join("-" if r["oof_score"] is None else f"{r['oof_score']:.4f}" for r in cell),
                     ", ".join(str(r["returncode"]) for r in cell)])
    return sorted(rows, key=lambda row: (row[0], row[2] != "alone", POLICIES.index(row[1])))


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, help="large_photos.py's `make` folder: adds the photos workload")
    parser.add_argument("--quick", action="store_true", help="a 48-image CIFAKE copy, one repetition: plumbing check")
    parser.add_argument("--dry-run", action="store_true", help="list the runs (order, folder, env) and start nothing")
    parser.add_argument("--reps", type=int, default=None, help="alone repetitions per policy (default 2; --quick 1)")
    parser.add_argument("--only", nargs="+", choices=["cifake", "photos"], help="measure only these workloads")
    parser.add_argument("--work", type=Path, default=Path("/tmp/thread_policy_runs"), help="project folders go here")
    parser.add_argument("--json", type=Path, help="where the results go (default WORK/thread_policy.json)")
    parser.add_argument("--keep", action="store_true", help="keep each run's caches (default: delete after the run)")
    parser.add_argument("--kit-python", default=sys.executable, help="the Python run.sh runs (KIT_PYTHON)")
    parser.add_argument("--resume", type=Path, help="an earlier result JSON: its finished runs (exit 0) of the same "
                                                    "cells are kept, only the missing cells run (e.g. --reps 2 after "
                                                    "--reps 1 adds the second, reversed repetition)")
    args = parser.parse_args(argv)
    args.reps = args.reps if args.reps is not None else 1 if args.quick else 2
    args.work = args.work.resolve()
    args.json = args.json or args.work / "thread_policy.json"
    return args


def main(argv: list[str] | None = None) -> dict:
    """Run (or list) the matrix; print the table and save the JSON; return what was saved."""
    args = parse(argv)
    chosen = [w for w in workloads(args) if not args.only or w.name in args.only]
    by_name, slots = {w.name: w for w in chosen}, plan([w.name for w in chosen], args.reps)
    meta = {"cpus": os.cpu_count(), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "argv": sys.argv[1:] if
            argv is None else argv, "quick": args.quick, "reps": args.reps, "dry_run": args.dry_run}
    args.work.mkdir(parents=True, exist_ok=True)
    if args.dry_run:
        runs = [record(run, args.work, by_name[run.workload], args.kit_python)[0] for slot in slots for run in slot]
        for r in runs:
            print(f"slot {r['slot']:2d}  {r['workload']:6s} {r['policy']:7s} {r['condition']:6s} "  # noqa: T201
                  f"{r['env']['OMP_WAIT_POLICY']:7s} {' '.join(r['argv'])}  KIT_HOME={r['env']['KIT_HOME']}")
        result = {**meta, "runs": runs}
        write_json(args.json, result)
        return result
    runs: list[dict] = []
    earlier = finished_runs(args.resume)
    for slot in slots:  # one slot at a time: the machine must be otherwise idle
        kept = [earlier.get(cell(asdict(run))) for run in slot]
        if all(kept):
            log.info("slot %d: kept from %s (%s)", slot[0].slot, args.resume, ", ".join(map(str, map(cell, kept))))
            runs += [{**r, "slot": slot[0].slot, "resumed_from": str(args.resume)} for r in kept]
            continue
        runs += execute(slot, args.work, by_name, args.kit_python, args.keep)
        write_json(args.json, {**meta, "runs": runs})  # a long measurement keeps what it has if stopped
    rows = summary(runs)
    text = table(f"Whole runs by OMP_WAIT_POLICY ({os.cpu_count()} cores; wall and CPU seconds; ratio = this policy's "
                 f"mean wall / the other's in the same condition)",
                 ["workload", "policy", "condition", "wall s (each)", "wall s (mean)", "cpu s (mean)",
                  "ratio vs other policy", "beside / alone", "OOF", "exit"], rows)
    result = {**meta, "runs": runs, "summary": rows, "table": text}
    write_json(args.json, result)
    log.info("saved %s", args.json)
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    main()
