"""The notebook API (competition.notebook.Kit): the stages' own functions as methods returning tables; every refusal
raised (never SystemExit) with the one line the stage's CLI prints; and docs/quickstart.ipynb, executed cell by cell.

Refusals are generated: spellings of unknown experiments, bad overrides, missing project folders and bad option
values, each crossed with the Kit methods that take them, and compared with the CLI's own line for the same input.
"""

from __future__ import annotations

import inspect
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from competition import notebook
from competition.errors import KitError
from competition.notebook import Kit, UsageError
from tests.conftest import REPO, call_kit, make_competition, no_report, smoke_experiment

NOTEBOOK = REPO / "docs" / "quickstart.ipynb"


def cli_line(home: Path, module: str, *argv: str) -> str:
    """The one line a stage's CLI printed when it refused argv (the ERROR log line's message, or argparse's line)."""
    result = call_kit(home, module, *argv, check=False)
    assert result.returncode == 2, f"{module} {argv} did not refuse: {result}"
    line = [text for text in result.stderr.splitlines() if text.strip()][-1]
    return line.split(" ERROR competition: ", 1)[-1]


def kit_error(call, kind: type[Exception] = KitError) -> str:
    """The message of the KitError a Kit call raised (a SystemExit would escape pytest.raises and fail the test)."""
    with pytest.raises(kind) as caught:
        call()
    assert "\n" not in str(caught.value)
    return str(caught.value)


@pytest.fixture
def project(home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The tiny competition with one (untrained) experiment `tiny1`, the current folder there as call_kit has it."""
    smoke_experiment(home, "tiny1")
    monkeypatch.chdir(home)
    return home


def as_stage(monkeypatch: pytest.MonkeyPatch, stage: str) -> None:
    """argparse names the program as `python -m competition.<stage>` does (prog = <stage>.py)."""
    monkeypatch.setattr(sys, "argv", [str(REPO / "competition" / f"{stage}.py")])


# --- unknown experiments: spellings x the methods that take an experiment, against the CLI that takes it -----------

SPELLINGS = ["nope", "Nope.yaml", "experiments/nope.yaml", "../tiny1", "http://example.com/exp001.yaml", "exp 1",
             "nope/"]
EXPERIMENT_METHODS = {  # method: (Kit call, CLI module, CLI argv)
    "run": (lambda kit, name: kit.run(name), "competition.experiment", lambda name: [name]),
    "ensemble": (lambda kit, name: kit.ensemble([name]), "competition.ensemble", lambda name: [name]),
    "predict": (lambda kit, name: kit.predict(name, ["data"]), "competition.predict", lambda name: [name, "data"]),
}


@pytest.mark.parametrize("spelling", SPELLINGS)
@pytest.mark.parametrize("method", sorted(EXPERIMENT_METHODS))
def test_unknown_experiment_raises_the_clis_line(project, spelling, method):
    call, module, argv = EXPERIMENT_METHODS[method]
    assert kit_error(lambda: call(Kit(project), spelling)) == cli_line(project, module, *argv(spelling))


@pytest.mark.parametrize("spelling", SPELLINGS)
@pytest.mark.parametrize("method", ["oof", "predictions"])
def test_unknown_experiment_tables_are_refused_by_name(project, spelling, method):
    message = kit_error(lambda: getattr(Kit(project), method)(spelling))
    assert spelling.strip("/") in message or Path(spelling).stem in message


# --- bad overrides: spellings x the methods that take overrides ----------------------------------------------------

BAD_OVERRIDES = ["epochs=1", "train.epochs", "train.epoch=1", "train.epochs=-1", "train.epochs=abc", "=1",
                 "folds.n_splits=1"]
OVERRIDE_METHODS = {  # method: (Kit call, CLI module, CLI argv) - the CLI whose message the Kit's must equal
    "run": (lambda kit, o: kit.run("tiny1", overrides=o), "competition.experiment", lambda o: ["tiny1", o]),
    "folds": (lambda kit, o: kit.folds(overrides=o), "competition.folds", lambda o: [o]),
    "submit": (lambda kit, o: kit.submit("nope.csv", overrides=o), "competition.submit", lambda o: ["nope.csv", o]),
    # ensemble's CLI reads a word that is not section.key=value as a member: its overrides load as folds' do
    "ensemble": (lambda kit, o: kit.ensemble(["tiny1"], overrides=o), "competition.folds", lambda o: [o]),
    "config": (lambda kit, o: kit.config(overrides=o), "competition.folds", lambda o: [o]),
}


@pytest.mark.parametrize("override", BAD_OVERRIDES)
@pytest.mark.parametrize("method", sorted(OVERRIDE_METHODS))
def test_bad_override_raises_the_clis_line(project, override, method):
    call, module, argv = OVERRIDE_METHODS[method]
    assert kit_error(lambda: call(Kit(project), [override])) == cli_line(project, module, *argv(override))


@pytest.mark.parametrize("overrides", [{"train.epochs": -1}, {"train.epochs": "abc"}, {"train.epoch": 1},
                                       {"epochs": 1}, {"train.epochs": None}], ids=str)
def test_overrides_as_a_dict_are_the_same_words(project, overrides):
    (key, value), = overrides.items()
    word = f"{key}={json.dumps(value)}"  # a str value stays a str: quoted for the YAML reader
    assert kit_error(lambda: Kit(project).run("tiny1", overrides=overrides)) == \
        cli_line(project, "competition.experiment", "tiny1", word)


# --- missing or unusable project folders x every method ------------------------------------------------------------

def make_folder(tmp_path: Path, kind: str) -> str:
    """A KIT_HOME spelling that names no usable project folder."""
    if kind == "file":
        (tmp_path / "a_file").write_text("x")
        return str(tmp_path / "a_file")
    if kind == "no-yaml":
        (tmp_path / "empty").mkdir()
        return "empty"  # relative: to the current folder, as KIT_HOME is
    return {"missing": str(tmp_path / "nowhere"), "relative": "nowhere/project", "tilde": "~nobody_kit_xyz/p"}[kind]


ALL_METHODS = {"folds": lambda kit: kit.folds(), "run": lambda kit: kit.run("tiny1"),
               "ensemble": lambda kit: kit.ensemble(["tiny1"]), "leaderboard": lambda kit: kit.leaderboard(),
               "oof": lambda kit: kit.oof("tiny1"), "predictions": lambda kit: kit.predictions("tiny1"),
               "predict": lambda kit: kit.predict("tiny1", ["x.png"]), "submit": lambda kit: kit.submit("x")}


@pytest.mark.parametrize("kind", ["missing", "relative", "file", "tilde", "no-yaml"])
@pytest.mark.parametrize("method", sorted(ALL_METHODS))
def test_unusable_project_folder_raises_what_kit_home_would_naming_kit_project(tmp_path, monkeypatch, caplog, kind,
                                                                              method):
    monkeypatch.chdir(tmp_path)
    folder = make_folder(tmp_path, kind)
    message = kit_error(lambda: ALL_METHODS[method](Kit(folder)))
    monkeypatch.setenv("KIT_HOME", folder)
    from competition.folds import main

    with caplog.at_level(logging.ERROR, logger="competition"):
        assert main([], project=None) == 2
    home_message = caplog.records[-1].getMessage()
    assert "KIT_HOME" not in message
    assert message == home_message.replace(f"KIT_HOME={folder!r}", f"Kit(project={folder!r})").replace(
        "point KIT_HOME at", "give").replace("or unset it to use the kit's folder", "or None for the kit's folder")


# --- bad option values: the CLI's parser (or option type) refuses them, raised as UsageError with its line ----------

BAD_CHOICES = ["Mean", "bogus", "", "auto,mean", "rank!", "-x"]


@pytest.mark.parametrize("value", BAD_CHOICES)
@pytest.mark.parametrize("option", ["method", "calibrate"])
def test_bad_ensemble_choice_raises_the_parsers_line(project, monkeypatch, option, value):
    as_stage(monkeypatch, "ensemble")
    message = kit_error(lambda: Kit(project).ensemble(["tiny1"], **{option: value}), UsageError)
    assert message == cli_line(project, "competition.ensemble", "tiny1", f"--{option}", value)
    assert message.startswith("ensemble.py: error: argument")


@pytest.mark.parametrize("value", ["gpu", "cuda:x", "tpu", "cuda:0,1"])
@pytest.mark.parametrize("method, stage, argv", [("run", "experiment", ["tiny1"]), ("predict", "predict",
                                                                                    ["tiny1", "data"])])
def test_bad_device_raises_the_parsers_line(project, monkeypatch, value, method, stage, argv):
    as_stage(monkeypatch, stage)
    call = (lambda kit: kit.run("tiny1", device=value)) if method == "run" else \
        (lambda kit: kit.predict("tiny1", ["data"], device=value))
    assert kit_error(lambda: call(Kit(project)), UsageError) == \
        cli_line(project, f"competition.{stage}", *argv, "--device", value)


@pytest.mark.parametrize("folds", ["a", "-1", "0,0", "0,7"])
def test_bad_fold_list_raises_the_clis_line(project, monkeypatch, folds):
    as_stage(monkeypatch, "experiment")
    assert kit_error(lambda: Kit(project).run("tiny1", folds=folds)) == \
        cli_line(project, "competition.experiment", "tiny1", "--folds", folds)


@pytest.mark.parametrize("kind", ["Experiments", "blend", ""])
def test_bad_leaderboard_kind_is_refused(project, kind):
    assert "expected 'experiments'" in kit_error(lambda: Kit(project).leaderboard(kind), UsageError)


# --- one argument layer (notebook.normalise): wrong types x every parameter of every public method ----------------

VALID = {  # method: the smallest valid arguments (nothing trains: every case below is refused before any work)
    "config": {}, "folds": {}, "run": {"experiment": "tiny1"}, "ensemble": {"experiments": ["tiny1"]},
    "leaderboard": {}, "oof": {"experiment": "tiny1"}, "predictions": {"experiment": "tiny1"},
    "predict": {"model": "tiny1", "paths": ["data"]}, "submit": {"file": "nope.csv"},
}
WRONG = [3.5, object(), {1, 2}, b"tiny1"]  # no parameter of any kind takes these
WRONG_BY_KIND = {"flag": ["False", "True", "no", 0, 1, None, 2], "name": [5, ["tiny1"], {"a": 1}],
                 "text": [1, True, None], "list": [5, ["tiny1", 2], ("tiny1", None)], "overrides": [3, [1], {1: 2}],
                 "folds": [1.0, ["0"], [True]]}


def public_methods() -> list[str]:
    """Kit's public methods, read off the class (a new one is covered without editing this file)."""
    return sorted(n for n, f in inspect.getmembers(Kit, inspect.isfunction) if not n.startswith("_"))


def parameter_kind(name: str) -> str:
    """Which normalising rule a parameter falls under (a parameter under none fails the test)."""
    kinds = {**dict.fromkeys(notebook.BOOLS, "flag"), **dict.fromkeys(notebook.NAMES, "name"),
             **dict.fromkeys(notebook.TEXTS, "text"), **dict.fromkeys(notebook.LISTS, "list"),
             "overrides": "overrides", "folds": "folds"}
    return kinds[name]


CASES = [(m, p, v) for m in public_methods() for p in list(inspect.signature(getattr(Kit, m)).parameters)[1:]
         for v in WRONG + WRONG_BY_KIND[parameter_kind(p)]]


def test_every_public_method_has_valid_arguments_here():
    assert sorted(VALID) == public_methods()


@pytest.mark.parametrize("method, parameter, value", CASES, ids=lambda x: type(x).__name__ if not isinstance(
    x, str) else x)
def test_wrong_typed_argument_is_one_line_naming_the_parameter(project, method, parameter, value):
    kwargs = {**VALID[method], parameter: value}
    message = kit_error(lambda: getattr(Kit(project), method)(**kwargs), UsageError)
    assert parameter in message and "expected" in message
    if not isinstance(value, (list, tuple, dict)):  # a container's bad item is named by its own type
        assert type(value).__name__ in message


@pytest.mark.parametrize("method", sorted(VALID))
def test_unknown_keyword_is_one_line_naming_the_method(project, method):
    message = kit_error(lambda: getattr(Kit(project), method)(**{**VALID[method], "restrat": True}), UsageError)
    assert message.startswith(f"{method}: ") and "'restrat'" in message and f"help(Kit.{method})" in message


@pytest.mark.parametrize("value", ["False", "false", "0", 0, 1, None])
@pytest.mark.parametrize("method, parameter", [("run", "restart"), ("run", "ood"), ("folds", "force"),
                                               ("ensemble", "force"), ("submit", "dry_run"),
                                               ("predict", "allow_incomplete")])
def test_non_bool_flag_is_refused_before_anything_is_deleted(project, method, parameter, value):
    done = project / "experiments" / "tiny1"
    done.mkdir(parents=True, exist_ok=True)
    (done / "metrics.json").write_text('{"complete": true}')
    message = kit_error(lambda: getattr(Kit(project), method)(**{**VALID[method], parameter: value}), UsageError)
    assert message.startswith(f"{parameter}={value!r}: expected True or False, got {type(value).__name__}")
    assert (done / "metrics.json").read_text() == '{"complete": true}'


@pytest.mark.parametrize("folder, kind", [(123, "int"), (["p1"], "list"), (1.5, "float"), ({"p": 1}, "dict")])
def test_kit_of_a_non_path_names_kit_project(folder, kind):
    assert kit_error(lambda: Kit(folder), UsageError) == \
        f"Kit(project): expected a folder path (str or Path), got {kind}"


@pytest.mark.parametrize("folder", ["", "   ", "\t"])
def test_kit_of_a_blank_path_is_refused(folder):
    message = kit_error(lambda: Kit(folder), UsageError)
    assert message.startswith("Kit(project): empty path") and "KIT_HOME=" not in message


def test_kit_of_a_path_object_works(project):
    assert Kit(Path(project)).project.root == Kit(str(project)).project.root


# --- names: the same spelling behaves the same in every method --------------------------------------------------

NAME_SPELLINGS = ["tiny1 ", " tiny1", "\ttiny1 ", Path("tiny1")]
NAME_METHODS = {  # method: a Kit call that fails (or succeeds) the same way for any spelling of tiny1
    "config": lambda kit, n: kit.config(n).model.name,
    "run": lambda kit, n: kit_error(lambda: kit.run(n, overrides=["train.epochs=-1"])),
    "oof": lambda kit, n: kit_error(lambda: kit.oof(n)),
    "predictions": lambda kit, n: kit_error(lambda: kit.predictions(n)),
    "predict": lambda kit, n: kit_error(lambda: kit.predict(n, ["data"])),
    "ensemble": lambda kit, n: kit_error(lambda: kit.ensemble([n])),
}


@pytest.mark.parametrize("spelling", NAME_SPELLINGS, ids=repr)
@pytest.mark.parametrize("method", sorted(NAME_METHODS))
def test_name_spellings_behave_as_the_plain_name(project, method, spelling):
    kit = Kit(project)
    assert NAME_METHODS[method](kit, spelling) == NAME_METHODS[method](kit, "tiny1")


@pytest.mark.parametrize("method", ["oof", "predictions"])
def test_untrained_experiment_says_run_it_first_in_kit_words(project, method):
    message = kit_error(lambda: getattr(Kit(project), method)("tiny1"))
    assert "run it first: kit.run('tiny1')" in message and "--restart" not in message


def fake_blend(project: Path, name: str = "best") -> None:
    """submissions/<name>.csv + .json as ensemble writes them (the sidecar's fit is not needed by these tests)."""
    (project / "submissions").mkdir(exist_ok=True)
    (project / "submissions" / f"{name}.csv").write_text("id,label\nx,0\n")
    (project / "submissions" / f"{name}.json").write_text(json.dumps({"members": ["tiny1"], "method": "mean"}))


BLEND_SPELLINGS = ["best", "best.csv", "best.json", "submissions/best.csv", "submissions/best.json", " best ",
                   "best.CSV", Path("submissions/best.csv")]


@pytest.mark.parametrize("spelling", BLEND_SPELLINGS, ids=str)
@pytest.mark.parametrize("method", ["submit", "predict"])
def test_blend_spellings_name_the_same_blend(project, method, spelling):
    fake_blend(project)
    kit = Kit(project)
    call = {"submit": lambda n: kit.submit(n), "predict": lambda n: kit.predict(n, ["data"])}[method]
    assert kit_error(lambda: call(spelling)) == kit_error(lambda: call("submissions/best.json" if method == "predict"
                                                                        else "submissions/best.csv"))


@pytest.mark.parametrize("spelling", BLEND_SPELLINGS, ids=str)
@pytest.mark.parametrize("method", ["oof", "predictions", "ensemble", "run", "config"])
def test_blend_where_an_experiment_is_expected_says_it_is_a_blend(project, method, spelling):
    fake_blend(project)
    kit = Kit(project)
    call = {"oof": kit.oof, "predictions": kit.predictions, "ensemble": lambda n: kit.ensemble([n]), "run": kit.run,
            "config": kit.config}[method]
    message = kit_error(lambda: call(spelling), UsageError)
    assert message.startswith("`best` is a blend (submissions/best.json); use ") and "create" not in message


@pytest.mark.parametrize("name", ["--force", "-x", " --method", "-"])
@pytest.mark.parametrize("method, parameter", [("ensemble", "name"), ("ensemble", "experiments"), ("run", "experiment"),
                                               ("oof", "experiment"), ("predict", "model"), ("submit", "file")])
def test_names_starting_with_a_dash_are_refused_as_names(project, method, parameter, name):
    message = kit_error(lambda: getattr(Kit(project), method)(**{**VALID[method], parameter: name}), UsageError)
    assert "cannot start with '-'" in message and "expected one argument" not in message


@pytest.mark.parametrize("name", ["Best", "BEST", "bEsT.csv"])
def test_blend_name_differing_only_by_case_is_refused(project, name):
    fake_blend(project)
    assert "differs only by case" in kit_error(lambda: Kit(project).ensemble(["tiny1"], name=name), UsageError)


@pytest.mark.parametrize("kind, near", [("Blends", "blends"), ("BLEND", "blends"), ("Experiments", "experiments"),
                                        ("experiment", "experiments")])
def test_leaderboard_kind_did_you_mean(project, kind, near):
    assert f"did you mean {near!r}?" in kit_error(lambda: Kit(project).leaderboard(kind), UsageError)


# --- dict overrides: str values are strings, the rest keep their type -------------------------------------------

@pytest.mark.parametrize("key, value, read", [
    ("competition.slug", "2024", lambda c: c.competition.slug), ("competition.slug", "null", lambda c: c.competition.slug),
    ("competition.slug", "true", lambda c: c.competition.slug), ("competition.slug", "1e3", lambda c: c.competition.slug),
    ("train.epochs", 3, lambda c: c.train.epochs), ("train.lr", 0.5, lambda c: c.train.lr)])
@pytest.mark.parametrize("method", ["config", "run_config"])
def test_dict_override_values_keep_their_python_type(project, key, value, read, method):
    kit = Kit(project)
    cfg = kit.config("tiny1" if method == "run_config" else "", {key: value})
    assert read(cfg) == value and type(read(cfg)) is type(value)


def test_ensemble_prints_nothing_on_stdout(project, monkeypatch, capsys):
    def blend(*args, **kwargs):  # the stage prints its score table, as the CLI does
        print("METHOD TABLE")
        return {"method": "mean", "methods_tried": []}

    monkeypatch.setattr("competition.ensemble.blend_experiments", blend)
    frame = Kit(project).ensemble(["tiny1"], name="quiet")
    assert "METHOD TABLE" not in capsys.readouterr().out and frame.attrs["method"] == "mean"


# --- import cost, logging ------------------------------------------------------------------------------------------

def test_import_competition_loads_no_torch():
    code = ("import sys, competition; assert 'torch' not in sys.modules, 'import competition loaded torch'; "
            "from competition import Kit; print(Kit.__module__, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["competition.notebook", "False"]


def test_unknown_package_attribute_is_an_attribute_error():
    import competition

    with pytest.raises(AttributeError, match="Kitt"):
        competition.Kitt  # noqa: B018


def test_kit_sets_up_logging_once(project):
    root = logging.getLogger()
    saved = list(root.handlers)
    for handler in saved:
        root.removeHandler(handler)
    try:
        Kit(project)
        first = list(root.handlers)
        Kit(project)
        Kit(project)
        assert root.handlers == first and len(first) == 1
        assert logging.getLogger("competition").getEffectiveLevel() == logging.INFO
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved:
            root.addHandler(handler)


# --- the shared trained run: tables equal the files on disk, and the CLIs' outputs -------------------------------

def read_table(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"id": str, "error": str, "group": str}, keep_default_na=False)


@pytest.mark.slow  # trained_project: the shared tiny run (trained once per test run)
def test_tables_equal_the_files_on_disk(trained_project, monkeypatch):
    home = trained_project
    monkeypatch.chdir(home)
    kit = Kit(home)
    pd.testing.assert_frame_equal(kit.oof("done"), read_table(home / "experiments/done/oof.csv"), check_dtype=False)
    pd.testing.assert_frame_equal(kit.predictions("experiments/done.yaml"),
                                  read_table(home / "experiments/done/test.csv"), check_dtype=False)
    pd.testing.assert_frame_equal(kit.folds(), read_table(kit.project.folds_file(kit.config())), check_dtype=False)
    board = kit.leaderboard()
    rows = [line for line in (home / "experiments/LEADERBOARD.md").read_text().splitlines() if line.startswith("| 1 ")]
    assert list(board["experiment"]) == ["done"] and len(rows) == 1 and "| done |" in rows[0]
    metrics = json.loads((home / "experiments/done/metrics.json").read_text())
    assert board.loc[0, "OOF score"] == pytest.approx(metrics["oof_score"], abs=1e-5)
    assert kit.leaderboard("blends").empty


@pytest.mark.slow  # trained_project
def test_ensemble_and_submit_match_the_cli(trained_project, monkeypatch):
    home = trained_project
    monkeypatch.chdir(home)
    kit = Kit(home)
    scores = kit.ensemble(["done"], method="mean")
    csv = scores.attrs["csv"]
    sidecar = json.loads(csv.with_suffix(".json").read_text())
    assert csv == home / "submissions" / "blend_done_mean.csv" and csv.is_file()
    assert list(scores["method"]) == [m["method"] for m in sidecar["methods_tried"]] == ["mean"]
    assert scores.loc[0, "nested_mean"] == pytest.approx(sidecar["nested"]["mean"]) and scores.loc[0, "chosen"]
    call_kit(home, "competition.ensemble", "done", "--method", "mean", "--name", "by_cli")
    pd.testing.assert_frame_equal(read_table(csv), read_table(home / "submissions" / "by_cli.csv"))
    assert set(kit.leaderboard("blends")["submission"]) == {"blend_done_mean.csv", "by_cli.csv"}
    assert kit.submit("blend_done_mean") == "dry run: validated, not uploaded"
    assert kit.submit(csv) == "dry run: validated, not uploaded"


@pytest.mark.slow  # trained_project
def test_predict_matches_the_cli(trained_project, monkeypatch):
    home = trained_project
    monkeypatch.chdir(home)
    frame = Kit(home).predict("done", ["data/test_data_v2"], device="cpu")
    call_kit(home, "competition.predict", "done", "data/test_data_v2", "--csv", "by_cli.csv", "--device", "cpu")
    saved = read_table(home / "by_cli.csv")
    assert len(frame) == 12 and list(frame["path"]) == list(saved["path"])
    np.testing.assert_allclose(frame["prob"], saved["prob"], rtol=1e-6)
    assert list(frame["label"]) == list(saved["label"])


# --- the quick-start notebook, executed cell by cell ----------------------------------------------------------------

def code_cells(path: Path) -> list[str]:
    """The source of each code cell of an nbformat 4 notebook, in order."""
    book = json.loads(path.read_text())
    assert book["nbformat"] == 4 and {"cells", "metadata", "nbformat_minor"} <= set(book)
    return ["".join(cell["source"]) for cell in book["cells"] if cell["cell_type"] == "code"]


def test_quickstart_is_a_notebook_with_markdown_and_code():
    book = json.loads(NOTEBOOK.read_text())
    kinds = [cell["cell_type"] for cell in book["cells"]]
    assert kinds.count("markdown") >= 3 and kinds.count("code") >= 5
    for source in code_cells(NOTEBOOK):
        compile(source, str(NOTEBOOK), "exec")  # every code cell is valid Python


@pytest.mark.slow  # trains the tiny experiment (2 folds x 1 epoch, 32 px)
def test_quickstart_notebook_runs_on_the_tiny_competition(tmp_path, monkeypatch, capsys):
    home = make_competition(tmp_path / "project")
    smoke_experiment(home, "quick")
    monkeypatch.setenv("KIT_HOME", str(home))
    monkeypatch.setenv("KIT_EXPERIMENT", "quick")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    with no_report():
        for source in code_cells(NOTEBOOK):
            exec(compile(source, str(NOTEBOOK), "exec"), namespace)  # noqa: S102 - the notebook is the test
    assert namespace["kit"].project.root == home.resolve()
    assert (home / "experiments/quick/metrics.json").is_file() and namespace["metrics"]["complete"]
    assert list(namespace["board"]["experiment"]) == ["quick"]
    assert namespace["scores"].attrs["csv"].is_file()
    assert len(namespace["preds"]) == 4 and set(namespace["preds"]["label"]) <= {0, 1}
    assert "refused: experiment `no_such_experiment`" in capsys.readouterr().out
