"""Results show what is submitted and re-reading a finished run keeps its recorded settings (s9 findings 2, 7, 9, 4c):
one test-like column per run (leaderboard.test_like_column / test_like_result: the adapted one of a tta.adapt_bn run)
read by the leaderboard, ensemble and Kit; assemble keeps the folds' recorded tta.adapt_bn and every fix text repeats
the run's overrides (assemble.rerun_words); a blend member without the column is named with its fix; Kit takes numpy
values and words CLI flags as keywords. Fast: tests/fixtures/old_run (a finished run, no training)."""

from __future__ import annotations

import json
import logging
import shlex
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from competition.assemble import check_adaptation, overrides_between, rerun_words
from competition.config import load_config, load_saved_config
from competition.errors import DataError, KitError
from competition import leaderboard as lb  # its test_like_* functions are not tests
from competition.leaderboard import write_leaderboard
from competition.notebook import Kit, normalise, notebook_wording, python_value, to_overrides
from competition.project import Project
from tests.conftest import call_kit, make_competition
from tests.test_old_runs import old_run

RUN = "old001"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A project matching the old run's data (12 train images per class, its 8 test images), with two copies of it
    (old001, old002) and old001.yaml: the saved config with tta.adapt_bn false (the YAML a user keeps)."""
    home = make_competition(tmp_path, n_per_class=12, n_test=8)
    for name in (RUN, "old002"):
        old_run(home, "as saved", name)
    saved = yaml.safe_load((home / "experiments" / RUN / "config.yaml").read_text())
    exp = {s: v for s, v in saved.items() if s not in ("competition", "name")}
    exp.setdefault("tta", {})["adapt_bn"] = False
    (home / "experiments" / f"{RUN}.yaml").write_text(yaml.safe_dump(exp, sort_keys=False))
    return home


def edit_json(path: Path, change) -> None:
    """Apply change(dict) to a JSON file."""
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def with_test_like(home: Path, name: str, columns: tuple[str, ...], shifted: bool = False) -> dict:
    """Give a run's oof.csv the test-like columns and its metrics.json the matching keys; the metrics."""
    out = home / "experiments" / name
    oof = pd.read_csv(out / "oof.csv", dtype={"id": str})
    rng = np.random.default_rng(len(columns))
    for column in columns:
        oof[column] = np.clip(oof["prob"] + rng.normal(0, 0.05, len(oof)), 0, 1)
    oof.to_csv(out / "oof.csv", index=False)

    def change(m: dict) -> None:
        if "prob_test_like" in columns:
            m["oof_test_like"] = {"score": 0.52951, "gap": m["oof_score"] - 0.52951, "profile": {"shifted": shifted}}
        if "prob_test_like_adapted" in columns:
            m["adapt_bn"] = {"batchnorm_layers": 3, "oof_test_like": 0.52951, "oof_test_like_adapted": 0.48090,
                             "gain": -0.04861}
    edit_json(out / "metrics.json", change)
    return json.loads((out / "metrics.json").read_text())


# --- finding 2: one function decides a run's test-like column --------------------------------------------------

@pytest.mark.parametrize("columns, expected", [
    (("id", "prob", "prob_test_like", "prob_test_like_adapted"), "prob_test_like_adapted"),
    (("prob_test_like_adapted", "prob_test_like"), "prob_test_like_adapted"),
    (("id", "prob", "prob_test_like"), "prob_test_like"),
    (("id", "prob"), None), ((), None)])
def test_the_test_like_column_prefers_the_adapted_one(columns, expected):
    assert lb.test_like_column(columns) == expected
    assert lb.test_like_column(pd.DataFrame(columns=list(columns)).columns) == expected


@pytest.mark.parametrize("metric, greater", [("auc", True), ("accuracy", True), ("logloss", False)])
@pytest.mark.parametrize("adapted", [True, False])
@pytest.mark.parametrize("shifted", [True, False])
def test_the_test_like_result_is_the_submitted_one(metric, greater, adapted, shifted):
    metrics = {"metric": metric, "oof_score": 0.6, "oof_test_like": {"score": 0.5, "gap": 0.1 if greater else -0.1,
                                                                       "profile": {"shifted": shifted}}}
    if adapted:
        metrics["adapt_bn"] = {"oof_test_like": 0.5, "oof_test_like_adapted": 0.45}
    like = lb.test_like_result(metrics)
    assert like["adapted"] is adapted and like["shifted"] is shifted
    assert like["score"] == (0.45 if adapted else 0.5)
    assert like["gap"] == pytest.approx((0.6 - like["score"]) * (1 if greater else -1))
    cell = lb.test_like_cell(metrics)
    assert cell.startswith(f"{like['score']:.5f} (gap {like['gap']:+.4f}") and ("adapted" in cell) is adapted


@pytest.mark.parametrize("metrics", [{}, {"oof_test_like": None}, {"oof_test_like": {"score": None}},
                                     {"adapt_bn": {"oof_test_like_adapted": None}}, {"oof_test_like": "bad"}])
def test_runs_without_a_test_like_score_have_a_blank_cell(metrics):
    assert lb.test_like_result({"oof_score": 0.6, **metrics}) is None and lb.test_like_cell(metrics) == ""


@pytest.mark.parametrize("columns", [("prob_test_like",), ("prob_test_like", "prob_test_like_adapted")])
@pytest.mark.parametrize("shifted", [True, False])
def test_the_leaderboard_and_kit_show_the_submitted_score(home, columns, shifted):
    metrics = with_test_like(home, RUN, columns, shifted)
    board = write_leaderboard(Project(home)).read_text()
    adapted = "prob_test_like_adapted" in columns
    row = next(line for line in board.splitlines() if f"| {RUN} |" in line)
    shown = 0.48090 if adapted else 0.52951
    assert [c.strip() for c in row.strip("|").split("|")][5].startswith(f"{shown:.5f} (gap ")
    assert ("adapted)" in row) is adapted
    assert ("OOF test-like is the honest order" in board) is shifted
    table = Kit(home).leaderboard()
    mine = table[table["experiment"] == RUN].iloc[0]
    assert isinstance(mine["OOF test-like"], float) and mine["OOF test-like"] == pytest.approx(shown)
    assert mine["OOF test-like gap"] == pytest.approx(metrics["oof_score"] - shown, abs=1e-4)
    assert (mine["OOF test-like note"] == "adapted") is adapted
    assert pd.api.types.is_numeric_dtype(table["OOF score"]) and pd.api.types.is_numeric_dtype(table["OOF test-like"])
    assert Kit(home).oof(RUN).attrs["test_like"] == ("prob_test_like_adapted" if adapted else "prob_test_like")


# --- findings 2 and 9: a blend scores its members' submitted test-like columns, or names who lacks one ------------

@pytest.mark.parametrize("first, second, adapted, lacking", [
    (("prob_test_like",), ("prob_test_like",), [], []),
    (("prob_test_like", "prob_test_like_adapted"), ("prob_test_like",), [RUN], []),
    (("prob_test_like", "prob_test_like_adapted"), ("prob_test_like", "prob_test_like_adapted"), [RUN, "old002"], []),
    (("prob_test_like",), (), None, ["old002"]),
    (("prob_test_like", "prob_test_like_adapted"), (), None, ["old002"]),
    ((), ("prob_test_like",), None, [RUN])])
def test_a_blend_uses_each_members_submitted_column_or_names_the_lacking_one(home, first, second, adapted, lacking):
    with_test_like(home, RUN, first)
    with_test_like(home, "old002", second)
    result = call_kit(home, "competition.ensemble", RUN, "old002", "--method", "mean", "--name", "mix")
    side = json.loads((home / "submissions" / "mix.json").read_text())
    warned = [line for line in result.stderr.splitlines() if "nested test-like score not computed" in line]
    if lacking:
        assert side["nested_test_like"] is None and len(warned) == 1 and " WARNING " in warned[0]
        for name in lacking:
            assert f"`./run.sh assemble {name} data.test_like_oof=on`" in warned[0]
        assert all(f"assemble {n} " not in warned[0] for n in (RUN, "old002") if n not in lacking)
        return
    assert warned == [] and side["nested_test_like"]["adapted"] == adapted
    board = (home / "experiments" / "LEADERBOARD.md").read_text()
    cell = [c.strip() for c in next(line for line in board.splitlines() if "mix.csv" in line).strip("|").split("|")][7]
    assert cell.startswith(f"{side['nested_test_like']['mean']:.5f}") and ("adapted: " in cell) is bool(adapted)


def test_a_blend_of_members_without_any_column_says_so_quietly(home):
    result = call_kit(home, "competition.ensemble", RUN, "old002", "--method", "mean", "--name", "plain")
    line = next(line for line in result.stderr.splitlines() if "nested test-like score not computed" in line)
    assert " INFO " in line and "old001" in line and "old002" in line


@pytest.mark.parametrize("recorded", [{"tta": {"adapt_bn": True}}, {"tta": {"adapt_bn": True}, "train": {"epochs": 5}},
                                      {"data": {"test_like_oof": "off"}}])
def test_the_blend_fix_repeats_the_members_recorded_overrides(home, recorded):
    with_test_like(home, "old002", ("prob_test_like",))
    saved = yaml.safe_load((home / "experiments" / RUN / "config.yaml").read_text())
    for section, keys in recorded.items():
        saved.setdefault(section, {}).update(keys)
    (home / "experiments" / RUN / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    result = call_kit(home, "competition.ensemble", RUN, "old002", "--method", "mean", "--name", "fixme")
    line = next(line for line in result.stderr.splitlines() if "nested test-like score not computed" in line)
    command = line.split("`./run.sh assemble ")[1].split("`")[0]
    words = shlex.split(command)
    assert words[0] == RUN and words[-1] == "data.test_like_oof=on" and words.count("data.test_like_oof=on") == 1
    for section, keys in recorded.items():
        for key, value in keys.items():
            if f"{section}.{key}" != "data.test_like_oof":
                assert f"{section}.{key}={json.dumps(value)}" in words  # following the fix keeps the run's settings
    assert "data.test_like_oof=off" not in words


# --- finding 7: assemble keeps the run's recorded settings; fixes repeat its overrides ------------------------------

@pytest.mark.parametrize("base, run, expected", [
    ({"tta": {"adapt_bn": False}}, {"tta": {"adapt_bn": True}}, ["tta.adapt_bn=true"]),
    ({"train": {"epochs": 1, "lr": 0.1}}, {"train": {"epochs": 3, "lr": 0.1}}, ["train.epochs=3"]),
    ({"data": {"match_test": 0.0}}, {"data": {"match_test": 0.5}}, ["data.match_test=0.5"]),
    ({"tta": {"views": "none"}}, {"tta": {"views": "hflip"}}, ["tta.views=hflip"]),
    ({"model": {"name": "a"}}, {"model": {"name": "a b"}}, ["'model.name=a b'"]),
    ({"x": {"ks": []}}, {"x": {"ks": [0, 1]}}, ["'x.ks=[0,1]'"]), ({"train": {"folds": []}}, {"train": {"folds": [0]}}, []),
    ({"x": {"k": 1}}, {"x": {"k": 1}, "name": "other"}, []),
    ({"competition": {"data_dir": "data"}}, {"competition": {"data_dir": "/abs/data"}}, []),
    ({"train": {"device": "cpu", "threads": 1}}, {"train": {"device": "cuda", "threads": 4}}, []),
    ({"data": {"test_like_oof": "auto"}}, {"data": {"test_like_oof": "on"}}, ["data.test_like_oof=on"])])
def test_overrides_between_two_configs_are_shell_words(base, run, expected):
    assert overrides_between(base, run) == expected


def flags_of(home: Path, flags: list[bool]) -> list[dict]:
    """Fold results predicted with these tta.adapt_bn settings (result.json's adapt_bn key when adapted)."""
    return [{"fold": k, **({"adapt_bn": {"batchnorm_layers": 3}} if on else {})} for k, on in enumerate(flags)]


@pytest.mark.parametrize("overrides", [[], ["train.epochs=3"], ["train.epochs=3", "train.lr=0.05"]])
@pytest.mark.parametrize("config_says", [False, True])
def test_assemble_takes_the_folds_recorded_setting(home, overrides, config_says):
    cfg = load_config(RUN, overrides + [f"tta.adapt_bn={str(config_says).lower()}"], Project(home), check_model=False)
    out = home / "experiments" / RUN
    used = check_adaptation(cfg, out, [0, 1], flags_of(home, [not config_says] * 2))
    assert used.tta.adapt_bn is (not config_says)
    assert load_saved_config(out / "config.yaml").tta.adapt_bn is (not config_says)  # recorded for report/leaderboard
    assert check_adaptation(cfg, out, [0, 1], flags_of(home, [config_says] * 2)) is cfg


@pytest.mark.parametrize("overrides", [[], ["train.epochs=3"]])
@pytest.mark.parametrize("flags", [[True, False], [False, True]])
@pytest.mark.parametrize("config_says", [False, True])
def test_a_mix_of_folds_is_refused_with_a_fix_that_keeps_the_override(home, overrides, flags, config_says):
    words = overrides + ([] if not config_says else ["tta.adapt_bn=true"])
    cfg = load_config(RUN, words, Project(home), check_model=False)
    with pytest.raises(DataError) as err:
        check_adaptation(cfg, home / "experiments" / RUN, [0, 1], flags_of(home, flags))
    message = str(err.value)
    fix = shlex.split(message.split("run `./run.sh ")[1].split("`")[0])
    assert fix[0] == RUN and sorted(fix[1:]) == sorted(words)  # the run's overrides, in full
    assert "without --folds" in message and "\n" not in message


@pytest.mark.parametrize("extra", [(), ("data.test_like_oof=on",)])
def test_rerun_words_without_the_yaml_name_only_the_run(home, extra):
    (home / "experiments" / f"{RUN}.yaml").unlink()
    cfg = load_saved_config(home / "experiments" / RUN / "config.yaml")
    assert rerun_words(cfg, home / "experiments" / RUN, extra).split() == [RUN, *extra]


def test_assemble_command_keeps_an_adapted_run_adapted(home):
    out = home / "experiments" / RUN
    saved = yaml.safe_load((out / "config.yaml").read_text())
    saved.setdefault("tta", {})["adapt_bn"] = True
    (out / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    for k in (0, 1):
        edit_json(out / f"fold{k}" / "result.json", lambda r: r.update(adapt_bn={"batchnorm_layers": 3}))
    result = call_kit(home, "competition.experiment", RUN, "--assemble", "data.test_like_oof=off", check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "tta.adapt_bn=True (the run's recorded setting)" in result.stderr
    assert load_saved_config(out / "config.yaml").tta.adapt_bn is True
    assert "adapt_bn" in json.loads((out / "metrics.json").read_text())


# --- finding 4(c): Kit takes numpy values; its errors say the keyword, not the CLI flag -----------------------------

NUMPY_VALUES = [(np.True_, True), (np.False_, False), (np.float32(0.5), 0.5), (np.float16(0.25), 0.25),
                (np.float64(0.1), 0.1), (np.int64(2), 2), (np.int32(3), 3), (np.uint8(1), 1),
                (np.array([0, 1]), [0, 1]), ([np.int64(0), np.int64(1)], [0, 1])]


@pytest.mark.parametrize("value, plain", NUMPY_VALUES)
def test_numpy_values_read_as_python_values(value, plain):
    converted = python_value(value)
    assert converted == plain and type(converted) is type(plain)
    assert to_overrides({"train.epochs": value}) == [f"train.epochs={json.dumps(plain)}"]


@pytest.mark.parametrize("parameter, value, expected", [
    ("restart", np.True_, True), ("force", np.False_, False), ("dry_run", np.bool_(True), True),
    ("folds", np.int64(1), "1"), ("folds", [np.int64(0), np.int64(1)], "0,1"), ("folds", np.array([0, 1]), "0,1"),
    ("overrides", {"tta.adapt_bn": np.True_}, ["tta.adapt_bn=true"]),
    ("overrides", {"data.match_test": np.float32(0.5)}, ["data.match_test=0.5"])])
def test_every_parameter_takes_numpy_values(parameter, value, expected):
    assert normalise(parameter, value) == expected


@pytest.mark.parametrize("overrides, key, expected", [
    ({"tta.adapt_bn": np.True_}, ("tta", "adapt_bn"), True),
    ({"data.match_test": np.float32(0.5)}, ("data", "match_test"), 0.5),
    ({"train.epochs": np.int64(3)}, ("train", "epochs"), 3),
    ({"data.match_test": np.float64(0.25), "tta.adapt_bn": np.False_}, ("data", "match_test"), 0.25)])
def test_kit_config_takes_numpy_overrides(home, overrides, key, expected):
    cfg = Kit(home).config(RUN, overrides=overrides)
    assert getattr(getattr(cfg, key[0]), key[1]) == expected


@pytest.mark.parametrize("flag, keyword", [("--restart", "restart=True"), ("--force", "force=True"),
                                           ("--dry-run", "dry_run=True"), ("--ood", "ood=True")])
@pytest.mark.parametrize("template", ["start over with {flag} (on a training run)", "pass {flag}, or rename",
                                      "{flag}: refused"])
def test_flags_in_messages_become_keywords(flag, keyword, template):
    text = notebook_wording(template.format(flag=flag))
    assert keyword in text and flag not in text


@pytest.mark.parametrize("flag, keyword", [("--restart", "restart=True"), ("--force", "force=True")])
def test_flags_inside_a_quoted_command_stay_with_the_keyword_added(flag, keyword):
    text = notebook_wording(f"run `./run.sh exp1 {flag}` to start over")
    assert f"`./run.sh exp1 {flag}`" in text and f"{flag} is {keyword}" in text
    assert notebook_wording("--restarts and --forced are words") == "--restarts and --forced are words"


def test_a_kit_error_names_the_keyword_not_the_flag(home):
    with pytest.raises(KitError) as err:
        Kit(home).run(RUN, overrides={"train.epochs": np.int64(7)})  # changed config: refused before training
    assert "restart=True" in str(err.value) and "start over with --restart" not in str(err.value)


@pytest.mark.parametrize("flags", [[True, False], [False, True]])
@pytest.mark.parametrize("overrides", [[], ["tta.adapt_bn=true"], ["tta.adapt_bn=true", "data.test_like_oof=off"]])
def test_assemble_command_refuses_a_mix_with_a_fix_that_reproduces_the_run(home, flags, overrides):
    out = home / "experiments" / RUN
    for k, on in enumerate(flags):
        edit_json(out / f"fold{k}" / "result.json", lambda r, on=on: r.update(adapt_bn={"batchnorm_layers": 3}) if on
                  else r.pop("adapt_bn", None))
    result = call_kit(home, "competition.experiment", RUN, "--assemble", *overrides, check=False)
    assert result.returncode == 2
    error = next(line for line in result.stderr.splitlines() if " ERROR " in line)
    fix = shlex.split(error.split("run `./run.sh ")[1].split("`")[0])
    assert fix[0] == RUN and sorted(fix[1:]) == sorted(overrides)  # the run's overrides, in the config's order
