"""One frozen, validated config per experiment: YAML with `base:` inheritance and `key=value` overrides.

Every default lives in the dataclasses below, with a comment. A YAML file only states what differs.
Unknown keys, wrong types, unknown timm models / augmentation presets / metrics and missing weight
files are refused at load time with one line that says what to fix.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from competition import ROOT

EXPERIMENTS_DIR = ROOT / "experiments"
COMPETITION_FILE = ROOT / "competition.yaml"  # the one file to edit when switching competitions


class ConfigError(ValueError):
    """A config file or override is invalid; the message says which and how to fix it."""


@dataclass(frozen=True)
class CompetitionConfig:
    name: str = "cifake"  # short name, used in fold file names
    slug: str = ""  # Kaggle competition slug, for `competition.submit`
    data_dir: str = "../shared/competitions/cifake"  # folder from `kaggle competitions download`; relative to repo root
    train_csv: str = "train.csv"  # table of training images; "" for the image-folder layout
    test_csv: str = "test.csv"  # table of test images; "" to list `test_folder` instead
    sample_submission: str = "sample_submission.csv"  # "" when the competition has none
    path_column: str = "file_name"  # train.csv column holding the image path (relative to data_dir)
    label_column: str = "label"  # train.csv column holding 0 (human) / 1 (AI-generated)
    test_path_column: str = "id"  # test.csv column holding the image path
    id_column: str = "id"  # submission id column
    target_column: str = "label"  # submission value column
    class_folders: dict = field(default_factory=dict)  # image-folder layout: {"real": 0, "fake": 1}
    test_folder: str = ""  # image-folder layout: folder of unlabelled test images
    metric: str = "auc"  # auc | f1 | accuracy | logloss: what the leaderboard ranks by
    submission_values: str = "prob"  # prob (probability of AI) | label (0/1 at an OOF-chosen threshold)


@dataclass(frozen=True)
class FoldsConfig:
    n_splits: int = 5  # K of the K-fold split
    seed: int = 42  # shuffling seed of the split; same seed -> byte-identical folds file
    group_column: str = ""  # train.csv column with a group id (pairs, sources): groups never cross folds
    groups: str = ""  # "" | phash: group near-duplicates by perceptual hash (when there is no group_column)
    phash_distance: int = 6  # groups: phash joins images whose 64-bit pHashes differ in at most this many bits
    ood_split: str = ""  # "" | cluster: add an `ood_fold` column holding out whole content clusters (./run.sh expNNN --ood)
    ood_clusters: int = 25  # ood_split: number of k-means content clusters (on perceptual-hash bits)
    audit: bool = True  # run the shortcut audit (competition.audit) whenever a folds file is built


@dataclass(frozen=True)
class ModelConfig:
    name: str = "tf_efficientnet_lite0"  # any timm model name
    pretrained: bool = True  # ImageNet weights: from pretrained_file, ../shared/weights, or the hub
    pretrained_file: str = ""  # local .safetensors/.pth; "" = look in weights_dir/models.json, then the hub
    weights_dir: str = "../shared/weights"  # folder with models.json describing local weight files
    drop_rate: float = 0.2  # dropout before the classifier
    drop_path_rate: float = 0.0  # stochastic depth, for models that support it
    input_upscale: int = 1  # integer nearest-neighbour zoom inside the model (keeps pixel artifacts of tiny images)


@dataclass(frozen=True)
class DataConfig:
    img_size: int = 224  # crop size fed to the model (before input_upscale)
    augment: str = "forensic"  # augmentation preset: forensic | light | resize | none
    jpeg_quality_min: int = 60  # forensic: lowest JPEG re-compression quality
    jpeg_p: float = 0.5  # forensic: probability of JPEG re-compression (both classes)
    blur_p: float = 0.2  # forensic: probability of Gaussian blur (both classes)
    cache: str = "auto"  # auto | memmap | none; memmap decodes small same-sized images once into a uint8 cache
    cache_dir: str = ".cache"  # where decoded-image caches live; relative to repo root
    num_workers: int = -1  # DataLoader workers; -1 = chosen from the machine's cores
    on_bad_image: str = "skip"  # skip (log, count, list) | fail (stop before training)
    normalize_encoding: dict = field(default_factory=dict)  # e.g. {format: jpeg, quality: 90}: re-encode every
    # image (both classes, train and test) in memory before augmentation, hiding the original encoding


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10  # maximum epochs per fold
    batch_size: int = 64  # images per optimizer micro-step
    accum_steps: int = 1  # gradient accumulation: effective batch = batch_size * accum_steps
    lr: float = 1e-3  # peak AdamW learning rate
    weight_decay: float = 1e-2  # AdamW weight decay
    warmup_epochs: float = 0.5  # linear warmup length, then cosine decay to min_lr
    min_lr: float = 1e-6  # floor of the cosine schedule
    amp: str = "auto"  # auto (bf16 if supported, else fp16+GradScaler, on CUDA; fp32 on CPU) | bf16 | fp16 | off
    channels_last: bool = True  # NHWC memory format (~2x for depthwise CNNs on CPU)
    compile: bool = False  # torch.compile the model
    ema: bool = False  # keep an exponential moving average of weights and validate with it
    ema_decay: float = 0.999  # EMA decay per optimizer step
    patience: int = 3  # early stopping: epochs without validation improvement
    label_smoothing: float = 0.0  # BCE target smoothing
    seed: int = 42  # seeds model init, shuffling and augmentation
    folds: list = field(default_factory=list)  # folds to run; [] = all
    threads: int = 0  # torch CPU threads; 0 = all cores
    device: str = "auto"  # auto | cpu | cuda


@dataclass(frozen=True)
class TTAConfig:
    views: str = "hflip"  # identity | hflip | d4 (8 flips/rotations)
    crops: int = 1  # native-scale crops per image for images larger than img_size: 1 (centre) or 5 (corners + centre)


@dataclass(frozen=True)
class Config:
    name: str = ""  # experiment name (file stem); set by the loader
    description: str = ""  # free text shown on the leaderboard
    competition: CompetitionConfig = field(default_factory=CompetitionConfig)
    folds: FoldsConfig = field(default_factory=FoldsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tta: TTAConfig = field(default_factory=TTAConfig)


CHOICES = {
    "competition.metric": ("auc", "f1", "accuracy", "logloss"),
    "competition.submission_values": ("prob", "label"),
    "data.augment": ("forensic", "light", "resize", "none"),
    "folds.groups": ("", "phash"),
    "folds.ood_split": ("", "cluster"),
    "data.cache": ("auto", "memmap", "none"),
    "data.on_bad_image": ("skip", "fail"),
    "train.amp": ("auto", "bf16", "fp16", "off"),
    "train.device": ("auto", "cpu", "cuda"),
    "tta.views": ("identity", "hflip", "d4"),
}


def resolve_path(path: str | Path) -> Path:
    """Resolve a config path: absolute as is, relative to the repository root otherwise."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else (ROOT / path).resolve()


def experiment_file(name_or_path: str) -> Path:
    """Map `exp001` or a path to the experiment's YAML file."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        return path if path.is_absolute() else (Path.cwd() / path)
    return EXPERIMENTS_DIR / f"{name_or_path}.yaml"


def _read_yaml(path: Path, chain: tuple[Path, ...]) -> dict:
    """Read one YAML file and merge it over its `base:` chain."""
    path = path.resolve()
    if path in chain:
        cycle = " -> ".join(p.name for p in (*chain, path))
        raise ConfigError(f"{path}: `base:` cycle {cycle}; remove one of the `base:` lines")
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found; create it or fix the `base:` / experiment name")
    with path.open() as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is None:
        return data
    parent = _read_yaml((path.parent / base), (*chain, path))
    return _merge(parent, data)


def _merge(base: dict, over: dict) -> dict:
    """Deep-merge `over` into a copy of `base` (mappings merge, everything else replaces)."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "class_folders":
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_overrides(items: list[str]) -> dict:
    """Turn `train.epochs=3 model.name=resnet18` into a nested dict (values parsed as YAML)."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected section.key=value, e.g. train.epochs=3")
        dotted, raw = item.split("=", 1)
        node = out
        keys = dotted.strip().split(".")
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = yaml.safe_load(raw) if raw != "" else ""
    return out


def _check_type(where: str, value: Any, hint: Any) -> Any:
    """Return value coerced to hint (int -> float only), or raise a ConfigError naming the key."""
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (list, dict):
        ok = isinstance(value, hint)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, hint)
    if not ok:
        raise ConfigError(f"{where}: expected {hint.__name__}, got {type(value).__name__} {value!r}")
    return value


def _build(cls: type, data: dict, where: str) -> Any:
    """Build a (nested) config dataclass from a dict, refusing unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean `{close[0]}`?" if close else f"; valid keys: {', '.join(names)}"
            raise ConfigError(f"unknown config key `{path}`{hint}")
        hint_t = hints[key]
        if dataclasses.is_dataclass(hint_t):
            if not isinstance(value, dict):
                raise ConfigError(f"`{path}` must be a mapping of keys, got {value!r}")
            kwargs[key] = _build(hint_t, value, path)
        else:
            kwargs[key] = _check_type(f"`{path}`", value, hint_t)
    return cls(**kwargs)


def to_dict(cfg: Config) -> dict:
    """The config as plain nested dicts (what is saved next to the outputs)."""
    return dataclasses.asdict(cfg)


def replace(cfg: Config, **sections: dict) -> Config:
    """A new Config with some section keys changed, e.g. replace(cfg, train={"epochs": 1})."""
    return _build(Config, _merge(to_dict(cfg), sections), "")


def validate(cfg: Config, where: str, check_model: bool = True) -> None:
    """Check choices, model names and weight files; raise one ConfigError line on the first problem."""
    flat = to_dict(cfg)
    for dotted, allowed in CHOICES.items():
        section, key = dotted.split(".")
        value = flat[section][key]
        if value not in allowed:
            close = difflib.get_close_matches(str(value), allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{where}: `{dotted}: {value}` is not one of {', '.join(allowed)}{hint}")
    if check_model:
        _validate_model(cfg.model, where)
    if cfg.folds.n_splits < 2:
        raise ConfigError(f"{where}: `folds.n_splits` must be >= 2, got {cfg.folds.n_splits}")
    if cfg.model.input_upscale < 1:
        raise ConfigError(f"{where}: `model.input_upscale` must be >= 1, got {cfg.model.input_upscale}")
    if cfg.tta.crops not in (1, 5):
        raise ConfigError(f"{where}: `tta.crops` must be 1 or 5, got {cfg.tta.crops}")
    _validate_encoding(cfg.data.normalize_encoding, where)
    bad_folds = [f for f in cfg.train.folds if not isinstance(f, int) or not 0 <= f < cfg.folds.n_splits]
    if bad_folds:
        raise ConfigError(f"{where}: `train.folds` {bad_folds} outside 0..{cfg.folds.n_splits - 1}")


def _validate_encoding(spec: dict, where: str) -> None:
    """normalize_encoding must be {} or {format: jpeg|png|webp, quality: 1..100}."""
    if not spec:
        return
    unknown = set(spec) - {"format", "quality"}
    fmt, quality = spec.get("format"), spec.get("quality", 90)
    if unknown or fmt not in ("jpeg", "png", "webp") or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise ConfigError(f"{where}: `data.normalize_encoding: {spec}` must look like {{format: jpeg, quality: 90}} "
                          f"(format jpeg|png|webp, quality 1-100)")


def _validate_model(model: ModelConfig, where: str) -> None:
    """Refuse unknown timm models (with close names) and missing weight files."""
    import timm  # imported here: config loading for folds/ensemble does not need torch

    known = timm.list_models()
    if model.name not in known and model.name.split(".")[0] not in known:
        close = difflib.get_close_matches(model.name, known, n=3, cutoff=0.6)
        hint = f"; close names: {', '.join(close)}" if close else "; see timm.list_models()"
        raise ConfigError(f"{where}: unknown timm model `model.name: {model.name}`{hint}")
    if model.pretrained_file and not resolve_path(model.pretrained_file).is_file():
        raise ConfigError(
            f"{where}: weights file `model.pretrained_file: {model.pretrained_file}` not found "
            f"(looked at {resolve_path(model.pretrained_file)}); fix the path or set model.pretrained=false"
        )


def load_config(name_or_path: str | Path = "", overrides: list[str] | None = None, check_model: bool = True) -> Config:
    """Load, merge (competition.yaml <- base chain <- overrides), build and validate a Config.

    check_model=False skips the timm model / weights checks (for steps that never build a model).
    """
    data: dict = {}
    if COMPETITION_FILE.is_file():
        data = _read_yaml(COMPETITION_FILE, ())
    name = ""
    where = str(COMPETITION_FILE)
    if name_or_path:
        path = experiment_file(str(name_or_path))
        data = _merge(data, _read_yaml(path, ()))
        name = path.stem
        where = str(path)
    data = _merge(data, parse_overrides(overrides or []))
    data["name"] = name
    try:
        cfg = _build(Config, data, "")
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
    validate(cfg, where, check_model)
    return cfg


def load_saved_config(path: Path) -> Config:
    """The resolved config an experiment saved (experiments/<exp>/config.yaml), rebuilt and frozen."""
    if not path.is_file():
        raise ConfigError(f"{path} not found - run the experiment first")
    with path.open() as fh:
        return _build(Config, yaml.safe_load(fh), "")


def save_config(cfg: Config, path: Path) -> None:
    """Write the resolved config as YAML, atomically."""
    from competition.atomic import write_text

    write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
