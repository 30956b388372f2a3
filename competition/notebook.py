"""The kit from a notebook (Kaggle, Jupyter): one `Kit` object whose methods are the command lines' stages.

    from competition import Kit
    kit = Kit()                          # $KIT_HOME, else this checkout; or Kit("path/to/project")
    kit.folds()                          # DataFrame: id, label, fold, ...
    kit.run("exp012", overrides={"train.epochs": 1})   # trains (resumes); the metrics dict
    kit.ensemble(["exp010", "exp012"])   # DataFrame of the methods' scores; .attrs["csv"] is the submission
    kit.leaderboard()                    # DataFrame ranked like experiments/LEADERBOARD.md

Every method calls the functions the CLI of that stage calls (no subprocess, no second implementation) and
returns tables instead of printing them. A mistake raises the KitError the CLI would have printed as its one
ERROR line (same message); a bad option value, which the CLI's argparse refuses with exit 2, raises UsageError
carrying the CLI's one line. Nothing here exits the interpreter.
"""

from __future__ import annotations

import functools
import inspect
import io
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from competition import cli, options
from competition.config import (
    Config,
    ConfigError,
    is_override,
    load_config,
    override_error,
)
from competition.errors import DataError, KitError
from competition.paths import canonical, experiment_arg, user_path
from competition.project import NAME, Project, home_folder

F = TypeVar("F", bound=Callable[..., Any])
Overrides = Mapping[str, Any] | Iterable[str] | str | None


class UsageError(ConfigError):
    """An argument the stage's command line would have refused while parsing (argparse's exit 2), as one line."""


BOOLS = ("restart", "ood", "force", "dry_run", "allow_incomplete")  # flags: a real bool only, never "False" or 0
NAMES = ("experiment", "model", "name", "file")  # a name or path: str or Path, stripped, never an option ("-x")
TEXTS = ("method", "calibrate", "device", "kind", "message")  # a str, stripped (the stage checks its choices)
LISTS = {"experiments": "experiment names", "paths": "image files or folders"}  # one name/path, or a list of them


def refuse(parameter: str, value: Any, expected: str) -> UsageError:
    """The one-line refusal of a Kit argument: the parameter, the value's type (and value) and what it takes."""
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    return UsageError(f"{parameter}={shown}: expected {expected}, got {type(value).__name__}")


def as_flag(parameter: str, value: Any) -> bool:
    """True/False only: "False" (truthy) or 0 (dry_run=0 would upload) is refused, never guessed."""
    if isinstance(value, bool):
        return value
    raise refuse(parameter, value, "True or False")


def as_text(parameter: str, value: Any, name: bool = False) -> str:
    """A str (or, for a name or path, a Path) stripped of surrounding spaces; a name may not start with '-'."""
    if isinstance(value, str) or (name and isinstance(value, os.PathLike)):
        text = str(value).strip()
        if name and text.startswith("-"):
            raise UsageError(f"{parameter}={value!r}: a name cannot start with '-' (options are the method's "
                             f"keyword arguments, e.g. force=True) - pass a plain name")
        return text
    raise refuse(parameter, value, "a name or path (str or Path)" if name else "a str")


def as_words(parameter: str, value: Any) -> list[str]:
    """One name/path, or a list/tuple of them, as stripped strings."""
    if isinstance(value, (str, os.PathLike)):
        return [as_text(parameter, value, name=True)]
    if isinstance(value, (list, tuple)):
        return [as_text(f"{parameter}[{i}]", item, name=True) for i, item in enumerate(value)]
    raise refuse(parameter, value, f"{LISTS[parameter]}: a str, a Path or a list of them")


def as_folds(value: Any) -> str:
    """Fold numbers as the CLI's --folds text: "0,2", 1 or [0, 2]."""
    if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
        return str(value).strip()
    if isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return ",".join(map(str, value))
    raise refuse("folds", value, "fold numbers: an int, a list of ints or text such as '0,2'")


def python_value(value: Any) -> Any:
    """numpy scalars and arrays (np.True_, np.float32(.5), np.int64(2)), also inside lists, tuples and dicts, as the
    Python values they hold, so that every parameter and override takes them like bool/float/int."""
    if isinstance(value, np.floating) and value.dtype.itemsize < 8:
        return float(str(value))  # np.float32(.1) is 0.1, not 0.10000000149011612
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return type(value)(python_value(v) for v in value)
    if isinstance(value, Mapping):
        return {python_value(k): python_value(v) for k, v in value.items()}
    return value


def notebook_wording(message: str) -> str:
    """A stage's message as a notebook user acts on it: a flag told outside a command line (`--restart`) becomes the
    method's keyword (restart=True); inside a quoted `./run.sh ...` command it stays, with the keyword added after."""
    parts, told = message.split("`"), []
    for flag in BOOLS:
        option, keyword = f"--{flag.replace('_', '-')}", f"{flag}=True"
        for i in range(0, len(parts), 2):  # outside backticks
            parts[i] = re.sub(rf"{option}\b(?![-\w])", keyword, parts[i])
        if any(re.search(rf"{option}\b(?![-\w])", parts[i]) for i in range(1, len(parts), 2)):
            told.append(f"{option} is {keyword}")
    text = "`".join(parts)
    return text + (f" (in the notebook: {', '.join(told)})" if told else "")


def normalise(parameter: str, value: Any) -> Any:
    """One Kit argument checked and converted by its parameter's kind (the single layer every method goes through)."""
    value = python_value(value)
    if parameter in BOOLS:
        return as_flag(parameter, value)
    if parameter in NAMES or parameter in TEXTS:
        return as_text(parameter, value, name=parameter in NAMES)
    if parameter in LISTS:
        return as_words(parameter, value)
    if parameter == "overrides":
        return to_overrides(value)
    if parameter == "folds":
        return as_folds(value)
    return value


def catch_exit(method: F) -> F:
    """A Kit method whose arguments all go through `normalise` first, and that never exits: a SystemExit from a
    stage becomes a UsageError (KitErrors propagate as is) and it prints nothing on stdout (tables are returned)."""
    signature = inspect.signature(method)

    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as err:
            raise UsageError(f"{method.__name__}: {err} - see help(Kit.{method.__name__})") from None
        bound.apply_defaults()
        values = {k: v if k == "self" else normalise(k, v) for k, v in bound.arguments.items()}
        try:
            with redirect_stdout(io.StringIO()):
                return method(**values)
        except KitError as err:  # the stage's one line, its CLI flags told as this method's keywords
            if err.args and isinstance(err.args[0], str):
                err.args = (notebook_wording(err.args[0]), *err.args[1:])
            raise
        except SystemExit as stop:
            raise UsageError(f"{method.__name__}: the stage stopped (exit {stop.code}) - see the log above") from None
    return call  # type: ignore[return-value]


def parse_argv(parser: Any, argv: list[str], stage: str) -> Any:
    """The CLI's own parser on an argv built from the method's arguments; its one-line refusal (printed, then
    SystemExit 2) raised as UsageError with that line, naming the stage as `python -m competition.<stage>` does."""
    parser.prog, err = f"{stage}.py", io.StringIO()
    try:
        with redirect_stderr(err):
            return parser.parse_args(argv)
    except SystemExit:
        lines = [line for line in err.getvalue().splitlines() if line.strip()]
        raise UsageError(lines[-1] if lines else f"{stage}.py: error: bad arguments {argv}") from None


def check_option(kind: options.Option, value: Any, flag: str, stage: str) -> Any:
    """value checked by the option type the stage's CLI declares for `flag`; a refusal is that CLI's one line."""
    try:
        return kind(str(value))
    except Exception as err:  # noqa: BLE001 - argparse's ArgumentTypeError / ValueError, worded as KitParser does
        raise UsageError(f"{stage}.py: error: argument {flag}: {' '.join(str(err).split())} "
                         f"(see {stage}.py --help)") from None


def to_overrides(overrides: Overrides) -> list[str]:
    """`{"train.epochs": 1}` or ["train.epochs=1"] -> ["train.epochs=1"], each checked as the CLI checks them; a
    dict's str values stay strings (quoted for the YAML reader: {"competition.slug": "2024"} is the text 2024)."""
    if overrides is None:
        return []
    if isinstance(overrides, str):
        words = [overrides]
    elif isinstance(overrides, Mapping):
        bad_keys = [key for key in overrides if not isinstance(key, str)]
        if bad_keys:
            raise refuse("overrides key", bad_keys[0], "a 'section.key' str")
        words = [f"{key.strip()}={json.dumps(python_value(value))}" for key, value in overrides.items()]
    elif isinstance(overrides, (list, tuple)):
        words = [as_text(f"overrides[{i}]", word) for i, word in enumerate(overrides)]
    else:
        raise refuse("overrides", overrides, "a dict {'section.key': value}, a list of 'section.key=value' or None")
    bad = [word for word in words if not is_override(word)]
    if bad:
        raise override_error(bad[0])
    return words


def open_project(folder: str | Path | Project | None) -> Project:
    """The project folder: $KIT_HOME / this checkout (None), else the folder given, refused (naming Kit(project))
    when it is no folder path, blank, missing or without competition.yaml."""
    if isinstance(folder, Project):
        return folder
    if folder is None:
        project = Project.from_env()
    elif not isinstance(folder, (str, os.PathLike)):
        raise UsageError(f"Kit(project): expected a folder path (str or Path), got {type(folder).__name__}")
    elif not str(folder).strip():
        raise UsageError("Kit(project): empty path - give the project folder, or None for $KIT_HOME / this checkout")
    else:
        try:
            project = Project(home_folder(str(folder)), from_home=True)
        except KitError as err:
            text = str(err).replace(f"KIT_HOME={str(folder)!r}", f"Kit(project={str(folder)!r})")
            raise type(err)(text.replace("point KIT_HOME at", "give")
                            .replace("or unset it to use the kit's folder", "or None for the kit's folder")) from None
    project.competition_yaml()  # a project folder without competition.yaml is refused now, not at the first call
    return project


def blend_sidecar(text: str, project: Project) -> Path | None:
    """submissions/<name>.json when text names a blend (best, best.csv, best.json, submissions/best.csv) rather
    than an experiment; None otherwise."""
    from competition.ensemble import KIT_SUFFIXES

    folder, _, name = canonical(text).rpartition("/")
    if folder and os.path.normpath(folder) != project.submissions.name and Path(os.path.abspath(folder)) != \
            project.submissions.resolve():
        return None
    while (suffix := next((x for x in KIT_SUFFIXES if name.lower().endswith(x) and len(name) > len(x)), "")):
        name = name[: -len(suffix)]
    sidecar = project.submissions / f"{name}.json"
    if not name or not sidecar.is_file() or (name == text and (project.experiments / f"{name}.yaml").is_file()):
        return None
    return sidecar


AS_MODEL = "kit.predict('{name}', paths) to predict with it, or name one of its members (see {folder}/{name}.json)"


def refuse_blend(text: str, project: Project, use: str) -> str:
    """text, unless it names a blend where an experiment is expected: refused saying so and what to `use`."""
    sidecar = blend_sidecar(text, project)
    if sidecar is not None:
        name = sidecar.stem
        raise UsageError(f"`{name}` is a blend ({project.submissions.name}/{sidecar.name}); use "
                         + use.format(name=name, folder=project.submissions.name))
    return text


def experiment_name(text: str, project: Project, use: str) -> str:
    """An experiment's name (experiment_arg); a blend's name is refused saying it is one and what to `use` instead."""
    return experiment_arg(refuse_blend(text, project, use), project)


def finished_file(project: Project, name: str, file: str) -> Path:
    """experiments/<name>/<file>, refused before training with the notebook's fix (kit.run), an unknown
    experiment refused as every stage refuses it."""
    path = project.experiment_dir(name) / file
    if not path.is_file():
        if not project.experiment_dir(name).is_dir():
            load_config(name, [], project, check_model=False)  # an unknown experiment: the stages' own refusal
        raise DataError(f"experiment `{name}` has no {file} yet ({path}) - run it first: kit.run({name!r})")
    return path


def setup_logging() -> None:
    """The kit's log format (cli.setup_logging: a handler only when the root logger has none, so never twice)."""
    cli.setup_logging()
    logging.getLogger("competition").setLevel(logging.INFO)


def read_tables(text: str) -> dict[str, list[pd.DataFrame]]:
    """{'experiments': [...], 'blends': [...]}: every table of LEADERBOARD.md, each with its section title."""
    found: dict[str, list[pd.DataFrame]] = {"experiments": [], "blends": []}
    section, kind, rows = "", "experiments", []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split(" | ")])
            continue
        if rows:
            table = pd.DataFrame([r for r in rows[2:] if len(r) == len(rows[0])], columns=rows[0])
            found[kind].append(table.assign(section=section))
            rows = []
        if line.startswith("## "):
            section, kind = line[3:].strip(), "experiments"
        elif line.startswith("### Blends"):
            kind = "blends"
    return found


ANNOTATED = re.compile(r"(?P<value>[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)(?: \((?:gap (?P<gap>[-+]?\d+(?:\.\d+)?)"
                       r"(?:, )?)?(?P<note>[^()]*)\))?")


def split_annotations(frame: pd.DataFrame) -> pd.DataFrame:
    """Cells `number (gap number, note)` (OOF test-like: "0.48090 (gap +0.0243, adapted)", TTA gain, epochs) as the
    number, `<column> gap` (a number) and `<column> note` (text) columns, so that every score is a number."""
    for column in list(frame.columns):
        cells = frame[column].astype(str)
        parts = cells.str.fullmatch(ANNOTATED.pattern)
        if not (parts | cells.eq("")).all() or not cells.str.contains(r" \(", regex=True).any():
            continue
        found = cells.str.extract(ANNOTATED.pattern + "$")
        at = frame.columns.get_loc(column)
        frame[column] = pd.to_numeric(found["value"], errors="coerce")
        if found["gap"].notna().any():
            frame.insert(at + 1, f"{column} gap", pd.to_numeric(found["gap"], errors="coerce"))
        frame.insert(frame.columns.get_loc(column) + 1 + found["gap"].notna().any(), f"{column} note",
                     found["note"].fillna("").str.strip())
    return frame


def convert_numbers(frame: pd.DataFrame) -> pd.DataFrame:
    """Columns that are all numbers (or empty) as numbers; the others as the text the file shows."""
    for column in frame.columns:
        values = pd.to_numeric(frame[column].replace("", None), errors="coerce")
        if values.notna().sum() and values.isna().equals(frame[column].eq("")):
            frame[column] = values
    return frame


class Kit:
    """One project's stages as methods returning DataFrames/dicts; errors raise with the CLI's one-line message."""

    def __init__(self, project: str | Path | Project | None = None):
        setup_logging()
        self.project = open_project(project)

    def __repr__(self) -> str:
        return f"Kit({str(self.project.root)!r})"

    @catch_exit
    def config(self, experiment: str = "", overrides: Overrides = None) -> Config:
        """The resolved config of competition.yaml (+ an experiment's YAML, + overrides), as every stage loads it."""
        refuse_blend(experiment, self.project, AS_MODEL)
        return load_config(experiment, to_overrides(overrides), self.project, check_model=False)

    @catch_exit
    def folds(self, overrides: Overrides = None, force: bool = False) -> pd.DataFrame:
        """The folds file for competition.yaml (+ overrides), built (and audited) first when missing (`folds`)."""
        from competition.folds import build_folds

        return build_folds(self.project, to_overrides(overrides), force)

    @catch_exit
    def run(self, experiment: str, overrides: Overrides = None, restart: bool = False, folds: str | list[int] = "",
            device: str = "", ood: bool = False) -> dict:
        """Train (resume) an experiment and assemble it, as `./run.sh <experiment>`; its metrics (metrics.json)."""
        from competition.distributed import setup, shutdown
        from competition.experiment import parse_folds, run_experiment

        if folds:
            folds = check_option(options.number_list(0, 999, "fold numbers", as_text=True), folds, "--folds", "experiment")
        device = check_option(options.device(empty=True), device, "--device", "experiment")
        cfg = load_config(refuse_blend(experiment, self.project, AS_MODEL), to_overrides(overrides), self.project)
        chosen = parse_folds(folds, cfg.folds.n_splits) if folds else None
        dist = setup(device or cfg.train.device)
        try:
            return run_experiment(cfg, self.project, restart, ood, chosen, "all", device or None, None, dist)
        finally:
            shutdown(dist)

    @catch_exit
    def ensemble(self, experiments: list[str] | str, method: str = "auto", name: str = "", calibrate: str = "auto",
                 force: bool = False, overrides: Overrides = None) -> pd.DataFrame:
        """Blend experiments as `ensemble` does: the methods tried with their nested/in-sample scores (chosen
        marked); .attrs: csv (the submission), json (its sidecar), method (the chosen one)."""
        from competition.ensemble import blend_experiments, blend_name, build_parser

        names, words = experiments, to_overrides(overrides)
        argv = [*names, *words, "--method", method, "--calibrate", calibrate] + (["--force"] if force else [])
        args = parse_argv(build_parser(), argv + (["--name", name] if name else []), "ensemble")
        cfg = load_config("", words, self.project, check_model=False)
        members = [experiment_name(n, self.project, "its members (see {folder}/{name}.json) as the experiments")
                   for n in names]
        # the CLI's default name (ensemble.blend_experiments), spelt here to know where the CSV goes
        name = blend_name(args.name, self.project) if args.name else f"blend_{'_'.join(members)}_{args.method}"
        refuse_case_twin(name, self.project, args.force)
        sidecar = blend_experiments(self.project, members, args.method, cfg.competition, name, args.calibrate,
                                    args.force, cfg.tracking)
        csv = self.project.submission_file(name)
        return attach(tabulate_blend(sidecar), csv=csv, json=csv.with_suffix(".json"), method=sidecar["method"])

    @catch_exit
    def leaderboard(self, kind: str = "experiments") -> pd.DataFrame:
        """experiments/LEADERBOARD.md, regenerated (`leaderboard`), as one DataFrame: its experiment tables
        (kind='experiments') or its blend tables ('blends'), in the file's order, with a `section` column."""
        from competition.leaderboard import write_leaderboard

        if kind not in ("experiments", "blends"):
            near = [k for k in ("experiments", "blends") if kind.lower() in (k, k.rstrip("s"))]
            hint = f" - did you mean {near[0]!r}?" if near else ""
            raise UsageError(f"leaderboard(kind={kind!r}): expected 'experiments' (the ranked runs) or 'blends'{hint}")
        tables = read_tables(write_leaderboard(self.project).read_text())[kind]
        return convert_numbers(split_annotations(pd.concat(tables, ignore_index=True))) if tables else pd.DataFrame()

    @catch_exit
    def oof(self, experiment: str) -> pd.DataFrame:
        """An experiment's out-of-fold predictions (oof.csv: id, fold, target, prob), as `ensemble` reads them;
        .attrs["test_like"]: its test-like column as submitted (the adapted one of a tta.adapt_bn run), or None."""
        from competition.ensemble import load_oof
        from competition.leaderboard import test_like_column

        name = experiment_name(experiment, self.project, "pd.read_csv('{folder}/{name}.oof.csv') for its "
                               "out-of-fold predictions, or kit.oof(<member>)")
        finished_file(self.project, name, "oof.csv")
        frame = load_oof(self.project, name)
        return attach(frame, test_like=test_like_column(frame.columns))

    @catch_exit
    def predictions(self, experiment: str) -> pd.DataFrame:
        """An experiment's fold-averaged test predictions (test.csv: id, prob), as `ensemble` reads them."""
        from competition.ensemble import load_test

        name = experiment_name(experiment, self.project, "pd.read_csv('{folder}/{name}.csv') for its test "
                               "predictions, or kit.predictions(<member>)")
        finished_file(self.project, name, "test.csv")
        return load_test(self.project, name)

    @catch_exit
    def predict(self, model: str, paths: list[str] | str, device: str = "auto",
                allow_incomplete: bool = False) -> pd.DataFrame:
        """path, prob, label, error for every image (folders searched), as `predict MODEL PATH...` prints them;
        model: an experiment name or a blend's submissions/<name>.json."""
        from competition.model import pick_device
        from competition.predict import expand_paths, model_arg, predict_paths

        items = paths
        device = check_option(options.device(), device, "--device", "predict")
        if any(is_override(str(p)) for p in items):
            raise ConfigError("predict uses the experiment's saved config; it takes no section.key=value overrides")
        sidecar = blend_sidecar(model, self.project)
        target = model_arg(str(sidecar) if sidecar else model, self.project)
        found = expand_paths([str(p) for p in items], self.project)
        if not found:
            raise DataError(f"no images found in {items}")
        return predict_paths(self.project, target, found, pick_device(device), allow_incomplete)[0]

    @catch_exit
    def submit(self, file: str | Path, message: str = "", dry_run: bool = True, overrides: Overrides = None) -> str:
        """Validate a submission (submissions/<name>.csv, or a blend's name) as `submit` does; uploads only with
        dry_run=False. The outcome line."""
        from competition.submit import submit

        comp = load_config("", to_overrides(overrides), self.project, check_model=False).competition
        sidecar = blend_sidecar(file, self.project)
        text = sidecar.with_suffix(".csv") if sidecar else (
            f"submissions/{file}.csv" if NAME.fullmatch(file) and "." not in file else file)
        path = user_path(text, self.project, "submission file", kind="file")
        try:
            return submit(path, message or path.stem, comp, self.project, dry_run)
        except KitError as err:  # the CLI names the file once, the same way
            raise (err if str(err).startswith(str(path)) else type(err)(f"{path}: {err}")) from None


def refuse_case_twin(name: str, project: Project, force: bool) -> None:
    """A blend name that another blend's differs from only by case is refused (they collide on Kaggle and on
    case-insensitive disks); the same name is the ledger's business (--force)."""
    twins = [p.stem for p in project.submissions.glob("*.json") if p.stem.lower() == name.lower() and p.stem != name]
    if twins:
        raise UsageError(f"name={name!r}: {project.submissions.name}/{twins[0]}.json differs only by case (the two "
                         f"would collide on Kaggle) - pick another name, or name={twins[0]!r} with force=True")


def tabulate_blend(sidecar: dict) -> pd.DataFrame:
    """One row per blend method tried: nested fold mean/std/pooled, in-sample score, and which was chosen."""
    rows = [{"method": r["method"], "nested_mean": r["nested"].get("mean"), "nested_std": r["nested"].get("std"),
             "nested_pooled": r["nested"].get("pooled"), "in_sample": r["in_sample"],
             "chosen": r["method"] == sidecar["method"]} for r in sidecar.get("methods_tried", [])]
    return pd.DataFrame(rows)


def attach(frame: pd.DataFrame, **attrs: Any) -> pd.DataFrame:
    """frame with attrs set (where a table came from)."""
    frame.attrs.update(attrs)
    return frame

