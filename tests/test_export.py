"""ONNX export: parity with eager PyTorch for every backbone with local weights, and export -> predict --onnx on a
trained experiment (fold files, the fold-and-view-averaged model, fp16)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from competition.config import ModelConfig
from competition.export import FP32_TOL, Averaged, ExportError, export_verified, max_difference, onnx_session
from competition.model import build_model
from tests.conftest import CIFAKE, PROJECT, WEIGHTS, call_kit, smoke_experiment

BACKBONES = [m["timm_model"] for m in json.loads((WEIGHTS / "models.json").read_text())["models"]]


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """64 real CIFAKE test images, uint8 NCHW."""
    ids = pd.read_csv(CIFAKE / "test.csv")["id"].head(64)
    return torch.stack([torch.from_numpy(np.asarray(Image.open(CIFAKE / i).convert("RGB"))).permute(2, 0, 1)
                        for i in ids])


def detector(name: str) -> torch.nn.Module:
    """ImageNet weights from ../shared/weights with a seeded random head (the kit zeroes new heads: every
    probability would be 0.5, and parity would prove nothing)."""
    model = build_model(ModelConfig(name=name, weights_dir=str(WEIGHTS), input_upscale=2), PROJECT, quiet=True).eval()
    head = model.backbone.get_classifier()
    torch.nn.init.normal_(head.weight, std=2.0 / head.weight.shape[1] ** 0.5, generator=torch.Generator().manual_seed(0))
    return model


@pytest.mark.parametrize("name", BACKBONES)
def test_onnx_matches_pytorch_for_every_local_backbone(name, images, tmp_path):
    model = Averaged([detector(name)])
    info = export_verified(model, images, tmp_path / "m.onnx", opset=17)
    session = onnx_session(tmp_path / "m.onnx")
    got = session.run(None, {"images": images.numpy()})[0]
    with torch.no_grad():
        want = model(images).numpy()
    assert got.shape == (64,) and np.abs(got - want).max() <= FP32_TOL and info["max_abs_diff"] <= FP32_TOL
    assert want.std() > 0.01  # the probabilities differ per image: parity is not a constant matching a constant
    single = session.run(None, {"images": images[:1].numpy()})[0]  # dynamic batch axis: one image works too
    assert abs(float(single[0]) - float(want[0])) <= FP32_TOL


def test_verification_catches_a_model_that_differs(images, tmp_path):
    model = Averaged([detector("tf_mobilenetv3_small_100")])
    export_verified(model, images, tmp_path / "m.onnx", opset=17)
    other = Averaged([detector("tf_mobilenetv3_small_100")])
    torch.nn.init.normal_(other.models[0].backbone.get_classifier().bias, mean=1.0)
    assert max_difference(tmp_path / "m.onnx", other, images) > FP32_TOL


def test_an_exporter_that_cannot_verify_leaves_no_file(images, tmp_path, monkeypatch):
    import competition.export as export

    def broken(*args):
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr(export, "export_dynamo", broken)
    monkeypatch.setattr(export, "FP32_TOL", -1.0)  # the legacy file exists but cannot verify
    with pytest.raises(ExportError, match="legacy: ExportError: max .prob difference.*dynamo: RuntimeError"):
        export_verified(Averaged([detector("regnetx_002")]), images[:8], tmp_path / "m.onnx", opset=17)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # over 5 s of CPU: kept out of the fast tier
def test_dynamo_exporter_takes_over_when_the_legacy_one_fails(images, tmp_path, monkeypatch):
    import competition.export as export

    def broken(*args):
        raise RuntimeError("legacy exporter removed")

    monkeypatch.setattr(export, "export_legacy", broken)
    model = Averaged([detector("regnetx_002")])
    info = export_verified(model, images[:16], tmp_path / "m.onnx", opset=17)
    assert info["exporter"] == "dynamo" and info["opset"] >= 18 and info["max_abs_diff"] <= FP32_TOL
    assert max_difference(tmp_path / "m.onnx", model, images[16:40]) <= FP32_TOL


@pytest.mark.slow
def test_export_then_predict_onnx_equals_predict(home):
    smoke_experiment(home, "exp_x", tta={"views": "hflip", "crops": 5}, data={"img_size": 24})
    call_kit(home, "competition.experiment", "exp_x")
    call_kit(home, "competition.export", "exp_x", "--onnx", "--fp16")
    out = home / "experiments" / "exp_x" / "export"
    info = json.loads((out / "export.json").read_text())
    assert [f["file"] for f in info["files"]] == ["fold0.onnx", "fold1.onnx", "model.onnx", "model.fp16.onnx"]
    assert info["input"]["shape"] == ["batch", 3, 24, 24] and info["views"] == "hflip"
    (home / "broken.jpg").write_bytes(b"not a jpeg")  # an unreadable image keeps its row
    images = sorted(str(p) for p in (home / "data").rglob("*.jpg"))[:20] + [str(home / "broken.jpg")]
    call_kit(home, "competition.predict", "exp_x", *images, "--csv", str(home / "eager.csv"))
    onnx = call_kit(home, "competition.predict", "exp_x", *images, "--onnx", "--csv", str(home / "onnx.csv"))
    a, b = pd.read_csv(home / "eager.csv"), pd.read_csv(home / "onnx.csv")
    assert len(a) == len(b) == 21 and (a["path"] == b["path"]).all() and (a["label"] == b["label"]).all()
    assert np.abs(a["prob"] - b["prob"]).max() <= FP32_TOL and a["prob"][:20].std() > 0  # 5 crops x hflip x 2 folds
    assert b["error"].fillna("").iloc[-1] != "" and b["label"].iloc[-1] == -1  # unreadable: flagged, never dropped
    assert "images/s" in onnx.stderr and "loading" in onnx.stderr
    if info["files"][-1]["verified"]:
        half = call_kit(home, "competition.predict", "exp_x", *images[:20], "--onnx", "--fp16", "--csv",
                        str(home / "half.csv"))
        assert half.returncode == 0 and np.abs(pd.read_csv(home / "half.csv")["prob"] - a["prob"][:20]).max() <= 2e-2
