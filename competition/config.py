"""One frozen, validated config per experiment: YAML with `base:` inheritance and `key=value` overrides.

Every default lives in the dataclasses below, with a comment; the field types say the allowed values
(`Literal[...]`) and ranges (`Annotated[int, Range(ge=1)]`). A YAML file only states what differs.
Unknown keys, duplicate keys, wrong types, values out of range, unknown timm models and missing weight
files are refused at load time with one line that names the file and key and says what to fix.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import glob
import json
import logging
import os
import re
import socket
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

import yaml

from competition.atomic import write_text
from competition.augment import preset_names, view_names  # registries: the allowed values of the fields below
from competition.errors import ConfigError
from competition.metrics import metric_names
from competition.project import Project, check_name, refuse_command_name, typed_folder

__all__ = ["Config", "ConfigError", "load_config", "load_saved_config", "save_config", "to_dict", "replace"]
log = logging.getLogger(__name__)


class Range(NamedTuple):
    """Bounds of a numeric field: ge/le inclusive, gt/lt exclusive (None = unbounded)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    why: str = ""  # the reason for the bounds, added to the refusal (e.g. what breaks below the minimum)


Probability = Annotated[float, Range(ge=0.0, le=1.0)]
Seed = Annotated[int, Range(ge=0, le=2**32 - 1)]  # what numpy and torch accept as a seed
TrainingBatch = Annotated[int, Range(ge=2, why="BatchNorm needs at least 2 images per training batch")]  # 1 crashes


@dataclass(frozen=True)
class CompetitionConfig:
    name: str = "cifake"  # short name, used in fold file names
    slug: str = ""  # Kaggle competition slug, for `competition.submit`
    data_dir: str = "../shared/competitions/cifake"  # folder from `kaggle competitions download`; relative to the project
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
    metric: Literal[metric_names()] = "auc"  # what the leaderboard ranks by (registered in competition.metrics)
    submission_values: Literal["prob", "label"] = "prob"  # probability of AI, or 0/1 at an OOF-chosen threshold


@dataclass(frozen=True)
class FoldsConfig:
    n_splits: Annotated[int, Range(ge=2)] = 5  # K of the K-fold split
    seed: Seed = 42  # shuffling seed of the split; same seed -> byte-identical folds file
    group_column: str = ""  # train.csv column with a group id (pairs, sources): groups never cross folds
    groups: Literal["", "phash", "twins"] = ""  # phash: near-duplicates by perceptual hash; twins: same content (a
    # photo and its AI regeneration) by nearest neighbours of backbone embeddings; group_column wins over both
    phash_distance: Annotated[int, Range(ge=0, le=32)] = 6  # phash joins images whose 64-bit pHashes differ in <= this many bits
    twin_similarity: Annotated[float, Range(gt=0.0, le=1.0)] = 0.6  # twins: cosine similarity of mean-centred
    # embeddings joining two images (replica: 0.6 joins 98.7 % of twins, 0 % of groups wrongly merged)
    twin_neighbors: Annotated[int, Range(ge=1, le=100)] = 5  # twins: nearest neighbours examined per image
    embed_model: str = "tf_mobilenetv3_small_100"  # backbone (local weights, models.json) for twins, OOD clusters and
    # the shift check (replica: as accurate as tf_efficientnet_lite0 for twins, 3.5x faster)
    embed_size: Annotated[int, Range(ge=16, le=1024)] = 224  # images are resized whole to this for embeddings (content)
    ood_split: Literal["", "cluster"] = ""  # cluster: add an `ood_fold` column holding out whole content clusters (--ood)
    ood_clusters: Annotated[int, Range(ge=2)] = 25  # ood_split: number of k-means content clusters (on embeddings)
    audit: bool = True  # run the shortcut audit (competition.audit) whenever a folds file is built
    shift_check: bool = True  # also run the train-vs-test shift check (competition.shift) when a folds file is built
    shift_sample: Annotated[int, Range(ge=20)] = 2000  # shift check: at most this many train and test images each


@dataclass(frozen=True)
class ModelConfig:
    name: str = "tf_efficientnet_lite0"  # any timm model name
    pretrained: bool = True  # ImageNet weights: from pretrained_file, weights_dir/models.json, or the hub
    pretrained_file: str = ""  # local .safetensors/.pth; "" = look in weights_dir/models.json, then the hub
    weights_dir: str = "../shared/weights"  # folder with models.json describing local weight files
    drop_rate: Annotated[float, Range(ge=0.0, lt=1.0)] = 0.2  # dropout before the classifier
    drop_path_rate: Annotated[float, Range(ge=0.0, lt=1.0)] = 0.0  # stochastic depth, for models that support it
    input_upscale: Annotated[int, Range(ge=1, le=16)] = 1  # integer nearest-neighbour zoom inside the model (tiny images)
    input_filter: Literal["none", "highpass"] = "none"  # highpass: the backbone sees the normalised image minus its
    # 3x3 local mean (the noise residual where generator traces live, content suppressed), x4 to a unit-like range


@dataclass(frozen=True)
class DataConfig:
    img_size: Annotated[int, Range(ge=8, le=4096)] = 224  # crop size fed to the model (before input_upscale)
    augment: Literal[preset_names()] = "forensic"  # augmentation preset (registered in competition.augment)
    jpeg_quality_min: Annotated[int, Range(ge=1, le=100)] = 60  # forensic: lowest JPEG re-compression quality
    jpeg_p: Probability = 0.5  # forensic: probability of JPEG re-compression (both classes)
    blur_p: Probability = 0.2  # forensic: probability of Gaussian blur (both classes)
    d4: bool = False  # also rotate by random multiples of 90 degrees (with the flip: the 8 D4 views); pair with
    # tta.views: d4. Off by default: photos have an up, and a rotated sky is a new kind of image
    cache: Literal["auto", "memmap", "none"] = "auto"  # memmap decodes small same-sized images once into a uint8 cache
    cache_dir: str = ".cache"  # where decoded-image caches live; relative to the project
    crop_cache: Literal["auto", "on", "off"] = "auto"  # large images (forensic/light): keep a native 2 x img_size
    # window per training image and the validation centre crops in uint8 memmaps, so an epoch re-decodes only
    # 1/crop_cache_epochs of the training images (competition.crop_cache); auto: on when the median image holds
    # >= 8 crops' worth of pixels (1024-2048 px JPEGs: 5.3-6.9x per core, benchmarks/README.md section 7)
    crop_cache_epochs: Annotated[int, Range(ge=1, le=100)] = 8  # crop_cache: each training image is re-decoded
    # (a new random window) once per this many epochs; the crops in between are drawn from its stored window
    num_workers: Annotated[int, Range(ge=-1, le=64)] = -1  # DataLoader workers; -1 = chosen from the machine's cores
    on_bad_image: Literal["skip", "fail"] = "skip"  # skip (log, count, list) | fail (stop before training)
    normalize_encoding: dict = field(default_factory=dict)  # e.g. {format: jpeg, quality: 90}: re-encode every
    # image (both classes, train and test) in memory before augmentation, hiding the original encoding
    test_like_oof: Literal["auto", "on", "off"] = "auto"  # also score OOF on validation images re-encoded like the test
    # images (competition.test_encoding; metrics.json oof_test_like); auto: when the test set is encoded differently
    match_test: Probability = 0.0  # share of training images re-encoded like a test image (format, quality, size
    # drawn from the test profile) on top of the preset, instead of its JPEG range for those images; needs a test set
    test_like_resize: Literal["lanczos", "bicubic", "bilinear", "area", "linear", "mix"] = "lanczos"  # how test-like
    # OOF and match_test imitate a test resize: Pillow's antialiased lanczos/bicubic/bilinear, OpenCV's area or linear
    # (cv2.resize's default, no antialiasing), or one drawn per image; moved test-like AUC by up to 0.05 on 0.5-0.75x shifts


@dataclass(frozen=True)
class TrainConfig:
    epochs: Annotated[int, Range(ge=1)] = 10  # maximum epochs per fold
    batch_size: TrainingBatch = 64  # images per optimizer micro-step (at least 2: BatchNorm needs 2 per batch)
    accum_steps: Annotated[int, Range(ge=1)] = 1  # gradient accumulation: effective batch = batch_size * accum_steps
    optimizer: str = "adamw"  # any timm optimizer (timm.optim.list_optimizers(): adamw, sgd, lamb, lion, ...),
    # built by timm.optim.create_optimizer_v2; no weight decay on biases and norms
    lr: Annotated[float, Range(gt=0.0, le=10.0)] = 1e-3  # peak learning rate (of the head, with layer_decay)
    weight_decay: Annotated[float, Range(ge=0.0)] = 1e-2  # decoupled weight decay (AdamW) / L2 (SGD)
    layer_decay: Annotated[float, Range(ge=0.0, le=1.0)] = 0.0  # layer-wise LR decay: the head trains at lr, each
    # block below it at layer_decay x the block above (timm's group_matcher); 0 = off (one lr for all)
    loss: Literal["bce", "focal"] = "bce"  # bce: binary cross-entropy; focal: BCE x (1 - p_t)^focal_gamma
    focal_gamma: Annotated[float, Range(ge=0.0)] = 2.0  # focal loss: how strongly easy images are down-weighted
    scheduler: Literal["cosine", "tanh", "poly", "step"] = "cosine"  # timm scheduler (create_scheduler_v2), stepped
    # every optimizer update: decay from lr to min_lr over train.epochs; step: x0.1 after each third of the epochs
    warmup_epochs: Annotated[float, Range(ge=0.0)] = 0.5  # linear warmup from min_lr to lr (fractions allowed)
    min_lr: Annotated[float, Range(ge=0.0)] = 1e-6  # floor of the schedule (<= lr)
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"  # auto: bf16/fp16 on CUDA, fp32 on CPU
    channels_last: bool = True  # NHWC memory format (~2x for depthwise CNNs on CPU)
    compile: bool = False  # torch.compile the model
    grad_checkpointing: bool = False  # recompute activations in backward (timm set_grad_checkpointing): less
    # memory (lite0, 224 px, batch 32 on CPU: 4.2 -> 3.0 GB per step), more compute; same gradients and BatchNorm
    # statistics (the recomputed forward's second update of the running statistics is undone)
    ema: bool = False  # keep an exponential moving average of weights and validate with it
    ema_decay: Annotated[float, Range(gt=0.0, lt=1.0)] = 0.999  # EMA decay per optimizer step
    ema_warmup: bool = False  # EMA decay ramps up, 1 - (1 + step)^(-2/3) capped at ema_decay (timm ModelEmaV3), so the
    # average follows the model early on instead of holding the random start for ~1/(1 - ema_decay) steps
    swa: bool = False  # stochastic weight averaging (torch.optim.swa_utils): the weights at the end of each of the
    # last swa_epochs epochs are averaged, BatchNorm statistics recomputed on the training images, and the average
    # is validated and saved as best.pt (it replaces the epoch-selected checkpoint)
    swa_epochs: Annotated[int, Range(ge=2)] = 3  # swa: how many final epochs are averaged (<= train.epochs)
    swa_lr: Annotated[float, Range(ge=0.0)] = 0.0  # swa: a constant lr for those epochs (x layer_decay scales);
    # 0 = keep the schedule (averaging points along its tail)
    mixup: Annotated[float, Range(ge=0.0)] = 0.0  # mixup Beta(alpha, alpha) (timm Mixup); 0 = off. Off by default:
    # mixing pixels mixes generator traces with camera noise
    cutmix: Annotated[float, Range(ge=0.0)] = 0.0  # cutmix Beta(alpha, alpha); 0 = off (with mixup too: one per batch)
    mix_prob: Probability = 1.0  # share of batches mixed when mixup or cutmix is on
    patience: Annotated[int, Range(ge=0)] = 3  # early stopping: epochs without validation improvement (0 = off)
    select_by: Literal["auto", "logloss", "auc", "metric"] = "auto"  # picks epochs/best checkpoint; auto: logloss
    # for threshold metrics (f1, accuracy: a step function at a fixed cut), else the competition metric
    label_smoothing: Annotated[float, Range(ge=0.0, lt=1.0)] = 0.0  # BCE target smoothing
    clip_grad: Annotated[float, Range(ge=0.0)] = 0.0  # max global gradient norm (0 = off); unscaled first under fp16
    seed: Seed = 42  # seeds model init, shuffling and augmentation
    folds: list = field(default_factory=list)  # folds to run; [] = all
    threads: Annotated[int, Range(ge=0, le=1024)] = 0  # torch CPU threads; 0 = all cores
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: cuda when available


@dataclass(frozen=True)
class TTAConfig:
    views: Literal[view_names()] = "hflip"  # flips/rotations averaged at test time (d4 = 8 views; competition.augment)
    crops: Literal[1, 5] = 1  # native-scale crops per image larger than img_size: 1 (centre) or 5 (corners + centre)
    tiles: Annotated[int, Range(ge=0, le=8)] = 0  # n > 0: an n x n grid of native img_size tiles spread evenly
    # over the whole image (covering it when n x img_size >= its sides) plus the centre crop, averaged; needs crops: 1
    max_batch: Annotated[int, Range(ge=0)] = 0  # images per forward pass (batch x views x crops is split to fit);
    # 0 = train.batch_size (a 64-image 224 px tf_efficientnet_lite0 forward, more than a 32-image training step,
    # held ~3.3 GB on CPU; at 256 the old cap's forward held ~2.5 GB on CPU)
    adapt_bn: bool = False  # AdaBN: re-estimate each fold model's BatchNorm statistics on the test images before
    # predicting them (competition.adapt; no label read, no weight trained); metrics.json's adapt_bn scores it on the
    # validation rows re-encoded like the test. Changes predictions, not training; a model without BatchNorm: no-op


@dataclass(frozen=True)
class PseudoConfig:
    teacher: str = ""  # experiment whose confident test predictions become extra training rows; for fold k only the
    # teacher's fold-k model's predictions (experiments/<teacher>/fold{k}/test.csv) are used, so fold k's validation
    # rows never reach the student through a teacher that trained on them. "" = off
    threshold: Annotated[float, Range(gt=0.5, lt=1.0)] = 0.98  # a test image is used when the teacher's fold model
    # says p >= threshold (label 1) or p <= 1 - threshold (label 0); the rows used go to fold{k}/pseudo.csv


@dataclass(frozen=True)
class TrackingConfig:
    backend: Literal["none", "mlflow"] = "none"  # experiment tracker that each assembled experiment and blend is
    # logged to (competition.tracking): mlflow needs `pip install mlflow-skinny`; none imports and writes nothing
    uri: str = ""  # mlflow store: a folder (relative to the project; made if missing) or an mlflow URI
    # (file:/..., or sqlite:///... with the full mlflow package); "" = .kit/mlruns in the project (offline)
    experiment: str = ""  # tracker experiment the runs are filed under; "" = competition.name


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
    pseudo: PseudoConfig = field(default_factory=PseudoConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


# Where and how a run executes, not what it computes: a run started on CPU may be finished on a GPU machine.
RUNTIME_KEYS = (("train", "folds"), ("train", "device"), ("train", "threads"), ("train", "compile"),
                ("data", "num_workers"), ("data", "cache_dir"), ("competition", "data_dir"), ("model", "weights_dir"),
                ("model", "pretrained_file"), ("tta", "max_batch"), ("folds", "audit"), ("folds", "shift_check"),
                ("folds", "shift_sample"), ("data", "test_like_oof"),
                ("tracking", "backend"), ("tracking", "uri"), ("tracking", "experiment"))  # tracking: where results go
# What a finished fold's predictions depend on but not its training: a resumed run with another value recomputes the
# folds' predictions from their checkpoints (no retraining) instead of asking for --restart; assemble refuses a mix.
PREDICTION_KEYS = (("tta", "adapt_bn"),)


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping (YAML would silently keep the last)."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ConfigError(f"line {key_node.start_mark.line + 1}: key `{key}` appears twice in one section "
                              f"(first on line {seen[key]}); merge the two")
        seen[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)
# YAML 1.2 core schema for scalars. PyYAML follows YAML 1.1, where on/off/yes/no are booleans (the documented
# values `train.amp: off` and `data.crop_cache: on` would arrive as True/False and be refused), `1e-3` and `.5e2`
# are strings (no dot / no exponent sign), `017` is octal, `1:30` is 90 and `2024-01-01` a date. Here only
# true/false are booleans, every spelling of a number a number, and everything else a string.
_BOOL, _INT, _FLOAT = "tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
_SCALARS_1_1 = {_BOOL, _INT, _FLOAT, "tag:yaml.org,2002:timestamp"}
_UniqueKeyLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in _SCALARS_1_1]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_UniqueKeyLoader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_UniqueKeyLoader.add_implicit_resolver(_INT, re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"),
                                       list("-+0123456789"))
_UniqueKeyLoader.add_implicit_resolver(
    _FLOAT, re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)"
                       r"|\.(?:nan|NaN|NAN))$"), list("-+0123456789."))


def _yaml_int(loader: _UniqueKeyLoader, node: yaml.ScalarNode) -> int:
    """A YAML 1.2 integer: decimal (leading zeros allowed, not octal), 0o octal or 0x hex."""
    text = str(loader.construct_scalar(node)).replace("_", "")
    sign = -1 if text.startswith("-") else 1
    digits = text.lstrip("+-")
    base = {"0o": 8, "0x": 16}.get(digits[:2].lower(), 10)
    return sign * int(digits[2:] if base != 10 else digits, base)


def _yaml_float(loader: _UniqueKeyLoader, node: yaml.ScalarNode) -> float:
    """A YAML 1.2 float: 1e-3, 5E-4, .5, +1.0, -.inf, .nan."""
    text = str(loader.construct_scalar(node)).replace("_", "").lower()
    return float(text.replace(".inf", "inf").replace(".nan", "nan"))


_UniqueKeyLoader.add_constructor(_INT, _yaml_int)
_UniqueKeyLoader.add_constructor(_FLOAT, _yaml_float)


def _key_lines(node: yaml.Node | None, prefix: str = "") -> dict[str, int]:
    """Dotted key -> the 1-based line it is written on, for every key of a composed YAML document."""
    lines: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                dotted = f"{prefix}{key_node.value}"
                lines[dotted] = key_node.start_mark.line + 1
                lines.update(_key_lines(value_node, f"{dotted}."))
    return lines


def parse_yaml_lines(text: str, where: str) -> tuple[Any, dict[str, int]]:
    """YAML text -> (data, dotted key -> line), with a one-line error naming `where` for syntax errors, tags and
    duplicate keys."""
    loader = _UniqueKeyLoader(text)
    try:
        node = loader.get_single_node()
        return (loader.construct_document(node) if node is not None else None), _key_lines(node)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = "" if not mark else (f":{mark.line + 1}:{mark.column + 1}" if not where.startswith("override")
                                   else f" at column {mark.column + 1}")
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        hint = yaml_hint(err, text)
        raise ConfigError(f"{where}{at}: not valid YAML: {problem}{'; ' + hint if hint else ''}") from None
    finally:
        loader.dispose()


def yaml_hint(err: yaml.YAMLError, text: str) -> str:
    """The one fix that fits a YAML syntax error ("" when none is known): an unclosed bracket or quote, tabs
    (only when the text has tabs), a tag, a `key: value` inside a value."""
    context, problem = str(getattr(err, "context", "") or ""), str(getattr(err, "problem", "") or "")
    start = getattr(err, "context_mark", None)
    opened = f" opened on line {start.line + 1}, column {start.column + 1}" if start else ""
    brackets = {"flow mapping": "`{`", "flow sequence": "`[`"}
    for kind, bracket in brackets.items():
        if kind in context:
            close = "}" if bracket == "`{`" else "]"
            return f"the {bracket}{opened} is not closed; add the `{close}` (or remove the {bracket})"
    if "quoted scalar" in context:
        return f"the quote{opened} is not closed; add the closing quote"
    if "\t" in text and ("\\t" in problem or "\t" in problem):
        return "tabs are not allowed for indentation; indent with spaces"
    if "constructor for the tag" in problem:
        return "tags like !!python/object are refused; write plain values"
    if "mapping values are not allowed" in problem:
        return "a value contains `: `; put each key on its own line (indented under its section) or quote the value"
    if "\t" in text:
        return "the text has tab characters; YAML indentation must use spaces"
    return ""


def parse_yaml(text: str, where: str) -> Any:
    """YAML text -> data, with a one-line error naming `where` for syntax errors, tags and duplicate keys."""
    return parse_yaml_lines(text, where)[0]


EXPERIMENT_SUFFIXES = (".yaml", ".yml")  # an experiment's YAML; `.yml` is read when it is the only one


def experiment_file(name_or_path: str, project: Project) -> Path:
    """Map `exp001` or a path ending in .yaml/.yml to the experiment's YAML file; a missing one is refused with
    the close names that exist (see missing_experiment), one named like a run.sh command (`report`) with the fix."""
    path = Path(name_or_path)
    if path.suffix.lower() not in EXPERIMENT_SUFFIXES:
        found = named_yaml(check_name(name_or_path), project.experiments)
    else:
        try:
            check_name(path.stem)  # `..yaml` would put outputs in experiments/. or above
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None
        from competition.paths import PathNotFound, experiment_yaml  # where the person typed it, then the project

        try:
            found = experiment_yaml(name_or_path, project)
        except PathNotFound as err:
            if len(path.parts) == 1:  # a bare file name: it would be in experiments/
                raise missing_experiment(path.stem, project.experiments, typed=name_or_path) from None
            raise ConfigError(f"{err} (config file not found)") from None
    refuse_command_name(found.stem, found, project.root)  # outputs and advice use the stem: `./run.sh <stem>`
    return found


def named_yaml(name: str, folder: Path) -> Path:
    """<folder>/<name>.yaml, or the one same-stem .yml (any case) when it is the only one; two are refused."""
    found = sorted(p for p in folder.glob(f"{glob.escape(name)}.*")
                   if p.stem == name and p.suffix.lower() in EXPERIMENT_SUFFIXES and p.is_file()) if folder.is_dir() else []
    if len(found) > 1:
        raise ConfigError(f"experiment `{name}`: {' and '.join(p.name for p in found)} both exist in {folder}; "
                          f"delete or rename all but one, so that `{name}` names one file")
    if not found:
        raise missing_experiment(name, folder)
    if found[0].suffix != ".yaml":
        log.info("experiment %s: reading %s (there is no %s.yaml)", name, found[0], name)
    return found[0]


def experiment_names(folder: Path) -> list[str]:
    """The experiments a folder holds: YAML stems and output folders."""
    if not folder.is_dir():
        return []
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    return sorted({p.stem for p in entries if p.is_file() and p.suffix.lower() in EXPERIMENT_SUFFIXES}
                  | {p.name for p in entries if p.is_dir()})


def missing_experiment(name: str, folder: Path, typed: str = "") -> ConfigError:
    """The refusal of an experiment that has neither a YAML nor outputs in `folder`, with the close names that
    exist (the same letters in another case first, then similar spellings) and same-stem files of other types."""
    names = [n for n in experiment_names(folder) if n != name]
    close = [n for n in names if n.lower() == name.lower()] or difflib.get_close_matches(
        name, names, n=3, cutoff=0.5 if len(name) <= 3 else 0.6)  # `tl` for `t1`: one letter of two
    same_stem = sorted(p for p in folder.glob(f"{glob.escape(name)}.*") if p.is_file() and p.stem == name
                       and p.name != (typed or f"{name}.yaml")) if folder.is_dir() else []
    hints = [f"did you mean {' or '.join(f'`{n}`' for n in close)}?"] if close else []
    readable = [p.name for p in same_stem if p.suffix.lower() in EXPERIMENT_SUFFIXES]
    if readable:
        hints.append(f"{readable[0]} is there: name it as `{name}` or `{readable[0]}`")
    elif same_stem:
        hints.append(f"{same_stem[0].name} is there: an experiment's file must be {name}.yaml (or .yml); rename it")
    if not hints:
        listed = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
        hints.append(f"create {folder / name}.yaml (e.g. `base: exp001` plus what differs) and run `./run.sh {name}`"
                     + (f", or use one of: {listed}" if names else ""))
    outputs = "" if (folder / name).is_dir() else f" and no outputs in {folder / name}"
    return ConfigError(f"experiment `{typed or name}`: config file not found (no {folder / (typed or name + '.yaml')}{outputs}); "
                       f"{'; '.join(hints)}")


def require_experiment(name: str, project: Project) -> None:
    """Refuse (missing_experiment) a name with neither a YAML nor an outputs folder in experiments/."""
    if not project.experiment_dir(name).is_dir() and not any(
            (project.experiments / f"{name}{s}").is_file() for s in EXPERIMENT_SUFFIXES):
        raise missing_experiment(name, project.experiments)


Origins = dict  # dotted key -> where it was set: "<file>:<line>" or "override '<section.key=value>'"
EXPERIMENT_EXAMPLE = "write what differs from the defaults, e.g. `train: {epochs: 3}` (or `base: exp001` to copy one)"
COMPETITION_EXAMPLE = ("give it the competition's settings, e.g. `competition: {name: cifake, data_dir: data}`, "
                       "or delete it")


def _read_yaml(path: Path, chain: tuple[Path, ...], example: str = EXPERIMENT_EXAMPLE) -> tuple[dict, Origins]:
    """Read one YAML file and merge it over its `base:` chain: (data, where each key was set)."""
    path = path.resolve()
    if path in chain:
        cycle = " -> ".join(p.name for p in (*chain, path))
        raise ConfigError(f"{path}: `base:` cycle {cycle}; remove one of the `base:` lines")
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found; create it or fix the `base:` / experiment name")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read ({type(err).__name__}); is it a YAML text file?") from None
    data, lines = parse_yaml_lines(text, str(path))
    _check_top_level(data, path, f" (the `base:` of {chain[-1].name})" if chain else "", example)
    origins = {key: f"{path}:{line}" for key, line in lines.items()}
    base = data.pop("base", None)
    if base is None:
        return data, origins
    if not isinstance(base, str):
        raise ConfigError(f"{path}:{lines['base']}: `base:` must be a file name such as base.yaml, got {base!r}")
    base_path = path.parent / base
    if not base_path.suffix and not base_path.is_file():
        base_path = base_path.with_suffix(".yaml")  # `base: exp010` means exp010.yaml, like the command line
    if not base_path.is_file() and base_path.resolve() not in chain:
        raise ConfigError(f"{path}:{lines['base']}: `base: {base}` names {base_path}, which does not exist; fix the "
                          f"name (relative to {path.parent})")
    base_data, base_origins = _read_yaml(base_path, (*chain, path), example)
    return _merge(base_data, data), {**base_origins, **origins}


def _check_top_level(data: Any, path: Path, role: str, example: str) -> None:
    """Refuse a file that is empty (blank, only comments or null) or whose top level is not a mapping; an explicit
    `{}` is a deliberate "all defaults" and loads."""
    if data is None:
        raise ConfigError(f"{path}{role}: the file is empty (no keys, only blanks or comments); {example}")
    if not isinstance(data, dict):
        shown = repr(data) if len(repr(data)) <= 40 else repr(data)[:37] + "..."
        raise ConfigError(f"{path}{role}: the top level is a {type(data).__name__} ({shown}), not a mapping of "
                          f"sections; {example}")


def _merge(base: dict, over: dict) -> dict:
    """Deep-merge `over` into a copy of `base` (mappings merge, everything else replaces)."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "class_folders":
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def origin_of(origins: Origins, dotted: str) -> str:
    """Where a key (or the nearest section above it) was set; "" when only the defaults did."""
    if dotted in origins:
        return origins[dotted]
    below = [where for key, where in origins.items() if key.startswith(f"{dotted}.")]
    if below:
        return below[0]
    parts = dotted.split(".")
    for end in range(len(parts) - 1, 1, -1):  # a key inside a mapping value (class_folders.real), not a section
        if (found := origins.get(".".join(parts[:end]))):
            return found
    return ""


def locate(err: ConfigError, origins: Origins, default: str) -> str:
    """The file:line (or override) that set the keys an error is about, else `default` (the experiment file)."""
    found = [origin_of(origins, key) for key in getattr(err, "keys", ())]
    found = [f"{f} (on top of {Path(default).name})" if f.startswith("override ") else f for f in found if f]
    return " and ".join(dict.fromkeys(found)) or default


def refuse(message: str, *keys: str) -> ConfigError:
    """A ConfigError about the given dotted keys (so the loader can name the file and line that set them)."""
    err = ConfigError(message)
    err.keys = keys
    return err


OVERRIDE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+=.*", re.S)
SHORTHANDS = {"pseudo": "pseudo.teacher"}  # `./run.sh exp020 pseudo=exp012` = pseudo.teacher=exp012


def expand_shorthand(item: str) -> str:
    """`pseudo=exp012` -> `pseudo.teacher=exp012`; any other word unchanged."""
    key, sep, value = item.partition("=")
    return f"{SHORTHANDS[key]}={value}" if sep and key in SHORTHANDS else item


def is_override(item: str) -> bool:
    """Whether a command-line word is a `section.key=value` override (or a shorthand such as pseudo=exp012)."""
    return bool(OVERRIDE.fullmatch(expand_shorthand(item)))


def override_error(item: str) -> ConfigError:
    """The one refusal of a word that is not section.key=value; `epochs=3` is told `train.epochs=3`."""
    key, sep, value = item.partition("=")
    if not sep and item.strip() and (typed_folder() / os.path.expanduser(item.strip())).is_dir():
        folder = (typed_folder() / os.path.expanduser(item.strip())).resolve()
        return ConfigError(f"override {item!r}: a folder, not section.key=value - this command reads its data from the "
                           f"config; to use this folder: competition.data_dir={folder} (the shortcut audit of a "
                           f"folder: `./run.sh audit {item.strip()}`)")
    homes = _homes(key.strip()) if sep else []
    fix = f"; {key.strip()} belongs in {homes[0]}: {homes[0]}.{key.strip()}={value}" if len(homes) == 1 else (
        f"; {key.strip()} is a key of {' and of '.join(homes)}: e.g. {homes[0]}.{key.strip()}={value}" if homes
        else ", e.g. train.epochs=3")
    return ConfigError(f"override {item!r}: expected section.key=value{fix}")


def parse_overrides(items: list[str]) -> dict:
    """Turn `train.epochs=3 model.name=resnet18` into a nested dict (values parsed as YAML)."""
    return overrides_with_origins(items)[0]


def overrides_with_origins(items: list[str]) -> tuple[dict, Origins]:
    """parse_overrides, plus dotted key -> "override '<item>'" for each key an override sets."""
    out: dict = {}
    origins: Origins = {}
    for original in items:
        item = expand_shorthand(original)
        if not is_override(item):
            raise override_error(item)
        dotted, raw = item.split("=", 1)
        node = out
        keys = dotted.strip().split(".")
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {original!r}: `{key}` is a value, not a section")
        node[keys[-1]] = parse_yaml(raw, f"override {original!r}") if raw != "" else ""
        origins[dotted.strip()] = f"override {original!r}"
    return out, origins


def _check_type(where: str, value: Any, hint: Any) -> Any:
    """Return value coerced to hint (int -> float, integral float -> int), or raise a ConfigError naming the key."""
    if typing.get_origin(hint) is Annotated:
        base, *extras = typing.get_args(hint)
        if base in (int, float) and not_finite(value):
            raise _not_finite_error(where, value, base, next((e for e in extras if isinstance(e, Range)), None))
        value = _check_type(where, value, base)
        for bound in (e for e in extras if isinstance(e, Range)):
            _check_range(where, value, bound)
        return value
    if typing.get_origin(hint) is Literal:
        allowed = typing.get_args(hint)
        if value in allowed and type(value) in {type(a) for a in allowed}:
            return value
        near = f" (did you mean {meant_choice(value, allowed)!r}?)" if meant_choice(value, allowed) else ""
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(str, allowed))}{near}")
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, float) and value.is_integer():
        return int(value)  # `1e3` is a YAML 1.2 float; as a count it means 1000
    ok = isinstance(value, int) and not isinstance(value, bool) if hint is int else isinstance(value, hint)
    if hint in (int, float) and not_finite(value):
        raise _not_finite_error(where, value, hint)
    if not ok:
        raise ConfigError(f"{where}: expected {hint.__name__}, got {type(value).__name__} {value!r}"
                          f"{spelling(where.strip('`'), value, hint)}")
    return value


SPELLING_EXAMPLES = {"competition.class_folders": "{REAL: 0, FAKE: 1}", "data.normalize_encoding":
                     "{format: jpeg, quality: 90}", "train.folds": "[0, 1]"}


def _as_override(key: str, text: str) -> str:
    """The command-line spelling of `key: text`, quoted for the shell when it has spaces or braces."""
    return f"'{key}={text}'" if " " in text or "{" in text else f"{key}={text}"


def spelling(key: str, value: Any, hint: type) -> str:
    """"; write ..." - how a value of this type is spelled, in YAML and as an override, with an example (made from
    what was typed when it can be)."""
    items = [v.strip() for v in value.strip("[]() ").split(",")] if isinstance(value, str) and "," in value else []
    if hint is list:
        example = f"[{', '.join(items)}]" if items else SPELLING_EXAMPLES.get(key, "[0, 1]")
        also = f" (or the option --folds {','.join(items) or '0,1'})" if key == "train.folds" else ""
        return (f"; a list is written in brackets: `{key}: {example}` in YAML, "
                f"{_as_override(key, example.replace(' ', ''))} on the command line{also}")
    if hint is dict:
        example = SPELLING_EXAMPLES.get(key, "{name: value}")
        return (f"; a mapping is written in braces: `{key}: {example}` in YAML, {_as_override(key, example)} on "
                f"the command line ({{}} for none)")
    if hint is bool:
        word = {"yes": "true", "y": "true", "on": "true", "1": "true", "no": "false", "n": "false", "off": "false",
                "0": "false"}.get(str(value).strip().lower(), "true")
        return f"; write true or false, unquoted: `{key}: {word}` ({key}={word})"
    if hint is int:
        example = round(value) if isinstance(value, float) and value == value and abs(value) != float("inf") else 3
        unquote = " without quotes" if isinstance(value, str) and value.strip().lstrip("+-").isdigit() else ""
        example = int(value) if unquote else example
        return f"; write a whole number{unquote}, e.g. `{key}: {example}` ({key}={example})"
    if hint is float:
        unquote = " without quotes" if isinstance(value, str) and _is_number(value) else ""
        example = value.strip() if unquote else "0.001"
        return f"; write a number{unquote}, e.g. `{key}: {example}` ({key}={example}; 1e-3 works too)"
    if hint is str:
        return f"; write text, quoted when it would read as a number or true/false: `{key}: \"{value}\"`"
    return ""


SWITCH_WORDS = {"on": {"true", "yes", "y", "1", "enable", "enabled", "1.0"},
                "off": {"false", "no", "n", "0", "disable", "disabled", "0.0", "none", "null"}}


def meant_choice(value: Any, allowed: tuple) -> str:
    """The allowed word a refused value most likely means: a boolean spelling (true, yes, 1 / false, no, 0) for an
    on/off key, else the closest spelling whatever the case; '' when none is near."""
    text = str(value).strip().lower() if value is not None else "null"
    for word, spellings in SWITCH_WORDS.items():
        if word in allowed and text in spellings:
            return word
    words = {str(a).lower(): str(a) for a in allowed}
    close = difflib.get_close_matches(text, list(words), n=1)
    return words[close[0]] if close else ""


def not_finite(value: Any) -> bool:
    """Whether value is NaN or an infinity, as a float or as text in any spelling (nan, -inf, .NaN, Infinity)."""
    if isinstance(value, str):
        try:
            value = float(value.strip().lower().replace(".nan", "nan").replace(".inf", "inf"))
        except ValueError:
            return False
    return isinstance(value, float) and (value != value or abs(value) == float("inf"))


def _not_finite_error(where: str, value: Any, hint: type, bound: Range | None = None) -> ConfigError:
    """The one refusal of NaN or an infinity for a numeric key: a finite number is needed, with the range."""
    limits = [f"{op} {limit:g}" for limit, op in ((bound.ge, ">="), (bound.gt, ">"), (bound.le, "<="), (bound.lt, "<"))
              if limit is not None] if bound else []
    within = f" {' and '.join(limits)}" if limits else ""
    what = "a whole number" if hint is int else "a finite number"
    return ConfigError(f"{where}: {value!r} is not allowed - NaN and infinity are not values here; write {what}"
                       f"{within}")


def _is_number(text: str) -> bool:
    """Whether text parses as a float."""
    try:
        float(text)
    except ValueError:
        return False
    return True


def _check_range(where: str, value: float, bound: Range) -> None:
    """Raise naming the key when value lies outside the field's Range."""
    tests = [(bound.ge, value >= (bound.ge or 0), ">="), (bound.gt, value > (bound.gt or 0), ">"),
             (bound.le, value <= (bound.le or 0), "<="), (bound.lt, value < (bound.lt or 0), "<")]
    failed = [f"{op} {limit:g}" for limit, ok, op in tests if limit is not None and not ok]
    if failed:
        want = " and ".join(f"{op} {limit if isinstance(limit, int) else format(limit, 'g')}"
                            for limit, _, op in tests if limit is not None)
        why = f" ({bound.why})" if bound.why else ""
        raise ConfigError(f"{where}: {value!r} is out of range; it must be {want}{why}")


def field_hints(cls: type) -> dict[str, Any]:
    """A config dataclass's fields -> their annotations (Annotated/Literal kept), in declaration order."""
    hints = typing.get_type_hints(cls, include_extras=True)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def sections() -> dict[str, type]:
    """Section name -> its dataclass (competition, folds, model, data, train, tta, pseudo)."""
    return {name: hint for name, hint in field_hints(Config).items() if dataclasses.is_dataclass(hint)}


def _homes(key: str, but: str = "") -> list[str]:
    """The sections (other than `but`) that have a key of this name."""
    return [name for name, cls in sections().items() if name != but and key in field_hints(cls)]


def _fits(value: Any, hint: Any) -> bool:
    """Whether value would be accepted by a field of this type (a section: any mapping)."""
    if dataclasses.is_dataclass(hint):
        return isinstance(value, dict)
    try:
        _check_type("", value, hint)
    except ConfigError:
        return False
    return True


def _unknown_key(cls: type, key: str, value: Any, path: str, root: dict) -> ConfigError:
    """Why `path` is refused, and where it belongs or what was meant when taking the suggestion can work."""
    section = path[:len(path) - len(key)].rstrip(".")  # "" at the top level (where the key itself may hold dots)
    hints = field_hints(cls)
    if section and key in sections():
        return refuse(f"`{path}`: {key} is a section of its own, not a key of {section}; write `{key}:` at the top "
                      f"level (not indented under `{section}:`)", path)
    head, _, tail = key.partition(".")
    if not section and head in sections() and tail in field_hints(sections()[head]):
        return refuse(f"`{key}`: YAML does not split dotted keys; write it nested: `{head}:` on one line, "
                      f"`  {tail}: ...` indented under it (the dotted form is for command-line overrides)", path)
    here = f"a key of {section}" if section else "a top-level key"
    homes = _homes(key, section)
    fitting = [s for s in homes if _fits(value, field_hints(sections()[s])[key])]
    taken = [s for s in fitting if isinstance(root.get(s), dict) and key in root[s]]
    if fitting and taken == fitting:
        return refuse(f"`{path}` is not {here}; it belongs in {taken[0]}, where `{taken[0]}.{key}` is already set: "
                      f"delete this one", path)
    if fitting:
        free = [s for s in fitting if s not in taken]
        also = f" (`{taken[0]}.{key}` is already set)" if taken else ""
        target = f"{free[0]}: {free[0]}.{key}" if len(free) == 1 else "a section: " + " or ".join(
            f"{s}.{key}" for s in free)
        return refuse(f"`{path}` is not {here}; it belongs in {target}{also}", path)
    if homes:
        why = ConfigError("")
        try:
            _check_type(f"`{homes[0]}.{key}`", value, field_hints(sections()[homes[0]])[key])
        except ConfigError as err:
            why = err
        return refuse(f"`{path}` is not {here} (`{homes[0]}.{key}` is, but {why})", path)
    close = [n for n in difflib.get_close_matches(str(key), list(hints), n=3) if _fits(value, hints[n])]
    if close:
        return refuse(f"unknown config key `{path}`; did you mean `{close[0]}`?", path)
    elsewhere = [f"{s}.{n}" for s, c in sections().items() if s != section
                 for n in difflib.get_close_matches(str(key), list(field_hints(c)), n=1, cutoff=0.8)
                 if _fits(value, field_hints(c)[n])]
    hint = f"did you mean `{elsewhere[0]}`?" if elsewhere else f"valid keys: {', '.join(hints)}"
    return refuse(f"unknown config key `{path}`; {hint}", path)


def _build(cls: type, data: dict, where: str, dropped: list[str] | None = None, root: dict | None = None) -> Any:
    """Build a (nested) config dataclass from a dict, refusing unknown keys, wrong types and bad ranges.

    dropped: a list to collect unknown keys into instead of refusing them (saved configs of older kits)."""
    hints = field_hints(cls)
    root = data if root is None else root
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in hints:
            if dropped is None:
                raise _unknown_key(cls, str(key), value, path, root)
            dropped.append(path)
            continue
        hint_t = hints[key]
        try:
            if dataclasses.is_dataclass(hint_t):
                if not isinstance(value, dict):
                    raise ConfigError(f"`{path}` must be a mapping of keys (`{key}:` with `key: value` lines "
                                      f"indented under it), got {value!r}")
                kwargs[key] = _build(hint_t, value, path, dropped, root)
            else:
                kwargs[key] = _check_type(f"`{path}`", value, hint_t)
        except ConfigError as err:
            if not getattr(err, "keys", ()):
                err.keys = (path,)
            raise
    return cls(**kwargs)


_DROPPED_WARNED: set[str] = set()  # saved keys already warned about in this process (once per key, not per fold)


def from_dict(data: dict, where: str = "a saved config") -> Config:
    """A Config from plain nested dicts (a saved config.yaml or a checkpoint's config), read leniently: keys the
    kit no longer knows are dropped with one warning each, keys it added since read as their defaults."""
    dropped: list[str] = []
    cfg = _build(Config, data, "", dropped)
    for key in dropped:
        if key not in _DROPPED_WARNED:
            _DROPPED_WARNED.add(key)
            log.warning("%s: ignoring `%s`: written by an older version of the kit, which this one no longer has",
                        where, key)
    return cfg


def to_dict(cfg: Config) -> dict:
    """The config as plain nested dicts (what is saved next to the outputs)."""
    return dataclasses.asdict(cfg)


def replace(cfg: Config, **sections: dict) -> Config:
    """A new Config with some section keys changed, e.g. replace(cfg, train={"epochs": 1})."""
    return _build(Config, _merge(to_dict(cfg), sections), "")


def validate(cfg: Config, where: str, project: Project, check_model: bool = True,
             origins: Origins | None = None) -> None:
    """Cross-field checks, model names and weight files; raise one ConfigError line on the first problem, naming
    the file and line (or override) that set the keys at fault when origins are given, else `where`."""
    try:
        _validate_fields(cfg)
        if check_model:
            _validate_model(cfg.model, project)
            _validate_input_size(cfg)
    except ConfigError as err:
        raise ConfigError(f"{locate(err, origins or {}, where)}: {err}") from None


PATH_KEYS = (("competition", "data_dir"), ("competition", "train_csv"), ("competition", "test_csv"),
             ("competition", "sample_submission"), ("competition", "test_folder"), ("model", "weights_dir"),
             ("model", "pretrained_file"), ("data", "cache_dir"))  # keys holding a local path
KAGGLE_URL = re.compile(r"kaggle\.com/(?:competitions|c)/([A-Za-z0-9_-]+)", re.IGNORECASE)


def refuse_urls(cfg: Config) -> None:
    """Refuse a URL in any path-valued key (PATH_KEYS), saying how to get the files onto disk."""
    from competition.paths import UrlError, refuse_url

    for section, key in PATH_KEYS:
        value = getattr(getattr(cfg, section), key)
        try:
            refuse_url(value, f"`{section}.{key}`")
        except UrlError:
            raise refuse(f"`{section}.{key}: {value.strip()}` is a URL; the kit reads local files only: "
                         f"{_download_fix(cfg, section, key, value)}", f"{section}.{key}") from None


def _download_fix(cfg: Config, section: str, key: str, url: str) -> str:
    """How to bring a URL-valued path key's files onto disk."""
    if section == "competition":
        found = KAGGLE_URL.search(url)
        slug = found.group(1) if found else (cfg.competition.slug or cfg.competition.name)
        where = "competition.data_dir to that folder" if key == "data_dir" else (
            f"competition.data_dir to that folder and competition.{key} to the file's name inside it")
        return (f"download the competition with `kaggle competitions download -c {slug}`, unzip it "
                f"(`unzip {slug}.zip -d data/{slug}`) and set {where}")
    if key == "cache_dir":
        return "give a local folder for the caches, e.g. `data.cache_dir: .cache`"
    return (f"download the file(s) (wget, curl, huggingface-cli download) and set `{section}.{key}` to the local "
            f"path")


def _validate_fields(cfg: Config) -> None:
    """The checks that need neither timm's model list nor the weight files."""
    refuse_urls(cfg)
    try:
        check_name(cfg.competition.name, "competition.name")
    except ConfigError as err:
        raise refuse(str(err), "competition.name") from None
    if cfg.train.min_lr > cfg.train.lr:
        raise refuse(f"`train.min_lr: {cfg.train.min_lr:g}` is above `train.lr: {cfg.train.lr:g}`; the schedule "
                     f"decays from lr down to min_lr", "train.min_lr", "train.lr")
    _validate_encoding(cfg.data.normalize_encoding)
    _validate_optimizer(cfg.train.optimizer)
    _validate_recipes(cfg)
    if cfg.tta.tiles and cfg.tta.crops != 1:
        raise refuse(f"`tta.tiles: {cfg.tta.tiles}` and `tta.crops: {cfg.tta.crops}` are two eval geometries; keep "
                     f"one (tiles cover the image, crops: 5 takes its corners)", "tta.tiles", "tta.crops")
    bad_folds = [f for f in cfg.train.folds if not isinstance(f, int) or isinstance(f, bool)
                 or not 0 <= f < cfg.folds.n_splits]
    if bad_folds:
        raise refuse(f"`train.folds` {bad_folds} outside 0..{cfg.folds.n_splits - 1}", "train.folds")
    if len(set(cfg.train.folds)) != len(cfg.train.folds):
        raise refuse(f"`train.folds: {cfg.train.folds}` lists a fold twice; list each fold once", "train.folds")
    if cfg.competition.class_folders and any(v not in (0, 1) or isinstance(v, bool)
                                             for v in cfg.competition.class_folders.values()):
        raise refuse(f"`competition.class_folders: {cfg.competition.class_folders}` must map folder names to 0 "
                     f"(human) or 1 (AI)", "competition.class_folders")


def _validate_optimizer(name: str) -> None:
    """train.optimizer must be a timm optimizer name."""
    from timm.optim import list_optimizers  # imported here: config loading does not need timm otherwise

    known = list_optimizers()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3)
        raise refuse(f"`train.optimizer: {name}` is not a timm optimizer"
                     f"{' (close: ' + ', '.join(close) + ')' if close else ''}; see timm.optim.list_optimizers()",
                     "train.optimizer")


def _validate_recipes(cfg: Config) -> None:
    """SWA window inside the schedule, a teacher that is another experiment."""
    if cfg.train.swa and cfg.train.swa_epochs > cfg.train.epochs:
        raise refuse(f"`train.swa_epochs: {cfg.train.swa_epochs}` is more than `train.epochs: {cfg.train.epochs}`; "
                     f"average at most the epochs that run", "train.swa_epochs", "train.epochs")
    if cfg.train.swa and cfg.train.patience:
        raise refuse(f"`train.swa` averages the last {cfg.train.swa_epochs} epochs, but early stopping "
                     f"(`train.patience: {cfg.train.patience}`) may end the fold before them; set train.patience=0",
                     "train.swa", "train.patience")
    if (cfg.train.mixup or cfg.train.cutmix) and cfg.train.batch_size % 2:
        raise refuse(f"mixup/cutmix pair each image with another in its batch; make `train.batch_size: "
                     f"{cfg.train.batch_size}` even", "train.batch_size")
    if cfg.pseudo.teacher:
        try:
            check_name(cfg.pseudo.teacher, "pseudo.teacher")
        except ConfigError as err:
            raise refuse(str(err), "pseudo.teacher") from None
        if cfg.pseudo.teacher == cfg.name:
            raise refuse(f"`pseudo.teacher: {cfg.pseudo.teacher}` is this experiment; name an experiment that has "
                         f"finished, e.g. pseudo.teacher=exp001", "pseudo.teacher")


def _validate_encoding(spec: dict) -> None:
    """normalize_encoding must be {} or {format: jpeg|png|webp, quality: 1..100}."""
    if not spec:
        return
    unknown = set(spec) - {"format", "quality"}
    fmt, quality = spec.get("format"), spec.get("quality", 90)
    if unknown or fmt not in ("jpeg", "png", "webp") or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise refuse(f"`data.normalize_encoding: {spec}` must look like {{format: jpeg, quality: 90}} "
                     f"(format jpeg|png|webp, quality 1-100)", "data.normalize_encoding")


def _validate_model(model: ModelConfig, project: Project) -> None:
    """Refuse unknown timm models (with close names) and missing weight files."""
    import timm  # imported here: config loading for folds/ensemble does not need torch

    known = timm.list_models()
    if model.name not in known and model.name.split(".")[0] not in known:
        close = difflib.get_close_matches(model.name, known, n=3, cutoff=0.6)
        hint = f"; close names: {', '.join(close)}" if close else "; see timm.list_models()"
        raise refuse(f"unknown timm model `model.name: {model.name}`{hint}", "model.name")
    if model.pretrained_file and not project.resolve(model.pretrained_file).is_file():
        raise refuse(f"weights file `model.pretrained_file: {model.pretrained_file}` not found (looked at "
                     f"{project.resolve(model.pretrained_file)}); fix the path or set model.pretrained=false",
                     "model.pretrained_file")
    if model.pretrained and not model.pretrained_file:
        _check_weights_reachable(model, project)


def listed_models(index: Path) -> list[dict]:
    """The entries of a weights_dir's models.json ([] when the file is missing or unreadable)."""
    try:
        return list(json.loads(index.read_text()).get("models", []))
    except (OSError, ValueError, AttributeError):
        return []


@functools.lru_cache(maxsize=1)
def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether huggingface.co:443 accepts a connection within `timeout` seconds (probed once per process)."""
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _hub_cached(name: str) -> bool:
    """Whether timm's hub weights for `name` already sit in the Hugging Face cache (usable offline)."""
    try:
        from huggingface_hub.constants import HF_HUB_CACHE
        from timm.models import get_pretrained_cfg
    except ImportError:
        return False
    pcfg = get_pretrained_cfg(name)
    hub_id = getattr(pcfg, "hf_hub_id", None) if pcfg is not None else None
    return bool(hub_id) and (Path(HF_HUB_CACHE) / f"models--{hub_id.replace('/', '--')}").is_dir()


def _check_weights_reachable(model: ModelConfig, project: Project) -> None:
    """Refuse pretrained weights that are neither listed in weights_dir/models.json, nor cached, nor reachable on
    the hub (HF_HUB_OFFLINE set, or huggingface.co unreachable), before any experiment folder is created."""
    index = project.resolve(model.weights_dir) / "models.json"
    entries = listed_models(index)
    if any(e.get("timm_model") == model.name for e in entries) or _hub_cached(model.name):
        return
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    if not offline and hub_reachable():
        return
    names = ", ".join(sorted(str(e.get("timm_model")) for e in entries)) or "none"
    where = f"{index} lists: {names}" if index.is_file() else f"{index} does not exist (fix model.weights_dir)"
    why = "HF_HUB_OFFLINE is set" if offline else "huggingface.co is unreachable"
    raise refuse(f"no weights for `model.name: {model.name}`: not in models.json ({where}) and {why} - set "
                 f"model.pretrained=false, model.pretrained_file=<local .safetensors/.pth>, or a model listed there",
                 "model.name")


def _validate_input_size(cfg: Config) -> None:
    """Models with a fixed input size (ViTs) must get exactly that size: img_size x input_upscale."""
    from timm.models import get_pretrained_cfg

    pcfg = get_pretrained_cfg(cfg.model.name.split(".")[0])
    if pcfg is None or not getattr(pcfg, "fixed_input_size", False):
        return
    want, got = pcfg.input_size[-1], cfg.data.img_size * cfg.model.input_upscale
    if got != want:
        raise refuse(f"{cfg.model.name} takes exactly {want}x{want} inputs, but data.img_size {cfg.data.img_size} x "
                     f"model.input_upscale {cfg.model.input_upscale} = {got}; set data.img_size="
                     f"{want // cfg.model.input_upscale} or pick a CNN", "data.img_size", "model.input_upscale",
                     "model.name")


class Resolved(NamedTuple):
    """A loaded config and where each key that is not a default was set."""

    cfg: Config
    origins: Origins  # dotted key -> "<file>:<line>" or "override '<item>'"
    where: str  # the experiment file (competition.yaml when no experiment)


def resolve_config(name_or_path: str | Path = "", overrides: list[str] | None = None,
                   project: Project | None = None, check_model: bool = True) -> Resolved:
    """Load, merge (competition.yaml <- base chain <- overrides), build and validate a Config, keeping where
    each key came from; an error names the file and line (or the override) that set the key at fault."""
    project = project or Project.from_env()
    data: dict = {}
    origins: Origins = {}
    if project.competition_yaml():  # a KIT_HOME project without one is refused here, naming the file
        data, origins = _read_yaml(project.competition_file, (), COMPETITION_EXAMPLE)
    name, where = "", str(project.competition_file)
    if name_or_path:
        path = experiment_file(str(name_or_path), project)
        exp, exp_origins = _read_yaml(path, ())
        data, origins = _merge(data, exp), {**origins, **exp_origins}
        name, where = check_name(path.stem), str(path.resolve())
    over, over_origins = overrides_with_origins(overrides or [])
    data, origins = _merge(data, over), {**origins, **over_origins}
    data["name"] = name
    try:
        cfg = _build(Config, data, "")
    except ConfigError as err:
        raise ConfigError(f"{locate(err, origins, where)}: {err}") from None
    validate(cfg, where, project, check_model, origins)
    return Resolved(cfg, origins, where)


def load_config(name_or_path: str | Path = "", overrides: list[str] | None = None, project: Project | None = None,
                check_model: bool = True) -> Config:
    """Load, merge (competition.yaml <- base chain <- overrides), build and validate a Config.

    check_model=False skips the timm model / weights checks (for steps that never build a model).
    """
    return resolve_config(name_or_path, overrides, project, check_model).cfg


def load_saved_config(path: Path) -> Config:
    """The resolved config an experiment saved (experiments/<exp>/config.yaml), rebuilt and frozen.

    Read leniently (it was written by the kit, maybe an older one): keys the kit added after the run read as
    their defaults; keys it no longer knows are dropped with one warning each."""
    if not path.is_file():
        if not path.parent.is_dir() and path.name == "config.yaml" and not any(
                (path.parent.parent / f"{path.parent.name}{s}").is_file() for s in EXPERIMENT_SUFFIXES):
            raise missing_experiment(path.parent.name, path.parent.parent)
        raise ConfigError(f"{path} not found - run the experiment first")
    try:  # written by yaml.safe_dump (quoting for YAML 1.1), so read back by YAML 1.1's rules: exact, also for old runs
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not a saved config ({type(err).__name__}); rerun the experiment") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: not a saved config (top level is {type(data).__name__}); rerun the experiment")
    try:
        return from_dict(data, str(path))
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


class _QuotingDumper(yaml.SafeDumper):
    """safe_dump that quotes every string YAML 1.1 or 1.2 would read as something else (`off`, `1e3`), so a saved
    config reads back the same through this loader and through plain yaml.safe_load."""


_QuotingDumper.yaml_implicit_resolvers = {
    first: [*yaml.SafeDumper.yaml_implicit_resolvers.get(first, []),
            *_UniqueKeyLoader.yaml_implicit_resolvers.get(first, [])]
    for first in {*yaml.SafeDumper.yaml_implicit_resolvers, *_UniqueKeyLoader.yaml_implicit_resolvers}}


def save_config(cfg: Config, path: Path) -> None:
    """Write the resolved config as YAML, atomically."""
    write_text(path, yaml.dump(to_dict(cfg), Dumper=_QuotingDumper, sort_keys=False))
