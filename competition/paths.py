"""Every path a person types, on the command line or in a table, resolved one way.

Command line (`user_path`, `output_path`, `experiment_arg`): a relative path is looked up in the folder the
person typed the command in (run.sh exports it as $KIT_CWD before it cds into the kit; `python -m` runs use
the current folder), then in the project folder; `~` is expanded; a URL is refused as a URL. Spellings that
name the same file (`\\` separators, `./`, `//`, a trailing slash or space, Unicode NFC vs NFD accents) are
accepted; a miss whose near match exists on disk (case, accents, extension) names the spelling that differs.

Tables (`canonical`, `spellings`, `DiskIndex`): every path cell is canonicalised once the same way; a bare
test id (`abc123` for test/abc123.jpg) is looked up by stem; misses get the same spelling diagnosis.
"""

from __future__ import annotations

import logging
import os
import re
import unicodedata
from collections import defaultdict
from pathlib import Path, PurePosixPath

from competition.errors import DataError
from competition.project import Project, check_name
from competition.project import typed_folder as typed_base

log = logging.getLogger(__name__)

URL = re.compile(r"^\s*(https?|s3|gs|gcs|ftp|sftp|az|abfss?|hf|kaggle)://", re.IGNORECASE)


class UrlError(DataError):
    """A URL where the kit needs a local file."""


class PathNotFound(DataError, FileNotFoundError):
    """A typed path that names nothing on disk; the message says where it looked and any near spelling."""


def is_url(text: str) -> bool:
    """Whether text is a URL (http(s)://, s3://, gs://, ...), not a local path."""
    return bool(URL.match(str(text)))


def refuse_url(text: str, where: str) -> None:
    """Raise UrlError naming `where` when text is a URL."""
    if is_url(text):
        raise UrlError(f"{where}: {str(text).strip()!r} is a URL; the kit reads local files only - download it "
                       f"first (kaggle competitions download, wget, aws s3 cp, gsutil cp) and pass the local path")


def canonical(text: str) -> str:
    """One spelling of a path: outer spaces trimmed, `\\` -> `/`, `./` and `//` dropped, Unicode NFC."""
    text = unicodedata.normalize("NFC", str(text).strip()).replace("\\", "/")
    parts = [p for p in text.split("/") if p not in ("", ".")]
    return ("/" if text.startswith("/") else "") + "/".join(parts)


def spellings(text: str) -> list[str]:
    """The spellings to try for one path, in order: as written, canonical, canonical in NFD (macOS names)."""
    out = []
    for s in (str(text), canonical(text), unicodedata.normalize("NFD", canonical(text))):
        if s and s not in out:
            out.append(s)
    return out


def _plain(text: str) -> str:
    """text without accents and case (NFKD, combining marks dropped, casefolded)."""
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c)).casefold()


def loose_key(rel: str) -> str:
    """A path's spelling with case, accents, separators and extension ignored (finds near matches)."""
    path = PurePosixPath(canonical(rel))
    return _plain(str(path.with_suffix("")) if path.suffix else str(path))


def spelling_difference(typed: str, found: str) -> str:
    """What differs between a typed path and the file on disk, e.g. 'the case differs', 'the accents and extension
    (.png vs .jpg) differ'."""
    t, f = PurePosixPath(canonical(typed)), PurePosixPath(canonical(found))
    tb, fb = (str(p.with_suffix("")) if p.suffix else str(p) for p in (t, f))
    aspects = []
    if tb != fb:
        aspects.append("case" if tb.casefold() == fb.casefold() else "accents")
    if t.suffix != f.suffix:
        aspects.append("case" if t.suffix.lower() == f.suffix.lower() else
                       f"extension ({t.suffix or 'none'} vs {f.suffix or 'none'})")
    if "\\" in str(typed):
        aspects.append("separators (\\ vs /)")
    aspects = list(dict.fromkeys(aspects))
    if not aspects:
        return "the spelling differs"
    singular = len(aspects) == 1 and aspects[0] not in ("accents", "separators (\\ vs /)")
    return f"the {' and '.join(aspects)} differ{'s' if singular else ''}"


class DiskIndex:
    """The files under a folder by loose spelling and by stem, built on first use (only when a lookup missed)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._loose: dict[str, list[str]] | None = None
        self._stems: dict[str, list[str]] = defaultdict(list)
        self._names: dict[str, list[str]] = defaultdict(list)  # file name (with extension) -> every path holding it

    def _build(self) -> dict[str, list[str]]:
        """Walk the folder once."""
        if self._loose is None:
            self._loose = defaultdict(list)
            for folder, dirs, files in os.walk(self.root):
                dirs[:] = [d for d in dirs if not d.startswith(".")]
                for name in files:
                    rel = os.path.relpath(os.path.join(folder, name), self.root).replace(os.sep, "/")
                    self._loose[loose_key(rel)].append(rel)
                    self._stems[unicodedata.normalize("NFC", PurePosixPath(name).stem)].append(rel)
                    self._names[unicodedata.normalize("NFC", name)].append(rel)
        return self._loose

    def near(self, rel: str) -> str | None:
        """The one file on disk whose spelling differs from rel only in case, accents, separators or extension."""
        hits = self._build().get(loose_key(rel), [])
        return hits[0] if len(hits) == 1 else None

    def moved(self, rel: str) -> str | None:
        """The one file on disk with rel's file name (extension included) in another folder, e.g. train/a.jpg for
        train_data/a.jpg or for a.jpg."""
        self._build()
        hits = self._names.get(unicodedata.normalize("NFC", PurePosixPath(canonical(rel)).name), [])
        return hits[0] if len(hits) == 1 and hits[0] != canonical(rel) else None

    def by_stem(self, stem: str, kind: str, suffixes: frozenset[str]) -> list[str]:
        """Image files named stem.<image suffix>; those under a folder named like `kind` (test/...) first."""
        self._build()
        hits = [r for r in self._stems.get(unicodedata.normalize("NFC", stem), [])
                if PurePosixPath(r).suffix.lower() in suffixes]
        preferred = [r for r in hits if kind in PurePosixPath(r).parts[0].lower()] if len(hits) > 1 else []
        return preferred or hits


def is_bare(rel: str) -> bool:
    """Whether a table cell is a bare id (no folder, no extension), as in many Kaggle test.csv files."""
    c = canonical(rel)
    return bool(c) and "/" not in c and not PurePosixPath(c).suffix


def _existing(base: Path, text: str) -> Path | None:
    """The first spelling of text that exists under base (or as is, when absolute)."""
    for s in spellings(text):
        path = Path(s).expanduser()
        path = path if path.is_absolute() else base / path
        if path.exists():
            return path
    return None


def _near_on_disk(base: Path, text: str) -> tuple[Path, str] | None:
    """Walk text's components under base, each by loose spelling when the exact one is absent: the one near file."""
    parts = PurePosixPath(canonical(os.path.expanduser(text))).parts
    here = Path("/") if parts and parts[0] == "/" else base
    for part in parts[1:] if parts and parts[0] == "/" else parts:
        if (here / part).exists() or part == "..":
            here = here / part
            continue
        if not here.is_dir():
            return None
        hits = [p for p in here.iterdir() if loose_key(p.name) == loose_key(part)]
        if len(hits) != 1:
            return None
        here = hits[0]
    return here, spelling_difference(text, str(here.relative_to(base) if here.is_relative_to(base) else here))


def user_path(text: str | Path, project: Project | None = None, what: str = "path", kind: str = "any") -> Path:
    """An existing file or folder a person typed: under the folder they typed it in, then the project folder.

    kind: 'file', 'dir' or 'any'. Refuses URLs; a miss names the places looked and a near spelling on disk."""
    text = str(text)
    refuse_url(text, what)
    if not text.strip():
        raise PathNotFound(f"{what}: empty path - give a file or folder")
    bases = [typed_base()] + ([project.root] if project and project.root != typed_base() else [])
    for base in bases:
        found = _existing(base, text)
        if found is not None:
            return _check_kind(found.resolve(), text, what, kind)
    for base in bases:
        near = _near_on_disk(base, text)
        if near:
            raise PathNotFound(f"{what} {text!r} not found; {near[0]} exists ({near[1]}) - type that spelling")
    expanded = os.path.expanduser(canonical(text) or text)
    if Path(expanded).is_absolute():
        raise PathNotFound(f"{what} {text!r} not found: {expanded} does not exist - check the spelling")
    looked = " or ".join(str(b) for b in bases)
    raise PathNotFound(f"{what} {text!r} not found (looked under {looked}) - check the spelling, or give an "
                       f"absolute path")


def _check_kind(path: Path, text: str, what: str, kind: str) -> Path:
    """path when it is the kind asked for, else a one-line refusal."""
    if kind == "file" and not path.is_file():
        raise PathNotFound(f"{what} {text!r} is a folder ({path}), not a file - name the file inside it")
    if kind == "dir" and not path.is_dir():
        raise PathNotFound(f"{what} {text!r} is a file ({path}), not a folder - name the folder")
    return path


def output_path(text: str | Path, what: str = "output") -> Path:
    """Where a person asked the kit to write: `~` expanded, relative to the folder they typed the command in."""
    text = str(text)
    refuse_url(text, what)
    if not text.strip():
        raise PathNotFound(f"{what}: empty path - give a file or folder name")
    path = Path(os.path.expanduser(text.strip()))
    if not path.exists() and "\\" in text:
        path = Path(canonical(os.path.expanduser(text)))
    return Path(os.path.abspath(path if path.is_absolute() else typed_base() / path))


def experiment_arg(text: str, project: Project) -> str:
    """An experiment named on the command line: a plain name as is, a YAML path (from anywhere) as its name."""
    refuse_url(text, "experiment")
    if PurePosixPath(canonical(text)).suffix.lower() not in (".yaml", ".yml") and "/" not in canonical(text):
        return check_name(canonical(text))
    if PurePosixPath(canonical(text)).suffix.lower() not in (".yaml", ".yml"):
        folder = user_path(text, project, "experiment", kind="dir")
        if folder.parent != project.experiments.resolve():
            raise PathNotFound(f"experiment {text!r}: {folder} is not an experiment folder of {project.experiments}"
                               f" - give the experiment's name (e.g. exp001)")
        return check_name(folder.name)
    return check_name(experiment_yaml(text, project).stem)


def experiment_yaml(text: str, project: Project) -> Path:
    """An experiment's YAML typed as a path: where the command was typed, the project, then (a bare file name)
    the project's experiments/ folder."""
    try:
        return user_path(text, project, "experiment", kind="file")
    except PathNotFound:
        if "/" not in canonical(text) and (project.experiments / canonical(text)).is_file():
            return (project.experiments / canonical(text)).resolve()
        raise


NOT_IMAGES = {
    ".csv": "a table of paths is not an image - pass the folder that holds the images instead",
    ".tsv": "a table of paths is not an image - pass the folder that holds the images instead",
    ".json": "a .json file is not an image - pass image files or a folder of images",
    ".yaml": "a YAML file is not an image - pass image files or a folder of images",
    ".yml": "a YAML file is not an image - pass image files or a folder of images",
    ".txt": "a text file is not an image - pass image files or a folder of images",
    ".zip": "an archive is not an image - unzip it first (unzip FILE -d DIR) and pass the folder",
    ".tar": "an archive is not an image - extract it first (tar xf FILE -C DIR) and pass the folder",
    ".gz": "an archive is not an image - extract it first and pass the folder",
    ".tgz": "an archive is not an image - extract it first (tar xzf FILE -C DIR) and pass the folder",
    ".7z": "an archive is not an image - extract it first and pass the folder",
    ".rar": "an archive is not an image - extract it first and pass the folder",
    ".pt": "a model checkpoint is not an image - name the experiment as the model and pass images",
    ".pth": "a model checkpoint is not an image - name the experiment as the model and pass images",
    ".onnx": "a model file is not an image - name the experiment as the model (--onnx uses its export)",
    ".parquet": "a table is not an image - pass the folder that holds the images instead",
    ".npy": "an array file is not an image - pass image files or a folder of images",
    ".py": "a Python file is not an image - pass image files or a folder of images",
    ".md": "a text file is not an image - pass image files or a folder of images",
    ".log": "a text file is not an image - pass image files or a folder of images",
    ".pkl": "a pickle is not an image - pass image files or a folder of images",
}


class NotAnImage(DataError):
    """A typed file that is obviously not an image (a table, config, archive, checkpoint)."""


def refuse_non_image(text: str, path: Path, command: str) -> None:
    """Raise NotAnImage when a file typed as an image has a suffix no image has (.csv, .json, .zip, .pt, ...)."""
    suffix = Path(path).suffix.lower()
    if path.is_file() and suffix in NOT_IMAGES:
        output = " (--csv names the OUTPUT file predict writes)" if command == "predict" and suffix == ".csv" else ""
        raise NotAnImage(f"{command}: {text!r} is a {suffix} file, not an image: {NOT_IMAGES[suffix]}{output}")
