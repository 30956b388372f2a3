"""Paths a person types (competition.paths) and paths inside tables (competition.tables), generated as variants:
spellings (relative from another folder, ./, ../, ~, trailing slash or space, //, backslashes, NFD accents)
x commands, near misses (case, accents, extension) x commands, URL spellings x commands and tables, bare test ids,
and the data-folder checks (separators, a zip-only or nested data folder). No test here trains a model."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

import competition.project as project_module
from competition.config import load_config
from competition.errors import DataError
from competition.paths import PathNotFound, UrlError, canonical, experiment_arg, user_path
from competition.project import Project
from competition.tables import load_test_table, load_train_table
from tests.conftest import REPO, call_kit
from tests.test_outputs import fake_finished

NFD = lambda s: unicodedata.normalize("NFD", s)  # noqa: E731 - macOS spelling of the same name

# how a person may spell work/odd/café.jpg while standing in work/ (home: HOME=work, for ~)
FILE_SPELLINGS = {
    "relative": "odd/café.jpg", "dot": "./odd/café.jpg", "dotdot": "../work/odd/café.jpg", "tilde": "~/odd/café.jpg",
    "double-slash": "odd//café.jpg", "backslash": "odd\\café.jpg", "nfd": NFD("odd/café.jpg"),
    "trailing-space": "odd/café.jpg ", "absolute": "{work}/odd/café.jpg",
}
DIR_SPELLINGS = {"trailing-slash": "odd/", "dot": "./odd", "backslash-end": "odd\\", "tilde": "~/odd/",
                 "dotdot": "../work/odd"}
NEAR_MISSES = {"case": ("ODD/café.jpg", "case"), "accents": ("odd/cafe.jpg", "accents"),
               "extension": ("odd/café.png", "extension (.png vs .jpg)"), "ext-case": ("odd/café.JPG", "case")}
URLS = ["http://example.com/a.jpg", "https://example.com/x/a.jpg", "s3://bucket/a.jpg", "gs://bucket/a.jpg",
        "HTTPS://EXAMPLE.COM/A.JPG", " https://example.com/a.jpg"]


@pytest.fixture
def work(tmp_path: Path, monkeypatch) -> Path:
    """tmp/work/odd/café.jpg (NFC on disk), standing in tmp/work, HOME=tmp/work."""
    work = tmp_path / "work"
    (work / "odd").mkdir(parents=True)
    (work / "odd" / "café.jpg").write_bytes(b"x")
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(work))
    monkeypatch.delenv("KIT_CWD", raising=False)
    return work


@pytest.mark.parametrize("spelling", FILE_SPELLINGS.values(), ids=FILE_SPELLINGS.keys())
def test_every_spelling_of_a_typed_file_is_that_file(work, spelling):
    found = user_path(spelling.format(work=work), Project(work.parent / "proj"), kind="file")
    assert found == (work / "odd" / "café.jpg").resolve()


@pytest.mark.parametrize("spelling", DIR_SPELLINGS.values(), ids=DIR_SPELLINGS.keys())
def test_every_spelling_of_a_typed_folder_is_that_folder(work, spelling):
    assert user_path(spelling, None, kind="dir") == (work / "odd").resolve()


@pytest.mark.parametrize("typed,aspect", NEAR_MISSES.values(), ids=NEAR_MISSES.keys())
def test_a_near_miss_names_the_file_on_disk_and_what_differs(work, typed, aspect):
    with pytest.raises(PathNotFound) as err:
        user_path(typed, None)
    assert "café.jpg" in str(err.value) and aspect in str(err.value), err.value


def test_a_miss_without_near_match_says_where_it_looked(work):
    with pytest.raises(PathNotFound, match=r"'nope/x.jpg' not found \(looked under .*work or .*proj\)"):
        user_path("nope/x.jpg", Project(work.parent / "proj"))


def test_the_project_folder_is_the_second_place_looked(work):
    proj = work.parent / "proj"
    (proj / "submissions").mkdir(parents=True)
    (proj / "submissions" / "s.csv").write_text("id,label\n")
    assert user_path("submissions/s.csv", Project(proj)) == (proj / "submissions" / "s.csv").resolve()


@pytest.mark.parametrize("url", URLS)
def test_a_url_is_refused_as_a_url(work, url):
    with pytest.raises(UrlError, match="is a URL"):
        user_path(url, None)


def test_kit_cwd_is_honoured_only_while_the_process_sits_in_the_kit(work, monkeypatch):
    monkeypatch.setenv("KIT_CWD", str(work))
    monkeypatch.chdir(REPO)  # what run.sh does after exporting KIT_CWD
    assert user_path("odd/café.jpg", None) == (work / "odd" / "café.jpg").resolve()
    monkeypatch.chdir(work / "odd")  # a test or a program that changed folder: its own folder counts
    with pytest.raises(PathNotFound):
        user_path("odd/café.jpg", None)


@pytest.mark.parametrize("spelling", ["proj", "./proj/", "~/proj", "../work/proj"])
def test_kit_home_is_resolved_where_the_command_was_typed(work, monkeypatch, spelling):
    (work / "proj").mkdir()
    monkeypatch.setenv("KIT_HOME", spelling)
    monkeypatch.setenv("KIT_CWD", str(work))
    monkeypatch.chdir(REPO)
    assert Project.from_env().root == (work / "proj").resolve()


@pytest.mark.parametrize("typed", ["exp7", "exp7/", "exp7.yaml", "experiments/exp7.yaml", "./experiments/exp7.yaml",
                                   "experiments\\exp7.yaml", "{home}/experiments/exp7.yaml"])
def test_an_experiment_is_a_name_or_its_yaml_from_anywhere(tmp_path, monkeypatch, typed):
    home = tmp_path / "home"
    (home / "experiments").mkdir(parents=True)
    (home / "experiments" / "exp7.yaml").write_text("{}\n")
    monkeypatch.chdir(tmp_path)  # not the project: the YAML is found in the project (second place looked)
    assert experiment_arg(typed.format(home=home), Project(home)) == "exp7"


# --- the commands, as run.sh runs them: cwd = the kit, KIT_CWD = where the person typed ------------------------

@pytest.fixture
def typed_in(home: Path, tmp_path: Path, monkeypatch) -> Path:
    """A folder elsewhere holding odd/café.jpg, a submission and an output folder; commands run as by run.sh from it
    (call_kit sits in the project, which plays the kit's checkout, KIT_CWD names this folder)."""
    other = tmp_path / "elsewhere"
    (other / "odd").mkdir(parents=True)
    shutil.copyfile(next((home / "data" / "test_data_v2").iterdir()), other / "odd" / "café.jpg")
    sample = pd.read_csv(home / "data" / "sample_submission.csv", dtype=str)
    sample["label"] = np.random.default_rng(0).random(len(sample))
    sample.to_csv(other / "odd" / "sub.csv", index=False)
    monkeypatch.setattr(project_module, "REPO", home)
    monkeypatch.setenv("KIT_CWD", str(other))
    monkeypatch.setenv("HOME", str(other))
    return other


def spelled(spelling: str, name: str, other: Path) -> str:
    """FILE_SPELLINGS' spelling of odd/café.jpg, for the file odd/<name> instead."""
    text = spelling.replace("../work/", f"../{other.name}/").format(work=other)
    return text.replace("café.jpg", name).replace(NFD("café.jpg"), NFD(name))


def error_line(result) -> str:
    errors = [ln for ln in result.stderr.splitlines() if " ERROR " in ln]
    assert result.returncode == 2 and len(errors) == 1, result.stderr[-2000:]
    return errors[0]


COMMANDS = {  # (module, args with IMG standing for the typed image path): the typed path must be found
    "predict": ("competition.predict", "ghost", "IMG"),
    "predict-csv": ("competition.predict", "ghost", "IMG", "--csv", "out.csv"),
    "explain": ("competition.explain", "ghost", "IMG"),
}


@pytest.mark.parametrize("spelling", FILE_SPELLINGS.values(), ids=FILE_SPELLINGS.keys())
@pytest.mark.parametrize("command", COMMANDS.values(), ids=COMMANDS.keys())
def test_image_commands_find_a_path_typed_in_another_folder(home, typed_in, command, spelling):
    args = [spelled(spelling, "café.jpg", typed_in) if a == "IMG" else a for a in command[1:]]
    line = error_line(call_kit(home, command[0], *args, check=False))
    assert "run.sh ghost" in line, line  # got past the paths: the (untrained) experiment is the only problem


@pytest.mark.parametrize("spelling", DIR_SPELLINGS.values(), ids=DIR_SPELLINGS.keys())
def test_predict_finds_a_folder_typed_in_another_folder(home, typed_in, spelling):
    line = error_line(call_kit(home, "competition.predict", "ghost", spelling.replace("../work", f"../{typed_in.name}"),
                               check=False))
    assert "run.sh ghost" in line, line


@pytest.mark.parametrize("typed,aspect", NEAR_MISSES.values(), ids=NEAR_MISSES.keys())
@pytest.mark.parametrize("command", COMMANDS.values(), ids=COMMANDS.keys())
def test_image_commands_name_a_near_miss(home, typed_in, command, typed, aspect):
    args = [typed if a == "IMG" else a for a in command[1:]]
    line = error_line(call_kit(home, command[0], *args, check=False))
    assert "café.jpg" in line and aspect in line and "run.sh ghost" not in line, line


@pytest.mark.parametrize("spelling", FILE_SPELLINGS.values(), ids=FILE_SPELLINGS.keys())
def test_submit_dry_run_finds_the_file_typed_in_another_folder(home, typed_in, spelling):
    result = call_kit(home, "competition.submit", spelled(spelling, "sub.csv", typed_in), "--dry-run")
    assert "valid (12 rows)" in result.stderr


@pytest.mark.parametrize("typed,aspect", [("ODD/sub.csv", "case"), ("odd/sub.CSV", "case"),
                                          ("odd/sub.txt", "extension")])
def test_submit_names_a_near_miss(home, typed_in, typed, aspect):
    line = error_line(call_kit(home, "competition.submit", typed, "--dry-run", check=False))
    assert "sub.csv" in line and aspect in line, line


OUT_SPELLINGS = {"relative": "reports/t.md", "dot": "./reports/t.md", "tilde": "~/reports/t.md",
                 "backslash": "reports\\t.md", "double-slash": "reports//t.md"}


@pytest.mark.parametrize("spelling", OUT_SPELLINGS.values(), ids=OUT_SPELLINGS.keys())
def test_compare_out_lands_where_the_command_was_typed(home, typed_in, spelling):
    fake_finished(home, "a", 0.8)
    fake_finished(home, "b", 0.9)
    call_kit(home, "competition.compare", "a", "experiments/b.yaml", "--out", spelling)
    assert "| b |" in (typed_in / "reports" / "t.md").read_text()
    assert not (home / "reports").exists()


@pytest.mark.parametrize("spelling", ["data", "./data/", "~/data", "data\\"])
def test_audit_reads_a_data_folder_and_writes_out_where_typed(home, typed_in, spelling):
    shutil.copytree(home / "data", typed_in / "data")
    result = call_kit(home, "competition.audit", spelling, "--out", "rep/", check=False)
    assert result.returncode in (0, 1), result.stderr[-2000:]
    assert (typed_in / "rep" / "data_audit.md").is_file()


@pytest.mark.parametrize("spelling", ["rep", "./rep/", "~/rep", "rep\\", "rep//", "{other}/rep"])
def test_audit_out_folder_spellings_land_where_typed(home, typed_in, spelling):
    result = call_kit(home, "competition.audit", "--out", spelling.format(other=typed_in), check=False)
    assert result.returncode in (0, 1), result.stderr[-2000:]
    assert (typed_in / "rep" / "tiny_k2_s0_audit.md").is_file() and not (home / "rep").exists()


URL_CALLS = {
    "predict-image": ("competition.predict", "ghost", "URL"),
    "predict-blend": ("competition.predict", "URL.json", "x.jpg"),
    "explain": ("competition.explain", "ghost", "URL"),
    "submit": ("competition.submit", "URL", "--dry-run"),
    "audit-data": ("competition.audit", "URL"),
    "compare-out": ("competition.compare", "a", "--out", "URL"),
    "bundle-dest": ("competition.bundle", "a", "URL"),
    "experiment": ("competition.experiment", "URL.yaml"),
}


@pytest.mark.parametrize("url", URLS[:4] + URLS[4:5])
@pytest.mark.parametrize("call", URL_CALLS.values(), ids=URL_CALLS.keys())
def test_every_command_refuses_a_url_as_a_url(home, call, url):
    args = [a.replace("URL", url.strip()) for a in call[1:]]
    line = error_line(call_kit(home, call[0], *args, check=False))
    assert "is a URL" in line and url.strip().split("://")[0] in line, line


def test_run_sh_from_another_folder_finds_the_typed_file(home, tmp_path):
    """The reported accident: `cd ~/work && ../kit/run.sh submit odd/x.csv` said an existing file was not found."""
    other = tmp_path / "work"
    (other / "odd").mkdir(parents=True)
    sample = pd.read_csv(home / "data" / "sample_submission.csv", dtype=str)
    sample["label"] = np.random.default_rng(1).random(len(sample))
    sample.to_csv(other / "odd" / "x.csv", index=False)
    env = {**os.environ, "KIT_PYTHON": sys.executable, "KIT_HOME": os.path.relpath(home, other), "OMP_NUM_THREADS": "1"}
    env.pop("KIT_CWD", None)
    proc = subprocess.run([os.path.relpath(REPO / "run.sh", other), "submit", "odd/x.csv", "--dry-run"], cwd=other,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "valid (12 rows)" in proc.stderr, proc.stderr[-2000:]


# --- paths inside tables ---------------------------------------------------------------------------------------

def rewrite(csv: Path, change) -> None:
    frame = pd.read_csv(csv, index_col=0, dtype=str, keep_default_na=False)
    change(frame).to_csv(csv)


def accented_first_row(home: Path) -> str:
    """Rename train row 1's image to an accented NFC name on disk; return that name (relative)."""
    data = home / "data"
    frame = pd.read_csv(data / "train.csv", index_col=0, dtype=str)
    first = frame["file_name"].iloc[0]
    new = str(Path(first).parent / "ééte 1.jpg")
    (data / first).rename(data / new)
    frame.iloc[0, frame.columns.get_loc("file_name")] = new
    frame.to_csv(data / "train.csv")
    return new


TABLE_SPELLINGS = {
    "dot": lambda r: f"./{r}", "double-slash": lambda r: r.replace("/", "//"), "backslash": lambda r: r.replace("/", "\\"),
    "nfd": NFD, "trailing-space": lambda r: r + "  ", "leading-space": lambda r: " " + r,
}


@pytest.mark.parametrize("spell", TABLE_SPELLINGS.values(), ids=TABLE_SPELLINGS.keys())
def test_table_spellings_are_canonicalised_once(home, spell):
    rel = accented_first_row(home)
    rewrite(home / "data" / "train.csv", lambda t: t.assign(file_name=[spell(rel)] + list(t["file_name"][1:])))
    cfg = load_config("", [], Project(home), check_model=False)
    train = load_train_table(cfg.competition, Project(home))
    assert train["path"].iloc[0] == os.path.realpath(home / "data" / rel)
    assert train["id"].iloc[0] == spell(rel)  # the id stays as the competition wrote it


TABLE_MISSES = {"case": (str.upper, "case"), "extension": (lambda r: r[:-4] + ".png", "extension (.png vs .jpg)"),
                "accents": (lambda r: r.replace("éé", "ee"), "accents")}


@pytest.mark.parametrize("spoil,aspect", TABLE_MISSES.values(), ids=TABLE_MISSES.keys())
def test_a_train_table_miss_names_the_near_spelling_on_disk(home, spoil, aspect):
    rel = accented_first_row(home)
    rewrite(home / "data" / "train.csv", lambda t: t.assign(file_name=[spoil(rel)] + list(t["file_name"][1:])))
    line = error_line(call_kit(home, "competition.folds", check=False))
    assert f"on disk '{rel}'" in line and aspect in line and "restore the files" not in line, line


def test_test_table_near_miss_is_a_named_warning(home, caplog):
    first = pd.read_csv(home / "data" / "test.csv", index_col=0, dtype=str)["id"].iloc[0]
    on_disk = str(Path(first).parent / Path(first).name.upper())
    (home / "data" / first).rename(home / "data" / on_disk)
    cfg = load_config("", [], Project(home), check_model=False)
    frame = load_test_table(cfg.competition, Project(home))
    assert frame["missing"].sum() == 1
    assert f"on disk '{on_disk}'" in caplog.text and "case" in caplog.text


@pytest.mark.parametrize("spell", list(TABLE_SPELLINGS.values())[:4], ids=list(TABLE_SPELLINGS)[:4])
@pytest.mark.parametrize("flip", [False, True], ids=["same-label", "contradicting"])
def test_one_file_listed_twice_is_refused_naming_both_rows(home, spell, flip):
    accented_first_row(home)  # an accented name, so its NFD spelling differs from the one in the table

    def dup(t: pd.DataFrame) -> pd.DataFrame:
        extra = t.head(1).assign(file_name=spell(t["file_name"].iloc[0]))
        if flip:
            extra = extra.assign(label=str(1 - int(t["label"].iloc[0])))
        return pd.concat([t, extra], ignore_index=True)
    rewrite(home / "data" / "train.csv", dup)
    line = error_line(call_kit(home, "competition.folds", check=False))
    assert "row 1 (" in line and f"row {len(pd.read_csv(home / 'data' / 'train.csv'))} (" in line, line
    assert ("contradicting labels" in line) == flip and "same image" in line, line


@pytest.mark.parametrize("url", URLS)
@pytest.mark.parametrize("column", ["file_name", "id"])
def test_a_url_in_a_table_is_refused_as_a_url(home, url, column):
    table = "train.csv" if column == "file_name" else "test.csv"
    rewrite(home / "data" / table, lambda t: t.assign(**{column: [url] + list(t[column][1:])}))
    line = error_line(call_kit(home, "competition.folds", check=False))
    assert "URL" in line and table in line and url.strip() in line, line


def bare_test_ids(home: Path, folder: str = "test") -> list[str]:
    """Move the test images to data/<folder>/<stem>.<ext> and write test.csv + sample with bare ids (Kaggle style)."""
    data = home / "data"
    test = pd.read_csv(data / "test.csv", index_col=0, dtype=str)
    (data / folder).mkdir(exist_ok=True)
    for rel in test["id"]:
        (data / rel).rename(data / folder / Path(rel).name)
    ids = [Path(r).stem for r in test["id"]]
    pd.DataFrame({"id": ids}).to_csv(data / "test.csv")
    pd.DataFrame({"id": ids, "label": 0}).to_csv(data / "sample_submission.csv", index=False)
    return ids


@pytest.mark.parametrize("folder", ["test", "test_images", "."])
def test_bare_test_ids_are_found_by_stem(home, folder):
    ids = bare_test_ids(home, folder)
    frame = load_test_table(load_config("", [], Project(home), check_model=False).competition, Project(home))
    assert list(frame["id"]) == ids and not frame["missing"].any()
    assert all(Path(p).stem == i and Path(p).is_file() for p, i in zip(frame["path"], ids))


@pytest.mark.parametrize("layout", ["none-found", "ambiguous"])
def test_bare_test_ids_that_match_no_single_file_are_refused_with_the_layout(home, layout):
    ids = bare_test_ids(home, "a")
    if layout == "ambiguous":
        shutil.copytree(home / "data" / "a", home / "data" / "b")
    else:
        shutil.rmtree(home / "data" / "a")
    with pytest.raises(DataError, match="bare names.*no folder, no extension") as err:
        load_test_table(load_config("", [], Project(home), check_model=False).competition, Project(home))
    assert ids[0] in str(err.value) and "not one test image" in str(err.value)


@pytest.mark.parametrize("sep,word", [(";", "semicolons"), ("\t", "tabs"), ("|", "pipes")])
@pytest.mark.parametrize("table", ["train.csv", "test.csv"])
def test_another_separator_is_reported_as_a_separator(home, sep, word, table):
    csv = home / "data" / table
    pd.read_csv(csv, index_col=0, dtype=str).assign(note="x").to_csv(csv, sep=sep, index=False)
    line = error_line(call_kit(home, "competition.folds", check=False))
    assert f"separated by {word}" in line and table in line and "missing" not in line, line


@pytest.mark.parametrize("layout", ["zip-only", "one-down"])
def test_a_data_folder_with_only_the_zip_or_one_level_down_says_so(home, layout):
    data = home / "data"
    if layout == "zip-only":
        shutil.make_archive(str(home / "tiny"), "zip", data)
        shutil.rmtree(data)
        data.mkdir()
        shutil.move(str(home / "tiny.zip"), data / "tiny.zip")
        words = ("tiny.zip", "unzip")
    else:
        shutil.move(str(data), str(home / "inner"))
        data.mkdir()
        shutil.move(str(home / "inner"), data / "tiny")
        words = ("one folder down", f"competition.data_dir: {data / 'tiny'}")
    line = error_line(call_kit(home, "competition.folds", check=False))
    assert all(w in line for w in words), line


def test_canonical_spelling():
    assert canonical(" ./a//b\\c.jpg ") == "a/b/c.jpg"
    assert canonical(NFD("é/./x")) == "é/x" and canonical("/abs//x") == "/abs/x"


def test_competition_yaml_data_dir_unchanged(home):
    """Guard: the fixtures above edit the data folder through the table, never competition.yaml."""
    assert yaml.safe_load((home / "competition.yaml").read_text())["competition"]["data_dir"] == str(home / "data")
