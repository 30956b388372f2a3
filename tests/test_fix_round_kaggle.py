"""Fix round (stranger sweep): blend names differing only by case (A2/A3) and de-duplicated refusal reasons (D5)."""
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from competition.ensemble import EnsembleError, check_destination

SETTINGS = {"members": ["e1", "e2"], "selected_by": "mean", "metric": "auc", "calibration": "none",
            "submission_values": "prob", "scope": {}}


def project_in(folder: Path) -> SimpleNamespace:
    """A stand-in Project whose submissions live in `folder`."""
    return SimpleNamespace(submission_file=lambda name: folder / f"{name}.csv")


def write_blend(folder: Path, name: str, **changes: object) -> None:
    """submissions/<name>.csv + its sidecar, as competition.ensemble writes them."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.csv").write_text("id,label\n1,0.5\n")
    (folder / f"{name}.json").write_text(json.dumps({**SETTINGS, **changes}))


@pytest.mark.parametrize("existing", ["best", "Best", "BEST"])
@pytest.mark.parametrize("new", ["best", "Best", "bEsT", "BEST"])
@pytest.mark.parametrize("force", [False, True])
def test_case_twin_refused(tmp_path: Path, existing: str, new: str, force: bool) -> None:
    """A new name equal to an existing blend except for case is refused, naming the file and the fix."""
    write_blend(tmp_path, existing)
    if new == existing:
        assert check_destination(project_in(tmp_path), new, dict(SETTINGS), force) == tmp_path / f"{new}.csv"
        return
    with pytest.raises(EnsembleError) as err:
        check_destination(project_in(tmp_path), new, dict(SETTINGS), force)
    msg = str(err.value)
    assert f"{existing}.csv" in msg and "differs only by case" in msg and "\n" not in msg


@pytest.mark.parametrize("name", ["best", "other"])
def test_unrelated_name_allowed(tmp_path: Path, name: str) -> None:
    """A name no file shares (even by case) passes."""
    write_blend(tmp_path, "zeta")
    assert check_destination(project_in(tmp_path), name, dict(SETTINGS), False) == tmp_path / f"{name}.csv"


@pytest.mark.parametrize("key,old", [("metric", "f1"), ("calibration", "platt"), ("selected_by", "rank")])
def test_refusal_reasons_not_repeated(tmp_path: Path, key: str, old: str) -> None:
    """Each differing setting is named once in the refusal."""
    write_blend(tmp_path, "best", **{key: old}, scope={"metric": old if key == "metric" else "auc"})
    with pytest.raises(EnsembleError) as err:
        check_destination(project_in(tmp_path), "best", {**SETTINGS, "scope": {"metric": SETTINGS["metric"]}}, False)
    reason = f"{key} {old} -> {SETTINGS[key]}"
    assert str(err.value).count(reason) == 1
