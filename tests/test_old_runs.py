"""Old runs keep working: a finished experiment written by the kit at commit 96aa683 (tests/fixtures/old_run,
see its README.txt) predicts, serves, exports and compares with today's code, also when its saved configs carry
a key the kit no longer knows (dropped with one warning) or lack keys added since (read as defaults).
User-written YAML stays strict."""

from __future__ import annotations

import io
import json
import shutil
import uuid
from pathlib import Path

import anyio
import pandas as pd
import pytest
import torch
import yaml

from competition.config import ConfigError, load_config, load_saved_config
from competition.project import Project
from tests.conftest import CIFAKE, REPO, call_kit, make_competition, write_yaml

FIXTURE = REPO / "tests" / "fixtures" / "old_run"
OLD_TEST = pd.read_csv(FIXTURE / "test.csv")  # the old run's own TTA predictions of the first 8 CIFAKE test images
VARIANTS = ["as saved", "unknown key", "missing keys"]


def edit_saved(out: Path, change) -> None:
    """Apply change(dict) to the experiment's config.yaml and to the config inside every fold checkpoint."""
    saved = yaml.safe_load((out / "config.yaml").read_text())
    change(saved)
    (out / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    for ckpt_file in out.glob("fold*/best.pt"):
        ckpt = torch.load(ckpt_file, map_location="cpu", weights_only=False)
        change(ckpt["config"])
        torch.save(ckpt, ckpt_file)


def add_unknown(key: str):
    """A change adding a retired key (and a retired section) that today's kit does not know."""
    def change(cfg: dict) -> None:
        cfg["train"][key] = 3
        cfg[f"{key}_section"] = {"knob": True}
    return change


def drop_keys(cfg: dict) -> None:
    """A change removing keys as if they had been added to the kit after the run (they read as defaults)."""
    for key in ("swa", "swa_epochs", "ema_warmup", "layer_decay"):
        del cfg["train"][key]
    del cfg["pseudo"], cfg["data"]["crop_cache"]


def old_run(home: Path, variant: str, name: str = "old001") -> str:
    """Copy the fixture into home/experiments/<name> as the variant; return the retired key's name (or "")."""
    out = home / "experiments" / name
    shutil.copytree(FIXTURE, out)
    (out / "README.txt").unlink()
    key = ""
    if variant == "unknown key":
        key = f"retired_{uuid.uuid4().hex[:8]}"  # new per test: the warning is given once per key per process
        edit_saved(out, add_unknown(key))
    elif variant == "missing keys":
        edit_saved(out, drop_keys)
    return key


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A project with the old run's 8 test images (CIFAKE test head) and a few train images."""
    return make_competition(tmp_path, n_per_class=2, n_test=8)


def image_paths(home: Path) -> list[str]:
    """The first three of the old run's test images, in this project."""
    return [str(home / "data" / rel) for rel in OLD_TEST["id"][:3]]


def check_warned_once(stderr: str, key: str) -> None:
    """The retired key (and section) are named in exactly one warning each; nothing else complains."""
    if key:
        assert sum(f"`train.{key}`" in line for line in stderr.splitlines()) == 1, stderr[-3000:]
        assert sum(f"`{key}_section`" in line for line in stderr.splitlines()) == 1
        assert "no longer has" in stderr


@pytest.mark.parametrize("variant", VARIANTS)
def test_an_old_run_predicts_as_it_did(home, variant):
    key = old_run(home, variant)
    result = call_kit(home, "competition.predict", "old001", *image_paths(home), "--csv", str(home / "p.csv"))
    got = pd.read_csv(home / "p.csv")
    want = OLD_TEST.set_index("id")["prob"]
    for path, prob in zip(got["path"], got["prob"]):
        assert prob == pytest.approx(want[str(Path(path).relative_to(home / "data"))], abs=1e-5)
    assert got["prob"].nunique() > 1  # a real model, not the fallback
    check_warned_once(result.stderr, key)


def post_image(app, data: bytes) -> tuple[int, dict]:
    """One multipart POST /predict through the ASGI app, in this process (no server, no socket)."""
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.jpg\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/predict", "raw_path": b"/predict", "root_path": "", "query_string": b"",
             "headers": [(b"content-type", f"multipart/form-data; boundary={boundary}".encode()),
                         (b"content-length", str(len(body)).encode())],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    inbox, sent = [{"type": "http.request", "body": body, "more_body": False}], []

    async def receive() -> dict:
        return inbox.pop(0) if inbox else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    anyio.run(app, scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, json.loads(b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"))


@pytest.mark.parametrize("variant", VARIANTS)
def test_an_old_run_serves(home, variant):
    from competition.serve import Predictor, create_app

    old_run(home, variant)
    app = create_app(Predictor(Project(home), "old001"))
    rel = OLD_TEST["id"][0]
    status, answer = post_image(app, (CIFAKE / rel).read_bytes())
    assert status == 200, answer
    assert answer["prob"] == pytest.approx(float(OLD_TEST["prob"][0]), abs=1e-5)
    assert answer["model"] == "old001"


@pytest.mark.parametrize("variant", VARIANTS)
def test_an_old_run_compares(home, variant):
    key = old_run(home, variant)
    old_run(home, "as saved", "old002")
    result = call_kit(home, "competition.compare", "old001", "old002")
    score = f"{json.loads((FIXTURE / 'metrics.json').read_text())['oof_score']:.5f}"
    rows = [line for line in result.stdout.splitlines() if line.startswith("| old00")]
    assert len(rows) == 2 and all(score in row for row in rows), result.stdout
    check_warned_once(result.stderr, key)


@pytest.mark.slow  # the ONNX export traces and verifies both fold models (~10 s)
@pytest.mark.parametrize("variant", VARIANTS)
def test_an_old_run_exports_to_onnx(home, variant):
    old_run(home, variant)
    call_kit(home, "competition.export", "old001")
    assert (home / "experiments" / "old001" / "export" / "model.onnx").is_file()
    call_kit(home, "competition.predict", "old001", *image_paths(home), "--onnx", "--csv", str(home / "o.csv"))
    got = pd.read_csv(home / "o.csv")
    want = OLD_TEST.set_index("id")["prob"]
    for path, prob in zip(got["path"], got["prob"]):
        assert prob == pytest.approx(want[str(Path(path).relative_to(home / "data"))], abs=1e-4)


def test_saved_configs_are_lenient_user_yaml_is_strict(tmp_path, caplog):
    """The same retired key: dropped with a warning in a saved config.yaml, refused in an experiment YAML."""
    key = f"retired_{uuid.uuid4().hex[:8]}"
    saved = yaml.safe_load((FIXTURE / "config.yaml").read_text())
    add_unknown(key)(saved)
    drop_keys(saved)
    write_yaml(tmp_path / "config.yaml", saved)
    with caplog.at_level("WARNING"):
        cfg = load_saved_config(tmp_path / "config.yaml")
        load_saved_config(tmp_path / "config.yaml")  # a second read (another fold, another command) stays quiet
    assert cfg.name == "old001" and cfg.model.name == "test_efficientnet" and cfg.train.swa is False
    assert cfg.pseudo.teacher == "" and cfg.data.crop_cache == "auto"  # keys added later read as defaults
    warned = [r.getMessage() for r in caplog.records if key in r.getMessage()]
    assert len(warned) == 2 and all(str(tmp_path / "config.yaml") in w for w in warned)
    write_yaml(tmp_path / "competition.yaml", {"competition": {"name": "tiny"}})
    write_yaml(tmp_path / "experiments" / "e1.yaml", {"train": {key: 3}})
    with pytest.raises(ConfigError, match=f"e1.yaml:2: unknown config key `train.{key}`"):
        load_config("e1", [], Project(tmp_path), check_model=False)


@pytest.mark.parametrize("text", ["", "- a\n", "just words\n"])
def test_a_saved_config_that_is_not_a_mapping_is_refused(tmp_path, text):
    (tmp_path / "config.yaml").write_text(text)
    with pytest.raises(ConfigError, match="not a saved config"):
        load_saved_config(tmp_path / "config.yaml")


def test_fixture_is_small_and_complete():
    files = [p for p in FIXTURE.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 2 * 2**20
    assert {"config.yaml", "metrics.json", "oof.csv", "test.csv"} <= {p.name for p in files}
    assert len(list(FIXTURE.glob("fold*/best.pt"))) == 2
    assert io.StringIO((FIXTURE / "README.txt").read_text()).read().count("96aa683") >= 2


@pytest.mark.parametrize("text", ["1e3", "5e-4", "1E-3"])
def test_an_old_saved_string_that_yaml_1_2_reads_as_a_number_stays_text(tmp_path, text):
    """Old kits saved with plain safe_dump, which leaves `1e3` unquoted (a string in YAML 1.1)."""
    saved = yaml.safe_load((FIXTURE / "config.yaml").read_text())
    saved["competition"]["slug"] = text
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    assert f"slug: {text}\n" in (tmp_path / "config.yaml").read_text()
    assert load_saved_config(tmp_path / "config.yaml").competition.slug == text
