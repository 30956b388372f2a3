"""train.grad_checkpointing changes memory and time, not the model: one training step with checkpointing gives the
same gradients and the same BatchNorm running statistics as one without (the recomputed forward's second update of
the statistics is undone by competition.train.backward)."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import timm
import torch

from competition.train import backward, norm_statistics

BACKBONES = ["tf_efficientnet_lite0", "tf_mobilenetv3_small_100", "mobilenetv2_100", "regnetx_002"]


def one_step(model: torch.nn.Module, images: torch.Tensor, checkpointed: bool, undo: bool = True) -> None:
    """Forward in training mode, then the kit's backward (or a bare backward when undo is False)."""
    model.train()
    loss = model(images).float().square().mean()
    if undo:
        backward(SimpleNamespace(model=model, scaler=torch.amp.GradScaler("cpu", enabled=False)), loss, checkpointed)
    else:
        loss.backward()


def pair(name: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Two copies of one randomly initialised backbone; the second recomputes activations in backward."""
    torch.manual_seed(0)
    plain = timm.create_model(name, pretrained=False, num_classes=1)
    checkpointed = copy.deepcopy(plain)
    checkpointed.set_grad_checkpointing(True)
    return plain, checkpointed


@pytest.mark.parametrize("accumulate", [1, 2])
@pytest.mark.parametrize("name", BACKBONES)
def test_checkpointing_keeps_statistics_and_gradients(name: str, accumulate: int) -> None:
    plain, checkpointed = pair(name)
    torch.manual_seed(1)
    batches = [torch.randn(4, 3, 64, 64) for _ in range(accumulate)]
    for images in batches:
        one_step(plain, images, checkpointed=False)
        one_step(checkpointed, images, checkpointed=True)
    stats = list(zip(norm_statistics(plain), norm_statistics(checkpointed)))
    assert stats, f"{name} has BatchNorm layers"
    for a, b in stats:
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for (key, a), (_, b) in zip(plain.named_parameters(), checkpointed.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=f"{name} {key}")


@pytest.mark.parametrize("name", BACKBONES[:2])
def test_without_the_undo_statistics_drift(name: str) -> None:
    """The control: a bare backward through checkpointed blocks updates the statistics twice (so the test above can
    fail), which is what backward() undoes."""
    plain, checkpointed = pair(name)
    images = torch.randn(4, 3, 64, 64)
    one_step(plain, images, checkpointed=False)
    one_step(checkpointed, images, checkpointed=True, undo=False)
    counts = [(int(a), int(b)) for a, b in zip(norm_statistics(plain), norm_statistics(checkpointed)) if a.ndim == 0]
    assert counts and any(b == 2 * a for a, b in counts)
    assert any(not torch.allclose(a, b) for a, b in zip(norm_statistics(plain), norm_statistics(checkpointed))
               if a.ndim == 1)
