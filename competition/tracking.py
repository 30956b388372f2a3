"""Optional experiment tracking: each assembled experiment and each blend logged to a tracker, offline by default.

    tracking:                 # competition.yaml (every experiment) or one experiment's YAML, or tracking.backend=...
      backend: mlflow         # none (default): nothing is imported, nothing is written
      uri: ""                 # "" = .kit/mlruns in the project (mlflow's local folder store); a folder or mlflow URI

An experiment is one tracker run, found again by its tags (`kit.run` = the output folder under experiments/,
`kit.fingerprint` = its config less RUNTIME_KEYS plus its training data's hash), so a rerun of `assemble` updates it
instead of adding another. It holds the resolved config as params (dotted keys; runtime keys, name and description
as tags), config.yaml and report.html as artifacts, each fold's log.csv per epoch (`fold0/val_loss`, step = epoch)
and metrics.json's numbers (`oof_score`, `oof.auc`, `fold1/result.score`, ...). A blend's run (`kit.run` = blend:<name>)
holds its members, method, the honest nested scores and its sidecar. Logging runs after the outputs are written: a
tracking failure is one ERROR line and loses nothing (fix it, then `./run.sh assemble <exp>` logs the run again).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import math
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pandas as pd

from competition.config import RUNTIME_KEYS, Config, TrackingConfig, to_dict
from competition.errors import ConfigError, KitError
from competition.project import Project

log = logging.getLogger(__name__)

PACKAGES = {"mlflow": "mlflow-skinny"}  # backend -> the smallest pip package that logs and reads back a local store
DEFAULT_STORE = Path(".kit") / "mlruns"  # tracking.uri "" (relative to the project)
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")  # an mlflow URI (file:, sqlite:, http:), not a folder
STORES = {"file": "", "http": "", "https": "", "databricks": "",  # mlflow store schemes -> the module they need
          **{db: "sqlalchemy" for db in ("sqlite", "postgresql", "mysql", "mssql")}}  # (mlflow, not mlflow-skinny)
BATCH = {"params": 100, "metrics": 1000}  # mlflow's log_batch limits


class TrackingError(KitError):
    """The tracker could not be reached or refused the run (missing package, bad store); the outputs are kept."""


@dataclass
class Tracker:
    """An open tracker: mlflow's client on one store, and the tracker experiment runs are filed under."""

    client: Any
    experiment_id: str
    uri: str


def store_uri(tracking: TrackingConfig, project: Project) -> str:
    """The store's URI: an mlflow URI as given, else the folder (made if missing) as a file: URI."""
    text = tracking.uri.strip()
    scheme = SCHEME.match(text).group(0)[:-1].lower() if SCHEME.match(text) else "file"
    if scheme not in STORES:
        raise ConfigError(f"`tracking.uri: {tracking.uri}`: mlflow has no `{scheme}:` store; give a folder, "
                          f"file:///..., sqlite:///... or the http(s):// address of an mlflow server")
    if STORES[scheme] and importlib.util.find_spec(STORES[scheme]) is None:
        raise ConfigError(f"`tracking.uri: {tracking.uri}`: a {scheme} store needs the full mlflow package "
                          f"(`.venv/bin/pip install mlflow`); or give a folder for the local store")
    if scheme != "file":
        return text
    folder = project.resolve(unquote(urlparse(text).path) if SCHEME.match(text) else text or DEFAULT_STORE)
    bad = next((p for p in [folder, *folder.parents] if p.exists() and not p.is_dir()), None)
    if bad is not None:
        raise ConfigError(f"`tracking.uri: {tracking.uri}`: {bad} is a file, not a folder; give a folder for the store "
                          f"(made if missing) or \"\" for {DEFAULT_STORE} in the project")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"`tracking.uri: {tracking.uri}`: cannot make the folder {folder} ({err.strerror}); give a "
                          f"writable folder or \"\" for {DEFAULT_STORE} in the project") from None
    return folder.as_uri()


def mlflow_client(uri: str) -> Any:
    """mlflow's MlflowClient on `uri`, imported only now; offline (no telemetry), the local folder store allowed."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # nothing leaves the machine
    os.environ.setdefault("DO_NOT_TRACK", "true")
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow 3 keeps the folder store (maintenance mode)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")  # a server that is down: an error in seconds,
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")  # not minutes of retries
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    try:
        from mlflow import MlflowClient
    except ImportError:
        raise ConfigError(f"`tracking.backend: mlflow` needs the mlflow package: `.venv/bin/pip install "
                          f"{PACKAGES['mlflow']}` (requirements.txt), or set tracking.backend: none") from None
    return MlflowClient(tracking_uri=uri)


@contextmanager
def tracker_errors(uri: str, rerun: str) -> Iterator[None]:
    """Turn any tracker failure into one TrackingError line naming the store; the kit's own errors pass."""
    try:
        yield
    except KitError:
        raise
    except Exception as err:  # noqa: BLE001 - mlflow raises many types; a finished run must end in one line
        first = (str(err).strip().splitlines() or [""])[0][:300]
        raise TrackingError(f"tracking.uri {uri}: the tracker failed ({type(err).__name__}: {first}); the outputs "
                            f"are written - fix tracking.uri/backend, then {rerun}") from None


def open_tracker(tracking: TrackingConfig, project: Project, experiment: str) -> Tracker:
    """The client and tracker experiment (made, or restored when deleted) that runs are filed under."""
    uri = store_uri(tracking, project)
    client = mlflow_client(uri)
    name = tracking.experiment.strip() or experiment
    found = client.get_experiment_by_name(name)
    if found is None:
        return Tracker(client, client.create_experiment(name), uri)
    if found.lifecycle_stage == "deleted":
        client.restore_experiment(found.experiment_id)
    return Tracker(client, found.experiment_id, uri)


def find_run(tracker: Tracker, key: str, fingerprint: str) -> str:
    """The id of the tracker run tagged with this key and fingerprint, created when there is none."""
    query = f"tags.`kit.run` = '{key}' and tags.`kit.fingerprint` = '{fingerprint}'"
    found = tracker.client.search_runs([tracker.experiment_id], query, max_results=1)
    if found:
        return found[0].info.run_id
    tags = {"kit.run": key, "kit.fingerprint": fingerprint}
    return tracker.client.create_run(tracker.experiment_id, tags=tags, run_name=key).info.run_id


def digest(value: Any) -> str:
    """A short stable hash of a JSON-able value."""
    return hashlib.sha1(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def config_params(cfg: Config) -> tuple[dict[str, str], dict[str, str]]:
    """(params: the recipe keys, dotted; tags: runtime keys, name and description) of a resolved config."""
    runtime = {f"{s}.{k}" for s, k in RUNTIME_KEYS}
    params, tags = {}, {"mlflow.note.content": cfg.description, "kit.experiment": cfg.name}
    for section, values in to_dict(cfg).items():
        if not isinstance(values, dict):
            continue
        for key, value in values.items():
            text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
            (tags if f"{section}.{key}" in runtime else params)[f"{section}.{key}"] = text
    return params, tags


def experiment_fingerprint(cfg: Config, out: Path) -> str:
    """What makes the experiment itself: its recipe keys and its training data's hash (inputs.json)."""
    inputs = out / "inputs.json"
    train = json.loads(inputs.read_text()).get("train", "") if inputs.is_file() else ""
    return digest([config_params(cfg)[0], train])


def numbers(value: Any, prefix: str) -> dict[str, float]:
    """Every finite number inside a JSON value, keyed by its dotted path (lists by index; booleans left out)."""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return {prefix: float(value)}
    else:
        return {}
    return {k: v for key, item in items for k, v in numbers(item, f"{prefix}.{key}" if prefix else str(key)).items()}


def summary_metrics(metrics: dict) -> dict[str, float]:
    """metrics.json's numbers: top-level and nested scores, and each fold's result as `fold{k}/result.<key>`."""
    rest = {k: v for k, v in metrics.items() if k != "folds"}
    folds = {f"fold{r.get('fold', i)}/result.{k}": v for i, r in enumerate(metrics.get("folds", []))
             for k, v in numbers(r, "").items() if k != "fold"}
    return {**numbers(rest, ""), **folds}


def epoch_points(out: Path, folds: list[int]) -> list[tuple[str, float, int]]:
    """(`fold{k}/<column>`, value, epoch) of every finite number in each fold's log.csv."""
    points = []
    for k in folds:
        file = out / f"fold{k}" / "log.csv"
        if not file.is_file():
            continue
        frame = pd.read_csv(file)
        for i, row in enumerate(frame.to_dict("records")):
            points += [(f"fold{k}/{col}", float(v), int(row.get("epoch", i))) for col, v in row.items()
                       if col != "epoch" and isinstance(v, (int, float)) and math.isfinite(v)]
    return points


def log_points(tracker: Tracker, run_id: str, points: list[tuple[str, float, int]]) -> int:
    """Log the metric points the run lacks (a rerun adds none); a changed value at a step becomes the latest."""
    from mlflow.entities import Metric

    have: dict[str, dict[int, float]] = {}
    for key in tracker.client.get_run(run_id).data.metrics:
        have[key] = {m.step: m.value for m in tracker.client.get_metric_history(run_id, key)}
    new = [(k, v, s) for k, v, s in points if have.get(k, {}).get(s) != v]
    stamp = int(pd.Timestamp.now(tz="UTC").timestamp() * 1000)
    for i in range(0, len(new), BATCH["metrics"]):
        tracker.client.log_batch(run_id, metrics=[Metric(k, v, stamp, s) for k, v, s in new[i:i + BATCH["metrics"]]])
    return len(new)


def log_run(tracker: Tracker, run_id: str, params: dict, tags: dict, points: list, files: list[Path]) -> None:
    """Params, tags, metric points and artifact files into one run, then mark it finished."""
    from mlflow.entities import Param, RunTag

    items = list(params.items())
    for i in range(0, len(items), BATCH["params"]):
        tracker.client.log_batch(run_id, params=[Param(k, v) for k, v in items[i:i + BATCH["params"]]])
    tracker.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    added = log_points(tracker, run_id, points)
    for file in files:
        if file.is_file():
            tracker.client.log_artifact(run_id, str(file))
    tracker.client.set_terminated(run_id, "FINISHED")
    log.info("tracking: %d params, %d new metric points, %d artifact(s) -> run %s in %s", len(params), added,
             sum(f.is_file() for f in files), run_id, tracker.uri)


def check_tracking(tracking: TrackingConfig, project: Project) -> None:
    """Before any training: the store is usable and the backend's package importable (one ConfigError if not),
    so a mistake in tracking.* surfaces in seconds, not after the last fold."""
    if tracking.backend == "none":
        return
    store_uri(tracking, project)
    if importlib.util.find_spec("mlflow") is None:
        raise ConfigError(f"`tracking.backend: mlflow` needs the mlflow package: `.venv/bin/pip install "
                          f"{PACKAGES['mlflow']}` (requirements.txt), or set tracking.backend: none")


def log_experiment(cfg: Config, out_dir: Path, metrics: dict, project: Project | None = None) -> str | None:
    """Log an assembled experiment (config, per-epoch fold logs, metrics.json, report) to cfg.tracking's tracker;
    the tracker run's id, or None when tracking.backend is none."""
    if cfg.tracking.backend == "none":
        return None
    project = project or Project.from_env()
    key = out_dir.relative_to(project.experiments).as_posix() if out_dir.is_relative_to(project.experiments) \
        else out_dir.name
    rerun = f"`./run.sh assemble {cfg.name}` logs it again"
    uri = cfg.tracking.uri or str(DEFAULT_STORE)
    with tracker_errors(uri, rerun):
        tracker = open_tracker(cfg.tracking, project, cfg.competition.name)
        run_id = find_run(tracker, key, experiment_fingerprint(cfg, out_dir))
        params, tags = config_params(cfg)
        folds = [int(r["fold"]) for r in metrics.get("folds", []) if "fold" in r]
        points = [(k, v, 0) for k, v in summary_metrics(metrics).items()] + epoch_points(out_dir, folds)
        log_run(tracker, run_id, params, {**tags, "kit.kind": "experiment"}, points,
                [out_dir / "config.yaml", out_dir / "metrics.json", out_dir / "report.html"])
    return run_id


def log_blend(tracking: TrackingConfig | None, project: Project, csv_path: Path, sidecar: dict) -> str | None:
    """Log a written blend (members, method, honest nested scores, sidecar) to the tracker; its run id, or None
    when tracking is None or its backend none."""
    if tracking is None or tracking.backend == "none":
        return None
    settings = {k: sidecar.get(k) for k in ("members", "selected_by", "metric", "calibration", "submission_values",
                                            "scope")}
    params = {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in
              {**settings, "method": sidecar.get("method", "")}.items()}
    scores = {k: sidecar[k] for k in ("nested", "nested_test_like", "in_sample", "threshold", "positive_rate")
              if sidecar.get(k) is not None}
    members = {f"member/{m.get('name', i)}/{k}": v for i, m in enumerate(sidecar.get("member_scores", []))
               for k, v in numbers(m, "").items()}
    points = [(k, v, 0) for k, v in {**numbers(scores, ""), **members}.items()]
    with tracker_errors(tracking.uri or str(DEFAULT_STORE), "blend again with the same settings to log it"):
        tracker = open_tracker(tracking, project, str((sidecar.get("scope") or {}).get("competition") or "blends"))
        run_id = find_run(tracker, f"blend:{csv_path.stem}", digest(settings))
        log_run(tracker, run_id, params, {"kit.kind": "blend", "kit.submission": str(csv_path)}, points,
                [csv_path.with_suffix(".json")])
    return run_id
