"""The three registries (augmentation presets, TTA view sets, metrics): the config accepts exactly what is
registered, every entry works, and a new entry registered in its one module is usable end to end.

Every test is generated over the registries themselves, so an entry added later is checked without a new test.
"""

from __future__ import annotations

import subprocess
import sys
import typing

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score, log_loss, roc_auc_score

from competition import augment, metrics
from competition.augment import (Base, build_eval_transform, build_train_transform, preset_names, register_preset,
                                 register_views, rot_flip, tta_views, view_names)
from competition.config import (CompetitionConfig, ConfigError, DataConfig, TTAConfig, from_dict, load_config)
from competition.metrics import (best_threshold, greater_is_better, is_better, is_threshold_metric, metric_names,
                                 register_metric, score, score_all, score_note, selection_metric)
from competition.project import Project
from tests.conftest import CIFAKE, REPO

# (config section, dataclass, field, registry names): the config's allowed values must be these, in this order
FIELDS = [("data", DataConfig, "augment", preset_names), ("tta", TTAConfig, "views", view_names),
          ("competition", CompetitionConfig, "metric", metric_names)]
FIELD_IDS = [f"{s}.{k}" for s, _, k, _ in FIELDS]
# sklearn's reading of each registered metric at threshold 0.5: adding a metric means adding its reference here
SKLEARN = {"auc": lambda y, p: roc_auc_score(y, p), "f1": lambda y, p: f1_score(y, p >= 0.5),
           "accuracy": lambda y, p: accuracy_score(y, p >= 0.5), "logloss": lambda y, p: log_loss(y, p)}


def typos(name: str) -> list[str]:
    """Misspellings a person makes of a registered name, each close enough for a 'did you mean'."""
    return [name + "s", name + name[-1], name[:-1] + name[-1] * 2 + "x"]


def config_value(section: str, key: str, value: str, route: str, project: Project):
    """Load a config whose `section.key` is value, through a command-line override or a saved config dict."""
    if route == "override":
        return load_config("", [f"{section}.{key}={value}"], project, check_model=False)
    return from_dict({section: {key: value}})


# ---------------------------------------------------------------------------------------------- config <-> registry

@pytest.mark.parametrize("section, cls, key, names", FIELDS, ids=FIELD_IDS)
def test_config_allowed_values_are_the_registry(section, cls, key, names):
    allowed = typing.get_args(typing.get_type_hints(cls)[key])
    assert allowed == names() and len(allowed) >= 3
    assert getattr(cls(), key) in allowed  # the default is registered


@pytest.mark.parametrize("route", ["override", "saved"])
@pytest.mark.parametrize("section, key, name, typo", [
    (s, k, name, typo) for s, _, k, names in FIELDS for name in names() for typo in typos(name)])
def test_a_misspelt_name_is_refused_with_did_you_mean(section, key, name, typo, route, tmp_path):
    with pytest.raises(ConfigError) as err:
        config_value(section, key, typo, route, Project(tmp_path))
    message = str(err.value)
    assert "\n" not in message and f"`{section}.{key}`" in message and f"did you mean {name!r}" in message
    assert ", ".join(registered for registered in {"data": preset_names, "tta": view_names,
                                                   "competition": metric_names}[section]()) in message


def test_loading_the_config_imports_no_heavy_library():
    code = ("import sys, competition.config; "
            "print(sorted(m for m in ('torch', 'albumentations', 'cv2', 'sklearn', 'timm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ---------------------------------------------------------------------------------------------------------- presets

@pytest.mark.parametrize("shape", [(20, 17, 3), (64, 48, 3), (32, 32, 3)], ids=["small", "large", "exact"])
@pytest.mark.parametrize("d4", [False, True])
@pytest.mark.parametrize("name", preset_names())
def test_every_preset_builds_and_transforms_train_and_eval(name, d4, shape):
    data = DataConfig(img_size=32, augment=name, d4=d4)
    image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    out = build_train_transform(data, seed=1)(image=image)["image"]
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    assert build_eval_transform(data)(image=image)["image"].shape == (32, 32, 3)
    five = build_eval_transform(data, crops=5)(image=image)["image"]
    assert five.shape == ((5, 32, 32, 3) if augment.get_preset(name).native else (32, 32, 3))
    assert augment.get_preset(name).description  # its function's docstring says what it does


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_is_deterministic_at_eval_and_seeded_in_training(name):
    data = DataConfig(img_size=24, augment=name)
    image = np.random.default_rng(1).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    evals = [build_eval_transform(data)(image=image)["image"] for _ in range(2)]
    assert np.array_equal(*evals)
    trains = [build_train_transform(data, seed=5)(image=image)["image"] for _ in range(2)]
    assert np.array_equal(*trains)


@pytest.mark.parametrize("name", preset_names())
def test_the_crop_cache_follows_the_presets_registration(name):
    from competition.crop_cache import wants_crop_cache

    assert wants_crop_cache("on", name, 32, []) == augment.get_preset(name).random_crop
    assert not wants_crop_cache("off", name, 32, [])


def test_pad_constant_is_opencvs_reflect_101():
    import cv2

    assert augment.PAD == cv2.BORDER_REFLECT_101


# -------------------------------------------------------------------------------------------------------- TTA views

def _batch(h: int = 6, w: int = 6):
    return torch.arange(2 * 3 * h * w, dtype=torch.int64).view(2, 3, h, w)


@pytest.mark.parametrize("name", view_names())
def test_every_view_set_starts_with_the_identity_and_only_moves_pixels(name):
    x = _batch()
    views = tta_views(name)
    assert torch.equal(views[0](x), x)  # predict reports views[0] as the no-TTA score
    outs = [view(x) for view in views]
    for out in outs:  # a permutation of each image's pixels: invertible, nothing resampled or lost
        assert out.shape == x.shape
        assert torch.equal(out.flatten(1).sort(dim=1).values, x.flatten(1).sort(dim=1).values)
    assert len({tuple(o.flatten().tolist()) for o in outs}) == len(outs)  # no view repeated


@pytest.mark.parametrize("name", view_names())
def test_every_view_set_averages_per_image_probabilities(name):
    """A view changes the orientation the model sees, never which image a score belongs to: the averaged score of
    each image is the mean of the model on each view of that image (nothing to rotate back: one score per image)."""
    from competition.inference import predict_views

    model = ToyModel()
    x = (_batch(8, 8) % 256).to(torch.uint8)
    p = predict_views(model, x, tta_views(name))
    want = np.stack([torch.sigmoid(model(view(x))).numpy() for view in tta_views(name)])
    assert p.shape == (len(tta_views(name)), 2, 1) and np.allclose(p[..., 0], want, atol=1e-6)


class ToyModel(torch.nn.Module):
    """An orientation-sensitive stand-in for a detector: logit from left-minus-right and top-left brightness."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() / 255
        half = x.shape[-1] // 2
        return (x[..., :half].mean((1, 2, 3)) - x[..., half:].mean((1, 2, 3))) * 4 + x[:, 0, 0, 0]


# ---------------------------------------------------------------------------------------------------------- metrics

def toy_case(seed: int, n: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Labels and informative probabilities with ties (rounded), both classes present."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]
    return y, np.clip(np.round(0.5 + 0.35 * (y - 0.5) + rng.normal(0, 0.2, n), 2), 0.01, 0.99)


def test_every_metric_has_an_sklearn_reference():
    assert set(SKLEARN) == set(metric_names())


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name", metric_names())
def test_every_metric_agrees_with_sklearn_and_points_the_right_way(name, seed):
    y, p = toy_case(seed)
    assert score(name, y, p) == pytest.approx(SKLEARN[name](y, p), abs=1e-9)
    good, bad = score(name, y, p), score(name, y, 1 - p)  # informative vs reversed predictions
    assert is_better(name, good, bad) and not is_better(name, bad, good)
    assert (good > bad) == greater_is_better(name)
    assert score_all(y, p)[name] == pytest.approx(good)


@pytest.mark.parametrize("seed", [0, 3, 4])
@pytest.mark.parametrize("name", metric_names())
def test_best_threshold_beats_every_other_cut(name, seed):
    y, p = toy_case(seed, 120)
    t = best_threshold(name, y, p)
    if not is_threshold_metric(name):
        assert t == 0.5 and selection_metric(name) == name and "threshold-free" in score_note(name, t)
        return
    cuts = np.append(np.unique(p), 1.0)
    scores = [score(name, y, p, c) for c in cuts]
    best = max(scores) if greater_is_better(name) else min(scores)
    assert score(name, y, p, t) == pytest.approx(best)
    generic = metrics._scan_threshold(metrics.get_metric(name), y, p)  # the search any new metric gets for free
    assert score(name, y, p, generic) == pytest.approx(best)
    assert selection_metric(name) == "logloss" and "threshold" in score_note(name, t)


# ------------------------------------------------------------------------ a new entry, registered in its one module

@pytest.fixture
def fresh_registries(monkeypatch):
    """The registries as copies, so what a test registers disappears after it."""
    monkeypatch.setattr(augment, "PRESETS", dict(augment.PRESETS))
    monkeypatch.setattr(augment, "VIEW_SETS", dict(augment.VIEW_SETS))
    monkeypatch.setattr(metrics, "METRICS", dict(metrics.METRICS))


def _register_toys() -> None:
    """A preset, a view set and two metrics, each one function + one registration, as a person would add them."""
    @register_preset("vflip_crop", random_crop=True)
    def vflip_crop(data: DataConfig, base: Base) -> list:
        """native random crop, vertical flip"""
        import albumentations as A

        return [base.crop, A.VerticalFlip(p=0.5)]

    @register_views("vflip")
    def vflip_views() -> list:
        """The image and its upside-down copy."""
        return [rot_flip(0, False), lambda x: x.flip(dims=(2,))]

    @register_metric("brier", higher_is_better=False, calibrated=True)
    def brier(target: np.ndarray, prob: np.ndarray) -> float:
        """Mean squared error of the probabilities."""
        return float(np.mean((prob - target) ** 2))

    @register_metric("balanced_accuracy", higher_is_better=True, threshold=True)
    def balanced_accuracy(target: np.ndarray, label: np.ndarray) -> float:
        """Mean of the per-class recalls."""
        return float(np.mean([np.mean(label[target == k] == k) for k in (0, 1)]))


@pytest.mark.parametrize("section, key, value", [("data", "augment", "vflip_crop"), ("tta", "views", "vflip"),
                                                 ("competition", "metric", "brier"),
                                                 ("competition", "metric", "balanced_accuracy")])
@pytest.mark.parametrize("route", ["override", "saved"])
def test_a_registered_entry_is_accepted_by_the_config(fresh_registries, section, key, value, route, tmp_path):
    with pytest.raises(ConfigError, match="is not one of"):
        config_value(section, key, value, route, Project(tmp_path))  # unknown before registration
    _register_toys()
    cfg = config_value(section, key, value, route, Project(tmp_path))
    assert getattr(getattr(cfg, section), key) == value
    with pytest.raises(ConfigError, match=f"did you mean {value!r}"):
        config_value(section, key, value + "s", route, Project(tmp_path))


def test_a_registered_preset_and_view_set_predict_end_to_end(fresh_registries, tmp_path):
    from competition.crop_cache import wants_crop_cache
    from competition.dataset import make_loader
    from competition.inference import eval_dataset, predict

    _register_toys()
    cfg = load_config("", ["data.augment=vflip_crop", "data.img_size=24", "tta.views=vflip", "tta.crops=5",
                           "train.batch_size=2"], Project(tmp_path), check_model=False)
    paths = [str(CIFAKE / rel) for rel in pd.read_csv(CIFAKE / "test.csv")["id"][:5]]
    image = np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    assert build_train_transform(cfg.data, seed=0)(image=image)["image"].shape == (24, 24, 3)
    assert wants_crop_cache("on", cfg.data.augment, 24, paths)  # registered as a random-crop preset
    dataset = eval_dataset(cfg, paths)
    assert dataset[0][0].shape == (5, 3, 24, 24)  # a native preset: tta.crops applies
    run = predict(ToyModel(), make_loader(dataset, cfg, torch.device("cpu"), train=False), torch.device("cpu"),
                  cfg.tta.views)
    assert run.prob.shape == (5,) and np.all((run.prob > 0) & (run.prob < 1)) and not run.errors
    assert not np.allclose(run.prob, run.prob_identity)  # the vertical flip was averaged in


@pytest.mark.parametrize("name", ["brier", "balanced_accuracy"])
def test_a_registered_metric_scores_ranks_and_blends_end_to_end(fresh_registries, name):
    from competition.ensemble import Members, evaluate_method
    from competition.leaderboard import _rank

    _register_toys()
    y, p = toy_case(7)
    good, bad = score(name, y, p), score(name, y, 1 - p)
    assert is_better(name, good, bad) and set(score_all(y, p)) == set(metric_names())
    t = best_threshold(name, y, p)
    assert (t != 0.5 or not is_threshold_metric(name)) and score(name, y, p, t) >= score(name, y, p)
    rows = [{"metric": name, "oof_score": bad, "experiment": "bad"}, {"metric": name, "oof_score": good,
                                                                      "experiment": "good"}]
    assert [r["experiment"] for r in _rank(rows, "oof_score")] == ["good", "bad"]
    assert (name in metrics.THRESHOLD_METRICS) == is_threshold_metric(name)
    members = Members(names=["good", "noise"], oof=np.column_stack([p, np.random.default_rng(8).uniform(size=len(y))]),
                      test=np.full((4, 2), 0.5), target=y, fold=np.arange(len(y)) % 4, ids=pd.Series(range(len(y))),
                      test_ids=pd.Series(range(4)), metric=name)
    blended = evaluate_method("hill", members)  # nested CV, threshold and direction all read from the registry
    assert is_better(name, blended["nested"]["mean"], score(name, y, 1 - p))
