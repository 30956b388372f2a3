"""One leaderboard per competition, training data and metric; blends never mix them, go stale visibly, and never
overwrite another blend's file silently; blend methods come from one registry.

Variants are generated: leaderboards of 2-3 competitions / metrics / data fingerprints (one experiment without
inputs.json), member pairs differing in each scope field, members deleted or rerun in three ways, re-blends
changing each setting under a default or an explicit name. Experiments are faked by writing the files a
finished experiment writes (tests/test_submission_information.fake_experiment), so nothing trains.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from competition import ensemble
from competition.blend import BLENDERS, Blend, Blender, auto_methods, describe_methods, method_names, register
from tests.conftest import REPO, call_kit
from tests.test_submission_information import base, fake_experiment, home  # noqa: F401 - fixtures

FP1, FP2 = "a" * 16, "b" * 16


def board_sections(home) -> dict[str, list[tuple[str, str, str]]]:
    """LEADERBOARD.md as {section heading: [(rank, name, last cell) of every table row]}."""
    sections, current = {}, None
    for line in (home / "experiments" / "LEADERBOARD.md").read_text().splitlines():
        if line.startswith("## "):
            current = line[3:]
            sections[current] = []
        elif current and line.startswith("| ") and not line.startswith("| rank"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            sections[current].append((cells[0], cells[1], cells[-1]))
    return sections


# name, competition, fingerprint (None: no inputs.json, an older experiment), metric, OOF score
BOARDS = {
    "two competitions": [("a1", "tiny", FP1, "auc", 0.90), ("a2", "tiny", FP1, "auc", 0.80),
                         ("b1", "other", FP2, "auc", 0.95), ("b2", "other", FP2, "auc", 0.97)],
    "three metrics": [("m1", "tiny", FP1, "auc", 0.90), ("m2", "tiny", FP1, "logloss", 0.30),
                      ("m3", "tiny", FP1, "f1", 0.70), ("m4", "tiny", FP1, "auc", 0.95),
                      ("m5", "tiny", FP1, "logloss", 0.20)],
    "three fingerprints": [("p1", "tiny", FP1, "auc", 0.90), ("p2", "tiny", FP2, "auc", 0.99),
                           ("p3", "tiny", FP1, "auc", 0.91), ("p4", "tiny", None, "auc", 0.50)],
}


def build(home, specs) -> None:
    """Fake finished experiments from (name, competition, fingerprint, metric, score) rows."""
    for i, (name, comp, fp, metric, score) in enumerate(specs):
        out = fake_experiment(home, name, competition=comp, fingerprint=fp or "", metric=metric, score=score, seed=i)
        if fp is None:
            (out / "inputs.json").unlink()


@pytest.mark.parametrize("layout", list(BOARDS))
def test_experiments_are_ranked_only_within_their_competition_data_and_metric(home, layout):
    specs = BOARDS[layout]
    build(home, specs)
    call_kit(home, "competition.leaderboard")
    sections = board_sections(home)
    groups = {}
    for name, comp, fp, metric, score in specs:
        groups.setdefault((comp, fp or "unknown", metric), []).append((score, name, metric))
    assert len(sections) == len(groups)
    for (comp, fp, metric), rows in groups.items():
        heading = next(h for h in sections if f"`{comp}`" in h and f"`{fp}`" in h and f"metric `{metric}`" in h)
        best_first = [n for _, n, _ in sorted(rows, reverse=metric != "logloss")]
        assert [(r, n) for r, n, _ in sections[heading]] == [(str(i), n) for i, n in enumerate(best_first, 1)]


SCOPE_CHANGES = {"competition": {"competition": "other"}, "fingerprint": {"fingerprint": FP2},
                 "metric": {"metric": "logloss"}}


@pytest.mark.parametrize("field", list(SCOPE_CHANGES))
@pytest.mark.parametrize("order", ["first", "second"])
def test_ensemble_refuses_members_of_different_competitions_data_or_metrics(home, field, order):
    fake_experiment(home, "eA")
    fake_experiment(home, "eB", seed=1, **SCOPE_CHANGES[field])
    names = ["eA", "eB"] if order == "first" else ["eB", "eA"]
    proc = call_kit(home, "competition.ensemble", *names, "--name", "b", check=False)
    assert proc.returncode == 2 and f"differ in {field}" in proc.stderr, proc.stderr
    assert "eA" in proc.stderr and "eB" in proc.stderr and "Traceback" not in proc.stderr
    assert not (home / "submissions" / "b.csv").exists()


def test_members_trained_on_other_labels_are_refused_even_without_fingerprints(home):
    for i, name in enumerate(("eA", "eB")):
        train = pd.read_csv(home / "data" / "train.csv", index_col=0)
        labels = train["label"].to_numpy().copy()
        labels[:3] = 1 - labels[:3] if name == "eB" else labels[:3]
        (fake_experiment(home, name, seed=i, labels=labels) / "inputs.json").unlink()
    proc = call_kit(home, "competition.ensemble", "eA", "eB", "--name", "b", check=False)
    assert proc.returncode == 2 and "different labels (3 OOF rows differ)" in proc.stderr


def test_members_of_another_competition_than_competition_yaml_are_refused(home):
    fake_experiment(home, "eA", competition="other")
    fake_experiment(home, "eB", competition="other", seed=1)
    proc = call_kit(home, "competition.ensemble", "eA", "eB", "--name", "b", check=False)
    assert proc.returncode == 2 and "trained on competition `other`, but competition.yaml is `tiny`" in proc.stderr


def rerun_on_other_data(out):
    info = json.loads((out / "inputs.json").read_text())
    (out / "inputs.json").write_text(json.dumps({**info, "train": FP2}))


def rerun_same_data(out):
    oof = pd.read_csv(out / "oof.csv")
    oof.assign(prob=oof["prob"][::-1].to_numpy()).to_csv(out / "oof.csv", index=False)


MEMBER_CHANGES = {"deleted": (lambda out: __import__("shutil").rmtree(out), "member eB is gone"),
                  "metrics gone": (lambda out: (out / "metrics.json").unlink(), "member eB experiments/eB/metrics.json missing"),
                  "other data": (rerun_on_other_data, "member eB was rerun on other data"),
                  "rerun": (rerun_same_data, "member eB was rerun since")}


@pytest.mark.parametrize("change", list(MEMBER_CHANGES))
def test_blend_whose_member_is_gone_or_rerun_is_marked_not_ranked(home, change):
    fake_experiment(home, "eA")
    fake_experiment(home, "eB", seed=1)
    call_kit(home, "competition.ensemble", "eA", "eB", "--method", "mean", "--name", "both")
    call_kit(home, "competition.ensemble", "eA", "--method", "mean", "--name", "solo")
    edit, note = MEMBER_CHANGES[change]
    edit(home / "experiments" / "eB")
    call_kit(home, "competition.leaderboard")
    rows = {name: (rank, last) for rows in board_sections(home).values() for rank, name, last in rows}
    assert rows["both.csv"][0] == "-" and note in rows["both.csv"][1] and "not ranked" in rows["both.csv"][1]
    assert rows["solo.csv"] == ("1", "")


# a re-blend changing one setting: (extra ensemble arguments, members, what the refusal names)
REBLENDS = {"metric": (["competition.metric=f1"], [], "metric auc -> f1"),
            "calibration": ([], ["--calibrate", "platt"], "calibration none -> platt"),
            "members": (["eC"], [], "members"),
            "method": ([], ["--method", "rank"], "selected_by mean -> rank")}


@pytest.mark.parametrize("setting, named", [(s, True) for s in REBLENDS] + [("metric", False), ("calibration", False)])
def test_reblend_with_other_settings_never_overwrites_silently(home, setting, named):
    """Default names hold the members and method, so only the other settings can collide without --name."""
    for i, name in enumerate(("eA", "eB", "eC")):
        fake_experiment(home, name, seed=i)
    name = ["--name", "b"] if named else []
    call_kit(home, "competition.ensemble", "eA", "eB", "--method", "mean", *name)
    target = home / "submissions" / ("b.csv" if named else "blend_eA_eB_mean.csv")
    assert call_kit(home, "competition.ensemble", "eA", "eB", "--method", "mean", *name).returncode == 0  # same: fine
    before = target.read_bytes(), target.with_suffix(".json").read_bytes()
    positional, options, names_it = REBLENDS[setting]
    args = ["eA", "eB", *positional, "--method", "mean", *options]
    proc = call_kit(home, "competition.ensemble", *args, *name, check=False)
    assert proc.returncode == 2 and str(target) in proc.stderr and names_it in proc.stderr, proc.stderr
    assert "--name" in proc.stderr and "--force" in proc.stderr
    assert (target.read_bytes(), target.with_suffix(".json").read_bytes()) == before
    call_kit(home, "competition.ensemble", *args, "--name", "other")
    assert (home / "submissions" / "other.csv").is_file() and target.with_suffix(".json").read_bytes() == before[1]
    call_kit(home, "competition.ensemble", *args, *name, "--force")
    assert target.with_suffix(".json").read_bytes() != before[1]


def test_reblend_under_another_metric_goes_to_that_metrics_section(home):
    fake_experiment(home, "eA")
    fake_experiment(home, "eB", seed=1)
    call_kit(home, "competition.ensemble", "eA", "eB", "--method", "mean", "--name", "by_auc")
    call_kit(home, "competition.ensemble", "eA", "eB", "competition.metric=f1", "--method", "mean", "--name", "by_f1")
    where = {name: heading for heading, rows in board_sections(home).items() for _, name, _ in rows}
    assert "metric `auc`" in where["by_auc.csv"] and "metric `f1`" in where["by_f1.csv"]
    assert where["eA"] == where["by_auc.csv"]


@pytest.mark.parametrize("existing", ["hand-written csv", "foreign json"])
def test_files_the_kit_did_not_write_are_not_overwritten_without_force(home, existing):
    fake_experiment(home, "eA")
    (home / "submissions").mkdir()
    path = home / "submissions" / ("mine.csv" if existing == "hand-written csv" else "mine.json")
    path.write_text("id,label\nx,1\n" if path.suffix == ".csv" else '{"notes": 1}')
    proc = call_kit(home, "competition.ensemble", "eA", "--name", "mine", check=False)
    assert proc.returncode == 2 and "not written by competition.ensemble" in proc.stderr and "--force" in proc.stderr
    assert path.read_text().startswith(("id,label", '{"notes"'))
    call_kit(home, "competition.ensemble", "eA", "--name", "mine", "--force")


# ---- one registry of blend methods --------------------------------------------------------------------------------
def method_option():
    """The --method action of ensemble's parser."""
    return next(a for a in ensemble.build_parser()._actions if "--method" in a.option_strings)


def test_cli_choices_auto_search_and_help_read_the_registry():
    assert method_option().type.values == ("auto", *BLENDERS) == ("auto", *method_names())
    assert set(auto_methods(3)) == set(BLENDERS) and "optimize" not in auto_methods(9)
    assert all(f"{m}: {cls.summary}" in describe_methods() for m, cls in BLENDERS.items())


def test_docs_document_every_registered_method():
    docs = "".join(p.read_text() for p in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))])
    assert all(f"`{m}`" in docs for m in BLENDERS), [m for m in BLENDERS if f"`{m}`" not in docs]


@pytest.fixture
def median_method():
    """A new method added the documented way: one Blender subclass + @register (removed afterwards)."""
    @register
    class MedianBlender(Blender):
        method, summary = "median", "median of probabilities"

        def blend(self, x):
            return np.median(x, axis=1)
    yield "median"
    BLENDERS.pop("median")


def test_a_registered_method_reaches_the_cli_auto_and_the_blend(home, median_method):
    assert median_method in method_option().type.values and median_method in auto_methods(2)
    x = np.array([[0.1, 0.9, 0.4], [0.8, 0.2, 0.6]]).T
    assert np.allclose(Blend.fit(["a", "b"], "median", "auc", x, np.array([0, 1, 0])).apply(x), np.median(x, axis=1))
    fake_experiment(home, "eA")
    fake_experiment(home, "eB", seed=1)
    call_kit(home, "competition.ensemble", "eA", "eB", "--method", "median", "--name", "med")
    assert json.loads((home / "submissions" / "med.json").read_text())["method"] == "median"


@pytest.mark.parametrize("name", ["mean", "auto", ""])
def test_registry_refuses_a_duplicate_reserved_or_empty_name(name):
    with pytest.raises(ValueError):
        register(type("Dup", (Blender,), {"method": name}))
    assert list(BLENDERS) == list(method_names())


def test_unknown_method_is_refused_on_the_command_line(home):
    proc = call_kit(home, "competition.ensemble", "eA", "--method", "medain", check=False)
    assert proc.returncode == 2 and "mean" in proc.stderr
