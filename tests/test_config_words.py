"""The words a person types for configs: experiment names (case, typos, .yml), override spellings of lists,
mappings, booleans and numbers, overrides placed after options, broken YAML and URLs in path keys.

Variants are generated: typed names x commands (train, predict, predict --onnx, report, compare), value spellings
x keys x where they are written (override or YAML file), override positions x options, broken YAML texts x the
three files a config is read from, URL spellings x every path-valued key. Nothing trains: the experiment CLI's
run_experiment is replaced by a recorder, and finished experiments are faked by writing files.
"""

from __future__ import annotations

import re

import pytest
import yaml

from competition import experiment
from competition.config import PATH_KEYS, load_config, load_saved_config
from competition.errors import ConfigError
from competition.project import Project
from tests.conftest import WEIGHTS, call_kit, write_yaml

MODEL = {"name": "tf_mobilenetv3_small_100", "weights_dir": str(WEIGHTS)}


@pytest.fixture
def proj(tmp_path):
    """A project with competition.yaml, experiments t1.yaml (with a fake outputs folder) and ty.yml."""
    (tmp_path / "data").mkdir()
    write_yaml(tmp_path / "competition.yaml", {"competition": {"name": "tiny", "data_dir": str(tmp_path / "data")},
                                               "folds": {"n_splits": 2}, "model": MODEL})
    write_yaml(tmp_path / "experiments" / "t1.yaml", {"model": MODEL, "train": {"epochs": 1}})
    (tmp_path / "experiments" / "t1").mkdir()
    write_yaml(tmp_path / "experiments" / "ty.yml", {"model": MODEL, "train": {"epochs": 4}})
    return tmp_path


@pytest.fixture
def recorded(monkeypatch):
    """Replace run_experiment by a recorder: [(cfg, folds)] of each call, nothing trains."""
    calls = []
    monkeypatch.setattr(experiment, "run_experiment", lambda cfg, project, restart, ood, folds, *a: calls.append(
        (cfg, folds)))
    return calls


def error_of(home, module, *args) -> str:
    """The one ERROR line a refused command logged (exit code 2 asserted)."""
    result = call_kit(home, module, *args, check=False)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if "ERROR" in line or "error:" in line]
    assert lines, result.stderr
    return lines[-1]


# ---- experiment names that are not there -------------------------------------------------------------------------
NAME_COMMANDS = {
    "train": ("competition.experiment", "{name}"),
    "predict": ("competition.predict", "{name}", "x.jpg"),
    "predict-onnx": ("competition.predict", "{name}", "x.jpg", "--onnx"),
    "report": ("competition.report", "{name}"),
    "explain": ("competition.explain", "{name}", "x.jpg"),
    "export": ("competition.export", "{name}"),
    "compare": ("competition.compare", "{name}", "ty"),
}


@pytest.mark.parametrize("typed", ["T1", "t_1", "t11", "tl"])
@pytest.mark.parametrize("command", list(NAME_COMMANDS))
def test_missing_name_suggests_the_close_one(proj, recorded, typed, command):
    (proj / "x.jpg").write_bytes(b"\xff\xd8\xff")
    module, *args = NAME_COMMANDS[command]
    line = error_of(proj, module, *[a.format(name=typed) for a in args])
    assert f"experiment `{typed}`" in line and re.search(r"did you mean [`\w ]*`t1`", line), line
    assert f"./run.sh {typed}" not in line  # advice that cannot work
    assert not recorded


@pytest.mark.parametrize("typed", ["T1.yaml", "t11.yaml", "T1.yml"])
def test_missing_yaml_file_name_suggests_the_close_one(proj, recorded, typed):
    line = error_of(proj, "competition.experiment", typed)
    assert "did you mean `t1`" in line or "t1.yaml is there" in line, line


def test_case_match_comes_before_similar_spellings(proj):
    write_yaml(proj / "experiments" / "ab1.yaml", {})
    write_yaml(proj / "experiments" / "Ab.yaml", {})
    with pytest.raises(ConfigError, match=r"did you mean `Ab`\?$"):
        load_config("AB", project=Project(proj), check_model=False)


def test_nothing_close_lists_what_exists(proj):
    with pytest.raises(ConfigError, match=r"create .*zzzzz\.yaml .* and run `\./run\.sh zzzzz`, or use one of: t1, ty"):
        load_config("zzzzz", project=Project(proj), check_model=False)


def test_saved_config_of_a_missing_experiment_names_close_ones(proj):
    with pytest.raises(ConfigError, match="did you mean `t1`"):
        load_saved_config(proj / "experiments" / "T1" / "config.yaml")


# ---- .yml beside .yaml --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".yml", ".YML", ".YAML", ".Yaml"])
def test_the_only_yaml_of_a_name_is_read_whatever_its_suffix(proj, recorded, suffix):
    write_yaml(proj / "experiments" / f"e5{suffix}", {"model": MODEL, "train": {"epochs": 5}})
    result = call_kit(proj, "competition.experiment", "e5")
    assert recorded[0][0].name == "e5" and recorded[0][0].train.epochs == 5
    assert f"reading {proj / 'experiments' / f'e5{suffix}'}" in result.stderr


@pytest.mark.parametrize("pair", [(".yaml", ".yml"), (".yml", ".YAML"), (".yaml", ".YML")])
@pytest.mark.parametrize("command", ["train", "predict"])
def test_two_files_for_one_name_are_refused(proj, recorded, pair, command):
    for suffix in pair:
        write_yaml(proj / "experiments" / f"w{suffix}", {"model": MODEL})
    (proj / "x.jpg").write_bytes(b"\xff\xd8\xff")
    if command == "train":
        line = error_of(proj, "competition.experiment", "w")
        assert all(f"w{s}" in line for s in pair) and "both exist" in line, line
        assert not recorded
    else:  # predict reads the outputs, not the YAML: a missing `w` is told what to run, not a wrong name
        line = error_of(proj, "competition.predict", "w", "x.jpg")
        assert "did you mean" not in line, line


@pytest.mark.parametrize("typed", ["ty.yaml", "ty.YAML"])
def test_typed_yaml_suffix_points_at_the_yml(proj, typed):
    with pytest.raises(ConfigError, match=r"ty\.yml is there: name it as `ty`"):
        load_config(typed, project=Project(proj), check_model=False)


def test_other_file_types_of_the_name_are_mentioned(proj):
    (proj / "experiments" / "v.txt").write_text("train: {epochs: 2}\n")
    with pytest.raises(ConfigError, match=r"v\.txt is there: an experiment's file must be v\.yaml"):
        load_config("v", project=Project(proj), check_model=False)


# ---- how each type is spelled ---------------------------------------------------------------------------------------
SPELLINGS = [  # key, value as typed, what the message must show
    ("train.folds", "0,1", ["train.folds=[0,1]", "--folds 0,1", "`train.folds: [0, 1]`"]),
    ("train.folds", "1, 2,3", ["train.folds=[1,2,3]", "--folds 1,2,3"]),
    ("train.folds", "1", ["train.folds=[0,1]", "--folds"]),
    ("competition.class_folders", "real", ["'competition.class_folders={REAL: 0, FAKE: 1}'", "braces"]),
    ("data.normalize_encoding", "jpeg", ["{format: jpeg, quality: 90}", "braces"]),
    ("data.normalize_encoding", "[jpeg, 90]", ["{format: jpeg, quality: 90}"]),
    ("train.ema", "yes", ["true or false", "train.ema=true"]),
    ("train.channels_last", "off", ["true or false", "train.channels_last=false"]),
    ("folds.audit", "0", ["true or false", "folds.audit=false"]),
    ("train.epochs", "2.5", ["whole number", "train.epochs=2"]),
    ("train.epochs", "'3'", ["without quotes", "train.epochs=3"]),
    ("train.batch_size", "many", ["whole number", "train.batch_size=3"]),
    ("train.lr", "abc", ["a number", "train.lr=0.001"]),
    ("train.lr", "'1e-3'", ["without quotes", "train.lr=1e-3"]),
]


@pytest.mark.parametrize("where", ["override", "yaml"])
@pytest.mark.parametrize("key, value, shown", SPELLINGS)
def test_type_errors_say_how_to_spell_the_type(proj, key, value, shown, where):
    section, name = key.split(".")
    overrides = [f"{key}={value}"] if where == "override" else []
    if where == "yaml":
        (proj / "experiments" / "s.yaml").write_text(f"{section}:\n  {name}: {value}\n")
    with pytest.raises(ConfigError) as err:
        load_config("s" if where == "yaml" else "t1", overrides, Project(proj), check_model=False)
    message = str(err.value)
    assert f"`{key}`: expected" in message and "\n" not in message
    for text in shown:
        assert text in message, message


def test_the_list_spelling_it_suggests_loads(proj):
    cfg = load_config("t1", ["train.folds=[0,1]", "competition.class_folders={REAL: 0, FAKE: 1}",
                             "train.ema=true"], Project(proj), check_model=False)
    assert cfg.train.folds == [0, 1] and cfg.competition.class_folders == {"REAL": 0, "FAKE": 1} and cfg.train.ema


# ---- overrides after options ----------------------------------------------------------------------------------------
POSITIONS = [
    ["t1", "--folds", "0", "train.epochs=2"],
    ["t1", "train.epochs=2", "--folds", "0"],
    ["--folds", "0", "t1", "train.epochs=2"],
    ["t1", "--folds=0", "train.epochs=2", "--device", "cpu"],
    ["t1", "--device", "cpu", "train.epochs=2", "--folds", "0"],
    ["t1", "--restart", "train.epochs=2", "--folds", "0"],
    ["t1", "--folds", "0", "train.epochs=2", "--no-assemble", "data.img_size=64"],
]


@pytest.mark.parametrize("argv", POSITIONS)
def test_overrides_work_before_between_and_after_options(proj, recorded, argv):
    call_kit(proj, "competition.experiment", *argv)
    (cfg, folds), = recorded
    assert cfg.name == "t1" and cfg.train.epochs == 2 and folds == [0]
    assert cfg.data.img_size == (64 if "data.img_size=64" in argv else 224)


@pytest.mark.parametrize("argv", [["t1", "--folds", "0", "epochs=2"], ["t1", "--folds", "0", "train.epochs"]])
def test_a_bad_word_after_options_is_still_named(proj, recorded, argv):
    line = error_of(proj, "competition.experiment", *argv)
    assert argv[-1] in line and "section.key=value" in line and not recorded


@pytest.mark.parametrize("argv", [["t1", "train.epochs=2"], ["t1", "data.img_size=64", "train.epochs=2"]])
def test_config_reference_takes_the_same_words(proj, argv):
    result = call_kit(proj, "competition.config_reference", *argv)
    assert re.search(r"epochs: 2 .*override", result.stdout), result.stdout[:2000]


# ---- broken YAML -----------------------------------------------------------------------------------------------------
BROKEN = {  # text, (line, column) of the problem, the hint that must appear
    "unclosed flow mapping": ("train: {epochs: 1, batch_size: 8\n", (2, 1), "the `{` opened on line 1, column 8"),
    "unclosed flow list": ("train:\n  folds: [0, 1\n", (3, 1), "the `[` opened on line 2, column 10"),
    "unclosed quote": ("description: 'abc\n", (2, 1), "the quote opened on line 1"),
    "tab indentation": ("train:\n\tepochs: 1\n", (2, 1), "tabs are not allowed for indentation"),
    "value with a colon": ("train: epochs: 3\n", (1, 14), "put each key on its own line"),
    "python tag": ("train: !!python/object:os.system {}\n", (1, 8), "tags like !!python/object are refused"),
}
UNRELATED = ["tabs", "!!python"]


def _write_broken(proj, role: str, text: str):
    """Put the broken text in one of the three files a config is read from; return that file."""
    if role == "competition.yaml":
        target = proj / "competition.yaml"
    elif role == "base":
        target = proj / "experiments" / "b0.yaml"
        write_yaml(proj / "experiments" / "e0.yaml", {"base": "b0.yaml"})
    else:
        target = proj / "experiments" / "e0.yaml"
    target.write_text(text)
    return target


@pytest.mark.parametrize("role", ["experiment", "base", "competition.yaml"])
@pytest.mark.parametrize("kind", list(BROKEN))
def test_broken_yaml_names_file_line_column_and_one_hint(proj, recorded, role, kind):
    text, (line_no, column), hint = BROKEN[kind]
    target = _write_broken(proj, role, text)
    line = error_of(proj, "competition.experiment", "e0")
    assert f"{target}:{line_no}:{column}: not valid YAML" in line, line
    assert hint in line, line
    for other in UNRELATED:
        if other not in hint:
            assert other not in line, line
    assert not recorded


def test_tabs_are_mentioned_only_when_the_text_has_tabs(proj):
    (proj / "experiments" / "e0.yaml").write_text("train:\n  epochs: 1\n\t\n  x: [\n")
    with pytest.raises(ConfigError, match="tab"):
        load_config("e0", project=Project(proj), check_model=False)
    (proj / "experiments" / "e0.yaml").write_text("train:\n  epochs: 1\n  x: [\n")
    with pytest.raises(ConfigError) as err:
        load_config("e0", project=Project(proj), check_model=False)
    assert "tabs are not allowed" not in str(err.value) and "tab characters" not in str(err.value)


# ---- URLs in path keys ----------------------------------------------------------------------------------------------
URLS = ["https://www.kaggle.com/competitions/cifake/data", "http://www.kaggle.com/c/cifake", "s3://bucket/cifake",
        "HTTPS://Example.org/x.pth", " gs://bucket/x"]


@pytest.mark.parametrize("where", ["override", "competition.yaml", "experiment"])
@pytest.mark.parametrize("url", URLS)
@pytest.mark.parametrize("section, key", PATH_KEYS)
def test_a_url_in_a_path_key_is_refused_at_load(proj, section, key, url, where):
    overrides = [f"{section}.{key}={url}"] if where == "override" else []
    file = proj / ("competition.yaml" if where == "competition.yaml" else "experiments/t1.yaml")
    if where != "override":
        conf = yaml.safe_load(file.read_text())
        conf.setdefault(section, {})[key] = url
        if where == "competition.yaml" and (section, key) in (("model", "weights_dir"),):
            file = proj / "experiments" / "t1.yaml"  # t1.yaml sets it too, over competition.yaml
            conf = {**yaml.safe_load(file.read_text()), section: {**MODEL, key: url}}
        write_yaml(file, conf)
    with pytest.raises(ConfigError) as err:
        load_config("t1", overrides, Project(proj), check_model=False)
    message = str(err.value)
    assert f"`{section}.{key}: {url.strip()}` is a URL" in message and "local" in message, message
    assert str(proj) + "/http" not in message
    if where != "override":
        assert f"{file}:" in message, message
    if section == "competition":
        slug = "cifake" if "kaggle" in url else "tiny"
        assert f"kaggle competitions download -c {slug}" in message and "unzip" in message, message
        assert "competition.data_dir" in message


@pytest.mark.parametrize("url", URLS[:2])
def test_a_url_data_dir_stops_training_with_one_line(proj, recorded, url):
    line = error_of(proj, "competition.experiment", "t1", f"competition.data_dir={url}")
    assert "is a URL" in line and "kaggle competitions download -c cifake" in line and not recorded
