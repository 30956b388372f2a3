"""Train an experiment on Kaggle's GPUs: push it as a kernel, follow it, pull its outputs back.

    ./run.sh kaggle push exp012 [--accelerator NvidiaTeslaT4] [--no-wheels] [--target-freeze FILE] [--user NAME]
                                [--force]
    ./run.sh kaggle status exp012
    ./run.sh kaggle pull exp012 [--replace]
    ./run.sh kaggle push|status <blend|exp> --inference; ./run.sh kaggle submit-kernel <blend|exp|USER/KERNEL>
        (code competitions: an inference kernel and its submission, competition.kaggle_inference)

push: the experiment's offline bundle (competition.bundle) becomes a private Kaggle dataset <user>/<comp>-<exp>-kit
(created, or a new version; `-r zip` keeps its sub-folders), then a private script kernel <user>/<comp>-<exp>
runs competition/kaggle_script.py with the GPU on, internet off, the competition and the bundle attached: it
installs offline, trains every fold (one per GPU on 2x T4) and packs experiments/<exp>/ into <exp>.tar.
status: the kernel's state. pull: its output downloaded, checked complete (every fold; OOF ids = the training
ids, test rows = the test rows, in order) and refused otherwise with what is missing, then installed as
experiments/<exp>/ (the folds must equal the local folds file) and the leaderboard regenerated, so `ensemble`
treats it like a local run. Every kaggle call is an argument list; credentials are never printed.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from competition import cli, kaggle_cli, kaggle_inference, options
from competition.atomic import write_json, write_text
from competition.bundle import build_bundle
from competition.config import Config, load_config, load_saved_config
from competition.errors import DataError, KitError
from competition.kaggle_cli import KaggleError
from competition.leaderboard import write_leaderboard
from competition.paths import experiment_arg, user_path
from competition.project import Project, inside

log = logging.getLogger(__name__)
JOB = Path(__file__).with_name("kaggle_script.py")
STATES = {"queued": "queued", "newscript": "queued", "running": "running", "complete": "complete", "error": "error",
          "cancelrequested": "cancelled", "cancelacknowledged": "cancelled", "cancelled": "cancelled"}
# the status field of `kaggle kernels status` (2.x: KernelWorkerStatus.CANCEL_REQUESTED, 1.x: cancelRequested),
# letters only, lower case -> the kit's state
STATUS_LINE = re.compile(r'^(?P<kernel>\S+) has status "(?P<status>[^"]*)"\s*$', re.M)
READY_POLL_S = 10.0  # seconds between `datasets status` polls while Kaggle processes a new bundle version
READY_WAIT_S = 900.0  # give up waiting for the bundle after this long (the kernel would see the old version)
# the kernel trains with CUDA: a CPU or TPU shape is refused for `kaggle push` (the parser's type also allows cpu,
# for an inference kernel)
TRAINING_ACCELERATOR = options.accelerator(("gpu",), "the training kernel trains with CUDA")
PUSH, STATUS, PULL, SUBMIT = "push", "status", "pull", "submit-kernel"
PUSH_INF, STATUS_INF = "push --inference", "status --inference"
# option (argparse dest) -> the actions it applies to; given (not its default) on any other action it is refused
APPLIES = {"user": (PUSH, STATUS, PULL, PUSH_INF, STATUS_INF), "accelerator": (PUSH, PUSH_INF),
           "no_wheels": (PUSH, PUSH_INF), "target_freeze": (PUSH, PUSH_INF), "allow_dirty": (PUSH, PUSH_INF),
           "replace": (PULL,), "test_rows": (PUSH_INF,), "sample": (PUSH_INF,), "force": (PUSH, PUSH_INF, SUBMIT),
           "version": (SUBMIT,), "message": (SUBMIT,)}


def slugs(cfg: Config, user: str) -> dict:
    """Kaggle references derived from the competition and experiment names (stable, so status/pull need no state)."""
    base = re.sub(r"[^a-z0-9]+", "-", f"{cfg.competition.name}-{cfg.name}".lower()).strip("-")
    return {"user": user, "dataset": f"{user}/{base}-kit", "kernel": f"{user}/{base}", "title": base,
            "dataset_title": f"{base}-kit"}


def work_dir(project: Project, cfg: Config) -> Path:
    """Where push builds the bundle and kernel folders (under the cache: never committed)."""
    return project.cache_dir(cfg) / "kaggle" / cfg.name


def kernel_metadata(cfg: Config, refs: dict, code_file: str, accelerator: str) -> dict:
    """kernel-metadata.json: a private script kernel, GPU on, internet off, the competition and bundle attached."""
    return {"id": refs["kernel"], "title": refs["title"], "code_file": code_file, "language": "python",
            "kernel_type": "script", "is_private": True, "enable_gpu": True, "enable_tpu": False,
            "enable_internet": False, "machine_shape": accelerator, "dataset_sources": [refs["dataset"]],
            "competition_sources": [cfg.competition.slug], "kernel_sources": [], "model_sources": []}


def job_script(cfg: Config, refs: dict, manifest: dict) -> str:
    """competition/kaggle_script.py with its SETTINGS filled in for this experiment."""
    settings = {"experiment": cfg.name, "slug": cfg.competition.slug, "train_csv": cfg.competition.train_csv,
                "bundle": refs["dataset"], "pretrained_file": manifest.get("pretrained_file", "")}
    text = JOB.read_text()
    marker = "SETTINGS: dict = {}"
    if marker not in text:
        raise KitError(f"{JOB}: the SETTINGS line is missing; the job template was edited")
    return text.replace(marker, f"SETTINGS: dict = {json.dumps(settings)}", 1)


def upload_bundle(bundle: Path, refs: dict, message: str) -> str:
    """Create the bundle dataset, or add a version when it exists; wait until Kaggle has processed it."""
    write_json(bundle / "dataset-metadata.json", {"title": refs["dataset_title"], "id": refs["dataset"],
                                                  "licenses": [{"name": "CC0-1.0"}]})
    code, _ = kaggle_cli.run(["datasets", "status", refs["dataset"]], f"dataset {refs['dataset']}", check=False)
    if code == 0:
        kaggle_cli.run(["datasets", "version", "-p", str(bundle), "-m", message, "-r", "zip", "-t"],
                       f"new version of {refs['dataset']}", timeout=3600)
    else:
        kaggle_cli.run(["datasets", "create", "-p", str(bundle), "-r", "zip", "-t"], f"dataset {refs['dataset']}",
                       timeout=3600)
    return wait_ready(refs["dataset"])


def wait_ready(dataset: str, poll_s: float = READY_POLL_S, limit_s: float = READY_WAIT_S) -> str:
    """Poll `datasets status` until Kaggle reports the bundle ready (a kernel pushed earlier sees the old version)."""
    t0 = time.monotonic()
    while True:
        _, output = kaggle_cli.run(["datasets", "status", dataset], f"dataset {dataset}")
        status = dataset_state(output)
        if status == "ready":
            return "ready"
        if status in ("failed", "deleted", "error"):
            raise KaggleError(f"Kaggle could not process the bundle {dataset}: {output.strip()[:200]}")
        if time.monotonic() - t0 > limit_s:
            raise KaggleError(f"the bundle {dataset} is still '{output.strip()[:60]}' after {limit_s:g} s; run "
                              f"`./run.sh kaggle push` again once kaggle.com shows it ready")
        time.sleep(poll_s)


def dataset_state(output: str) -> str:
    """The status `kaggle datasets status` printed: its last line that is one status word (ready, failed,
    blobs_received, ...; 2.x prints the lower-cased DatabundleVersionStatus name), '' when there is none; a word
    inside another line ("already", a warning) never counts."""
    words = [line.strip().lower() for line in output.splitlines() if re.fullmatch(r"[A-Za-z_]+", line.strip())]
    return words[-1] if words else ""


def push(project: Project, name: str, accelerator: str = "NvidiaTeslaT4", wheels: bool = True,
         target_freeze: Path | None = None, user: str = "", allow_dirty: bool = False, force: bool = False) -> dict:
    """Bundle -> dataset -> kernel; returns the references and the kernel's address (refused when another name
    pushed from here got the same Kaggle slug, unless force)."""
    cfg = load_config(name, [], project)
    if not cfg.competition.slug:
        raise KitError("competition.slug is empty in competition.yaml: set it to the competition's URL name (the "
                       "kernel attaches that competition's data)")
    if options.Accelerator.unlisted(accelerator):  # a shape Kaggle may have added since the list was written
        log.warning("%s", options.Accelerator.unlisted(accelerator))
    refs = slugs(cfg, kaggle_cli.username(user))
    kaggle_inference.check_kernel_claim(project, cfg, refs, kaggle_inference.push_label("kaggle", name, "experiment"),
                                        force)
    work = work_dir(project, cfg)
    ensure_local_folds(cfg, project)
    manifest = build_bundle(project, name, work / "bundle", wheels, target_freeze, allow_dirty)
    upload_bundle(work / "bundle", refs, f"{name} at {manifest['commit'][:12]}")
    kernel = work / "kernel"
    shutil.rmtree(kernel, ignore_errors=True)
    kernel.mkdir(parents=True)
    code_file = f"{refs['title']}.py"
    write_text(kernel / code_file, job_script(cfg, refs, manifest))
    write_json(kernel / "kernel-metadata.json", kernel_metadata(cfg, refs, code_file, accelerator))
    _, output = kaggle_cli.run(["kernels", "push", "-p", str(kernel), "--accelerator", accelerator],
                               f"kernel {refs['kernel']}")
    if "error" in output.lower() and "successfully pushed" not in output.lower():
        raise KaggleError(kaggle_cli.explain_failure(output, f"kernel {refs['kernel']}"))
    url = next(iter(re.findall(r"https://www\.kaggle\.com/\S+", output)), f"https://www.kaggle.com/code/{refs['kernel']}")
    state = {**refs, "kind": "experiment", "url": url.rstrip("."), "pushed": time.strftime("%Y-%m-%d %H:%M:%S"),
             "commit": manifest["commit"], "n_train": manifest.get("n_train"), "n_test": manifest.get("n_test"),
             "train_ids": manifest.get("train_ids"), "test_ids": manifest.get("test_ids")}
    write_json(work / "push.json", state)
    return state


def ensure_local_folds(cfg: Config, project: Project) -> None:
    """Build (and audit) the folds file here when the data is here, so the kernel trains on the local folds."""
    from competition.folds import load_tables

    if project.folds_file(cfg).is_file():
        return
    try:
        load_tables(cfg, project)
    except KitError as err:
        log.warning("folds not built here (%s): the kernel builds them and pull brings them back", err)


def read_state(project: Project, cfg: Config, user: str) -> dict:
    """What push recorded, or the references derived again from the names."""
    file = work_dir(project, cfg) / "push.json"
    if file.is_file():
        return json.loads(file.read_text())
    return slugs(cfg, kaggle_cli.username(user))


def status(project: Project, name: str, user: str = "") -> str:
    """The kernel's state: queued | running | complete | error | cancelled | unknown."""
    cfg = load_config(name, [], project, check_model=False)
    refs = read_state(project, cfg, user)
    _, output = kaggle_cli.run(["kernels", "status", refs["kernel"]], f"kernel {refs['kernel']}")
    state = parse_status(output, refs["kernel"])
    detail = re.search(r'^failure message: "(.*)"', output, re.I | re.M)
    if state == "unknown":
        log.warning("%s: status not understood from the kaggle CLI's answer: %s", refs["kernel"],
                    kaggle_cli.last_line(output))
    log.info("%s: %s%s", refs["kernel"], state, f" ({detail.group(1)[:200]})" if detail else "")
    return state


def parse_status(output: str, kernel: str) -> str:
    """The state in `kaggle kernels status` output: the quoted field of the line `<kernel> has status "..."`
    (2.x: "KernelWorkerStatus.RUNNING"; 1.x: "running"), never a word found elsewhere (a kernel named
    exp-complete is not complete); unknown when there is no such line."""
    lines = list(STATUS_LINE.finditer(output))
    line = next((m for m in lines if m["kernel"] == kernel), lines[-1] if lines else None)
    if line is None:
        return "unknown"
    field = re.sub(r"[^a-z]", "", line["status"].rsplit(".", 1)[-1].lower())
    return STATES.get(field, "unknown")


def download(refs: dict, dest: Path) -> Path:
    """The kernel's output files into dest; returns the <exp>.tar or an experiments/ tree found there."""
    kaggle_cli.run(["kernels", "output", refs["kernel"], "-p", str(dest), "-o", "-q"], f"output of {refs['kernel']}",
                   timeout=3600)
    return dest


def unpack_outputs(downloaded: Path, name: str, staging: Path) -> Path:
    """Extract <name>.tar (members checked: no absolute paths, no '..', files and folders only) into staging;
    or take an experiments/<name>/ tree downloaded as files. Returns the staged project root."""
    archive = next(iter(sorted(downloaded.rglob(f"{name}.tar"))), None)
    if archive is not None:
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                parts = Path(member.name).parts
                if member.name.startswith("/") or ".." in parts or not (member.isfile() or member.isdir()):
                    raise DataError(f"{archive}: refusing member {member.name!r} (outside the archive or not a file)")
            tar.extractall(staging, filter="data") if hasattr(tarfile, "data_filter") else tar.extractall(staging)
        return staging
    tree = next(iter(sorted(downloaded.rglob(f"experiments/{name}"))), None)
    if tree is None:
        raise DataError(f"the kernel's output has no {name}.tar and no experiments/{name}/ (files: "
                        f"{sorted(p.name for p in downloaded.rglob('*') if p.is_file())[:10]}) - check the kernel's "
                        f"log with `./run.sh kaggle status {name}`")
    return tree.parent.parent


def expected_rows(project: Project, cfg: Config, staged: Path) -> tuple[pd.Series, pd.Series | None]:
    """The training ids (the local folds file, else the pulled one) and test ids (the local test table when the
    data is here, else None: then the pulled folds' own test files are compared with each other)."""
    from competition.folds import load_folds
    from competition.tables import load_test_table

    local = project.folds_file(cfg)
    pulled = staged / "folds" / local.name
    folds_file = local if local.is_file() else pulled
    if not folds_file.is_file():
        raise DataError(f"no folds file {local.name} here or in the kernel's output; run `./run.sh folds` first")
    train_ids = load_folds(folds_file)["id"].astype(str)
    try:
        test_ids = load_test_table(cfg.competition, project)["id"].astype(str)
    except KitError:
        test_ids = None
    return train_ids, test_ids


def check_outputs(out: Path, cfg: Config, train_ids: pd.Series, test_ids: pd.Series | None) -> list[str]:
    """What is missing or wrong in a pulled experiment folder ([] when complete)."""
    problems = []
    folds = list(cfg.train.folds) or list(range(cfg.folds.n_splits))
    for f in ["config.yaml", "oof.csv", "test.csv", "metrics.json"]:
        if not (out / f).is_file():
            problems.append(f"{f} missing")
    for k in folds:
        absent = [f for f in ("best.pt", "oof.csv", "test.csv", "result.json") if not (out / f"fold{k}" / f).is_file()]
        if absent:
            problems.append(f"fold{k}: {', '.join(absent)} missing")
    if (out / "oof.csv").is_file():
        oof = pd.read_csv(out / "oof.csv", dtype={"id": str}, keep_default_na=False)
        expect = set(train_ids) if not cfg.train.folds else None
        got = oof["id"]
        if expect is not None and (len(got) != len(expect) or set(got) != expect or got.duplicated().any()):
            problems.append(f"oof.csv has {len(got)} rows ({got.nunique()} ids), the training set {len(expect)}: "
                            f"{len(expect - set(got))} training ids missing")
        if not np.isfinite(pd.to_numeric(oof["prob"], errors="coerce")).all():
            problems.append("oof.csv has missing or non-numeric probabilities")
    if (out / "test.csv").is_file():
        test = pd.read_csv(out / "test.csv", dtype={"id": str}, keep_default_na=False)
        if test_ids is not None and (len(test) != len(test_ids) or (test["id"].values != test_ids.values).any()):
            problems.append(f"test.csv has {len(test)} rows, the test set {len(test_ids)} (or the ids differ)")
        if not np.isfinite(pd.to_numeric(test["prob"], errors="coerce")).all():
            problems.append("test.csv has missing or non-numeric probabilities")
    return problems


def install_outputs(project: Project, cfg: Config, staged: Path, replace: bool) -> Path:
    """Move the staged experiments/<name>/ into place (refusing to overwrite without replace) and add the
    pulled folds file when there is none here (refusing one that differs from the local file)."""
    from competition.folds import load_folds

    local_folds, pulled_folds = project.folds_file(cfg), staged / "folds" / project.folds_file(cfg).name
    if pulled_folds.is_file():
        if local_folds.is_file():
            a, b = load_folds(local_folds), load_folds(pulled_folds)
            same = a[["id", "fold"]].sort_values("id").reset_index(drop=True).equals(
                b[["id", "fold"]].sort_values("id").reset_index(drop=True))
            if not same:
                raise DataError(f"the kernel trained on folds that differ from {local_folds}; its OOF cannot be blended "
                                f"with local runs - bundle the local folds file (it is, when it exists at push)")
        else:
            local_folds.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(pulled_folds, local_folds)
    dest = project.experiment_dir(cfg.name)
    if dest.exists() and any(dest.iterdir()) and not replace:
        raise DataError(f"{dest} already holds a run of {cfg.name}; pass --replace to swap in the kernel's outputs")
    old = inside(dest.with_name(f".{cfg.name}.replaced"), project.experiments)
    swap_in(staged / "experiments" / cfg.name, dest, old)
    return dest


def swap_in(new: Path, dest: Path, old: Path) -> None:
    """Move the folder new to dest. A run already at dest is moved aside to old first, put back when the move
    fails, and deleted only once the new run is in place; an old left by a swap that died between its two moves
    is restored before anything else."""
    if old.exists() and not dest.exists():
        old.rename(dest)  # an earlier swap died after moving the old run aside: it is the only copy
    shutil.rmtree(old, ignore_errors=True)
    had_old = dest.exists()
    if had_old:
        dest.rename(old)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        shutil.move(str(new), str(dest))
    except BaseException as err:
        shutil.rmtree(dest, ignore_errors=True)  # whatever part of the new run arrived
        if had_old:
            old.rename(dest)
        if not isinstance(err, Exception):
            raise
        kept = "the previous run is back in place" if had_old else "nothing was installed"
        raise KitError(f"could not move the pulled run into {dest} ({type(err).__name__}: {err}); {kept} - free "
                       f"space or fix the folder's permissions, then rerun the pull") from err
    shutil.rmtree(old, ignore_errors=True)


def pull(project: Project, name: str, user: str = "", replace: bool = False) -> Path:
    """Download the kernel's outputs, check them complete, install them and regenerate the leaderboard."""
    cfg = load_config(name, [], project, check_model=False)
    refs = read_state(project, cfg, user)
    project.experiments.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=project.experiments, prefix=f".pull-{name}-") as tmp:
        downloaded, staging = Path(tmp) / "download", Path(tmp) / "staging"
        downloaded.mkdir()
        staging.mkdir()
        staged = unpack_outputs(download(refs, downloaded), name, staging)
        out = staged / "experiments" / name
        job = next(iter(downloaded.rglob("kit-job.json")), None)
        job_info = json.loads(job.read_text()) if job else {}
        saved = load_saved_config(out / "config.yaml") if (out / "config.yaml").is_file() else cfg
        problems = check_outputs(out, saved, *expected_rows(project, saved, staged))
        if problems:
            exit_note = f" (the kernel's training exited {job_info['returncode']})" if job_info.get("returncode") else ""
            raise DataError(f"{refs['kernel']}: the outputs of {name} are incomplete{exit_note}: {'; '.join(problems)} "
                            f"- nothing was installed; rerun the kernel (`./run.sh kaggle push {name}`) or check its log")
        dest = install_outputs(project, cfg, staged, replace)
    write_leaderboard(project)
    log.info("%s: pulled into %s (%s GPU(s), %s min on Kaggle); leaderboard regenerated", refs["kernel"], dest,
             job_info.get("gpus", "?"), job_info.get("minutes", "?"))
    return dest


def refuse_unused_options(parser: argparse.ArgumentParser, args: argparse.Namespace, action: str, applies: dict,
                          command: str) -> None:
    """Refuse (parser.error: one line, exit 2) every option of `applies` (dest -> the actions it applies to) given a
    value other than its default on an action it does not apply to: ignored silently, it would mislead."""
    for option in parser._actions:  # argparse keeps its options there
        uses = applies.get(option.dest)
        if uses is None or action in uses or getattr(args, option.dest, option.default) == option.default:
            continue
        name = max(option.option_strings, key=len)
        parser.error(f"{name} does not apply to `{command} {action}` (it is for: {', '.join(uses)}) - drop it")


def check_command_line(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """The action as APPLIES names it (`push --inference`, ...), once every option given applies to it and a training
    push's --accelerator is a GPU shape; parser.error (one line, exit 2) otherwise."""
    action = f"{args.action} --inference" if args.inference and args.action in (PUSH, STATUS) else args.action
    refuse_unused_options(parser, args, action, APPLIES, "kaggle")
    if action == PUSH:
        try:
            TRAINING_ACCELERATOR(args.accelerator)
        except argparse.ArgumentTypeError as err:
            parser.error(f"argument --accelerator: {err}")
    return action


def main(argv: list[str] | None = None, project: Project | None = None) -> int:
    """CLI entry point."""
    parser = cli.parser(__doc__)
    parser.add_argument("action", type=options.choice("push", "status", "pull", "submit-kernel"))
    parser.add_argument("experiment", help="experiment; with --inference a blend or experiment; submit-kernel: that "
                                           "name or USER/KERNEL (competition.kaggle_inference)")
    parser.add_argument("--user", default="", help="Kaggle user owning the dataset and kernel (default: credentials)")
    parser.add_argument("--accelerator", default="NvidiaTeslaT4", type=kaggle_inference.ACCELERATOR,
                        help="push: Kaggle machine shape, a GPU one (push --inference: or cpu); case, spaces and "
                             "dashes do not matter")
    parser.add_argument("--no-wheels", action="store_true", help="push: no wheels (the image has every requirement)")
    parser.add_argument("--target-freeze", help="push: `pip freeze` of the Kaggle image; its packages are "
                                                           "left out of the wheels")
    parser.add_argument("--allow-dirty", action="store_true", help="push: bundle uncommitted code (recorded)")
    parser.add_argument("--replace", action="store_true", help="pull: replace a local run of the same experiment")
    kaggle_inference.add_arguments(parser)  # --inference, --test-rows, --sample, --force, --version, -m
    args = parser.parse_args(argv)
    check_command_line(parser, args)

    def body() -> int:
        nonlocal project
        project = project or Project.from_env()  # inside cli.run: a bad KIT_HOME is one ERROR line
        if kaggle_inference.wants(args):  # code competitions: inference kernels and their submission
            return kaggle_inference.run_action(args, project, kaggle_inference.KernelTools(upload_bundle, parse_status))
        kaggle_inference.refuse_blend_without_inference(project, args.action, args.experiment)
        args.experiment = experiment_arg(args.experiment, project)  # a name, or its YAML typed from anywhere
        if args.action == "push":
            freeze = user_path(args.target_freeze, project, "--target-freeze", kind="file") if args.target_freeze else None
            state = push(project, args.experiment, args.accelerator, not args.no_wheels, freeze, args.user,
                         args.allow_dirty, args.force)
            log.info("kernel %s pushed: %s", state["kernel"], state["url"])
            log.info("next: ./run.sh kaggle status %s   (then, when complete) ./run.sh kaggle pull %s",
                     args.experiment, args.experiment)
        elif args.action == "status":
            state = status(project, args.experiment, args.user)
            if state == "complete":
                log.info("next: ./run.sh kaggle pull %s", args.experiment)
            return 0 if state != "error" else 1
        else:
            dest = pull(project, args.experiment, args.user, args.replace)
            log.info("next: python -m competition.ensemble ... %s   (outputs in %s)", args.experiment, dest)
        return 0

    return cli.run(body)


if __name__ == "__main__":
    sys.exit(main())
