"""Typed inputs a stranger got wrong, each class checked over generated variants (nothing trains).

Classes: a typed file that is obviously not an image (suffixes x predict/explain); absolute paths inside the data
folder (as typed, through a link) accepted and outside ones refused with the fix first (x train/test tables);
refusals of outputs naming the typed path and a concrete example, never a `_` placeholder (x audit/bundle/explain/
predict --csv); tables whose header and rows use different separators (separators x train/test/sample/submission
files); serve's --host/--port checked before the model loads (a real bound socket); --devices naming CUDA devices
the machine lacks (device_count monkeypatched).
"""

from __future__ import annotations

import argparse
import os
import socket
from pathlib import Path

import pandas as pd
import pytest
import torch

from competition import options
from competition.config import ConfigError, load_config
from competition.errors import DataError
from competition.fold_workers import device_plan
from competition.paths import NOT_IMAGES, PathNotFound, user_path
from competition.predict import expand_paths
from competition.project import Project
from competition.serve import AddressError, check_bindable
from competition.tables import check_separator, load_sample_submission, load_test_table, load_train_table
from tests.conftest import call_kit


def error_line(result) -> str:
    """The one ERROR line a refused command logged."""
    lines = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert len(lines) == 1, result.stderr
    return lines[0]


# --- 1. typed files that are not images ---------------------------------------------------------------------------

SUFFIXES = [".csv", ".json", ".yaml", ".txt", ".zip", ".pt", ".CSV", ".tar", ".pth"]


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("command", ["competition.predict", "competition.explain"])
def test_non_image_file_is_refused_with_the_fix(home, suffix, command):
    typed = home / f"list{suffix}"
    typed.write_text("id\ntest/a.jpg\n")
    result = call_kit(home, command, "exp001", typed.name, check=False)
    assert result.returncode == 2
    line = error_line(result)
    assert typed.name in line and "not an image" in line
    assert NOT_IMAGES[suffix.lower()].split(" - ")[-1] in line  # the fix for that kind of file
    if suffix.lower() == ".csv" and command == "competition.predict":
        assert "--csv" in line and "folder" in line
    if suffix.lower() in (".zip", ".tar"):
        assert "unzip" in line or "extract" in line


@pytest.mark.parametrize("name", ["broken.jpg", "truncated.png", "zero.webp"])
def test_corrupt_image_keeps_its_row(home, name):
    folder = home / "mixed"
    folder.mkdir()
    (folder / name).write_bytes(b"not really an image")
    (folder / "notes.txt").write_text("x")
    project = Project(home)
    assert expand_paths([str(folder)], project) == [str(folder / name)]  # in a folder: kept, .txt skipped
    assert expand_paths([str(folder / name)], project) == [str((folder / name).resolve())]  # typed: kept too


# --- 2. absolute paths in tables ----------------------------------------------------------------------------------

def _rewrite(home: Path, table: str, column: str, cell) -> None:
    """Rewrite one column of a data table by cell(relative path) (and the sample submission's ids alike)."""
    data = home / "data"
    frame = pd.read_csv(data / table, index_col=0, dtype=str)
    frame[column] = [cell(r) for r in frame[column]]
    frame.to_csv(data / table)
    if table == "test.csv":
        pd.DataFrame({"id": frame[column], "label": 0}).to_csv(data / "sample_submission.csv", index=False)


def _comp(home: Path):
    return load_config("", [], Project(home), check_model=False).competition


TABLES = [("train.csv", "file_name", load_train_table), ("test.csv", "id", load_test_table)]


@pytest.mark.parametrize("table,column,load", TABLES)
@pytest.mark.parametrize("spelling", ["plain", "double_slash", "link"])
def test_absolute_paths_inside_the_data_folder_are_accepted(home, table, column, load, spelling):
    data = home / "data"
    link = home / "data_link"
    link.symlink_to(data)
    base = {"plain": str(data), "double_slash": str(data) + "//", "link": str(link)}[spelling]
    _rewrite(home, table, column, lambda r: f"{base}/{r}" if spelling != "double_slash" else f"{base}{r}")
    frame = load(_comp(home), Project(home))
    assert frame["path"].map(os.path.isfile).all()
    assert all(p.startswith(os.path.realpath(data)) for p in frame["path"])
    if table == "train.csv":
        assert not frame["id"].str.startswith("/").any()  # made relative once


@pytest.mark.parametrize("table,column,load", TABLES)
@pytest.mark.parametrize("where", ["outside", "dotdot", "link_out"])
def test_paths_outside_the_data_folder_are_refused_fix_first(home, tmp_path_factory, table, column, load, where):
    data = home / "data"
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    frame = pd.read_csv(data / table, index_col=0, dtype=str)
    first = frame[column].iloc[0]
    (elsewhere / Path(first).name).write_bytes((data / first).read_bytes())
    if where == "link_out":
        (data / "out_link").symlink_to(elsewhere)
    cell = {"outside": str(elsewhere / Path(first).name), "dotdot": f"../{elsewhere.name}/{Path(first).name}",
            "link_out": f"out_link/{Path(first).name}"}[where]
    if where == "dotdot":
        (data.parent / elsewhere.name).mkdir(exist_ok=True)
        (data.parent / elsewhere.name / Path(first).name).write_bytes((data / first).read_bytes())
    _rewrite(home, table, column, lambda r: cell if r == first else r)
    with pytest.raises(DataError) as err:
        load(_comp(home), Project(home))
    message = str(err.value)
    assert message.split(": ", 1)[1].startswith("list image paths inside the data folder")
    assert "1 path(s) escape the data folder" in message and Path(first).name in message


# --- 3. refusals name the typed path and a concrete example ----------------------------------------------------------

def _refusals(home: Path) -> list[tuple[str, tuple[str, ...], str]]:
    """(module, args, the name the example should use) for outputs in protected folders."""
    (home / "experiments" / "exp001").mkdir(parents=True, exist_ok=True)
    image = str(home / "data" / pd.read_csv(home / "data" / "test.csv")["id"].iloc[0])
    return [("competition.audit", ("--out", "experiments/exp001"), "exp001"),
            ("competition.audit", ("--out", "data/cam"), "cam"),
            ("competition.bundle", ("exp001", "data"), "data"),
            ("competition.bundle", ("exp001", "experiments/exp001"), "exp001"),
            ("competition.bundle", ("exp001", "data/sub/"), "sub"),
            ("competition.explain", ("exp001", image, "--out", "data/cam"), "cam"),
            ("competition.explain", ("exp001", image, "--out", "experiments/exp001/heat"), "heat"),
            ("competition.predict", ("exp001", image, "--csv", "data/preds.csv"), "preds.csv"),
            ("competition.predict", ("exp001", image, "--csv", "experiments/exp001/p.csv"), "p.csv")]


@pytest.mark.parametrize("case", range(9))
def test_output_refusals_have_no_placeholder(home, case):
    module, args, name = _refusals(home)[case]
    result = call_kit(home, module, *args, check=False)
    assert result.returncode == 2
    line = error_line(result)
    assert "/_" not in line and "./_ " not in line and "(e.g. ./_)" not in line
    example = line.split("e.g. ")[-1].strip()
    assert example.startswith("./") and name in example
    resolved = (home / example).resolve()  # the command ran in home: the example itself is writable
    assert resolved != (home / "data").resolve() and (home / "data").resolve() not in resolved.parents
    typed = (args[-1] if module != "competition.bundle" else args[1]).rstrip("/")
    assert str((home / typed)) in line  # the path the person typed, made absolute


# --- 4. `~` reported expanded ----------------------------------------------------------------------------------

@pytest.mark.parametrize("typed", ["~/nonexist.jpg", "~/no/such/dir/x.png", "~//nonexist.jpg"])
def test_missing_home_path_reports_the_expanded_path(home, typed):
    with pytest.raises(PathNotFound) as err:
        user_path(typed, Project(home), "image")
    assert os.path.expanduser("~") + "/" in str(err.value) and "looked under /)" not in str(err.value)
    result = call_kit(home, "competition.predict", "exp001", typed, check=False)
    assert result.returncode == 2 and os.path.expanduser("~") in error_line(result)


# --- 5. separators ---------------------------------------------------------------------------------------------

SEPARATORS = {";": "semicolons", "\t": "tabs", "|": "pipes"}


def _mixed(path: Path, header_sep: str, row_sep: str) -> None:
    """Rewrite a CSV with one separator in its header and another in its rows."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    lines = [header_sep.join(frame.columns)] + [row_sep.join(r) for r in frame.itertuples(index=False)]
    path.write_text("\n".join(lines) + "\n")


LOADERS = {"train.csv": load_train_table, "test.csv": load_test_table, "sample_submission.csv": load_sample_submission}


@pytest.mark.parametrize("table", list(LOADERS))
@pytest.mark.parametrize("sep", list(SEPARATORS))
@pytest.mark.parametrize("layout", ["comma_header", "sep_header"])
def test_mixed_separators_are_named_in_every_table(home, table, sep, layout):
    path = home / "data" / table
    _mixed(path, "," if layout == "comma_header" else sep, sep if layout == "comma_header" else ",")
    with pytest.raises(DataError) as err:
        LOADERS[table](_comp(home), Project(home))
    assert SEPARATORS[sep] in str(err.value) and str(path) in str(err.value)


@pytest.mark.parametrize("sep", list(SEPARATORS))
@pytest.mark.parametrize("share", [1.0, 0.6])
def test_submission_rows_with_another_separator(tmp_path, sep, share):
    n = 10
    rows = [f"test/{i}.jpg{sep if i < share * n else ','}0.{i}" for i in range(n)]
    path = tmp_path / "sub.csv"
    path.write_text("id,label\n" + "\n".join(rows) + "\n")
    with pytest.raises(DataError) as err:
        check_separator(pd.read_csv(path, dtype=str, keep_default_na=False), path, "then submit it again")
    assert "header is separated by commas but the rows by " + SEPARATORS[sep] in str(err.value)
    assert "submit it again" in str(err.value)


def test_consistent_commas_and_empty_cells_pass(tmp_path):
    path = tmp_path / "ok.csv"
    path.write_text("id,label,note\na;b.jpg,1,\nc.jpg,0,x;y\n")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    assert check_separator(frame, path) is frame


# --- 6. explain prints predict's probability ---------------------------------------------------------------------

@pytest.mark.slow
def test_explain_prints_the_probability_predict_gives(trained_project):
    home = trained_project
    images = [str(p) for p in sorted((home / "data" / "test_data_v2").glob("*.*"))[:3]]
    predicted = call_kit(home, "competition.predict", "done", *images).stdout.splitlines()
    assert len(images) == 3 and len(predicted) == 3
    explained = call_kit(home, "competition.explain", "done", *images, "--out", str(home / "cams")).stdout.splitlines()
    assert [line.split("\t")[:2] for line in explained] == [line.split("\t")[:2] for line in predicted]


# --- 7. serve's address ----------------------------------------------------------------------------------------

@pytest.fixture
def busy_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.parametrize("host", ["not a host!", "no-such-host.invalid", "999.1.1.1", "exa mple"])
def test_unresolvable_host_is_refused_before_loading(home, host):
    result = call_kit(home, "competition.serve", "exp001", "--host", host, "--port", "8765", check=False)
    assert result.returncode == 2
    line = error_line(result)
    assert "--host" in line and "127.0.0.1" in line and "Loading" not in result.stderr


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "0.0.0.0"])
def test_port_in_use_is_refused_naming_another(home, busy_port, host):
    with pytest.raises(AddressError) as err:
        check_bindable(host, busy_port) if host != "0.0.0.0" else _busy_all(busy_port)
    assert "already in use" in str(err.value) and "another port" in str(err.value)
    assert host == "0.0.0.0" or f"--port {busy_port} " in str(err.value)
    if host == "127.0.0.1":
        result = call_kit(home, "competition.serve", "exp001", "--host", host, "--port", str(busy_port), check=False)
        assert result.returncode == 2 and "already in use" in error_line(result)


def _busy_all(port: int) -> None:
    """check_bindable on 0.0.0.0 for a port some process listens on there too."""
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        sock.listen()
        check_bindable("0.0.0.0", sock.getsockname()[1])


def test_free_port_passes(busy_port):
    check_bindable("127.0.0.1", 0)


# --- 8. --devices ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("count", [0, 1, 2])
@pytest.mark.parametrize("devices", ["0,0", "0,1", "cuda:1", "cuda:0,cuda:3", "2", "cpu,0"])
def test_devices_beyond_the_visible_are_refused(monkeypatch, count, devices):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    wanted = {int(d.split(":")[-1]) for d in devices.split(",") if d != "cpu"}
    if max(wanted) < count:
        assert len(device_plan(devices, [0, 1, 2, 3])) == len(devices.split(","))
        assert options.devices()(devices) == devices
        return
    with pytest.raises(argparse.ArgumentTypeError) as err:
        options.devices()(devices)
    assert "cpu,cpu" in str(err.value) and ("no CUDA device is visible" in str(err.value) if count == 0 else
                                            f"visible CUDA devices are {','.join(map(str, range(count)))}" in str(err.value))
    with pytest.raises(ConfigError):
        device_plan(devices, [0, 1])


@pytest.mark.parametrize("devices", ["0,0", "cpu,cpu,cpu", "1,1"])
def test_devices_listed_twice_are_shared_with_a_log_line(monkeypatch, caplog, devices):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    caplog.set_level("INFO")
    plan = device_plan(devices, list(range(6)))
    assert len(plan) == len(devices.split(","))
    assert ("share it" in caplog.text) == (not devices.startswith("cpu"))


def test_experiment_refuses_missing_gpus_at_parse(home, monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    result = call_kit(home, "competition.experiment", "exp001", "--devices", "0,0", check=False)
    assert result.returncode == 2 and "cpu,cpu" in result.stderr and "worker" not in result.stderr
