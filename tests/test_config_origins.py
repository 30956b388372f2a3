"""Config errors point at the right line: the file of the base chain, competition.yaml or the override that set
the bad key; keys in the wrong section say where they belong; YAML 1.2 numbers; empty files refused at once.

Every test generates its variants: several keys x several files (experiment, base, competition.yaml, override)
x several entry points (load_config and the experiment / folds command lines)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from competition.config import ConfigError, load_config
from competition.project import Project
from tests.conftest import call_kit, write_yaml

# (written section, key, value, the section it belongs in)
WRONG_SECTION = [
    ("train", "img_size", 32, "data"),
    ("model", "epochs", 3, "train"),
    ("data", "lr", 0.01, "train"),
    ("tta", "pretrained", False, "model"),
    ("competition", "n_splits", 3, "folds"),
    ("train", "views", "d4", "tta"),
    ("", "epochs", 3, "train"),
    ("", "img_size", 64, "data"),
    ("", "metric", "f1", "competition"),
]


def body_with(section: str, key: str, value) -> dict:
    """A YAML body setting `section.key: value` (top-level when section is "")."""
    return {key: value} if not section else {section: {key: value}}


def project_at(tmp_path: Path, competition: dict | None = None) -> Project:
    """A project folder with a competition.yaml (a small valid one unless given)."""
    write_yaml(tmp_path / "competition.yaml", competition or {"competition": {"name": "tiny"}})
    return Project(tmp_path)


def error_of(project: Project, exp: str = "", overrides: list[str] | None = None) -> str:
    """The one-line message load_config raises (the test fails when it loads)."""
    with pytest.raises(ConfigError) as err:
        load_config(exp, overrides or [], project, check_model=False)
    text = str(err.value)
    assert "\n" not in text
    return text


@pytest.mark.parametrize("section, key, value, home, via", [
    (*row, via) for row in WRONG_SECTION for via in ("experiment", "base", "override")
    if row[0] or via != "override"])  # an override always names a section
def test_a_key_in_the_wrong_section_says_where_it_belongs(tmp_path, section, key, value, home, via):
    project = project_at(tmp_path)
    exp = tmp_path / "experiments" / "e1.yaml"
    overrides = []
    if via == "override":
        write_yaml(exp, {"description": "x"})
        overrides = [f"{section}.{key}={yaml.safe_dump(value).splitlines()[0]}"]
    elif via == "base":
        write_yaml(tmp_path / "experiments" / "b.yaml", {"description": "the base", **body_with(section, key, value)})
        write_yaml(exp, {"base": "b.yaml", "description": "x"})
    else:
        write_yaml(exp, {"description": "x", **body_with(section, key, value)})
    text = error_of(project, "e1", overrides)
    assert f"it belongs in {home}: {home}.{key}" in text
    shown = f"{section}.{key}" if section else key
    assert f"`{shown}` is not" in text
    if via == "override":
        assert text.startswith(f"override '{overrides[0]}'")
    else:
        name = "b.yaml" if via == "base" else "e1.yaml"
        line = 3 if section else 2  # `description:` on line 1, then the section, then the key
        assert f"{name}:{line}:" in text, text


@pytest.mark.parametrize("written, value, message", [
    ({"train": {"img_size": "big"}}, "big", "`data.img_size` is, but `data.img_size`: expected int"),
    ({"train": {"img_size": 2}}, 2, "`data.img_size` is, but `data.img_size`: 2 is out of range"),
    ({"train": {"epocs": "three"}}, "three", "valid keys: epochs"),
    ({"data": {"augmnt": 3}}, 3, "valid keys: img_size"),
])
def test_a_suggestion_is_made_only_when_taking_it_can_work(tmp_path, written, value, message):
    project = project_at(tmp_path)
    write_yaml(tmp_path / "experiments" / "e1.yaml", written)
    text = error_of(project, "e1")
    assert message in text
    assert "belongs in" not in text and "did you mean" not in text


@pytest.mark.parametrize("written, message", [
    ({"trian": {"epochs": 3}}, "unknown config key `trian`; did you mean `train`?"),
    ({"Data": {"img_size": 32}}, "unknown config key `Data`; did you mean `data`?"),
    ({"modle": {"name": "resnet18"}}, "unknown config key `modle`; did you mean `model`?"),
    ({"train": {"epocs": 3}}, "unknown config key `train.epocs`; did you mean `epochs`?"),
    ({"model": {"train": {"epochs": 3}}}, "`model.train`: train is a section of its own"),
    ({"train": {"data": {"img_size": 3}}}, "`train.data`: data is a section of its own"),
    ({"data": {"img_size": 32}, "train": {"img_size": 32}}, "`data.img_size` is already set: delete this one"),
    ({"train": {"seed": 1}, "seed": 2}, "it belongs in folds: folds.seed (`train.seed` is already set)"),
    ({"train.epochs": 3}, "`train.epochs`: YAML does not split dotted keys; write it nested"),
    ({"data.img_size": 32}, "`data.img_size`: YAML does not split dotted keys; write it nested"),
])
def test_misspelled_and_misplaced_sections(tmp_path, written, message):
    project = project_at(tmp_path)
    write_yaml(tmp_path / "experiments" / "e1.yaml", written)
    assert message in error_of(project, "e1")


@pytest.mark.parametrize("word, fix", [
    ("epochs=3", "epochs belongs in train: train.epochs=3"),
    ("img_size=64", "img_size belongs in data: data.img_size=64"),
    ("seed=1", "seed is a key of folds and of train"),
    ("nonsense=1", "expected section.key=value, e.g. train.epochs=3"),
])
def test_an_override_without_its_section_is_told_the_section(tmp_path, word, fix):
    project = project_at(tmp_path)
    write_yaml(tmp_path / "experiments" / "e1.yaml", {"description": "x"})
    assert fix in error_of(project, "e1", [word])


# Where the bad key is written -> how the error must start. Each file has the bad key on line 3.
BAD_KEYS = [
    ("train", "epochs", "three", "`train.epochs`: expected int"),
    ("train", "lr", 50.0, "`train.lr`: 50.0 is out of range"),
    ("data", "augment", "forensics", "did you mean 'forensic'?"),
    ("train", "img_size", 64, "belongs in data: data.img_size"),
    ("model", "epocs", 3, "did you mean `train.epochs`?"),
]


def write_with_bad_key(path: Path, section: str, key: str, value, base: str = "") -> None:
    """A YAML file with the bad key on line 3 (after `base:` or `description:` and the section line)."""
    first = f"base: {base}" if base else "description: x"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{first}\n{section}:\n  {key}: {yaml.safe_dump(value).splitlines()[0]}\n")


@pytest.mark.parametrize("section, key, value, message", BAD_KEYS)
@pytest.mark.parametrize("where", ["competition.yaml", "base", "base of base", "experiment", "override"])
def test_the_error_names_the_file_and_line_that_set_the_bad_key(tmp_path, section, key, value, message, where):
    exps = tmp_path / "experiments"
    project = project_at(tmp_path)
    write_yaml(exps / "b2.yaml", {"description": "grandparent"})
    write_yaml(exps / "b1.yaml", {"base": "b2.yaml", "train": {"batch_size": 8}})
    write_yaml(exps / "e1.yaml", {"base": "b1.yaml", "train": {"patience": 2}})
    overrides = []
    target = {"competition.yaml": tmp_path / "competition.yaml", "base": exps / "b1.yaml",
              "base of base": exps / "b2.yaml", "experiment": exps / "e1.yaml"}.get(where)
    if where == "override":
        overrides = [f"{section}.{key}={value}"]
    else:
        write_with_bad_key(target, section, key, value, {"base": "b2.yaml", "experiment": "b1.yaml"}.get(where, ""))
    text = error_of(project, "e1", overrides)
    expected = f"override '{overrides[0]}' (on top of e1.yaml): " if overrides else f"{target}:3: "
    assert text.startswith(expected), text
    assert message in text


def test_a_cross_field_error_names_where_each_key_was_set(tmp_path):
    exps = tmp_path / "experiments"
    project = project_at(tmp_path)
    (exps).mkdir()
    (exps / "b1.yaml").write_text("description: base\ntrain:\n  min_lr: 0.01\n")
    (exps / "e1.yaml").write_text("base: b1.yaml\n")
    assert error_of(project, "e1", ["train.lr=1e-3"]).startswith(
        f"{exps / 'b1.yaml'}:3 and override 'train.lr=1e-3' (on top of e1.yaml): `train.min_lr: 0.01` is above `train.lr: 0.001`")
    (exps / "e1.yaml").write_text("base: b1.yaml\ntrain:\n  lr: 0.001\n")
    assert error_of(project, "e1").startswith(f"{exps / 'b1.yaml'}:3 and {exps / 'e1.yaml'}:3: ")
    (exps / "e1.yaml").write_text("description: x\ntrain:\n  epochs: 2\n  swa: true\n")
    assert error_of(project, "e1").startswith(f"{exps / 'e1.yaml'}:3: `train.swa_epochs: 3` is more than")


NUMBERS = [("1e-3", 0.001), ("5e-4", 0.0005), ("1E-3", 0.001), ("3E-4", 0.0003), (".5", 0.5), ("+0.5", 0.5),
           ("1.5e-2", 0.015), ("2.", 2.0), ("1", 1.0), ("+1", 1.0)]


@pytest.mark.parametrize("text, value", NUMBERS)
@pytest.mark.parametrize("via", ["experiment", "competition.yaml", "override"])
def test_yaml_1_2_numbers_are_numbers(tmp_path, text, value, via):
    project = project_at(tmp_path)
    exp = tmp_path / "experiments" / "e1.yaml"
    exp.parent.mkdir()
    exp.write_text(f"train:\n  lr: {text}\n  min_lr: 0\n" if via == "experiment" else "description: x\n")
    overrides = ["train.min_lr=0"]
    if via == "competition.yaml":
        (tmp_path / "competition.yaml").write_text(f"train:\n  lr: {text}\n")
    if via == "override":
        overrides.append(f"train.lr={text}")
    cfg = load_config("e1", overrides, project, check_model=False)
    assert cfg.train.lr == pytest.approx(value) and isinstance(cfg.train.lr, float)


@pytest.mark.parametrize("text, value", [("+3", 3), ("3", 3), ("017", 17), ("1e1", 10), ("2.0", 2), ("0x3", 3)])
def test_integer_spellings(tmp_path, text, value):
    project = project_at(tmp_path)
    write_yaml(tmp_path / "experiments" / "e1.yaml", {"description": "x"})
    cfg = load_config("e1", [f"train.epochs={text}"], project, check_model=False)
    assert cfg.train.epochs == value and isinstance(cfg.train.epochs, int)


@pytest.mark.parametrize("text", ["2.5", "1e-1", "yes", "1_0"])
def test_non_integers_are_still_refused_for_counts(tmp_path, text):
    project = project_at(tmp_path)
    write_yaml(tmp_path / "experiments" / "e1.yaml", {"description": "x"})
    assert "`train.epochs`: expected int" in error_of(project, "e1", [f"train.epochs={text}"])


def test_words_stay_words(tmp_path):
    """YAML 1.1 reads on/off as booleans, 1:30 as 90 and a date as a date; here they are text."""
    project = project_at(tmp_path)
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "e1.yaml").write_text("description: 2024-01-01\ntrain:\n  amp: off\n")
    cfg = load_config("e1", ["competition.slug=1:30", "data.crop_cache=on"], project, check_model=False)
    assert (cfg.description, cfg.train.amp, cfg.competition.slug, cfg.data.crop_cache) == (
        "2024-01-01", "off", "1:30", "on")


EMPTY = {"empty": "", "blank": "  \n\n   \n", "comments": "# nothing yet\n  # still nothing\n", "null": "~\n"}
NOT_MAPPING = {"list": "- train\n- epochs\n", "scalar": "exp001\n", "number": "42\n", "flow list": "[1, 2]\n"}


@pytest.mark.parametrize("content", list(EMPTY) + list(NOT_MAPPING))
@pytest.mark.parametrize("role", ["experiment", "base", "competition.yaml"])
def test_empty_or_non_mapping_files_are_refused_naming_the_file(tmp_path, content, role):
    project = project_at(tmp_path)
    exps = tmp_path / "experiments"
    write_yaml(exps / "e1.yaml", {"base": "b1.yaml"} if role == "base" else {"description": "x"})
    target = {"experiment": exps / "e1.yaml", "base": exps / "b1.yaml",
              "competition.yaml": tmp_path / "competition.yaml"}[role]
    target.write_text({**EMPTY, **NOT_MAPPING}[content])
    text = error_of(project, "e1")
    assert text.startswith(str(target))
    assert ("the file is empty" if content in EMPTY else "not a mapping of sections") in text
    if role == "base":
        assert "(the `base:` of e1.yaml)" in text


def test_an_explicit_empty_mapping_means_the_defaults(tmp_path):
    project = project_at(tmp_path)
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "e1.yaml").write_text("{}\n")
    assert load_config("e1", [], project, check_model=False).train.epochs == 10


@pytest.mark.parametrize("case", ["base key", "experiment key", "override", "empty experiment", "wrong section"])
def test_the_experiment_command_line_names_the_file(tmp_path, case):
    """Through `competition.experiment`: exit 2, one ERROR line naming the file:line or override at fault."""
    project_at(tmp_path)
    exps = tmp_path / "experiments"
    write_with_bad_key(exps / "b1.yaml", "train", "epochs", 3)
    write_with_bad_key(exps / "e1.yaml", "train", "batch_size", 4, base="b1.yaml")
    args, expected = ["e1"], ""
    if case == "base key":
        write_with_bad_key(exps / "b1.yaml", "train", "epochs", "many")
        expected = f"{exps / 'b1.yaml'}:3: `train.epochs`: expected int"
    elif case == "experiment key":
        write_with_bad_key(exps / "e1.yaml", "train", "batch_size", 0, base="b1.yaml")
        expected = f"{exps / 'e1.yaml'}:3: `train.batch_size`: 0 is out of range"
    elif case == "override":
        args, expected = ["e1", "model.epochs=2"], "override 'model.epochs=2' (on top of e1.yaml): `model.epochs` is not a key of model"
    elif case == "empty experiment":
        (exps / "e1.yaml").write_text("# to do\n")
        expected = f"{exps / 'e1.yaml'}: the file is empty"
    else:
        write_with_bad_key(exps / "e1.yaml", "train", "augment", "light", base="b1.yaml")
        expected = f"{exps / 'e1.yaml'}:3: `train.augment` is not a key of train; it belongs in data: data.augment"
    result = call_kit(tmp_path, "competition.experiment", *args, check=False)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and expected in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not (exps / "e1").exists()  # refused before anything was written


@pytest.mark.parametrize("comp_text, overrides, expected", [
    ("folds:\n  n_splits: 3\n  n_split: 4\n", [], "competition.yaml:3: unknown config key `folds.n_split`"),
    ("competition:\n  name: tiny\nn_splits: 4\n", [], "competition.yaml:3: `n_splits` is not a top-level key; "
                                                        "it belongs in folds: folds.n_splits"),
    ("", [], "competition.yaml: the file is empty"),
    ("- competition\n", [], "competition.yaml: the top level is a list"),
    ("folds:\n  seed: 1\n", ["folds.n_splits=1"], "override 'folds.n_splits=1' (on top of competition.yaml): `folds.n_splits`: 1 is out of range"),
    ("folds:\n  seed: 1\n", ["n_splits=4"], "n_splits belongs in folds: folds.n_splits=4"),
])
def test_the_folds_command_line_names_the_file(tmp_path, comp_text, overrides, expected):
    """Through `competition.folds` (competition.yaml + overrides only)."""
    (tmp_path / "competition.yaml").write_text(comp_text)
    result = call_kit(tmp_path, "competition.folds", *overrides, check=False)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and expected in errors[0], result.stderr[-2000:]
    assert not (tmp_path / "folds").exists()


@pytest.mark.parametrize("base", ["missing.yaml", "missing", "../elsewhere/b1.yaml"])
def test_a_base_that_does_not_exist_is_named_at_its_line(tmp_path, base):
    project = project_at(tmp_path)
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "e1.yaml").write_text(f"description: x\nbase: {base}\n")
    text = error_of(project, "e1")
    assert text.startswith(f"{tmp_path / 'experiments' / 'e1.yaml'}:2: `base: {base}` names ") and "does not exist" in text


@pytest.mark.parametrize("text", ["1e3", "off", "017", ".5", "2024-01-01", "1:30", "+1", "true"])
def test_saved_text_that_looks_like_a_number_reads_back_as_text(tmp_path, text):
    """save_config quotes what YAML 1.1 or 1.2 would read as a number/boolean: the saved run reloads the same."""
    from competition.config import Config, load_saved_config, replace, save_config

    cfg = replace(Config(name="e1"), competition={"slug": text}, train={"amp": "off"})
    save_config(cfg, tmp_path / "config.yaml")
    assert load_saved_config(tmp_path / "config.yaml") == cfg
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["competition"]["slug"] == text
