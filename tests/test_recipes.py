"""Training recipes: the optimizer from timm's factory with layer-wise LR decay, the focal loss, and gradient
accumulation whose last, shorter group is scaled like the others."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from competition.config import Config, ConfigError, load_config, replace
from competition.train import new_state, per_image_loss, train_one_epoch
from tests.conftest import PROJECT, WEIGHTS, smoke_experiment


def config(**train) -> Config:
    return replace(Config(), model={"name": "regnetx_002", "weights_dir": str(WEIGHTS), "drop_rate": 0.0},
                   train={"warmup_epochs": 0.0, "epochs": 1, "lr": 1e-3, **train})


def group_of(optimizer: torch.optim.Optimizer, param: torch.nn.Parameter) -> dict:
    return next(g for g in optimizer.param_groups if any(p is param for p in g["params"]))


def test_layer_decay_gives_each_block_a_lower_rate_than_the_one_above():
    state = new_state(config(layer_decay=0.5), 0, 10, torch.device("cpu"), PROJECT)
    backbone, opt = state.model.backbone, state.optimizer
    head = group_of(opt, backbone.get_classifier().weight)["lr"]
    stem = group_of(opt, backbone.stem.conv.weight)["lr"]
    last_stage = group_of(opt, next(backbone.s4.parameters()))["lr"]
    assert head == pytest.approx(1e-3) and stem < last_stage < head
    assert stem == pytest.approx(1e-3 * 0.5 ** round(np.log(stem / 1e-3) / np.log(0.5)))  # a power of the decay
    assert len({round(g["lr"], 12) for g in opt.param_groups}) >= 4
    flat = new_state(config(), 0, 10, torch.device("cpu"), PROJECT).optimizer
    assert {g["lr"] for g in flat.param_groups} == {1e-3} and len(flat.param_groups) == 2  # decay / no decay
    no_decay = [g for g in flat.param_groups if g["weight_decay"] == 0.0][0]
    assert all(p.ndim <= 1 for p in no_decay["params"])  # biases and norms are not decayed


def test_unknown_optimizer_is_refused_with_close_names(tmp_path):
    from tests.conftest import make_competition

    home = make_competition(tmp_path)
    smoke_experiment(home, "exp_o")
    from competition.project import Project

    with pytest.raises(ConfigError, match="not a timm optimizer.*adamw"):
        load_config("exp_o", ["train.optimizer=adamwx"], Project(home))
    assert load_config("exp_o", ["train.optimizer=sgd"], Project(home)).train.optimizer == "sgd"


def test_focal_loss_down_weights_easy_images():
    logits, target = torch.tensor([4.6, 0.0, -2.0]), torch.tensor([1.0, 1.0, 1.0])
    bce = per_image_loss(logits, target, config())
    assert torch.allclose(per_image_loss(logits, target, config(loss="focal", focal_gamma=0.0)), bce)
    focal = per_image_loss(logits, target, config(loss="focal", focal_gamma=2.0))
    ratio = focal / bce  # (1 - p_t)^2: ~1e-4 for an easy image (p 0.99), 0.25 at p 0.5, 0.78 for a hard one
    assert ratio[0] < 1e-3 and ratio[1] == pytest.approx(0.25) and ratio[2] > 0.7


@pytest.mark.parametrize("warmup", [False, True])
def test_ema_warmup_follows_the_model_early_and_plain_ema_holds_the_start(warmup):
    cfg = replace(config(ema=True, ema_decay=0.999, ema_warmup=warmup, optimizer="sgd", lr=0.5, weight_decay=0.0),
                  model={"pretrained": False})
    loader = DataLoader(Images(), batch_size=32, shuffle=False)
    state = new_state(cfg, 0, len(loader), torch.device("cpu"), PROJECT)
    start = {k: v.clone() for k, v in state.model.backbone.get_classifier().state_dict().items()}
    train_one_epoch(state, state.model, loader, cfg, torch.device("cpu"), "test")
    model_w = state.model.backbone.get_classifier().weight.detach()
    ema_w = state.ema.module.backbone.get_classifier().weight.detach()
    to_model, to_start = float((ema_w - model_w).abs().max()), float((ema_w - start["weight"]).abs().max())
    if warmup:  # 3 steps: decays 0, 0.37, 0.52 -> mostly the trained weights
        assert to_model < to_start
    else:  # decay 0.999 from the zero head: 99.7 % the start
        assert to_start < 0.01 * float((model_w - start["weight"]).abs().max()) < to_model


class Images(Dataset):
    """96 fixed random 32 px images with labels, in the kit's (image, label, index, error) form."""

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randint(0, 256, (96, 3, 32, 32), dtype=torch.uint8, generator=g)
        self.y = (torch.rand(96, generator=g) > 0.5).float()

    def __len__(self):
        return 96

    def __getitem__(self, i):
        return self.x[i], self.y[i], i, ""


def train_once(batch: int, accum: int) -> dict:
    """One epoch of plain SGD on a norm-without-batch-statistics model (ConvNeXt: LayerNorm) from a fixed init."""
    cfg = replace(Config(), model={"name": "convnext_atto", "pretrained": False, "drop_rate": 0.0},
                  train={"optimizer": "sgd", "lr": 0.5, "weight_decay": 0.0, "warmup_epochs": 0.0, "epochs": 1,
                         "batch_size": batch, "accum_steps": accum, "channels_last": False})
    loader = DataLoader(Images(), batch_size=batch, shuffle=False)
    state = new_state(cfg, 0, len(loader), torch.device("cpu"), PROJECT)
    torch.nn.init.normal_(state.model.backbone.get_classifier().weight, std=0.1, generator=torch.Generator().manual_seed(1))
    train_one_epoch(state, state.model, loader, cfg, torch.device("cpu"), "test")
    return {k: v.detach().clone() for k, v in state.model.state_dict().items()}


def test_accumulation_2x32_equals_64_including_the_last_short_group():
    # 96 images: batch 64 steps on [64], [32]; batch 32 x accum 2 steps on [32+32], [32] (a group of one)
    big, accumulated = train_once(64, 1), train_once(32, 2)
    start = train_once(96, 1)  # one step on everything: a different trajectory, to show the check can tell
    diff = max(float((big[k] - accumulated[k]).abs().max()) for k in big)
    moved = max(float((big[k] - start[k]).abs().max()) for k in big)
    assert diff < 1e-5 < moved


@pytest.mark.slow
def test_one_epoch_on_200_images_learns_and_a_zero_loss_would_not_pass(tmp_path, monkeypatch):
    import json

    import competition.train as train
    from tests.conftest import call_kit, make_competition, write_yaml

    home = make_competition(tmp_path, n_per_class=100, n_test=4)
    for name in ("exp_learn", "exp_zero"):
        write_yaml(home / "experiments" / f"{name}.yaml", {
            "model": {"name": "tf_efficientnet_lite0", "weights_dir": str(WEIGHTS), "input_upscale": 2},
            "data": {"img_size": 32, "cache_dir": str(home / ".cache")},
            "train": {"epochs": 1, "batch_size": 8, "lr": 2e-3, "warmup_epochs": 0.1, "threads": 2},
            "tta": {"views": "identity"}})
    auc = lambda name: json.loads((home / "experiments" / name / "metrics.json").read_text())["oof_score"]  # noqa: E731
    call_kit(home, "competition.experiment", "exp_learn")
    monkeypatch.setattr(train, "per_image_loss", lambda logits, target, cfg: logits * 0.0)  # a loss that is always 0
    call_kit(home, "competition.experiment", "exp_zero")
    assert auc("exp_learn") > 0.7 and auc("exp_zero") < 0.6, (auc("exp_learn"), auc("exp_zero"))
