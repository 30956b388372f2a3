"""Folds in parallel on one machine (`--devices 0,1`): one `experiment ... --folds K --no-assemble --device D`
process per device, folds dealt round-robin; the parent assembles once they all end.

When one worker fails, the others are stopped at once (SIGTERM, then SIGKILL after a grace period) instead of
training on for hours: the run exits non-zero naming the failed worker, and rerunning the same command resumes
(finished folds are skipped, an interrupted fold resumes from its last epoch).
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from competition.config import ConfigError
from competition.errors import KitError
from competition.options import check_devices
from competition.project import Project

log = logging.getLogger(__name__)

GRACE_S = 30.0  # how long a stopped worker gets to exit after SIGTERM before it is killed
POLL_S = 0.2  # how often the parent looks at its workers


class WorkerError(KitError):
    """A fold worker failed (the others were stopped); the message names it and says how to resume."""


@dataclass
class Worker:
    """One worker process: its device, its folds, the process."""

    device: str
    folds: list[int]
    proc: subprocess.Popen

    def describe(self) -> str:
        """`cpu (folds [0, 2], exit 2)`."""
        return f"{self.device} (folds {self.folds}, exit {self.proc.returncode})"


def device_plan(devices: str, folds: list[int]) -> list[tuple[str, list[int]]]:
    """`0,1` or `cuda:0,cuda:1` or `cpu,cpu` -> [(device, folds)], one entry per listed device (a device may
    be listed twice), folds dealt round-robin; devices left without a fold are dropped."""
    try:
        names = check_devices(devices)  # counted again at plan time: the option may come from a config or a caller
    except argparse.ArgumentTypeError as err:
        raise ConfigError(str(err)) from None
    plan = [(name, folds[i::len(names)]) for i, name in enumerate(names)]
    return [(name, ks) for name, ks in plan if ks]


def start_workers(project: Project, argv: list[str], plan: list[tuple[str, list[int]]]) -> list[Worker]:
    """Start one train-only experiment process per (device, folds) of the plan."""
    env = {**os.environ, "KIT_HOME": str(project.root)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parent.parent),
                                                      env.get("PYTHONPATH", "")]))
    workers = []
    for device, ks in plan:
        cmd = [sys.executable, "-m", "competition.experiment", *argv, "--folds", ",".join(map(str, ks)),
               "--no-assemble", "--device", device]
        workers.append(Worker(device, ks, subprocess.Popen(cmd, env=env)))
        log.info("worker on %s: folds %s (pid %d)", device, ks, workers[-1].proc.pid)
    return workers


def stop_workers(workers: list[Worker], grace: float = GRACE_S) -> list[Worker]:
    """Terminate the workers still running, kill those still there after `grace` seconds; the ones stopped."""
    running = [w for w in workers if w.proc.poll() is None]
    for w in running:
        w.proc.terminate()
    deadline = time.monotonic() + grace
    for w in running:
        try:
            w.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("worker on %s (pid %d) ignored SIGTERM for %.0f s: killing it", w.device, w.proc.pid, grace)
            w.proc.kill()
            w.proc.wait()
    return running


def wait_workers(workers: list[Worker], grace: float = GRACE_S, poll: float = POLL_S) -> None:
    """Wait for every worker; the first one to fail stops the others. Raise WorkerError naming the failed ones."""
    failed: list[Worker] = []
    stopped: list[Worker] = []
    try:
        while not failed and any(w.proc.poll() is None for w in workers):
            time.sleep(poll)
            failed = [w for w in workers if w.proc.poll() not in (None, 0)]
    finally:  # also on Ctrl-C or any error here: never leave a worker training behind
        stopped = stop_workers(workers, grace)
    failed = [w for w in workers if w not in stopped and w.proc.returncode != 0]
    if failed:
        others = f"; stopped the other worker(s): {', '.join(w.describe() for w in stopped)}" if stopped else ""
        raise WorkerError(f"worker(s) failed: {'; '.join(w.describe() for w in failed)}{others} - see the failed "
                          f"worker's messages above, fix the cause, then rerun the same command to resume")


def launch_workers(project: Project, argv: list[str], devices: str,
                   grace: float = GRACE_S) -> Callable[[list[int]], None]:
    """A `workers` callable: one `experiment ... --folds K --no-assemble --device D` process per device, waited
    for; a failed worker stops the others (WorkerError)."""
    def start(folds: list[int]) -> None:
        wait_workers(start_workers(project, argv, device_plan(devices, folds)), grace)
    return start
