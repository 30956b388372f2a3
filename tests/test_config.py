"""Config: base inheritance, overrides, and one clear error line for each kind of mistake."""

from __future__ import annotations

import pytest
import yaml

from competition.config import ConfigError, load_config, save_config, to_dict
from tests.conftest import write_yaml


def test_base_inheritance_and_overrides(tmp_path):
    write_yaml(tmp_path / "base.yaml", {"model": {"name": "regnetx_002"}, "train": {"epochs": 7, "lr": 0.01}})
    exp = write_yaml(tmp_path / "exp042.yaml", {"base": "base.yaml", "train": {"epochs": 2}})
    cfg = load_config(str(exp), ["train.batch_size=16", "data.augment=light", "tta.views=d4"])
    assert cfg.name == "exp042"
    assert cfg.model.name == "regnetx_002"  # from base
    assert cfg.train.epochs == 2  # experiment beats base
    assert cfg.train.lr == 0.01
    assert cfg.train.batch_size == 16  # command line beats both
    assert (cfg.data.augment, cfg.tta.views) == ("light", "d4")
    assert cfg.competition.name == "cifake"  # from the repository's competition.yaml


def test_resolved_config_round_trips(tmp_path):
    exp = write_yaml(tmp_path / "exp1.yaml", {"train": {"epochs": 3}})
    cfg = load_config(str(exp))
    save_config(cfg, tmp_path / "out" / "config.yaml")
    saved = yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())
    assert saved == to_dict(cfg)
    with pytest.raises(Exception):
        cfg.train.epochs = 5  # frozen: runtime state cannot be written into the config


@pytest.mark.parametrize("body, overrides, message", [
    ({"train": {"epocs": 3}}, [], "unknown config key `train.epocs`; did you mean `epochs`?"),
    ({"trian": {"epochs": 3}}, [], "unknown config key `trian`; did you mean `train`?"),
    ({"train": {"epochs": "three"}}, [], "`train.epochs`: expected int, got str"),
    ({"train": {"channels_last": 1}}, [], "`train.channels_last`: expected bool, got int"),
    ({}, ["train.lr=fast"], "`train.lr`: expected float, got str"),
    ({"model": {"name": "efficientnet_b00"}}, [], "unknown timm model `model.name: efficientnet_b00`; close names: "),
    ({"data": {"augment": "forensics"}}, [], "`data.augment`: 'forensics' is not one of forensic, light, resize, none (did you mean 'forensic'?)"),
    ({"model": {"pretrained_file": "nowhere/w.safetensors"}}, [], "weights file `model.pretrained_file: nowhere/w.safetensors` not found"),
    ({"competition": {"metric": "rmse"}}, [], "`competition.metric`: 'rmse' is not one of auc, f1, accuracy, logloss"),
    ({}, ["train.epochs"], "expected section.key=value"),
])
def test_bad_configs_fail_with_one_clear_line(tmp_path, body, overrides, message):
    exp = write_yaml(tmp_path / "exp9.yaml", body)
    with pytest.raises(ConfigError) as err:
        load_config(str(exp), overrides)
    text = str(err.value)
    assert message in text
    assert "\n" not in text


def test_base_cycle_is_refused(tmp_path):
    write_yaml(tmp_path / "a.yaml", {"base": "b.yaml"})
    write_yaml(tmp_path / "b.yaml", {"base": "a.yaml"})
    with pytest.raises(ConfigError, match=r"`base:` cycle a.yaml -> b.yaml -> a.yaml"):
        load_config(str(tmp_path / "a.yaml"))


def test_missing_experiment_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(str(tmp_path / "nope.yaml"))


def test_repository_experiments_load():
    for name in ("exp001", "exp002"):
        cfg = load_config(name)
        assert cfg.name == name and cfg.model.pretrained


def test_on_and_off_are_words_not_booleans(tmp_path):
    """YAML 1.1 would read `off` as False: the documented `train.amp: off` / `data.crop_cache: on` must load."""
    exp = tmp_path / "exp1.yaml"
    exp.write_text("train:\n  amp: off\n  ema: true\ndata:\n  crop_cache: on\n")
    cfg = load_config(str(exp), ["data.augment=light"])
    assert (cfg.train.amp, cfg.data.crop_cache, cfg.train.ema) == ("off", "on", True)
    assert load_config(str(exp), ["data.crop_cache=off"]).data.crop_cache == "off"
    with pytest.raises(ConfigError, match="`train.channels_last`: expected bool, got str 'yes'"):
        load_config(str(exp), ["train.channels_last=yes"])
