"""Validate a submission file against sample_submission.csv, then upload it with the kaggle CLI.

    python -m competition.submit submissions/<name>.csv -m "message" [--dry-run]

The kaggle CLI (kaggle 2.x) reads credentials from ~/.kaggle/kaggle.json (or $KAGGLE_CONFIG_DIR) or
KAGGLE_USERNAME / KAGGLE_KEY. Credentials are never printed or logged. The command is run as an
argument list (no shell), so no user string is ever interpreted by a shell.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pandas as pd

from competition import cli, kaggle_cli
from competition.config import CompetitionConfig, load_config
from competition.errors import KitError
from competition.kaggle_cli import KaggleError
from competition.paths import user_path
from competition.project import Project
from competition.leaderboard import DataCheck, member_problem, read_json
from competition.tables import check_separator
from competition.submission import Evidence, SubmissionError, validate_submission

log = logging.getLogger(__name__)


def explain_failure(output: str, slug: str) -> str:
    """Map kaggle CLI upload failure output to a message saying what to do (credentials never echoed)."""
    return {"credentials": kaggle_cli.CREDENTIALS,
            "403": f"403 Forbidden: accept the rules of '{slug}' on its Kaggle page (Join Competition), "
                   f"and check that competition.slug is right",
            "404": f"404: no competition '{slug}' - check competition.slug in competition.yaml",
            "400": "400 Bad Request: the daily submission limit may be reached, or Kaggle rejected the file format; "
                   "check the competition's Submissions page",
            }.get(kaggle_cli.failure_kind(output), "upload not confirmed (no 'Successfully submitted' line from the "
                                                   f"kaggle CLI): {kaggle_cli.last_line(output)}")


SUCCESS = "successfully submitted"  # what kaggle 1.x/2.x print on a good upload; the only success signal trusted


def upload(path: Path, message: str, slug: str, kaggle: str = "kaggle") -> str:
    """Run `kaggle competitions submit`; return its output, or raise KaggleError with advice.

    Success is decided by the CLI's success line, never by the absence of the word "error": kaggle 2.x exits 0
    after "Could not submit to competition", and a good upload's output may contain "error" in a title."""
    if not slug:
        raise KaggleError("competition.slug is empty in competition.yaml: set it to the competition's URL name")
    code, output = kaggle_cli.run(["competitions", "submit", "-c", slug, "-f", str(path), "-m", message],
                                  f"the upload to '{slug}'", kaggle, check=False)
    if code != 0 or SUCCESS not in output.lower():
        raise KaggleError(explain_failure(output, slug))
    return output.strip()


def read_submission(path: Path, comp: CompetitionConfig) -> pd.DataFrame:
    """A submission CSV with ids as text, or a SubmissionError saying what the file is instead."""
    if not path.is_file():
        raise SubmissionError(f"{path} not found - pass the .csv that `competition.ensemble` wrote")
    if path.suffix.lower() != ".csv":
        raise SubmissionError(f"{path} is a {path.suffix or 'suffix-less'} file, not a submission CSV - pass the "
                              f"submissions/<name>.csv (the .json beside it is the blend's sidecar)")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise SubmissionError(f"{path} is not a readable CSV ({reason}) - rewrite it with `competition.ensemble`") from None
    return check_separator(frame, path, "then submit it again")


def sidecar_evidence(path: Path) -> Evidence:
    """What the blend sidecar beside a submission (submissions/<name>.json) says about its rows without a prediction
    and its OOF positive rate; empty for a hand-written file."""
    side = path.with_suffix(".json")
    saved = read_json(side) if side.is_file() else None
    if not saved or not isinstance(saved.get("members"), list):
        return Evidence()
    rate = (saved.get("positive_rate") or {}).get("oof")
    return Evidence([str(i) for i in saved.get("no_prediction") or []], str(side), rate)


def warn_stale_members(path: Path, comp: CompetitionConfig, project: Project) -> list[str]:
    """Warn (not refuse: the file itself is valid) when the blend sidecar beside a submission records members made
    from other training data than the competition's current one, or gone or rerun since; the problems found."""
    side = path.with_suffix(".json")
    saved = read_json(side) if side.is_file() else None
    if not saved or not isinstance(saved.get("members"), list):
        return []
    check, states = DataCheck(project, comp), saved.get("member_inputs") or {}
    problems = [p for p in (member_problem(project.experiments, str(m), states.get(m), check)
                            for m in saved["members"]) if p]
    for problem in problems:
        log.warning("%s: uploading anyway (a warning, not a refusal): blend %s - re-blend on current members for a "
                    "submission of the current data", path.name, problem)
    if check.problem:
        log.warning("%s: blend members' training data not checked: %s", path.name, check.problem)
    return problems


def submit(path: Path, message: str, comp: CompetitionConfig, project: Project, dry_run: bool = False) -> str:
    """Validate the file (information included: see competition.submission), then upload it unless dry_run."""
    frame = read_submission(path, comp)
    validate_submission(frame, comp, project, evidence=sidecar_evidence(path))
    warn_stale_members(path, comp, project)
    log.info("%s: valid (%d rows)", path, len(frame))
    if dry_run:
        return "dry run: validated, not uploaded"
    return upload(path, message, comp.slug)


def main(argv: list[str] | None = None, project: Project | None = None) -> int:
    """CLI entry point."""
    parser = cli.parser(__doc__)
    parser.add_argument("file", help="the submission CSV (found where the command was typed, then in the project)")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides of competition.yaml")
    parser.add_argument("-m", "--message", default="", help="submission description shown on Kaggle")
    parser.add_argument("--dry-run", action="store_true", help="validate only")
    args = parser.parse_args(argv)

    def body() -> int:
        nonlocal project
        project = project or Project.from_env()  # inside cli.run: a bad KIT_HOME is one ERROR line
        comp = load_config("", args.overrides, project, check_model=False).competition
        file = user_path(args.file, project, "submission file", kind="file")
        try:
            log.info("%s", submit(file, args.message or file.stem, comp, project, args.dry_run))
        except KitError as err:  # every message names the file, once
            raise (err if str(err).startswith(str(file)) else type(err)(f"{file}: {err}")) from None
        return 0

    return cli.run(body)


if __name__ == "__main__":
    sys.exit(main())
