"""Predict the competition's test set with a saved blend or an experiment and write the submission: what an
inference kernel runs on Kaggle (competition/kaggle_predict_script.py), and what it is checked against here.

    python -m competition.kaggle_predict <blend|exp> [competition.key=value ...] [--out submission.csv] [--force]

<blend> is a name of submissions/<name>.csv whose .json sidecar `competition.ensemble` wrote (the fitted blend and
its members); <exp> a trained experiment. The test table (competition.test_csv, or the images of
competition.test_folder) is read as competition.yaml says, every image goes through `predict`'s path (members x
folds x TTA, `competition.predict.predict_paths`), and the file is built in the sample submission's header and row
order and validated by the kit's submission writer (competition.submission) before it is written. A member run
with tta.adapt_bn is adapted on the whole test set, as the run adapted it: the file equals its own test.csv.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pandas as pd

from competition import cli
from competition.config import CompetitionConfig, is_override, load_config, load_saved_config
from competition.errors import ConfigError
from competition.outputs import check_target, record
from competition.paths import canonical, output_path
from competition.project import Project, check_name
from competition.submission import Evidence, build_submission, write_submission
from competition.tables import load_test_table

log = logging.getLogger(__name__)
COMMAND = "kaggle_predict"  # how the output ledger names this command's files


@dataclass
class Target:
    """What an inference kernel predicts with: a saved blend (its sidecar) or one experiment."""

    name: str
    members: list[str]
    blend: Path | None = None  # submissions/<name>.json for a blend, None for an experiment

    @property
    def model_arg(self) -> str:
        """What `predict_paths` takes: the blend's sidecar path, or the experiment's name."""
        return str(self.blend) if self.blend else self.name


def known_targets(project: Project) -> tuple[list[str], list[str]]:
    """(blends: submissions/*.json with members, experiments: experiments/*/ holding fold*/best.pt), sorted."""
    blends = sorted(p.stem for p in project.submissions.glob("*.json")) if project.submissions.is_dir() else []
    exps = sorted(p.name for p in project.experiments.glob("*") if any(p.glob("fold*/best.pt"))) \
        if project.experiments.is_dir() else []
    return blends, exps


def target_name(text: str) -> str:
    """A target typed as submissions/<name>.csv, <name>.json or experiments/<name>.yaml -> <name> (checked plain)."""
    name = PurePosixPath(canonical(text.strip())).name
    for suffix in (".csv", ".json", ".yaml", ".yml"):
        name = name[: -len(suffix)] if name.lower().endswith(suffix) and len(name) > len(suffix) else name
    return check_name(name, "blend or experiment")


def resolve_target(project: Project, text: str) -> Target:
    """A blend name (submissions/<name>.csv or .json, typed with or without its folder and suffix) or a trained
    experiment; refused with the names that exist, and when a member is not a finished experiment."""
    from competition.blend import load_blend  # scipy, sklearn and torch only once a target is used
    from competition.inference import unfinished

    name = target_name(text)
    side = project.submissions / f"{name}.json"
    if side.is_file():
        target = Target(name, load_blend(side).members, side)
    elif (project.experiment_dir(name) / "config.yaml").is_file():
        target = Target(name, [name])
    else:
        blends, exps = known_targets(project)
        raise ConfigError(f"{text!r}: no blend {project.submissions.name}/{name}.json and no trained experiment "
                          f"{project.experiments.name}/{name}/ - pass a blend `ensemble` wrote ({', '.join(blends) or 'none yet'}) "
                          f"or a trained experiment ({', '.join(exps) or 'none yet'})")
    for member in target.members:
        out = project.experiment_dir(member)
        saved = out / "config.yaml"
        problems = unfinished(out, load_saved_config(saved)) if saved.is_file() else ["no outputs (never trained here)"]
        if problems:
            raise ConfigError(f"{target.name}: member {member} is not a finished experiment ({'; '.join(problems)}) - "
                              f"finish it with `./run.sh {member}` before predicting with it")
    return target


def predict_test(project: Project, target: Target, comp: CompetitionConfig, device: str = "auto") -> tuple[pd.DataFrame, Evidence]:
    """The submission frame for the competition's test table (sample order and header) and the evidence of rows
    that got no prediction (unreadable or missing images: the members' fallback, as in their test.csv)."""
    from competition.model import pick_device
    from competition.predict import predict_paths

    test = load_test_table(comp, project)
    frame, timing = predict_paths(project, target.model_arg, list(test["path"]), pick_device(device))
    prob = frame["prob"].to_numpy(dtype=float)
    values = (prob >= timing["threshold"]).astype(int) if comp.submission_values == "label" else prob
    bad = frame["error"] != ""
    reasons = frame.loc[bad, "error"].value_counts().head(3)
    evidence = Evidence(sorted(test.loc[bad.values, "id"].astype(str)), "this prediction's log",
                        reasons=", ".join(f"{r}: {n}" for r, n in reasons.items()))
    log.info("%s: %d test images predicted in %.1f s (%.1f images/s; models loaded in %.1f s), %d unreadable",
             target.name, len(test), timing["predict"], len(test) / max(timing["predict"], 1e-9), timing["load"],
             int(bad.sum()))
    return build_submission(comp, project, test["id"], values), evidence


def main(argv: list[str] | None = None, project: Project | None = None) -> int:
    """CLI entry point."""
    parser = cli.parser(__doc__, device=True)
    parser.add_argument("target", help="a blend's name (submissions/<name>.csv + .json) or a trained experiment")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides of competition.yaml "
                                                     "(the kernel sets competition.data_dir)")
    parser.add_argument("--out", default="submission.csv", help="the submission file to write")
    parser.add_argument("--force", action="store_true", help="replace an --out file this command did not write")
    args = parser.parse_args(argv)

    def body() -> int:
        nonlocal project
        project = project or Project.from_env()  # inside cli.run: a bad KIT_HOME is one ERROR line
        bad = [o for o in args.overrides if not is_override(o)]
        if bad:
            raise ConfigError(f"{bad[0]!r}: expected one target then section.key=value overrides of competition.yaml")
        comp = load_config("", args.overrides, project, check_model=False).competition
        target = resolve_target(project, args.target)
        out = check_target(project, output_path(args.out, "--out"), COMMAND, args.force)
        frame, evidence = predict_test(project, target, comp, args.device)
        write_submission(out, frame, comp, project, evidence)
        record(project, out, COMMAND)
        return 0

    return cli.run(body)


if __name__ == "__main__":
    sys.exit(main())
