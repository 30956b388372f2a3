"""Mixed precision and the optimizer step, checked on CPU: the dtype chosen per GPU generation (capability
faked), GradScaler-skipped steps leave schedule and EMA alone, clipping, fp32 logits, micro-batched TTA."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from timm.utils import ModelEmaV3

from competition.augment import tta_views
from competition.config import ConfigError, ModelConfig
from competition.dataset import ImageDataset
from competition.augment import build_eval_transform
from competition.config import DataConfig
from competition.inference import predict_views
from competition.model import amp_dtype, build_model
from competition.train import TrainState, _optimizer_step
from tests.conftest import PROJECT

CUDA = torch.device("cuda")


@pytest.mark.parametrize("capability, want", [((7, 5), torch.float16), ((7, 0), torch.float16),
                                              ((8, 0), torch.bfloat16), ((8, 9), torch.bfloat16),
                                              ((9, 0), torch.bfloat16)])
def test_auto_precision_follows_native_bf16(monkeypatch, capability, want):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # what recent torch says on a T4
    assert amp_dtype("auto", CUDA) is want


def test_cpu_and_off_run_fp32_and_bf16_is_refused_on_a_t4(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert amp_dtype("auto", torch.device("cpu")) is None and amp_dtype("off", CUDA) is None
    assert amp_dtype("fp16", CUDA) is torch.float16
    with pytest.raises(ConfigError, match="compute capability >= 8.0; this one is 7.5"):
        amp_dtype("bf16", CUDA)


def tiny_state(scaler_enabled: bool, lr: float = 0.1) -> TrainState:
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
    scaler = torch.amp.GradScaler("cpu", enabled=scaler_enabled, init_scale=1024.0)
    return TrainState(model, optimizer, scheduler, scaler, ModelEmaV3(model, decay=0.5), torch.float16)


def backward(state: TrainState, value: float) -> None:
    loss = state.model(torch.ones(2, 4)).sum() * value
    state.scaler.scale(loss).backward()


def test_skipped_fp16_step_leaves_schedule_and_ema_alone():
    state = tiny_state(scaler_enabled=True)
    weight, ema = state.model.weight.detach().clone(), state.ema.module.weight.detach().clone()
    backward(state, float("inf"))  # overflow: GradScaler skips this step
    assert _optimizer_step(state) is False
    assert state.scheduler.last_epoch == 0 and torch.equal(state.model.weight, weight)
    assert torch.equal(state.ema.module.weight, ema)
    backward(state, 1.0)
    assert _optimizer_step(state) is True
    assert state.scheduler.last_epoch == 1 and not torch.equal(state.model.weight, weight)
    assert not torch.equal(state.ema.module.weight, ema)


@pytest.mark.parametrize("scaler_enabled", [False, True])
def test_clip_grad_bounds_the_update(scaler_enabled):
    state = tiny_state(scaler_enabled, lr=1.0)
    before = [p.detach().clone() for p in state.model.parameters()]
    backward(state, 1000.0)  # gradient norm ~ 2000 * sqrt(5)
    assert _optimizer_step(state, clip_grad=1.0)
    step = math.sqrt(sum(((p - b) ** 2).sum().item() for p, b in zip(state.model.parameters(), before)))
    assert step == pytest.approx(1.0, rel=1e-3)  # lr 1 x clipped norm 1 (scale unscaled first under fp16)


def test_logits_are_fp32_under_autocast():
    model = build_model(ModelConfig(name="tf_mobilenetv3_small_100", pretrained=False), PROJECT).eval()
    torch.nn.init.normal_(model.backbone.get_classifier().weight, std=0.1)
    x = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
        feats = model.backbone.forward_features(model.prepare(x))
    assert out.dtype == torch.float32
    with torch.no_grad():
        want = model.backbone.forward_head(feats.float()).squeeze(1)  # fp32 head on the same (bf16) features
    torch.testing.assert_close(out, want)


def test_tta_micro_batches_equal_one_forward():
    model = build_model(ModelConfig(name="tf_mobilenetv3_small_100", pretrained=False), PROJECT).eval()
    torch.nn.init.normal_(model.backbone.get_classifier().weight, std=0.1)
    images = torch.randint(0, 256, (4, 5, 3, 32, 32), dtype=torch.uint8)  # 4 images x 5 crops
    whole = predict_views(model, images, tta_views("d4"), max_batch=10_000)
    chunked = predict_views(model, images, tta_views("d4"), max_batch=3)
    assert whole.shape == (8, 4, 5) and np.allclose(whole, chunked, atol=1e-6)


def test_undecodable_training_row_carries_a_nan_label(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    ds = ImageDataset([str(bad)], np.array([1.0]), build_eval_transform(DataConfig(img_size=32)))
    _, label, _, error = ds[0]
    assert torch.isnan(label) and error


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (benchmarks/gpu.sh runs this there)")
def test_real_gpu_gets_its_native_precision_and_trains_a_step():
    device = torch.device("cuda")
    want = torch.bfloat16 if torch.cuda.get_device_capability(device) >= (8, 0) else torch.float16
    assert amp_dtype("auto", device) is want
    model = build_model(ModelConfig(name="tf_mobilenetv3_small_100", pretrained=False), PROJECT).to(device)
    x = torch.randint(0, 256, (8, 3, 64, 64), dtype=torch.uint8, device=device)
    with torch.autocast("cuda", dtype=want):
        logits = model(x)
    assert logits.dtype == torch.float32
    logits.sum().backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


def test_grad_checkpointing_gives_the_same_gradients():
    """train.grad_checkpointing recomputes activations in backward: gradients equal, the flag really reaches timm."""
    from competition.train import set_grad_checkpointing

    cfg = ModelConfig(name="tf_efficientnet_lite0", weights_dir=str(PROJECT.root.parent / "shared" / "weights"))
    x = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8)
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = build_model(cfg, PROJECT, quiet=True).train()
        if checkpointing:
            set_grad_checkpointing(model, cfg.name)
            assert model.backbone.grad_checkpointing
        model.eval()  # no dropout or BN-statistics randomness between the two runs; checkpointing still applies
        model.backbone.grad_checkpointing = checkpointing
        torch.nn.functional.binary_cross_entropy_with_logits(model(x), torch.ones(4)).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_grad_checkpointing_refused_clearly_where_timm_has_none():
    from competition.train import set_grad_checkpointing

    model = build_model(ModelConfig(name="tf_efficientnet_lite0", pretrained=False), PROJECT, quiet=True)
    model.backbone.set_grad_checkpointing = None  # a backbone without the method
    with pytest.raises(ConfigError, match="grad_checkpointing"):
        set_grad_checkpointing(model, "some_model")
