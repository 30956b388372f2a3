"""Competition tables: train/test/sample-submission CSVs or class folders, read and checked.

Every table comes out tidy: `id` (the path as the competition writes it), `path` (absolute, inside the
data folder), and `label` for training rows. Problems are found here, before any training, and
reported naming the file, the first offending rows and the fix.
"""

from __future__ import annotations

import difflib
import hashlib
import logging
import os
from pathlib import Path, PurePosixPath

import pandas as pd

from PIL import Image

from competition.config import CompetitionConfig
from competition.errors import DataError
from competition.paths import DiskIndex, UrlError, canonical, is_bare, is_url, spelling_difference, spellings
from competition.project import Project

log = logging.getLogger(__name__)

__all__ = ["DataError", "IMAGE_SUFFIXES", "data_dir", "list_images", "load_train_table", "load_test_table",
           "load_sample_submission", "check_separator"]

# Every suffix Pillow can open (.jfif, .jpe, .avif with the plugin, ...), not a hand-written list.
IMAGE_SUFFIXES = frozenset(s.lower() for s in Image.registered_extensions()) | {".jpg", ".jpeg", ".png", ".webp"}


def data_dir(comp: CompetitionConfig, project: Project) -> Path:
    """The competition's data folder, checked to exist."""
    path = project.resolve(comp.data_dir)
    if not path.is_dir():
        zips = sorted(path.parent.glob("*.zip")) if path.parent.is_dir() else []
        unzip = f" (unzip {zips[0]} -d {path})" if zips else ""
        raise DataError(
            f"data folder {path} not found; download the competition there{unzip} or set `competition.data_dir` "
            f"in competition.yaml"
        )
    return path


def _rows(frame: pd.DataFrame, mask: pd.Series, column: str, n: int = 5) -> str:
    """Describe the first offending rows as `row 12 ('a.jpg')` (1-based data rows, header excluded)."""
    bad = frame.loc[mask, column].head(n)
    more = int(mask.sum()) - len(bad)
    text = ", ".join(f"row {i + 1} ({v!r})" for i, v in bad.items())
    return text + (f" and {more} more" if more > 0 else "")


def _require_columns(frame: pd.DataFrame, columns: list[str], file: Path, key: str) -> None:
    """Raise naming the missing column, the closest existing one and the config key to change."""
    for col in columns:
        if col not in frame.columns:
            close = difflib.get_close_matches(col, [str(c) for c in frame.columns], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise DataError(
                f"{file}: column {col!r} missing (columns: {', '.join(map(str, frame.columns))}){hint} "
                f"- rename it in the file or set `competition.{key}` in competition.yaml"
            )


def _refuse_urls(frame: pd.DataFrame, file: Path) -> None:
    """Refuse path cells that are URLs: the kit reads local files only."""
    urls = frame["id"].map(is_url)
    if urls.any():
        raise UrlError(f"{file}: {int(urls.sum())} image path(s) are URLs: {_rows(frame, urls, 'id')} - the kit reads "
                       f"local files only: download the images into the data folder and list paths relative to it")


def _locate(rel: str, root: str, index: DiskIndex, kind: str) -> str:
    """The real path of one table cell: its first spelling that exists (as written, canonical, NFD), a bare id's
    one image with that stem, else the canonical spelling (reported missing later)."""
    for spelling in spellings(rel):
        path = os.path.realpath(os.path.join(root, spelling))
        if os.path.isfile(path):
            return path
    if is_bare(rel):
        hits = index.by_stem(canonical(rel), kind, IMAGE_SUFFIXES)
        if len(hits) == 1:
            return os.path.realpath(os.path.join(root, hits[0]))
    return os.path.realpath(os.path.join(root, canonical(rel)))


def relative_cell(cell: str, root: Path) -> str:
    """A table's path cell relative to the data folder when it is an absolute path inside it (as typed, or through
    a link to it); any other cell as it is."""
    text = canonical(os.path.expanduser(str(cell)))
    if not text.startswith("/"):
        return str(cell)
    for base in dict.fromkeys((os.path.abspath(root), os.path.realpath(root))):
        if text.startswith(base.rstrip("/") + "/"):
            return os.path.relpath(text, base)
    parent = os.path.realpath(os.path.dirname(text))
    if (parent + "/").startswith(os.path.realpath(root).rstrip("/") + "/"):
        return os.path.relpath(os.path.join(parent, os.path.basename(text)), os.path.realpath(root))
    return str(cell)


def _resolve_paths(frame: pd.DataFrame, root: Path, file: Path, index: DiskIndex, kind: str) -> pd.Series:
    """Absolute paths for `frame.id` (absolute paths inside the data folder made relative, spellings canonicalised
    once, bare ids found by stem), refusing URLs and any path that escapes the data folder (../, absolute, links)."""
    _refuse_urls(frame, file)
    root_real = os.path.realpath(root)
    cells = [relative_cell(r, root) for r in frame["id"]]
    paths = [_locate(c, root_real, index, kind) for c in cells]
    escaping = pd.Series([canonical(c).startswith("/") or not p.startswith(root_real + os.sep)
                          for c, p in zip(cells, paths)], index=frame.index)
    if escaping.any():
        raise DataError(
            f"{file}: list image paths inside the data folder {root} (relative, e.g. train/img001.jpg, or absolute "
            f"under it) - {int(escaping.sum())} path(s) escape the data folder (../, another folder, or a link out): "
            f"{_rows(frame, escaping, 'id')}"
        )
    return pd.Series(paths, index=frame.index)


def _check_ids(frame: pd.DataFrame, file: Path) -> None:
    """Refuse empty tables, empty and duplicated ids."""
    if frame.empty:
        raise DataError(f"{file}: no rows; is this the right file?")
    empty = frame["id"].isna() | (frame["id"].astype(str).str.strip() == "")
    if empty.any():
        raise DataError(f"{file}: empty image path in {_rows(frame, empty, 'id')} - fill or drop those rows")
    dup = frame["id"].duplicated(keep=False)
    if dup.any():
        raise DataError(f"{file}: {int(dup.sum())} rows share an id: {_rows(frame, dup, 'id')} - drop the duplicates")


def _check_files(frame: pd.DataFrame, file: Path, fatal: bool, index: DiskIndex, kind: str) -> pd.Series:
    """Mask of rows whose image file is missing, each miss explained (a near spelling on disk, a bare id); raise
    when fatal or when no file at all was found."""
    missing = ~frame["path"].map(os.path.isfile)
    if missing.any():
        shown, fixes = _explain_misses(frame, missing, index, kind)
        msg = f"{file}: {int(missing.sum())} image file(s) not found: {shown} - {fixes}"
        if fatal or missing.all():
            raise DataError(msg if fatal else f"{msg} (not one {kind} image was found, so nothing could be predicted)")
        log.warning(msg + "; they get the fallback prediction")
    return missing


def _explain_misses(frame: pd.DataFrame, missing: pd.Series, index: DiskIndex, kind: str, n: int = 5) -> tuple[str, str]:
    """The first missing rows, each with the near spelling on disk when there is one, and the fixes that apply."""
    shown, fixes = [], []
    for i, rel in frame.loc[missing, "id"].head(n).items():
        near = index.near(rel)
        stems = index.by_stem(canonical(rel), kind, IMAGE_SUFFIXES) if is_bare(rel) else []
        if near:
            shown.append(f"row {i + 1} ({rel!r}: on disk {near!r}, {spelling_difference(rel, near)})")
            fixes.append("fix those spellings in the table (or rename the files)")
        elif is_bare(rel):
            shown.append(f"row {i + 1} ({rel!r}" + (f": several files, {stems[:3]})" if stems else ")"))
            fixes.append(f"the ids are bare names (no folder, no extension), looked up as <id>.<image extension> in a "
                         f"{kind} folder or anywhere under {index.root}, one file each: put each image there once, "
                         f"or point competition.{'test_' if kind == 'test' else ''}path_column at a column of file paths")
        elif index.moved(rel):
            moved = index.moved(rel)
            shown.append(f"row {i + 1} ({rel!r}: on disk {moved!r}, same name in another folder)")
            was, now = (repr(folder_of(r)) if folder_of(r) else "no folder" for r in (rel, moved))
            fixes.append(f"the files sit in another folder than the table says: fix the folder in the paths (here "
                         f"{was} -> {now}) or move the files back")
        else:
            shown.append(f"row {i + 1} ({rel!r})")
            fixes.append("restore the files" + (" (a test row cannot be dropped: the submission needs every id)"
                                                if kind == "test" else " or drop those rows"))
    more = int(missing.sum()) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else ""), "; ".join(dict.fromkeys(fixes))


def folder_of(rel: str) -> str:
    """A table path's folder as typed ('' for a bare file name), to show a moved file's folder change."""
    parent = str(PurePosixPath(canonical(rel)).parent)
    return "" if parent == "." else parent


def _check_same_files(frame: pd.DataFrame, file: Path) -> None:
    """Refuse two rows that are one image file spelled twice (./, //, backslashes, accents): naming both rows,
    and saying so when their labels contradict."""
    dup = frame["path"].duplicated(keep=False)
    if not dup.any():
        return
    groups = list(frame[dup].groupby("path", sort=False))
    path, rows = groups[0]
    desc = " and ".join(f"row {i + 1} ({r.id!r}, label {r.label})" for i, r in rows.iterrows())
    total = f" ({len(groups)} files listed more than once in all)" if len(groups) > 1 else ""
    if rows["label"].nunique() > 1:
        raise DataError(f"{file}: {desc} are the same image {path} with contradicting labels{total} - keep the row "
                        f"with the right label and drop the other")
    raise DataError(f"{file}: {desc} are the same image {path}, listed twice in different spellings{total} - drop "
                    f"all but one of them")


def file_digest(path: str) -> str:
    """sha1 of a file's bytes ('' when it cannot be read: the decoder reports it later)."""
    digest = hashlib.sha1()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return ""
    return digest.hexdigest()


def check_identical_files(train: pd.DataFrame, file: Path) -> None:
    """Refuse byte-identical training images with contradicting labels, naming two rows; warn about identical
    copies with one label (they leak across folds unless grouped). Only files whose size collides are hashed."""
    sizes = train["path"].map(lambda p: os.path.getsize(p) if os.path.isfile(p) else -1)
    same_size = train[sizes.duplicated(keep=False) & (sizes >= 0)]
    if same_size.empty:
        return
    digests = same_size["path"].map(file_digest)
    twins = (digests.duplicated(keep=False) & (digests != "")).to_numpy(dtype=bool)
    if not twins.any():
        return
    copies = same_size[twins].assign(_digest=digests[twins].to_numpy())
    labels = copies.groupby("_digest")["label"].nunique()
    mixed = labels[labels > 1]
    if len(mixed):
        rows, table = copies[copies["_digest"] == mixed.index[0]], file.suffix.lower() != ""  # else class folders
        shown = " and ".join(f"{f'row {i + 1} ' if table else ''}({r.id!r}, label {r.label})"
                             for i, r in rows.head(2).iterrows())
        more = f" ({len(mixed)} such files in all)" if len(mixed) > 1 else ""
        fix = "keep the row with the right label and drop the other" if table else \
            "delete the copy in the wrong class folder"
        raise DataError(f"{file}: {shown} are the same image (identical bytes) with contradicting labels{more} - {fix}")
    log.warning("%s: %d training images are byte-identical copies of another with the same label (e.g. %s): in "
                "different folds they leak validation answers - set folds.groups: phash (joins them) or drop the "
                "copies", file, len(copies) - copies["_digest"].nunique(), ", ".join(copies["id"].head(2)))


def _check_labels(frame: pd.DataFrame, file: Path, column: str) -> pd.Series:
    """Labels as int 0/1, refusing NaN and anything else."""
    labels = pd.to_numeric(frame[column], errors="coerce")
    bad = ~labels.isin([0, 1])
    if bad.any():
        shown = frame.assign(_lab=frame[column])
        raise DataError(
            f"{file}: label column {column!r} must be 0 (human) or 1 (AI) in every row; bad values in "
            f"{_rows(shown, bad, '_lab')} - fix or drop those rows"
        )
    return labels.astype(int)


def list_images(folder: Path) -> list[str]:
    """Image files below folder (sorted); every other file is counted and named in a warning, never dropped silently."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    images = [str(p) for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    skipped = [p.name for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
    if skipped:
        log.warning("%s: %d file(s) skipped, not an image type Pillow opens: %s%s", folder, len(skipped),
                    ", ".join(skipped[:10]), " ..." if len(skipped) > 10 else "")
    return images


def _train_from_folders(comp: CompetitionConfig, root: Path) -> pd.DataFrame:
    """Build a training table from class folders (e.g. real/ -> 0, fake/ -> 1)."""
    rows = []
    for folder, label in comp.class_folders.items():
        if label not in (0, 1):
            raise DataError(f"competition.class_folders: label for {folder!r} must be 0 or 1, got {label!r}")
        path = root / folder
        if not path.is_dir():
            raise DataError(f"class folder {path} not found - "
                            f"{_where_the_data_is(path) or 'fix `competition.class_folders` in competition.yaml'}")
        files = list_images(path)
        if not files:
            raise DataError(f"class folder {path} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        rows += [(os.path.relpath(f, root), label) for f in files]
    return pd.DataFrame(rows, columns=["id", "label"])


def read_table(file: Path, what: str) -> pd.DataFrame:
    """A competition CSV with every cell as text (ids like 00012 stay 00012), or one clear error."""
    if not file.is_file():
        raise DataError(f"{file} not found - {_where_the_data_is(file) or f'set `competition.{what}` in competition.yaml'}")
    try:
        frame = pd.read_csv(file, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(f"{file}: not a readable CSV ({reason}) - check the file and `competition.{what}`") from None
    _check_separator(frame, file)
    return frame


SEPARATORS = {";": "semicolons", "\t": "tabs", "|": "pipes"}


def check_separator(frame: pd.DataFrame, file: Path, fix: str = "and point competition.yaml at it") -> pd.DataFrame:
    """frame, once its header and rows are both comma-separated: a header of ';'/tab/'|' separated names, or a
    comma header over rows separated by another character, is refused naming the separator and the fix."""
    how = (f"e.g. pandas.read_csv(path, sep=SEP).to_csv(new_path, index=False), {fix}").strip(", ")
    if len(frame.columns) == 1:
        header = str(frame.columns[0])
        for sep, name in SEPARATORS.items():
            if sep in header:
                raise DataError(f"{file}: columns are separated by {name}, not commas (header {header!r}) - save a "
                                f"comma-separated copy, {how.replace('SEP', repr(sep))}")
        return frame
    mixed = _row_separator(frame)
    if mixed:
        sep, row = mixed
        raise DataError(f"{file}: the header is separated by commas but the rows by {SEPARATORS[sep]} (first row "
                        f"{row!r}) - use commas throughout, e.g. sed -i 's/{sep.replace(chr(9), '[[:blank:]]')}/,/g' "
                        f"{file}{', ' + fix if fix else ''}")
    return frame


def _row_separator(frame: pd.DataFrame) -> tuple[str, str] | None:
    """(separator, first such row) when most rows fill only their first cell, and that cell holds ';', tab or '|'."""
    if frame.empty:
        return None
    first = frame.iloc[:, 0].astype(str)
    rest_empty = (frame.iloc[:, 1:].astype(str) == "").all(axis=1)
    for sep in SEPARATORS:
        hit = rest_empty & first.str.contains(sep, regex=False)
        if hit.sum() * 2 >= len(frame):
            return sep, str(first[hit].iloc[0])
    return None


_check_separator = check_separator


def _where_the_data_is(file: Path) -> str:
    """Why a table is absent when the data folder holds only the downloaded .zip, or the data one folder down."""
    root = file.parent
    if not root.is_dir():
        return ""
    nested = sorted({p.parent for p in root.glob(f"*/{file.name}")})
    if len(nested) == 1:
        return (f"the data sits one folder down, in {nested[0]}: set `competition.data_dir: {nested[0]}` in "
                f"competition.yaml (or move that folder's contents up into {root})")
    zips = sorted(root.glob("*.zip"))
    if zips:
        return (f"{root} holds the download {zips[0].name}, not its contents: unzip it there "
                f"(unzip {zips[0]} -d {root}) and rerun")
    return ""


def load_train_table(comp: CompetitionConfig, project: Project, group_column: str = "") -> pd.DataFrame:
    """Training rows as `id, path, label` (+ `group` from `group_column`), checked. Other columns are not kept,
    so a train.csv column named id, path or fold can never overwrite the kit's own."""
    root = data_dir(comp, project)
    if comp.train_csv:
        file = root / comp.train_csv
        raw = read_table(file, "train_csv")
        _require_columns(raw, [comp.path_column], file, "path_column")
        _require_columns(raw, [comp.label_column], file, "label_column")
        frame = pd.DataFrame({"id": raw[comp.path_column].astype(str)})
        frame["label"] = _check_labels(raw, file, comp.label_column)
        if group_column:
            frame["group"] = _group_values(raw, file, group_column)
    elif comp.class_folders:
        file = root
        if group_column:
            raise DataError("`folds.group_column` needs a train.csv; the image-folder layout has no columns")
        frame = _train_from_folders(comp, root)
    else:
        raise DataError("competition.yaml: set `competition.train_csv` or `competition.class_folders`")
    _check_ids(frame, file)
    frame["id"] = [relative_cell(c, root) for c in frame["id"]]  # absolute paths inside the data folder, once
    index = DiskIndex(Path(os.path.realpath(root)))
    frame["path"] = _resolve_paths(frame, root, file, index, "train")
    _check_files(frame, file, fatal=True, index=index, kind="train")
    _check_same_files(frame, file)
    return frame


def _group_values(raw: pd.DataFrame, file: Path, column: str) -> pd.Series:
    """The group column as text; blank cells are refused (they would silently join one giant group)."""
    if column not in raw.columns:
        raise DataError(f"{file}: `folds.group_column: {column}` is not a column ({', '.join(map(str, raw.columns))}) "
                        f"- fix folds.group_column in competition.yaml")
    values = raw[column].astype(str).str.strip()
    blank = values == ""
    if blank.any():
        raise DataError(f"{file}: group column {column!r} is blank in {_rows(raw, blank, column)} - give every row a "
                        f"group (its own id for a singleton)")
    return values


def load_test_table(comp: CompetitionConfig, project: Project) -> pd.DataFrame:
    """Test rows as `id, path, missing`, in the competition's order; missing files are kept, flagged."""
    root = data_dir(comp, project)
    if comp.test_csv:
        file = root / comp.test_csv
        raw = read_table(file, "test_csv")
        _require_columns(raw, [comp.test_path_column], file, "test_path_column")
        frame = pd.DataFrame({"id": raw[comp.test_path_column].astype(str)})
    elif comp.test_folder:
        file = root / comp.test_folder
        if not file.is_dir():
            raise DataError(f"test folder {file} not found - fix `competition.test_folder` in competition.yaml")
        frame = pd.DataFrame({"id": [os.path.relpath(f, root) for f in list_images(file)]})
    else:
        raise DataError("competition.yaml: set `competition.test_csv` or `competition.test_folder`")
    _check_ids(frame, file)
    index = DiskIndex(Path(os.path.realpath(root)))
    frame["path"] = _resolve_paths(frame, root, file, index, "test")
    frame["missing"] = _check_files(frame, file, fatal=False, index=index, kind="test")
    check_test_matches_sample(comp, frame, project)
    return frame


def load_sample_submission(comp: CompetitionConfig, project: Project) -> pd.DataFrame | None:
    """The sample submission (id and target columns checked, ids unique, as text), or None when there is none."""
    if not comp.sample_submission:
        return None
    file = data_dir(comp, project) / comp.sample_submission
    frame = read_table(file, "sample_submission")
    _require_columns(frame, [comp.id_column], file, "id_column")
    _require_columns(frame, [comp.target_column], file, "target_column")
    dup = frame[comp.id_column].duplicated(keep=False)
    if dup.any():
        raise DataError(f"{file}: {int(dup.sum())} rows share an id: {_rows(frame, dup, comp.id_column)} - a sample "
                        f"submission lists each test id once; download it again")
    return frame


def check_test_matches_sample(comp: CompetitionConfig, test: pd.DataFrame, project: Project) -> None:
    """Refuse a test table whose ids are not exactly the sample submission's (set and order)."""
    sample = load_sample_submission(comp, project)
    if sample is None:
        return
    ids = sample[comp.id_column].astype(str)
    file = data_dir(comp, project) / comp.test_csv if comp.test_csv else comp.test_folder
    extra = sorted(set(test["id"]) - set(ids))
    absent = sorted(set(ids) - set(test["id"]))
    if extra or absent:
        raise DataError(
            f"{file}: test ids do not match {comp.sample_submission}: {len(extra)} not in the sample "
            f"(e.g. {extra[:3]}), {len(absent)} missing from the test table (e.g. {absent[:3]}) - "
            f"use the test table that came with this sample submission"
        )
    if not (test["id"].values == ids.values).all():
        log.info("%s: test rows are not in sample-submission order; submissions follow the sample's order", file)
