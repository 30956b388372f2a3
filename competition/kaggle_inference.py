"""Code competitions: push an internet-off inference kernel that predicts Kaggle's hidden test set, then submit
its output.

    ./run.sh kaggle push <blend|exp> --inference [--accelerator NvidiaTeslaT4] [--test-rows N] [--sample N]
                         [--force] [--no-wheels] [--target-freeze FILE] [--allow-dirty] [--user NAME]
    ./run.sh kaggle status <blend|exp> --inference
    ./run.sh kaggle submit-kernel <blend|exp|USER/KERNEL> [--version N] [-m MESSAGE] [--force]

push --inference: a runtime estimate first (predict timed here on --sample local images with the blend's own
members x folds x TTA geometry, scaled to the test rows and to the accelerator's speed factor, compared with
Kaggle's 9 h limit; refused when it does not fit unless --force), then an INFERENCE bundle (the kit's code at its
commit, competition.yaml, each member's saved config, metrics, OOF and fold best.pt, the blend's sidecar, the
requirements and their wheels) becomes the private dataset <user>/<comp>-<target>-infer-kit, and the private
kernel <user>/<comp>-<target>-infer (GPU, internet off, the competition attached) runs
competition/kaggle_predict_script.py: install offline, `python -m competition.kaggle_predict`, submission.csv.
submit-kernel: `kaggle competitions submit -c <slug> -k <kernel> -v <N> -f submission.csv -m MESSAGE`, read as
`competition.submit` reads an upload (only the CLI's success line counts). Every kaggle call goes through
competition.kaggle_cli; kaggle_kernel wires these actions into its parser and lends its dataset upload and status
reading (KernelTools), so this module never imports it.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from competition import kaggle_cli, options
from competition.atomic import write_json, write_text
from competition.bundle import MANIFEST, copy_code, file_hashes, requirements_and_wheels
from competition.config import CompetitionConfig, Config, load_config, load_saved_config
from competition.errors import ConfigError, KitError
from competition.kaggle_cli import KaggleError
from competition.kaggle_predict import Target, resolve_target, target_name
from competition.paths import user_path
from competition.project import REPO, Project, check_name
from competition.submit import SUCCESS, explain_failure
from competition.tables import load_test_table, load_train_table

log = logging.getLogger(__name__)
SCRIPT = Path(__file__).with_name("kaggle_predict_script.py")
LIMIT_S = 9 * 3600  # Kaggle's run-time limit for a code competition's notebook (GPU or CPU): 9 hours
SETUP_S = 600.0  # ASSUMED seconds for the kernel's start, unpacking the bundle and the offline pip install
# Target images/s divided by the images/s measured on THIS machine's CPU (= 1) for the same blend and geometry.
# Every GPU factor is an ASSUMPTION (a conservative guess for small CNNs at <= 384 px, decode included), not a
# measurement: time one kernel and correct it here. An Nvidia shape not listed gets the smallest GPU factor. The keys
# are the shapes `--accelerator` accepts for an inference kernel (options.KAGGLE_MACHINES, gpu and cpu; a test checks).
SPEED_FACTORS = {"cpu": 1.0, "NvidiaTeslaT4": 8.0, "NvidiaTeslaT4Highmem": 8.0, "NvidiaL4": 12.0, "NvidiaL4X1": 12.0,
                 "NvidiaTeslaA100": 20.0, "NvidiaH100": 25.0, "NvidiaRtxPro6000": 25.0}
ACCELERATOR = options.accelerator(("gpu", "cpu"), "the kit's kernels run PyTorch on CUDA (an inference kernel also on "
                                  "the CPU), never on a TPU")
MEMBER_FILES = ("config.yaml", "metrics.json", "oof.csv")  # what inference reads of a member (oof: the prior)
FOLD_FILES = ("best.pt", "result.json")  # per fold: the weights, and what marks the fold finished
KERNEL_REF = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,49}/[A-Za-z0-9][A-Za-z0-9_-]{0,99}")


@dataclass
class KernelTools:
    """What kaggle_kernel lends (it imports this module, never the reverse): its bundle upload and status parser."""

    upload_bundle: Callable[[Path, dict, str], str]
    parse_status: Callable[[str, str], str]


def inference_refs(comp: CompetitionConfig, name: str, user: str) -> dict:
    """Kaggle references of a target's inference dataset and kernel (derived from names: status needs no state)."""
    base = re.sub(r"[^a-z0-9]+", "-", f"{comp.name}-{name}".lower()).strip("-")[:40].strip("-") + "-infer"
    return {"user": user, "dataset": f"{user}/{base}-kit", "kernel": f"{user}/{base}", "title": base,
            "dataset_title": f"{base}-kit"}


def work_dir(project: Project, cfg: Config, name: str) -> Path:
    """Where push --inference builds the bundle and kernel of a target (under the cache: never committed)."""
    return project.cache_dir(cfg) / "kaggle-inference" / check_name(name, "blend or experiment")


def test_row_count(project: Project, comp: CompetitionConfig, given: int | None) -> int:
    """--test-rows, else the rows of the local test table (refused with the fix when it is not here)."""
    if given:
        return given
    try:
        return len(load_test_table(comp, project))
    except KitError as err:
        raise KitError(f"the test table is not here to count its rows ({err}) - pass --test-rows N (the hidden test "
                       f"set's size, from the competition's Data page)") from None


def sample_images(project: Project, comp: CompetitionConfig, n: int) -> list[str]:
    """Up to n local images to time: training images first, else test images present here."""
    for load in (lambda: load_train_table(comp, project), lambda: load_test_table(comp, project)):
        try:
            table = load()
        except KitError:
            continue
        present = table[~table["missing"]] if "missing" in table else table
        if len(present):
            return list(present["path"].head(n))
    return []


def geometry(project: Project, target: Target) -> str:
    """Members x folds x TTA of a target, in words (what the estimate timed)."""
    parts = []
    for member in target.members:
        out = project.experiment_dir(member)
        cfg = load_saved_config(out / "config.yaml")
        crops = f", {cfg.tta.crops} crops" if cfg.tta.crops > 1 else ""
        tiles = f", {cfg.tta.tiles} tiles" if cfg.tta.tiles else ""
        parts.append(f"{member}: {len(list(out.glob('fold*/best.pt')))} folds x TTA {cfg.tta.views}{crops}{tiles}")
    return "; ".join(parts)


def speed_factor(accelerator: str) -> float:
    """The accelerator's speed factor against this CPU (SPEED_FACTORS; an unlisted Nvidia shape: the smallest GPU's,
    which push_inference warns about)."""
    return SPEED_FACTORS.get(accelerator) or min(v for k, v in SPEED_FACTORS.items() if k != "cpu")


def warn_unlisted(accelerator: str) -> None:
    """Warn that an unlisted shape is passed on as typed and its speed factor is assumed (nothing for a listed one)."""
    if options.Accelerator.unlisted(accelerator):
        log.warning("%s; its speed factor is ASSUMED to be %g (the slowest GPU in SPEED_FACTORS, "
                    "competition/kaggle_inference.py)", options.Accelerator.unlisted(accelerator),
                    speed_factor(accelerator))


def estimate_runtime(project: Project, target: Target, comp: CompetitionConfig, rows: int, accelerator: str,
                     sample: int) -> dict:
    """Time predict on up to `sample` local images on this CPU, scaled to `rows` and the accelerator's factor."""
    import torch  # `./run.sh kaggle status` never loads torch

    from competition.predict import predict_paths

    paths = sample_images(project, comp, sample)
    if not paths:
        raise KitError(f"no local images to time {target.name} on (neither the training nor the test table's images "
                       f"are here) - put the competition's data at competition.data_dir, or pass --force to push "
                       f"without an estimate")
    _, timing = predict_paths(project, target.model_arg, paths, torch.device("cpu"))
    here = len(paths) / max(timing["predict"], 1e-9)
    factor = speed_factor(accelerator)
    seconds = SETUP_S + timing["load"] + rows / (here * factor)
    return {"rows": rows, "sampled": len(paths), "images_per_s_here": here, "factor": factor,
            "accelerator": accelerator, "seconds": seconds, "limit_s": LIMIT_S, "fits": seconds <= LIMIT_S,
            "geometry": geometry(project, target)}


def describe_estimate(est: dict) -> str:
    """The estimate in one line: measured rate, assumed factor, total against the limit."""
    return (f"runtime estimate: {est['rows']} test rows at {est['images_per_s_here']:.2f} images/s measured here "
            f"({est['sampled']} images; {est['geometry']}) x {est['factor']:g} for {est['accelerator']} (an assumed "
            f"factor, not measured) + {SETUP_S / 60:.0f} min setup = {est['seconds'] / 3600:.2f} h of Kaggle's "
            f"{est['limit_s'] / 3600:.0f} h limit")


def check_runtime(project: Project, target: Target, comp: CompetitionConfig, rows: int, accelerator: str,
                  sample: int, force: bool) -> dict:
    """Print the estimate; refuse (one line, the figures) when it exceeds the limit, unless force."""
    try:
        est = estimate_runtime(project, target, comp, rows, accelerator, sample)
    except KitError as err:
        if not force:
            raise
        print(f"runtime estimate: not measured ({err}); pushing anyway (--force)")  # noqa: T201 - the CLI's answer
        return {}
    print(describe_estimate(est))  # noqa: T201 - the CLI's answer
    if not est["fits"] and not force:
        raise KitError(f"{target.name} would not finish in Kaggle's {LIMIT_S / 3600:.0f} h: {describe_estimate(est)} "
                       f"- drop members, folds or TTA views, pick a faster --accelerator, or pass --force")
    if not est["fits"]:
        log.warning("%s: over the %d h limit by the estimate; pushing anyway (--force)", target.name, LIMIT_S // 3600)
    return est


def copy_inference_files(project: Project, target: Target, kit: Path) -> list[str]:
    """competition.yaml, each member's saved config, metrics, OOF and fold weights, and the blend's sidecar."""
    copied = []
    files = [(project.competition_file, Path("competition.yaml"))] if project.competition_file.is_file() else []
    for member in target.members:
        out, rel = project.experiment_dir(member), Path("experiments") / member
        files += [(out / f, rel / f) for f in MEMBER_FILES if (out / f).is_file()]
        files += [(ckpt.parent / f, rel / ckpt.parent.name / f) for ckpt in sorted(out.glob("fold*/best.pt"))
                  for f in FOLD_FILES if (ckpt.parent / f).is_file()]
    if target.blend:
        files.append((target.blend, Path(project.submissions.name) / target.blend.name))
    for src, rel in files:
        (kit / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, kit / rel)
        copied.append(str(rel))
    return copied


def build_inference_bundle(project: Project, target: Target, comp: CompetitionConfig, dest: Path, wheels: bool = True,
                           target_freeze: Path | None = None, allow_dirty: bool = False, repo: Path = REPO) -> dict:
    """Write the inference bundle of target into dest (built aside, then swapped in); return its manifest."""
    work = dest.with_name(dest.name + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    for sub in ("kit", "wheels"):
        (work / sub).mkdir(parents=True)
    for whl in (dest / "wheels").glob("*.whl") if (dest / "wheels").is_dir() else []:
        shutil.copy2(whl, work / "wheels" / whl.name)  # a rebuild reuses the wheels already downloaded
    code = copy_code(repo, work / "kit", allow_dirty)
    copied = copy_inference_files(project, target, work / "kit")
    deps = requirements_and_wheels(work, wheels, target_freeze, repo=repo)
    manifest = {"inference": target.name, "members": target.members,
                "blend": f"{project.submissions.name}/{target.blend.name}" if target.blend else "",
                "competition": comp.name, "slug": comp.slug, "created": time.strftime("%Y-%m-%d %H:%M:%S"), **code,
                **deps, "project_files": copied}
    manifest["files"] = file_hashes(work)
    write_json(work / MANIFEST, manifest)
    shutil.rmtree(dest, ignore_errors=True)
    work.rename(dest)
    log.info("inference bundle of %s in %s: %d member(s), %d fold model(s), %d wheels", target.name, dest,
             len(target.members), sum(c.endswith("best.pt") for c in copied), len(deps["wheels"]))
    return manifest


def kernel_metadata(refs: dict, slug: str, code_file: str, accelerator: str) -> dict:
    """kernel-metadata.json: a private script kernel, GPU on (off for `cpu`), internet off, the competition and bundle
    attached."""
    gpu = accelerator != "cpu"
    return {"id": refs["kernel"], "title": refs["title"], "code_file": code_file, "language": "python",
            "kernel_type": "script", "is_private": True, "enable_gpu": gpu, "enable_tpu": False,
            "enable_internet": False, "machine_shape": accelerator if gpu else "", "dataset_sources": [refs["dataset"]],
            "competition_sources": [slug], "kernel_sources": [], "model_sources": []}


def predict_script(target: Target, comp: CompetitionConfig, refs: dict) -> str:
    """competition/kaggle_predict_script.py with its SETTINGS filled in for this target."""
    settings = {"target": target.name, "slug": comp.slug, "bundle": refs["dataset"],
                "markers": [m for m in (comp.sample_submission, comp.test_csv, comp.test_folder) if m]}
    text, marker = SCRIPT.read_text(), "SETTINGS: dict = {}"
    if marker not in text:
        raise KitError(f"{SCRIPT}: the SETTINGS line is missing; the kernel template was edited")
    return text.replace(marker, f"SETTINGS: dict = {json.dumps(settings)}", 1)


def push_kernel(folder: Path, refs: dict, script: str, metadata: dict, accelerator: str) -> tuple[str, int | None]:
    """Write the kernel folder and `kaggle kernels push` it; (its address, the version Kaggle gave, when said)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    write_text(folder / metadata["code_file"], script)
    write_json(folder / "kernel-metadata.json", metadata)
    machine = ["--accelerator", accelerator] if accelerator != "cpu" else []  # a CPU kernel: no accelerator at all
    _, output = kaggle_cli.run(["kernels", "push", "-p", str(folder), *machine], f"kernel {refs['kernel']}")
    if "error" in output.lower() and "successfully pushed" not in output.lower():
        raise KaggleError(kaggle_cli.explain_failure(output, f"kernel {refs['kernel']}"))
    url = next(iter(re.findall(r"https://www\.kaggle\.com/\S+", output)), f"https://www.kaggle.com/code/{refs['kernel']}")
    version = re.search(r"\bversion\s+(\d+)", output, re.I)
    return url.rstrip("."), int(version.group(1)) if version else None


def push_inference(project: Project, text: str, tools: KernelTools, accelerator: str = "NvidiaTeslaT4",
                   wheels: bool = True, target_freeze: Path | None = None, user: str = "", allow_dirty: bool = False,
                   test_rows: int | None = None, sample: int = 32, force: bool = False) -> dict:
    """Estimate -> inference bundle -> dataset -> kernel; returns what push.json records."""
    cfg = load_config("", [], project, check_model=False)
    comp = cfg.competition
    if not comp.slug:
        raise KitError("competition.slug is empty in competition.yaml: set it to the competition's URL name (the "
                       "kernel attaches that competition's data and submits to it)")
    target = resolve_target(project, text)
    warn_unlisted(accelerator)
    refs = inference_refs(comp, target.name, kaggle_cli.username(user))
    check_kernel_claim(project, cfg, refs, push_label("kaggle-inference", target.name, target_kind(target)), force)
    est = check_runtime(project, target, comp, test_row_count(project, comp, test_rows), accelerator, sample, force)
    work = work_dir(project, cfg, target.name)
    manifest = build_inference_bundle(project, target, comp, work / "bundle", wheels, target_freeze, allow_dirty)
    tools.upload_bundle(work / "bundle", refs, f"{target.name} inference at {manifest['commit'][:12]}")
    script = predict_script(target, comp, refs)
    code_file = f"{refs['title']}.py"
    url, version = push_kernel(work / "kernel", refs, script, kernel_metadata(refs, comp.slug, code_file, accelerator),
                               accelerator)
    state = {**refs, "target": target.name, "kind": target_kind(target), "members": target.members, "url": url,
             "version": version, "slug": comp.slug, "pushed": time.strftime("%Y-%m-%d %H:%M:%S"),
             "commit": manifest["commit"], "estimate": est}
    write_json(work / "push.json", state)
    return state


def read_push(project: Project, cfg: Config, name: str) -> dict | None:
    """What push --inference recorded for a target name (None when it was never pushed from here)."""
    file = work_dir(project, cfg, name) / "push.json"
    return json.loads(file.read_text()) if file.is_file() else None


def pushed_names(project: Project, cfg: Config) -> list[str]:
    """Target names pushed for inference from this project."""
    root = project.cache_dir(cfg) / "kaggle-inference"
    return sorted(p.parent.name for p in root.glob("*/push.json")) if root.is_dir() else []


def target_kind(target: Target) -> str:
    """'blend' or 'experiment' (what a push record says the kernel was pushed for)."""
    return "blend" if target.blend else "experiment"


def push_label(folder: str, name: str, kind: str) -> str:
    """What a kernel was pushed for, in words: 'blend best (inference kernel)', 'experiment exp1 (training kernel)'."""
    return f"{kind} {name} ({'inference' if folder == 'kaggle-inference' else 'training'} kernel)"


def pushed_records(project: Project, cfg: Config) -> list[tuple[str, dict]]:
    """(what it was pushed for, its push.json) of every kernel pushed from this project, training and inference
    (the records `kaggle push` writes under the cache: the only memory of which name owns which Kaggle slug)."""
    records = []
    for folder in ("kaggle", "kaggle-inference"):
        for file in sorted((project.cache_dir(cfg) / folder).glob("*/push.json")):
            try:
                state = json.loads(file.read_text())
            except (OSError, ValueError):
                continue
            name = file.parent.name
            kind = "experiment" if folder == "kaggle" else state.get("kind") or (
                "experiment" if state.get("members") == [name] else "blend")
            records.append((push_label(folder, name, kind), state))
    return records


def check_kernel_claim(project: Project, cfg: Config, refs: dict, label: str, force: bool) -> None:
    """Refuse to push label's kernel or dataset when another name pushed from here got the same Kaggle slug (exp_1 and
    exp-1, case variants, a blend and an experiment of one name, names cut at 40 characters): the push would
    overwrite the other's kernel on Kaggle. --force overwrites it (warned)."""
    for other, state in pushed_records(project, cfg):
        if other == label or (state.get("kernel"), state.get("dataset")) == (None, None):
            continue
        if refs["kernel"] == state.get("kernel") or refs["dataset"] == state.get("dataset"):
            if force:
                log.warning("%s: overwriting %s on Kaggle, pushed before for %s (--force)", label, refs["kernel"],
                            other)
                return
            raise KitError(f"{label} would be pushed as {refs['kernel']}, the Kaggle kernel already pushed for {other} "
                           f"(both names give the same slug): pushing would overwrite it - rename one of them, or "
                           f"pass --force to overwrite it")


def refuse_blend_without_inference(project: Project, action: str, text: str) -> None:
    """`kaggle push|status|pull <blend>` without --inference: refused in one line naming the fix (a blend has no
    training kernel; only an experiment is trained on Kaggle)."""
    try:
        name = target_name(text)
    except KitError:
        return  # not a plain name: the experiment's own checks explain it
    side = project.submissions / f"{name}.json"
    if not side.is_file() or (project.experiments / f"{name}.yaml").is_file():
        return
    fix = (f"`./run.sh kaggle status {name} --inference`, then `./run.sh kaggle submit-kernel {name}` (an inference "
           f"kernel's output is submitted, not pulled)" if action == "pull" else
           f"`./run.sh kaggle {action} {name} --inference`")
    raise ConfigError(f"{text!r} is a blend ({project.submissions.name}/{side.name}), not an experiment: a blend has "
                      f"no training kernel - add --inference: {fix}")


def inference_status(project: Project, text: str, tools: KernelTools, user: str = "") -> str:
    """The inference kernel's state: queued | running | complete | error | cancelled | unknown."""
    cfg = load_config("", [], project, check_model=False)
    name = target_name(text)
    refs = read_push(project, cfg, name) or inference_refs(cfg.competition, name, kaggle_cli.username(user))
    _, output = kaggle_cli.run(["kernels", "status", refs["kernel"]], f"kernel {refs['kernel']}")
    state = tools.parse_status(output, refs["kernel"])
    log.info("%s: %s", refs["kernel"], state)
    if state == "complete":
        log.info("next: ./run.sh kaggle submit-kernel %s", name)
    return state


def kernel_ref(project: Project, cfg: Config, text: str) -> tuple[str, int | None]:
    """(USER/KERNEL, the version push recorded or None) for a kernel typed as USER/KERNEL or as the blend or
    experiment name it was pushed for; an unknown name is refused with the names pushed from here."""
    text = text.strip()
    pushed = {n: read_push(project, cfg, n) or {} for n in pushed_names(project, cfg)}
    if KERNEL_REF.fullmatch(text):
        return text, next((s.get("version") for s in pushed.values() if s.get("kernel") == text), None)
    if "/" in text and Path(text).suffix.lower() not in (".csv", ".json"):  # not submissions/<blend>.csv
        raise KitError(f"kernel {text!r} is not USER/KERNEL-SLUG (as in kaggle.com/code/USER/KERNEL-SLUG) - pass "
                       f"that, or the blend or experiment name it was pushed for")
    name = target_name(text)
    if name not in pushed:
        raise KitError(f"kernel {text!r}: nothing was pushed for {name} from here (pushed: "
                       f"{', '.join(pushed) or 'none'}) - run `./run.sh kaggle push {name} --inference` first, or "
                       f"pass the kernel as USER/KERNEL-SLUG")
    return pushed[name]["kernel"], pushed[name].get("version")


def check_kernel_done(kernel: str, tools: KernelTools, force: bool, name: str = "<blend|exp>") -> str:
    """The kernel's state by `kaggle kernels status` (what `status --inference` asks); anything but complete is
    refused in one line with what to do, unless force (then warned)."""
    _, output = kaggle_cli.run(["kernels", "status", kernel], f"kernel {kernel}")
    state = tools.parse_status(output, kernel)
    if state == "complete":
        return state
    todo = {"queued": "wait until it has run", "running": "wait until it completes",
            "error": "its run failed: read its log, fix and push it again", "cancelled": "push it again"}.get(
        state, "check its state on its page")
    if force:
        log.warning("submit-kernel %s: the kernel is %s, not complete; submitting anyway (--force)", kernel, state)
        return state
    raise KitError(f"submit-kernel {kernel}: the kernel's latest run is {state}, not complete - {todo} "
                   f"(https://www.kaggle.com/code/{kernel}, `./run.sh kaggle status {name} --inference`), or pass "
                   f"--force to submit anyway")


def submit_kernel(project: Project, text: str, version: int | None = None, message: str = "",
                  tools: KernelTools | None = None, force: bool = False) -> str:
    """`kaggle competitions submit -c SLUG -k KERNEL -v N -f submission.csv -m MESSAGE` once the kernel's state is
    complete (tools: its status reading; unless force); refused unless the CLI prints its success line
    (competition.submit's reading of an upload)."""
    cfg = load_config("", [], project, check_model=False)
    slug = cfg.competition.slug
    if not slug:
        raise KitError("competition.slug is empty in competition.yaml: set it to the competition's URL name")
    kernel, recorded = kernel_ref(project, cfg, text)
    version = version or recorded
    if not version:
        raise KitError(f"submit-kernel {kernel}: no kernel version recorded here - pass --version N (the version "
                       f"whose output submission.csv is submitted; its kaggle.com page lists them)")
    if tools is not None:
        check_kernel_done(kernel, tools, force, text.strip() if "/" not in text.strip() else "<blend|exp>")
    code, output = kaggle_cli.run(["competitions", "submit", "-c", slug, "-k", kernel, "-v", str(version), "-f",
                                   "submission.csv", "-m", message or f"{kernel} v{version}"],
                                  f"the kernel submission to '{slug}'", check=False)
    if code != 0 or SUCCESS not in output.lower():
        raise KaggleError(explain_failure(output, slug))
    return output.strip()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The inference options of `./run.sh kaggle` (kaggle_kernel's parser)."""
    parser.add_argument("--inference", action="store_true", help="push/status: the inference kernel of a blend "
                                                                 "(submissions/<name>) or experiment")
    parser.add_argument("--test-rows", type=options.number(int, ge=1, le=999999), help="push --inference: test rows to "
                        "estimate for (default: the local test table's)")
    parser.add_argument("--sample", type=options.number(int, ge=1, le=1000), default=32,
                        help="push --inference: local images timed for the runtime estimate")
    parser.add_argument("--force", action="store_true", help="push --inference: push even when the estimate "
                        "exceeds Kaggle's 9 h limit; push: overwrite a kernel another name got the same slug of; "
                        "submit-kernel: submit a kernel that is not complete")
    parser.add_argument("--version", type=options.number(int, ge=1, le=99999), help="submit-kernel: the kernel version "
                                                                         "(default: the one push recorded)")
    parser.add_argument("-m", "--message", default="", help="submit-kernel: submission description")


def wants(args: argparse.Namespace) -> bool:
    """Whether a `./run.sh kaggle` command line is for this module."""
    return bool(args.inference) or args.action == "submit-kernel"


def run_action(args: argparse.Namespace, project: Project, tools: KernelTools) -> int:
    """push --inference, status --inference, submit-kernel (inside cli.run: a KitError is one line)."""
    if args.action == "submit-kernel":
        log.info("%s", submit_kernel(project, args.experiment, args.version, args.message, tools, args.force))
        return 0
    if args.action == "status":
        return 0 if inference_status(project, args.experiment, tools, args.user) != "error" else 1
    if args.action != "push":
        raise ConfigError(f"{args.action} --inference: an inference kernel's output is its submission.csv - submit it "
                          f"with `./run.sh kaggle submit-kernel {args.experiment}`")
    freeze = user_path(args.target_freeze, project, "--target-freeze", kind="file") if args.target_freeze else None
    state = push_inference(project, args.experiment, tools, args.accelerator, not args.no_wheels, freeze, args.user,
                           args.allow_dirty, args.test_rows, args.sample, args.force)
    log.info("inference kernel %s pushed (version %s): %s", state["kernel"], state["version"] or "?", state["url"])
    log.info("next: ./run.sh kaggle status %s --inference   (then, when complete) ./run.sh kaggle submit-kernel %s",
             state["target"], state["target"])
    return 0
