"""An offline bundle of one experiment: everything a machine without a registry needs to train it.

    python -m competition.bundle exp012 DIR [--no-wheels] [--target-freeze FILE] [--allow-dirty]
    ./run.sh bundle exp012 DIR

DIR/
  kit-bundle.json     manifest: kit commit (and whether the tree was dirty), experiment, competition, wheels,
                      sha256 of every file, train/test row counts when the data is here
  requirements.txt    what to install: the kit's training requirements, minus torch/torchvision (the target's
                      own CUDA build is kept) and the tools training never imports (pytest, the web server, kaggle)
  wheels/             a wheel of every package in their dependency closure, pinned to the versions installed
                      here (the tested set), so `pip install --no-index --find-links wheels -r requirements.txt`
                      needs no registry; packages the target already has at the same version (--target-freeze:
                      a `pip freeze` taken there) are left out
  kit/                the kit's code at the current commit, competition.yaml, the experiment's YAML and its
                      `base:` chain, and the folds file (so folds match the local runs and blends stay honest)
  weights/            models.json and the weight files the experiment needs (backbone, fold-builder embedder)
  README.md           the commands to install and run on the offline machine

On the target: pip install --no-index --find-links DIR/wheels -r DIR/requirements.txt, then
KIT_PYTHON=python3 DIR/kit/run.sh exp012 competition.data_dir=... model.weights_dir=DIR/weights.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import logging
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from competition import cli, options, outputs
from competition.atomic import write_json, write_text
from competition.config import Config, load_config, parse_yaml
from competition.errors import ConfigError, KitError
from competition.paths import experiment_arg, output_path, user_path
from competition.project import REPO, Project

log = logging.getLogger(__name__)

MANIFEST = "kit-bundle.json"  # marks a bundle folder (the Kaggle job finds its bundle by this file)
TARGET_PROVIDES = {"torch", "torchvision"}  # CUDA builds matched to the target's driver: never bundled
NOT_FOR_TRAINING = {"pytest", "playwright", "fastapi", "uvicorn", "python-multipart", "kaggle", "six",
                    "onnx", "onnxruntime", "onnxscript",  # tests, serving, upload, export: not needed to train
                    "mlflow-skinny"}  # experiment tracking (optional, competition.tracking)
CODE = ("competition", "run.sh", "requirements.txt")  # what of the kit's checkout a bundle carries


class BundleError(KitError, RuntimeError):
    """The bundle cannot be built as asked; the message says why and what to do."""


def experiment_chain(project: Project, name: str) -> list[Path]:
    """experiments/<name>.yaml and every file its `base:` lines name, in inheritance order (base first)."""
    chain, path = [], project.experiments / f"{name}.yaml"
    while True:
        if not path.is_file() or path in chain:
            raise ConfigError(f"{path}: not found (or a `base:` cycle) while collecting {name}'s config chain")
        chain.append(path)
        base = (parse_yaml(path.read_text(), str(path)) or {}).get("base")
        if not base:
            return chain[::-1]
        nxt = path.parent / base
        path = nxt if nxt.suffix or nxt.is_file() else nxt.with_suffix(".yaml")


def git(repo: Path, *args: str) -> str:
    """Output of a git command in repo ('' when git or the repository is missing)."""
    try:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return ""


def copy_code(repo: Path, dest: Path, allow_dirty: bool) -> dict:
    """The kit's code into dest: `git archive HEAD` when the code is committed; the working tree with
    allow_dirty (recorded as dirty). Returns {commit, dirty}."""
    commit = git(repo, "rev-parse", "HEAD").strip()
    dirty = bool(git(repo, "status", "--porcelain", "--", *CODE).strip()) if commit else True
    if commit and not dirty:
        archive = subprocess.run(["git", "-C", str(repo), "archive", "--format=tar", "HEAD", *CODE],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
        return {"commit": commit, "dirty": False}
    if not allow_dirty:
        raise BundleError(f"{repo}: the kit's code has uncommitted changes ({', '.join(CODE)}); commit them so the "
                          f"bundle is the code at a commit, or pass --allow-dirty (recorded in {MANIFEST})")
    for item in CODE:
        src = repo / item
        if src.is_dir():
            shutil.copytree(src, dest / item, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, dest / item)
    return {"commit": commit or "unknown", "dirty": True}


def copy_project(project: Project, cfg: Config, dest: Path) -> list[str]:
    """competition.yaml, the experiment's YAML chain and the folds file (when built) into dest; names copied."""
    copied = []
    if project.competition_file.is_file():
        shutil.copy2(project.competition_file, dest / "competition.yaml")
        copied.append("competition.yaml")
    for path in experiment_chain(project, cfg.name):
        rel = path.resolve().relative_to(project.experiments.resolve())
        (dest / "experiments" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dest / "experiments" / rel)
        copied.append(f"experiments/{rel}")
    folds = project.folds_file(cfg)
    (dest / "folds").mkdir(exist_ok=True)
    if folds.is_file():
        shutil.copy2(folds, dest / "folds" / folds.name)
        copied.append(f"folds/{folds.name}")
    else:
        log.warning("%s not built yet: the target builds the folds itself (run `./run.sh folds` first to bundle "
                    "them, so the target's folds are the local ones)", folds)
    return copied


def copy_weights(project: Project, cfg: Config, dest: Path) -> list[str]:
    """The experiment's backbone weights (and the fold builder's embedder) with their models.json entries."""
    from competition.model import local_weights  # torch/timm only when a bundle is built

    entries, files = [], []
    for model in (cfg.model, cfg.model.__class__(name=cfg.folds.embed_model, weights_dir=cfg.model.weights_dir)):
        if not model.pretrained:
            continue
        file, entry = local_weights(model, project)
        if file is None or not file.is_file() or file.name in files:
            continue
        shutil.copy2(file, dest / file.name)
        files.append(file.name)
        entries.append(entry or {"file": file.name, "timm_model": model.name})
    write_json(dest / "models.json", {"description": "weights bundled by competition.bundle", "models": entries})
    return files


def training_requirements(req_file: Path) -> list[Requirement]:
    """The kit's requirements that training needs from a registry (not torch/torchvision, not test/serve tools)."""
    reqs = []
    for line in req_file.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        if canonicalize_name(req.name) not in TARGET_PROVIDES | NOT_FOR_TRAINING:
            reqs.append(req)
    return reqs


def closure(reqs: list[Requirement], exclude: set[str] = TARGET_PROVIDES) -> dict[str, str]:
    """{name: installed version} for the requirements and everything they depend on here (markers evaluated),
    `exclude` (torch and torchvision: the target's own) and what only they need left out."""
    env, pins, todo, seen = default_environment(), {}, list(reqs), set()
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        key = (name, tuple(sorted(req.extras)))
        if key in seen or name in exclude:
            continue
        seen.add(key)
        try:
            dist = md.distribution(req.name)
        except md.PackageNotFoundError:
            raise BundleError(f"{req.name} is required but not installed here; install requirements.txt first "
                              f"(the bundle pins the versions installed here)") from None
        pins[name] = dist.version
        for dep in map(Requirement, dist.requires or []):
            if dep.marker is None or any(dep.marker.evaluate({**env, "extra": e}) for e in ("", *req.extras)):
                todo.append(dep)
    return dict(sorted(pins.items()))


def read_freeze(path: Path) -> dict[str, str]:
    """`pip freeze` output -> {name: version} (editable and URL lines ignored)."""
    out = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)", line.strip())
        if m:
            out[canonicalize_name(m.group(1))] = m.group(2)
    return out


def download_wheels(pins: dict[str, str], dest: Path, python_version: str = "", platform: str = "") -> list[str]:
    """pip download each pinned package's wheel (no dependency resolution: the pins are the closure)."""
    if not pins:
        return []
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--dest", str(dest),
           "--quiet", *[f"{n}=={v}" for n, v in pins.items()]]
    if python_version:
        cmd += ["--python-version", python_version]
    if platform:
        cmd += ["--platform", platform]
    log.info("downloading %d wheels into %s", len(pins), dest)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise BundleError(f"pip download failed ({' | '.join(tail)}); a registry must be reachable while the "
                          f"bundle is built, or pass --no-wheels for a target that has every requirement")
    wheels = sorted(p.name for p in dest.glob("*.whl"))
    missing = [n for n in pins if not any(canonicalize_name(w.split("-")[0]) == n for w in wheels)]
    if missing:
        raise BundleError(f"no wheel downloaded for {', '.join(missing)}; they have no binary wheel for this target")
    return wheels


def requirements_and_wheels(work: Path, wheels: bool = True, target_freeze: Path | None = None,
                            python_version: str = "", platform: str = "", repo: Path = REPO) -> dict:
    """work/requirements.txt (what training needs from a registry) and, when wheels, their pinned wheels in
    work/wheels/ (less what target_freeze says the target has); the manifest's python/pins/wheels entries."""
    reqs = training_requirements(repo / "requirements.txt")
    pins = closure(reqs)
    have = read_freeze(target_freeze) if target_freeze else {}
    needed = {n: v for n, v in pins.items() if have.get(n) != v}
    write_text(work / "requirements.txt", "\n".join(map(str, reqs)) + "\n")
    wheel_files = download_wheels(needed, work / "wheels", python_version, platform) if wheels else []
    return {"python": python_version or f"{sys.version_info.major}.{sys.version_info.minor}", "pins": pins,
            "wheels_left_out": sorted(set(pins) - set(needed)) if wheels else sorted(pins), "wheels": wheel_files}


def row_counts(cfg: Config, project: Project) -> dict:
    """Training and test row counts (and id digests) when the competition's data is here; {} otherwise."""
    from competition.tables import load_test_table, load_train_table

    try:
        train = load_train_table(cfg.competition, project, cfg.folds.group_column)
        test = load_test_table(cfg.competition, project)
    except KitError as err:
        log.warning("row counts not recorded (%s); pull then checks outputs against the folds file only", err)
        return {}
    return {"n_train": len(train), "n_test": len(test), "train_ids": digest(sorted(train["id"])),
            "test_ids": digest(list(test["id"]))}


def digest(items: list[str]) -> str:
    """A short sha256 of a list of ids."""
    return hashlib.sha256("\n".join(map(str, items)).encode()).hexdigest()[:16]


def file_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under root (relative paths), the manifest excluded."""
    out = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST):
        out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


README = """# Offline bundle of {name}

Built {when} from the kit at commit {commit}{dirty}.

    pip install --no-index --find-links wheels -r requirements.txt
    KIT_PYTHON=python3 bash kit/run.sh {name} competition.data_dir=/path/to/competition model.weights_dir=$PWD/weights

torch and torchvision are not bundled: the target's own (CUDA) build is used. Outputs land in
kit/experiments/{name}/; copy that folder back and run `./run.sh leaderboard`.
"""


def build_bundle(project: Project, name: str, dest: Path, wheels: bool = True, target_freeze: Path | None = None,
                 allow_dirty: bool = False, python_version: str = "", platform: str = "",
                 repo: Path = REPO) -> dict:
    """Write the bundle of experiment `name` into dest (built aside, then swapped in); return its manifest."""
    cfg = load_config(name, [], project)
    if dest.exists() and any(dest.iterdir()) and not (dest / MANIFEST).is_file():
        raise BundleError(f"{dest} exists and is not a bundle; pick an empty or new folder")
    work = dest.with_name(dest.name + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    for sub in ("kit", "weights", "wheels"):
        (work / sub).mkdir(parents=True)
    if (dest / "wheels").is_dir():  # a rebuild reuses the wheels already downloaded
        for whl in (dest / "wheels").glob("*.whl"):
            shutil.copy2(whl, work / "wheels" / whl.name)
    code = copy_code(repo, work / "kit", allow_dirty)
    project_files = copy_project(project, cfg, work / "kit")
    weights = copy_weights(project, cfg, work / "weights")
    deps = requirements_and_wheels(work, wheels, target_freeze, python_version, platform, repo)
    wheel_files = deps["wheels"]
    manifest = {"experiment": name, "competition": cfg.competition.name, "slug": cfg.competition.slug,
                "train_csv": cfg.competition.train_csv, "created": time.strftime("%Y-%m-%d %H:%M:%S"), **code,
                **deps, "weights": weights, "project_files": project_files,
                "pretrained_file": Path(cfg.model.pretrained_file).name if cfg.model.pretrained_file else "",
                **row_counts(cfg, project)}
    write_text(work / "README.md", README.format(name=name, when=manifest["created"], commit=code["commit"][:12],
                                                 dirty=" (with uncommitted changes)" if code["dirty"] else ""))
    manifest["files"] = file_hashes(work)
    write_json(work / MANIFEST, manifest)
    if dest.exists():
        shutil.rmtree(dest)
    work.rename(dest)
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    log.info("bundle of %s in %s: %d wheels, %d weight file(s), %.1f MB", name, dest, len(wheel_files), len(weights),
             size / 1e6)
    return manifest


def check_bundle_dest(project: Project, text: str, force: bool = False) -> Path:
    """The bundle folder a person typed: not in a protected folder (competition.outputs), and any bundle already
    there one this kit built (the ledger), unless --force."""
    dest = outputs.check_folder(project, output_path(text, "bundle folder"), "bundle")
    manifest = dest / MANIFEST
    if manifest.is_file() and not force and outputs.written_by(project, manifest) != "bundle":
        raise outputs.OutputRefused(f"bundle: {dest} holds a bundle this kit did not build there (or one edited "
                                    f"since) - pass --force to replace it, or pick a new folder")
    return dest


def main(argv: list[str] | None = None, project: Project | None = None) -> int:
    """CLI entry point."""
    parser = cli.parser(__doc__)
    parser.add_argument("experiment", help="experiment name (experiments/<name>.yaml)")
    parser.add_argument("dest", help="bundle folder (created; a previous bundle built there is replaced)")
    parser.add_argument("--force", action="store_true", help="replace a bundle folder this kit did not build there")
    parser.add_argument("--no-wheels", action="store_true", help="no wheels: the target already has every requirement")
    parser.add_argument("--target-freeze", help="`pip freeze` of the target: leave out what it has")
    parser.add_argument("--python-version", default="", type=options.python_version(),
                        help="wheels for this Python (e.g. 3.11); default: this one")
    parser.add_argument("--platform", default="", help="wheels for this platform (e.g. manylinux2014_x86_64)")
    parser.add_argument("--allow-dirty", action="store_true", help="bundle uncommitted code (recorded as dirty)")
    args = parser.parse_args(argv)

    def body() -> int:
        nonlocal project
        project = project or Project.from_env()  # inside cli.run: a bad KIT_HOME is one ERROR line
        dest = check_bundle_dest(project, args.dest, args.force)
        freeze = user_path(args.target_freeze, project, "--target-freeze", kind="file") if args.target_freeze else None
        build_bundle(project, experiment_arg(args.experiment, project), dest, not args.no_wheels, freeze,
                     args.allow_dirty, args.python_version, args.platform)
        outputs.record(project, dest / MANIFEST, "bundle")
        log.info("next, on the offline machine: pip install --no-index --find-links %s/wheels -r %s/requirements.txt",
                 args.dest, args.dest)
        return 0

    return cli.run(body)


if __name__ == "__main__":
    sys.exit(main())
