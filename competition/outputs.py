"""The one writer for files a person points the kit at (`--csv`, `--out`, a bundle folder, a submission name).

Every such output goes through `claim()` (or `write_csv` / `write_text` here), which:
- refuses, even with --force, a path inside the competition's data folder, or inside an experiment's folder
  unless the command owns that part of it (explain owns <exp>/gradcam/, export owns <exp>/export/);
- refuses, without --force, to replace a file the kit did not write there itself: the ledger
  <project>/.kit/outputs.json records each output's command, size and mtime, so a hand-made file, another
  command's output and a file edited since the kit wrote it are all protected;
- writes atomically through competition.atomic (permissions follow the umask) and records the file.
`distinct_names()` gives several inputs (photo.jpg from two folders) distinct output names.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from contextlib import contextmanager
from pathlib import Path, PurePath
from typing import Iterator

import pandas as pd

from competition import atomic
from competition.errors import KitError
from competition.project import Project, typed_folder

log = logging.getLogger(__name__)

LEDGER = Path(".kit") / "outputs.json"


class OutputRefused(KitError, PermissionError):
    """An output path the kit will not write: protected folder, or a file it did not make (without --force)."""


_DATA_FOLDERS: dict[tuple[str, int], Path | None] = {}  # (competition.yaml, its mtime) -> data folder


def data_folder(project: Project) -> Path | None:
    """The competition's data folder from competition.yaml, or None when it cannot be read."""
    from competition.config import load_config  # config -> atomic: imported late, only where an output is checked

    file = project.competition_file
    key = (str(file), file.stat().st_mtime_ns if file.is_file() else 0)
    if key not in _DATA_FOLDERS:
        try:
            comp = load_config("", [], project, check_model=False).competition
            _DATA_FOLDERS[key] = Path(os.path.realpath(project.resolve(comp.data_dir)))
        except (KitError, OSError, ValueError):
            _DATA_FOLDERS[key] = None
    return _DATA_FOLDERS[key]


def _within(path: Path, folder: Path) -> bool:
    """Whether path is folder or lies below it (both real paths)."""
    return path == folder or folder in path.parents


def _example(path: Path, command: str) -> str:
    """A concrete path outside the kit's protected folders to suggest instead of path (e.g. ./cam)."""
    name = path.name if path.name not in ("", ".", "..", "_") else f"{command}-out"
    return f"./{name}" if Path(os.path.realpath(typed_folder() / name)) != Path(os.path.realpath(path)) \
        else f"./{command}-{name}"


def check_protected(project: Project, path: Path, command: str, owns: Path | None = None,
                    also: tuple[Path, ...] = (), folder_of_outputs: bool = False) -> None:
    """Refuse a path inside the data folder (or `also`) or an experiment's folder the command does not own;
    folder_of_outputs: path is a folder the command will fill (it and everything below it are checked)."""
    real = Path(os.path.realpath(path))
    probe = real / "_" if folder_of_outputs else real  # a file the command would write there
    what = "folder" if folder_of_outputs else "to"
    for folder in [f for f in (data_folder(project), *also) if f is not None]:
        if _within(probe, Path(os.path.realpath(folder))):
            raise OutputRefused(f"{command}: refusing to write {what} {path}: it is inside the competition's data "
                                f"folder {folder}, which the kit never writes - pick a path outside it, e.g. "
                                f"{_example(path, command)}")
    experiments = Path(os.path.realpath(project.experiments))
    if experiments in probe.parents and probe.parent != experiments:
        exp = experiments / probe.relative_to(experiments).parts[0]
        if owns is None or not _within(probe, Path(os.path.realpath(owns))):
            raise OutputRefused(f"{command}: refusing to write {what} {path}: it is inside experiment {exp.name}'s "
                                f"folder {exp}, whose files its run owns - pick a path outside it, e.g. "
                                f"{_example(path, command)}")


def _stamp(path: Path) -> dict:
    """What identifies one version of a file: its size and modification time (ns)."""
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


@contextmanager
def _ledger(project: Project, write: bool) -> Iterator[dict]:
    """The ledger {real path: {command, size, mtime_ns}}, locked; saved atomically on exit when `write`."""
    file = project.root / LEDGER
    file.parent.mkdir(parents=True, exist_ok=True)
    with open(file.with_suffix(".lock"), "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX if write else fcntl.LOCK_SH)
        try:
            entries = json.loads(file.read_text()) if file.is_file() else {}
        except (OSError, ValueError):
            entries = {}
        entries = entries if isinstance(entries, dict) else {}
        yield entries
        if write:
            entries = {p: e for p, e in entries.items() if os.path.lexists(p)}  # forget files deleted since
            atomic.write_text(file, json.dumps(entries, indent=1, sort_keys=True) + "\n")


def written_by(project: Project, path: Path) -> str | None:
    """The command that wrote path, when the ledger has it and the file is unchanged since; else None."""
    real = os.path.realpath(path)
    try:
        with _ledger(project, write=False) as entries:
            entry = entries.get(real)
    except OSError:
        return None
    if not isinstance(entry, dict) or not os.path.isfile(real):
        return None
    return entry.get("command") if {k: entry.get(k) for k in ("size", "mtime_ns")} == _stamp(Path(real)) else None


def record(project: Project, path: Path, command: str) -> None:
    """Note in the ledger that `command` wrote path (as it is now)."""
    try:
        with _ledger(project, write=True) as entries:
            entries[os.path.realpath(path)] = {"command": command, **_stamp(Path(path))}
    except OSError as err:
        log.warning("%s written, but not recorded in %s (%s): a rerun will need --force to replace it",
                    path, project.root / LEDGER, err)


def check_target(project: Project, path: Path, command: str, force: bool = False, owns: Path | None = None,
                 also: tuple[Path, ...] = ()) -> Path:
    """path, once it is safe for `command` to write: not protected, not a folder, not someone else's file."""
    path = Path(path)
    check_protected(project, path, command, owns, also)
    if path.is_dir():
        raise OutputRefused(f"{command}: {path} is a folder - give a file name (e.g. {path / ('out' + (path.suffix or '.csv'))})")
    if path.exists() and not force:
        by = written_by(project, path)
        if by != command:
            why = (f"was written by `{by}`" if by else "was not written by the kit, or was edited since it was")
            raise OutputRefused(f"{command}: {path} exists and {why} - pass --force to replace it, or pick "
                                f"another path")
    return path


def check_folder(project: Project, folder: Path, command: str, owns: Path | None = None,
                 also: tuple[Path, ...] = ()) -> Path:
    """A folder a person chose for several outputs: not protected (check_protected), not an existing file."""
    folder = Path(folder)
    check_protected(project, folder, command, owns, also, folder_of_outputs=True)
    if folder.exists() and not folder.is_dir():
        raise OutputRefused(f"{command}: {folder} is a file, not a folder - give a folder for the outputs")
    return folder


@contextmanager
def claim(project: Project, path: Path, command: str, force: bool = False, owns: Path | None = None,
          also: tuple[Path, ...] = ()) -> Iterator[Path]:
    """Check path (check_target), yield a temp path to write, rename it into place, record it in the ledger."""
    path = check_target(project, path, command, force, owns, also)
    with atomic.atomic_path(path) as tmp:
        yield tmp
    record(project, path, command)


def write_csv(project: Project, path: Path, frame: pd.DataFrame, command: str, force: bool = False) -> Path:
    """A user-chosen CSV output, checked, written atomically and recorded."""
    with claim(project, path, command, force) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.9g")
    return path


def write_text(project: Project, path: Path, text: str, command: str, force: bool = False,
               owns: Path | None = None) -> Path:
    """A user-chosen text output, checked, written atomically and recorded."""
    with claim(project, path, command, force, owns) as tmp:
        tmp.write_text(text)
    return path


def distinct_names(inputs: list[str], suffix: str) -> list[str]:
    """One output file name per input, `<stem><suffix>`; where inputs share a stem, their parent folder, then
    their extension, then a counter tell them apart, so two inputs never write the same file."""
    paths = [PurePath(os.path.abspath(p)) for p in inputs]
    names = [p.stem for p in paths]
    for widen in (lambda p, n: f"{p.parent.name}_{n}" if p.parent.name else n,
                  lambda p, n: f"{n}_{p.suffix.lstrip('.')}" if p.suffix else n):
        names = [widen(p, n) if names.count(n) > 1 else n for p, n in zip(paths, names)]
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(f"{name}{suffix}" if seen[name] == 1 else f"{name}_{seen[name]}{suffix}")
    return out
