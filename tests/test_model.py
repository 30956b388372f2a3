"""Model factory: the five real ImageNet backbones load offline from ../shared/weights."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from competition.config import ConfigError, ModelConfig
from competition.model import Detector, amp_dtype, build_model
from tests.conftest import PROJECT
from tests.conftest import WEIGHTS

ENTRIES = json.loads((WEIGHTS / "models.json").read_text())["models"]


@pytest.mark.parametrize("entry", ENTRIES, ids=[e["timm_model"] for e in ENTRIES])
def test_local_imagenet_weights_load(entry):
    model = build_model(ModelConfig(name=entry["timm_model"], weights_dir=str(WEIGHTS)), PROJECT)
    assert isinstance(model, Detector)
    state = load_file(str(WEIGHTS / entry["file"]))
    backbone = model.backbone.state_dict()
    loaded = [k for k in state if k in backbone and backbone[k].shape == state[k].shape]
    assert len(loaded) > 0.95 * len(state)
    assert all(torch.equal(backbone[k], state[k]) for k in loaded[:20])
    assert torch.allclose(model.mean.flatten() / 255, torch.tensor(entry["mean"]))  # normalisation from models.json
    head = model.backbone.get_classifier()
    assert head.out_features == 1 and not head.weight.any()  # zero head: p=0.5 at the start


def test_pretrained_file_and_uint8_forward(tmp_path):
    entry = ENTRIES[0]
    model = build_model(ModelConfig(name=entry["timm_model"], pretrained_file=str(WEIGHTS / entry["file"]),
                                    input_upscale=2), PROJECT).eval()
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2,) and torch.allclose(torch.sigmoid(out), torch.full((2,), 0.5))


def test_missing_weights_file_is_clear():
    with pytest.raises(ConfigError, match="not found"):
        build_model(ModelConfig(name="resnet18", pretrained_file="/nope/w.safetensors"), PROJECT)


def test_hub_failure_says_what_to_do(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import: the env alone retried ~45 s
    with pytest.raises(ConfigError, match="pretrained weights could not be loaded from the hub .* model.pretrained_file"):
        build_model(ModelConfig(name="resnet18", weights_dir="/nonexistent"), PROJECT)


def test_amp_is_off_on_cpu():
    assert amp_dtype("auto", torch.device("cpu")) is None


def test_rebuilt_model_keeps_the_weights_architecture(tmp_path):
    """mobilenetv2_100's weights need pad_type='same'; a model rebuilt for loading a checkpoint must match."""
    cfg = ModelConfig(name="mobilenetv2_100", weights_dir=str(WEIGHTS))
    trained = build_model(cfg, PROJECT).eval()
    torch.nn.init.normal_(trained.backbone.get_classifier().weight)  # a "trained" head: outputs are not all 0
    import dataclasses
    rebuilt = build_model(dataclasses.replace(cfg, pretrained=False), PROJECT, quiet=True).eval()
    rebuilt.load_state_dict(trained.state_dict())
    x = torch.randint(0, 256, (2, 3, 37, 37), dtype=torch.uint8)
    with torch.no_grad():
        expected = trained(x)
        assert expected.abs().min() > 0 and torch.allclose(expected, rebuilt(x), atol=1e-5)
