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


@pytest.mark.slow
def test_swa_averages_the_last_epochs_and_recomputes_batchnorm_statistics(tmp_path):
    from torch.optim.swa_utils import update_bn

    from competition.model import load_detector
    from competition.train import FoldInputs, train_fold

    cfg = replace(config(swa=True, swa_epochs=2, epochs=3, patience=0, batch_size=32, optimizer="sgd", lr=0.05),
                  data={"num_workers": 0})
    inputs = FoldInputs(fold=0, train=Images(), val=Images(), val_target=Images().y.numpy(), prior=0.5)
    best = train_fold(cfg, inputs, tmp_path, torch.device("cpu"), PROJECT)
    ckpt = torch.load(best, weights_only=True)
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    assert ckpt["swa"] and int(last["swa"]["n_averaged"]) == 2  # epochs 1 and 2 averaged
    swa = load_detector(best, torch.device("cpu"))
    bn = next(m for m in swa.modules() if isinstance(m, torch.nn.BatchNorm2d))
    saved = bn.running_mean.clone()
    live = next(v for k, v in last["model"].items() if k.endswith("running_mean"))  # the trained model's statistics
    copied = next(v for k, v in last["swa"].items() if k.endswith("running_mean"))  # the average's own (stale) buffers
    update_bn((x for x, *_ in DataLoader(Images(), batch_size=32)), swa)  # what the averaged weights give
    assert torch.allclose(bn.running_mean, saved, atol=1e-4)
    assert (saved - live).abs().max() > 1e-3 and (saved - copied).abs().max() > 1e-3
    log = __import__("pandas").read_csv(tmp_path / "log.csv")
    assert "swa_val_score" in log.columns and log["swa_val_score"].notna().sum() == 1


def test_swa_holds_a_constant_rate_in_its_window_and_refuses_early_stopping(tmp_path):
    from competition.train import build_scheduler

    cfg = config(swa=True, swa_epochs=2, epochs=4, patience=0, swa_lr=3e-4, warmup_epochs=0.5)
    state = new_state(cfg, 0, 10, torch.device("cpu"), PROJECT)
    lrs = []
    for _ in range(20):
        state.optimizer.step()
        state.scheduler.step()
        lrs.append(state.scheduler.get_last_lr()[0])
    assert lrs[0] < lrs[3] < lrs[4] > lrs[10] > lrs[-1]  # warmup over 5 updates, then the cosine decays
    state.scheduler.hold(3e-4)
    resumed = build_scheduler(state.optimizer, cfg, 10)
    resumed.load_state_dict(state.scheduler.state_dict())
    resumed.step()
    assert resumed.get_last_lr() == [3e-4, 3e-4] and resumed.last_epoch == 21
    with pytest.raises(ConfigError, match="patience"):
        from competition.config import validate

        validate(config(swa=True, patience=3, epochs=4), "x.yaml", PROJECT, check_model=False)


@pytest.mark.parametrize("kind", ["cosine", "tanh", "poly", "step"])
def test_timm_schedulers_warm_up_then_decay_to_the_floor(kind):
    state = new_state(config(scheduler=kind, epochs=3, warmup_epochs=1, min_lr=1e-6), 0, 10, torch.device("cpu"),
                      PROJECT)
    lrs = [state.scheduler.get_last_lr()[0]]
    for _ in range(30):
        state.scheduler.step()
        lrs.append(state.scheduler.get_last_lr()[0])
    assert lrs[0] < 1e-4 and max(lrs) == pytest.approx(1e-3, rel=0.05) and lrs[-1] < 1.1e-4


def test_mixup_mixes_pixels_and_targets_alike_and_keeps_bad_rows_out():
    from competition.train import build_mixer, mix_batch

    torch.manual_seed(0)
    mixer = build_mixer(config(mixup=1.0, mix_prob=1.0))
    images = torch.stack([torch.full((3, 4, 4), 200, dtype=torch.uint8), torch.zeros((3, 4, 4), dtype=torch.uint8)])
    target, weight = torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])
    mixed, soft, w = mix_batch(mixer, images, target, weight, channels_last=False)
    lam = float(mixed[0, 0, 0, 0]) / 200  # pixel share of image 0 in mixed image 0
    assert 0 < lam < 1 and soft[0] == pytest.approx(lam, abs=1e-5) and soft[1] == pytest.approx(1 - lam, abs=1e-5)
    _, _, w = mix_batch(mixer, images, target, torch.tensor([1.0, 0.0]), channels_last=False)
    assert w.tolist() == [0.0, 0.0]  # a pair with an undecodable image is dropped
    assert build_mixer(config()) is None


def test_highpass_input_removes_flat_content_and_d4_draws_all_eight_views():
    import albumentations  # noqa: F401 - the preset needs it
    from competition.augment import build_train_transform
    from competition.config import DataConfig
    from competition.model import highpass

    flat = torch.full((1, 3, 8, 8), 0.7)
    assert highpass(flat).abs().max() < 1e-6  # no residual in a flat image
    edge = torch.zeros((1, 3, 8, 8))
    edge[..., 4:] = 1.0
    assert highpass(edge).abs().max() > 0.5
    t = build_train_transform(DataConfig(img_size=4, augment="light", d4=True), seed=1)
    x = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
    assert len({t(image=x)["image"].tobytes() for _ in range(200)}) == 8
    plain = build_train_transform(DataConfig(img_size=4, augment="light"), seed=1)
    assert len({plain(image=x)["image"].tobytes() for _ in range(200)}) == 2
