"""The project folder: competition.yaml, experiments/, folds/, submissions/ and the caches, as one object.

CLIs build a `Project` once (`Project.from_env()`: $KIT_HOME, else this repository) and pass it down, so
no module reads the environment at import time and two projects can live in one process (the tests do).
Every path the kit writes or deletes is derived here, from plain experiment names that cannot climb out
of the folder that owns them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from competition.errors import ConfigError

if TYPE_CHECKING:
    from competition.config import Config

REPO = Path(__file__).resolve().parent.parent  # the kit's own checkout
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")  # experiment / submission names: plain, no separators
# run.sh's first words that are commands, not experiments (its `case`, case-sensitive): `./run.sh report` runs the
# report command, so an experiment named `report` could never be trained by name (tests/test_reserved_names.py
# reads the words from run.sh, so the two cannot drift)
RUN_SH_COMMANDS = frozenset("test audit folds ensemble submit shift leaderboard predict report explain serve compare "
                            "assemble kaggle bundle export config".split())


class ProjectError(ConfigError):
    """$KIT_HOME names no project folder, or the project folder lacks competition.yaml."""


def home_folder(home: str) -> Path:
    """The folder $KIT_HOME names (`~` expanded, relative to where the command was typed); refused unless it exists
    as a folder, so that no command creates experiments/ in a mistyped place."""
    text = home.strip()
    root = typed_folder() / os.path.expanduser(text)
    fix = "point KIT_HOME at an existing project folder holding competition.yaml, or unset it to use the kit's folder"
    if text.startswith("~") and root == typed_folder() / text:
        raise ProjectError(f"KIT_HOME={home!r}: {text.split('/')[0]} is no known home folder - {fix}")
    if not root.exists():
        raise ProjectError(f"KIT_HOME={home!r} is not a folder: {root} does not exist - {fix} (mkdir it first for "
                           f"a new project)")
    if not root.is_dir():
        raise ProjectError(f"KIT_HOME={home!r} is not a folder: {root} is a file - {fix}")
    return root.resolve()


def check_name(name: str, what: str = "experiment") -> str:
    """Return name if it is a plain file name (letters, digits, `_.-`, not starting with a dot), else raise."""
    if not NAME.fullmatch(name or "") or name.endswith("."):
        raise ConfigError(f"{what} name {name!r} is not a plain name: use letters, digits and _ . - "
                          f"(e.g. exp012), starting with a letter or digit")
    return name


def refuse_command_name(name: str, yaml_file: Path, root: Path | None = None) -> None:
    """Raise ConfigError naming the YAML file when an experiment is named like a run.sh command (RUN_SH_COMMANDS)."""
    if name in RUN_SH_COMMANDS:
        shown = yaml_file.relative_to(root) if root and yaml_file.is_relative_to(root) else yaml_file
        raise ConfigError(f"`{name}` is a run.sh command, so `./run.sh {name}` cannot train this experiment: rename "
                          f"{shown} (e.g. {name}_exp{yaml_file.suffix})")


@dataclass(frozen=True)
class Project:
    """Where one competition's inputs and outputs live; relative config paths resolve against `root`."""

    root: Path
    from_home: bool = field(default=False, compare=False)  # named by $KIT_HOME: competition.yaml must be there

    @classmethod
    def from_env(cls) -> "Project":
        """$KIT_HOME when set (`~` expanded; relative to the folder the command was typed in), else the kit's
        repository; a KIT_HOME that is not an existing folder is refused (ProjectError) before anything is written."""
        home = os.environ.get("KIT_HOME", "")
        if not home.strip():
            return cls(REPO.resolve())
        return cls(home_folder(home), from_home=True)

    def competition_yaml(self) -> Path | None:
        """competition.yaml when present; None for the kit's own folder without one (defaults); refused for a
        $KIT_HOME project without one (the defaults point at the kit's data, not the project's)."""
        path = self.competition_file
        if path.is_file():
            return path
        if path.exists():
            raise ProjectError(f"{path} is not a file - competition.yaml must be a YAML file in the project folder")
        if self.from_home:
            raise ProjectError(f"{path} not found: copy the kit's competition.yaml there ({REPO / 'competition.yaml'}) "
                               f"and set competition.data_dir")
        return None

    @property
    def competition_file(self) -> Path:
        """competition.yaml: the one file to edit when switching competitions."""
        return self.root / "competition.yaml"

    @property
    def experiments(self) -> Path:
        return self.root / "experiments"

    @property
    def folds(self) -> Path:
        return self.root / "folds"

    @property
    def submissions(self) -> Path:
        return self.root / "submissions"

    @property
    def leaderboard(self) -> Path:
        return self.experiments / "LEADERBOARD.md"

    def resolve(self, path: str | Path) -> Path:
        """A config path: absolute as is, relative to the project root otherwise."""
        path = Path(path).expanduser()
        return path if path.is_absolute() else (self.root / path).resolve()

    def experiment_dir(self, name: str) -> Path:
        """experiments/<name>/, for a plain name only (never the experiments folder itself or above it), and not for
        an experiments/<name>.yaml named like a run.sh command (refuse_command_name)."""
        if check_name(name) in RUN_SH_COMMANDS:  # only such names: no disk look-up for the others
            for file in sorted(self.experiments.glob(f"{name}.*")):
                if file.stem == name and file.suffix.lower() in (".yaml", ".yml") and file.is_file():
                    refuse_command_name(name, file, self.root)
        return inside(self.experiments / name, self.experiments)

    def submission_file(self, name: str) -> Path:
        """submissions/<name>.csv for a plain name."""
        return inside(self.submissions / f"{check_name(name, 'submission')}.csv", self.submissions)

    def folds_file(self, cfg: "Config") -> Path:
        """folds/<competition>_k<K>_s<seed>[grouping][ood].csv for this config's fold settings."""
        f = cfg.folds
        group = f"_g-{f.group_column}" if f.group_column else ""
        if not group and f.groups == "phash":
            group = f"_phash{f.phash_distance}"
        if not group and f.groups == "twins":
            group = f"_twins{f.twin_similarity:g}-{f.twin_neighbors}-{f.embed_model}-{f.embed_size}"
        if f.ood_split == "cluster":
            group += f"_ood{f.ood_clusters}"
        return self.folds / f"{check_name(cfg.competition.name, 'competition')}_k{f.n_splits}_s{f.seed}{group}.csv"

    def cache_dir(self, cfg: "Config") -> Path:
        """Where decoded-image and hash caches live (data.cache_dir)."""
        return self.resolve(cfg.data.cache_dir)


def typed_folder() -> Path:
    """The folder the person typed the command in: $KIT_CWD (run.sh exports it before it cds into the kit) while
    this process still sits in the kit's checkout, else the current folder."""
    cwd = Path.cwd()
    typed = os.environ.get("KIT_CWD", "")
    if typed and os.path.isdir(typed) and os.path.realpath(cwd) == os.path.realpath(REPO):
        return Path(typed)
    return cwd


def inside(path: Path, folder: Path) -> Path:
    """path, after checking it lies strictly inside folder (resolved); raise otherwise."""
    real, top = Path(os.path.realpath(path)), Path(os.path.realpath(folder))
    if real == top or top not in real.parents:
        raise ConfigError(f"{path} is not inside {folder}; refusing to write or delete there")
    return path
