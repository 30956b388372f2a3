"""`./run.sh config`: every key with its value, type/range, comment and origin; docs/config.md generated from the
same source (the field annotations and `# ...` comments of competition/config.py)."""

from __future__ import annotations

import dataclasses

import pytest

from competition.config import Config, field_hints, sections
from competition.config_reference import DOCS_FILE, REGENERATE, describe_type, field_comments, keys, render_markdown
from tests.conftest import WEIGHTS, call_kit, write_yaml

ALL_KEYS = [(s, n) for s, cls in [("", Config), *sections().items()] for n, h in field_hints(cls).items()
            if not dataclasses.is_dataclass(h)]


def test_docs_config_md_is_up_to_date():
    want = render_markdown(keys(Config()))
    have = DOCS_FILE.read_text() if DOCS_FILE.is_file() else ""
    assert have == want, f"docs/config.md is out of date; regenerate it with `{REGENERATE}`"


@pytest.mark.parametrize("section, name", ALL_KEYS)
def test_every_key_has_a_comment_and_a_row(section, name):
    entry = next(k for k in keys(Config()) if (k.section, k.name) == (section, name))
    assert len(entry.comment) >= 8, f"give `{entry.dotted}` a `# ...` comment in competition/config.py"
    assert f"| `{entry.dotted}` |" in DOCS_FILE.read_text()


@pytest.mark.parametrize("cls, name, tail", [
    ("FoldsConfig", "groups", "group_column wins over both"),
    ("TrainConfig", "swa", "is validated and saved as best.pt (it replaces the epoch-selected checkpoint)"),
    ("DataConfig", "crop_cache", "benchmarks/README.md section 7)"),
    ("TTAConfig", "max_batch", "held ~2.5 GB on CPU)"),
])
def test_continuation_comment_lines_are_part_of_the_comment(cls, name, tail):
    comment = field_comments()[(cls, name)]
    assert comment.endswith(tail) and "#" not in comment.replace("# ", "")


@pytest.mark.parametrize("section, name, kind", [
    ("train", "epochs", "int >= 1"),
    ("train", "lr", "float in (0, 10]"),
    ("data", "img_size", "int in [8, 4096]"),
    ("model", "drop_rate", "float in [0, 1)"),
    ("pseudo", "threshold", "float in (0.5, 1)"),
    ("train", "loss", "one of bce | focal"),
    ("folds", "groups", "one of '' | phash | twins"),
    ("train", "ema", "true/false"),
    ("tta", "crops", "one of 1 | 5"),
])
def test_types_and_ranges_come_from_the_annotations(section, name, kind):
    assert describe_type(field_hints(sections()[section])[name]) == kind


def test_the_resolved_config_shows_every_key_and_who_set_it(tmp_path):
    write_yaml(tmp_path / "competition.yaml", {"competition": {"name": "tiny"}, "folds": {"n_splits": 3}})
    exps = tmp_path / "experiments"
    (exps).mkdir()
    (exps / "b1.yaml").write_text("description: base\ntrain:\n  epochs: 4\n")
    (exps / "e1.yaml").write_text("base: b1.yaml\ndata:\n  img_size: 64\n")
    out = call_kit(tmp_path, "competition.config_reference", "e1", "train.lr=3e-4", "model.pretrained=false").stdout
    rows = {line.split(":")[0].strip(): line for line in out.splitlines() if line.startswith("  ") and
            not line.startswith("      ")}
    assert len([line for line in out.splitlines() if line.startswith("  ") and not line.startswith("      ")]) == \
        len(ALL_KEYS)
    assert "3 " in rows["n_splits"] and "[competition.yaml:4]" in rows["n_splits"]
    assert "[experiments/b1.yaml:3]" in rows["epochs"] and "int >= 1" in rows["epochs"]
    assert "64" in rows["img_size"] and "[experiments/e1.yaml:3]" in rows["img_size"]
    assert "0.0003" in rows["lr"] and "[override 'train.lr=3e-4']" in rows["lr"]
    assert "[default]" in rows["batch_size"]
    assert "      maximum epochs per fold" in out  # the comment under its key
    assert out.splitlines()[0].startswith("# e1: ")


def test_without_an_experiment_it_shows_the_defaults_and_competition_yaml(tmp_path):
    write_yaml(tmp_path / "competition.yaml", {"competition": {"name": "tiny", "metric": "f1"},
                                               "model": {"weights_dir": str(WEIGHTS)}})  # offline: local weights
    out = call_kit(tmp_path, "competition.config_reference").stdout
    assert "metric: f1" in out and "[competition.yaml:3]" in out and "epochs: 10" in out


@pytest.mark.parametrize("args, message", [
    (["e1", "train.epocs=3"], "override 'train.epocs=3' (on top of e1.yaml): unknown config key `train.epocs`; did you mean `epochs`?"),
    (["e1", "epochs=3"], "epochs belongs in train: train.epochs=3"),
    (["e1", "notanoverride"], "expected section.key=value"),
    (["nope"], "config file not found"),
])
def test_config_errors_through_the_config_command(tmp_path, args, message):
    write_yaml(tmp_path / "competition.yaml", {"competition": {"name": "tiny"}})
    write_yaml(tmp_path / "experiments" / "e1.yaml", {"description": "x"})
    result = call_kit(tmp_path, "competition.config_reference", *args, check=False)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_markdown_flag_prints_the_reference(tmp_path):
    out = call_kit(tmp_path, "competition.config_reference", "--markdown").stdout
    assert out == render_markdown(keys(Config()))
    assert out.count("\n## ") == len(sections()) + 1
