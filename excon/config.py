"""Typed configuration: one schema for params.yaml, the CLI and (later) the pipelines.

Every parameter lives in a dataclass field with a default. `load_config` reads a DVC-style
params.yaml, applies `section.key=value` overrides and validates everything, raising
`ConfigError` with one line naming the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

DATASETS = ("animals", "cifar100", "tinyimagenet", "imagefolder")
METHODS = ("ce", "supcon", "excon")


class ConfigError(ValueError):
    """A parameter is unknown, of the wrong type or out of range."""


class _Loader(yaml.SafeLoader):
    """PyYAML resolves scalars by YAML 1.1, where a float needs a dot: `1e-3` and `5e-4` come
    back as strings. Add YAML 1.2's float form (what DVC's ruamel and every ML user write)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def parse_yaml(text: str) -> Any:
    """YAML text as Python values, numbers in every notation YAML 1.1 and 1.2 allow."""
    return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: safe


@dataclass
class DataConfig:
    dataset: Literal["animals", "cifar100", "tinyimagenet", "imagefolder"] = "animals"
    prepared_dir: str = "data/prepared"  # where `excon prepare` writes, `pretrain` reads
    raw_dir: str | None = None  # original files the user already has (no download)
    download: bool = False
    image_size: int = 32  # imagefolder only; the others keep their native size
    # 0 for study.protocol=reference: the whole training split trains, as the authors'
    # --validation=0 (pretrain checks the prepared data against the protocol: a pipeline task
    # sees only its slice of the parameters, so the two keys are never checked together here).
    val_fraction: float = 0.1
    test_fraction: float = 0.1  # only for sources without an official test split
    limit_per_class: int | None = None  # subsample every split (quick runs)
    seed: int = 0
    num_workers: int = 0


@dataclass
class ModelConfig:
    arch: Literal["resnet18", "resnet50"] = "resnet18"
    width: float = 1.0  # channel multiplier on the torchvision widths (64..512)
    proj_dim: int = 128


@dataclass
class MethodConfig:
    name: Literal["ce", "supcon", "excon"] = "supcon"
    temperature: float = 0.1
    base_temperature: float = 0.07
    # How the online linear head (used by ExCon's Grad-CAM) is trained:
    # "epoch"  - one pass on detached features after each encoder epoch (reference behaviour);
    # "online" - in the same step, on detached features of the first view (no extra pass).
    head_training: Literal["epoch", "online"] = "epoch"
    # ExCon (faithful defaults from the authors' code):
    tau: float = 0.5  # normalised Grad-CAM value at or below which a pixel is masked
    exp_epochs: int = 0  # masking starts at (1-based) epoch exp_epochs; SupCon before
    negative_pair: bool = True  # rejected masked images join the batch as background negatives
    background_anchor: bool = False  # False: backgrounds are negatives only; True: one class
    gradcam_layer: str | None = None  # None: the reference's layer for the arch and image size
    relu_attributions: bool = False
    grid_images: int = 8  # val images in the per-epoch saliency grid PNG (0: none)
    # Precision of Grad-CAM, the mask and the accept test when train.amp is on: "fp32" (default)
    # keeps ExCon's own mechanism out of bf16, whose ~3 significant digits move pixels across
    # tau and flip accept decisions; "amp" runs them under the training autocast, as a
    # reference run under apex/AMP would. The encoder's training forward/backward stay bf16.
    saliency_precision: Literal["fp32", "amp"] = "fp32"


@dataclass
class OptimConfig:
    lr: float = 0.5
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_epochs: int = 0
    warmup_from: float = 0.01  # lr at the first warm-up step, as in SupContrast
    min_lr_ratio: float = 1e-3  # cosine decays to lr * min_lr_ratio


@dataclass
class TrainConfig:
    epochs: int = 200
    batch_size: int = 256
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # bf16 autocast, only on CUDA
    channels_last: bool = True  # NHWC convolutions: faster on CPU (oneDNN) and CUDA alike
    runs_dir: str = "runs"
    max_steps_per_epoch: int | None = None  # cap for smoke runs and tests
    # Under torchrun with several GPUs: BatchNorm statistics over the global batch (torch's
    # SyncBatchNorm is CUDA-only; per-rank statistics otherwise, as DDP does by default).
    sync_bn: bool = False
    # Where views are made: "loader" = per image in DataLoader workers (torchvision, as the
    # reference); "device" = whole batches on the training device (kornia): fast on a GPU.
    augment: Literal["loader", "device"] = "loader"
    # Crop + flip for the images a classifier trains on (the ce method, the head epoch); the
    # reference trains them on plain standard views on Tiny ImageNet (main_ce.set_loader).
    classifier_augment: bool = True
    # torch.compile the encoder (dynamic shapes: ExCon's batch grows with its backgrounds). The
    # first steps pay the compilation (about a minute); worth it for long GPU runs.
    compile: bool = False
    # Divergence guard: 0 (default) stops the run at the first non-finite loss or weight;
    # N > 0 skips the update of up to N non-finite steps per epoch (one host sync per step).
    nonfinite_tolerance: int = 0
    # How BatchNorm normalises the contrastive batch: "batch" (default) normalises all views
    # together; "per_view" normalises each view as its own batch, as the reference's
    # DataParallel on two GPUs does (it splits cat([view1, view2]) into one chunk per GPU), with
    # running statistics from view 1 only (DataParallel keeps device 0's replica's updates).
    bn: Literal["batch", "per_view"] = "batch"


@dataclass
class ProbeConfig:
    epochs: int = 100
    batch_size: int = 256
    lrs: list[float] = field(default_factory=lambda: [0.1, 1.0])  # grid, selected on val
    momentum: float = 0.9
    weight_decay: float = 0.0


@dataclass
class EvalConfig:
    batch_size: int = 256
    seed: int = 0
    n_bins: int = 10  # ECE bins, equal width (the reference's)
    # The classifier every part scores: "probe" = the linear probe selected on val (default; the
    # same footing for every method), "online" = the head co-trained with the encoder (the
    # reference's eval.py loads the checkpoint's classifier).
    head: Literal["probe", "online"] = "probe"
    # Adversarial robustness (L-inf, eps in /255 of [0, 1] pixels)
    eps: list[float] = field(default_factory=lambda: [1.0, 2.0, 4.0, 8.0])
    pgd_steps: int = 10
    attack_images: int | None = None  # subsample of the test split (None: all)
    # Calibration under distribution shift
    corruptions: list[str] | None = None  # None: the 15 benchmark corruptions
    extra_corruptions: bool = False  # + speckle_noise, gaussian_blur, spatter, saturate
    severities: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    shift_images: int | None = None  # subsample of the test split per corrupted set
    shift_cache: str = "data/shift"  # corrupted sets are computed once, cached per dataset
    cifar100c_dir: str | None = None  # released CIFAR-100-C .npy files, used when present
    # Explanation quality (Grad-CAM of the predicted class)
    expl_images: int | None = None
    top_frac: float = 0.15  # Average Drop / Increase keep the top 15 % of saliency pixels
    deletion_steps: int = 16
    grid_images: int = 8


@dataclass
class TrackingConfig:
    enabled: bool = True
    uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db (local store)
    experiment: str = "excon"
    model_name: str | None = None  # registry name; None: excon-<dataset>
    # register models from a DVC experiment (dvc exp run); off: experiments never enter the registry
    register_experiments: bool = False
    # Promotion gate: the challenger becomes champion only if, against the current champion,
    # probe top-1 >= champion - tolerance, ECE <= champion + tolerance, PGD eps-4 accuracy >=
    # champion - tolerance and Average Drop <= champion + tolerance.
    gate_top1_tolerance: float = 0.0
    gate_ece_tolerance: float = 0.0
    gate_pgd_tolerance: float = 0.0
    gate_avg_drop_tolerance: float = 0.0


@dataclass
class StorageConfig:
    # When set (s3://bucket/prefix), every stage mirrors what it wrote to <url>/<path>, with
    # sha256 checks: a team's shared copy of prepared data and runs beside DVC's remote.
    # Credentials and endpoint come from the AWS environment variables, never from here.
    artifacts_url: str | None = None


@dataclass
class StudyConfig:
    # The training seeds of the study: an axis of both DAGs (runs in <runs>/<dataset>/<method>/
    # seed<k>/); the report gives every figure over them. One seed is not a result.
    seeds: list[int] = field(default_factory=lambda: [0])
    # "heldout" (default): select on a validation split carved from train, test once.
    # "reference": the authors' protocol (--validation=0): train on the whole training split
    # (data.val_fraction 0), evaluate the test set after every epoch, and report the last epoch
    # and the best test epoch (labelled "selected on test").
    protocol: Literal["heldout", "reference"] = "heldout"


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    study: StudyConfig = field(default_factory=StudyConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Range rules: key -> (predicate, description of what is allowed)
_POSITIVE = (lambda v: v > 0, "> 0")
_NON_NEGATIVE = (lambda v: v >= 0, ">= 0")
_FRACTION = (lambda v: 0 <= v < 1, "in [0, 1)")
_RULES: dict[str, tuple[typing.Callable[[Any], bool], str]] = {
    "data.image_size": (lambda v: v >= 8, ">= 8"),
    "data.val_fraction": _FRACTION,
    "data.test_fraction": _FRACTION,
    "data.limit_per_class": (lambda v: v is None or v > 0, "> 0 or null"),
    "data.num_workers": _NON_NEGATIVE,
    "model.width": (lambda v: 0 < v <= 4, "in (0, 4]"),
    "model.proj_dim": _POSITIVE,
    "method.temperature": _POSITIVE,
    "method.base_temperature": _POSITIVE,
    "method.tau": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "method.exp_epochs": _NON_NEGATIVE,
    "method.grid_images": (lambda v: 0 <= v <= 64, "in [0, 64]"),
    "optim.lr": _POSITIVE,
    "optim.momentum": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "optim.weight_decay": _NON_NEGATIVE,
    "optim.warmup_epochs": _NON_NEGATIVE,
    "optim.warmup_from": _POSITIVE,
    "optim.min_lr_ratio": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "train.epochs": _POSITIVE,
    "train.batch_size": (lambda v: v >= 2, ">= 2 (contrastive losses need pairs)"),
    "train.device": (
        lambda v: re.fullmatch(r"auto|cpu|mps|cuda(:[0-9]+)?", v) is not None,
        "one of auto, cpu, cuda, cuda:N, mps",
    ),
    "train.nonfinite_tolerance": _NON_NEGATIVE,
    "train.max_steps_per_epoch": (lambda v: v is None or v > 0, "> 0 or null"),
    "probe.epochs": _POSITIVE,
    "probe.batch_size": _POSITIVE,
    "probe.lrs": (lambda v: len(v) > 0 and all(x > 0 for x in v), "a non-empty list of > 0"),
    "probe.momentum": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "probe.weight_decay": _NON_NEGATIVE,
    "eval.batch_size": _POSITIVE,
    "eval.n_bins": _POSITIVE,
    "eval.eps": (lambda v: all(0 <= x <= 255 for x in v), "a list of values in [0, 255]"),
    "eval.pgd_steps": _POSITIVE,
    "eval.attack_images": (lambda v: v is None or v > 0, "> 0 or null"),
    "eval.severities": (lambda v: len(v) > 0 and all(1 <= x <= 5 for x in v), "values in 1..5"),
    "eval.shift_images": (lambda v: v is None or v > 0, "> 0 or null"),
    "eval.expl_images": (lambda v: v is None or v > 0, "> 0 or null"),
    "eval.top_frac": (lambda v: 0 < v < 1, "in (0, 1)"),
    "eval.deletion_steps": _POSITIVE,
    "eval.grid_images": (lambda v: 0 <= v <= 64, "in [0, 64]"),
    "storage.artifacts_url": (
        lambda v: v is None or v.startswith("s3://"),
        "an s3://bucket/prefix URL or null",
    ),
    "study.seeds": (
        lambda v: len(v) > 0 and len(set(v)) == len(v) and all(x >= 0 for x in v),
        "a non-empty list of distinct seeds >= 0",
    ),
    "tracking.gate_top1_tolerance": _NON_NEGATIVE,
    "tracking.gate_ece_tolerance": _NON_NEGATIVE,
    "tracking.gate_pgd_tolerance": _NON_NEGATIVE,
    "tracking.gate_avg_drop_tolerance": _NON_NEGATIVE,
}


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin is list:
        return f"list of {_type_name(get_args(tp)[0])}"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


# bool is an int in Python; a YAML `true` must not pass for an int or a float.
_PRIMITIVES: dict[type, typing.Callable[[Any], bool]] = {
    bool: lambda v: isinstance(v, bool),
    int: lambda v: isinstance(v, int) and not isinstance(v, bool),
    float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    str: lambda v: isinstance(v, str),
}


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Return `value` as type `tp` or raise ConfigError. Ints are accepted for floats only."""
    origin = get_origin(tp)
    if origin is Literal:
        if value in get_args(tp):
            return value
    elif origin in (typing.Union, types.UnionType):
        if value is None and type(None) in get_args(tp):
            return None
        for arg in get_args(tp):
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg)
            except ConfigError:
                pass
    elif origin is list:
        if isinstance(value, list):
            return [_coerce(key, v, get_args(tp)[0]) for v in value]
    elif tp in _PRIMITIVES and _PRIMITIVES[tp](value):
        if tp is float and not math.isfinite(value):
            raise ConfigError(f"{key}: got {value!r}, expected a finite number")
        return float(value) if tp is float else value
    raise ConfigError(f"{key}: got {value!r}, expected {_type_name(tp)}")


def _build(section_cls: type, section: str, values: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(section_cls)
    allowed = [f.name for f in dataclasses.fields(section_cls)]
    kwargs = {}
    for key, value in values.items():
        full = f"{section}.{key}"
        if key not in allowed:
            raise ConfigError(f"{full}: unknown key (allowed: {', '.join(allowed)})")
        value = _coerce(full, value, hints[key])
        rule = _RULES.get(full)
        if rule is not None and not rule[0](value):
            raise ConfigError(f"{full}: got {value!r}, must be {rule[1]}")
        kwargs[key] = value
    return section_cls(**kwargs)


def from_dict(raw: dict[str, Any]) -> Config:
    """Build and validate a Config from a nested dict (missing keys take defaults)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"params: expected a mapping of sections, got {type(raw).__name__}")
    sections = {f.name: f for f in dataclasses.fields(Config)}
    hints = typing.get_type_hints(Config)
    built = {}
    for name, values in raw.items():
        if name not in sections:
            # Other tools (DVC stages, pipelines) may keep their own sections in params.yaml
            # under names starting with an underscore; everything else must be ours.
            if str(name).startswith("_"):
                continue
            raise ConfigError(f"{name}: unknown section (allowed: {', '.join(sections)})")
        if values is None:
            values = {}
        if not isinstance(values, dict):
            raise ConfigError(f"{name}: expected a mapping, got {values!r}")
        built[name] = _build(hints[name], name, values)
    return Config(**built)  # untouched sections keep their defaults (a test validates those)


def parse_override(text: str) -> tuple[str, str, Any]:
    """`section.key=value` -> (section, key, YAML-parsed value)."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"--set {text!r}: expected section.key=value, e.g. train.epochs=10")
    path, raw_value = text.split("=", 1)
    section, key = path.split(".", 1)
    try:
        value = parse_yaml(raw_value) if raw_value != "" else ""
    except yaml.YAMLError:
        value = raw_value
    return section.strip(), key.strip(), value


def loads_config(text: str, overrides: list[str] | None = None) -> Config:
    """A Config from params YAML text (what a pipeline hands its tasks) plus overrides."""
    try:
        raw = parse_yaml(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"params: not valid YAML ({e})") from None
    if not isinstance(raw, dict):
        raise ConfigError("params: expected a mapping of sections at the top level")
    return _with_overrides(raw, overrides)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read params.yaml (if given and present), apply `--set` overrides, validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: params file not found")
        try:
            raw = parse_yaml(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return _with_overrides(raw, overrides)


def _with_overrides(raw: dict[str, Any], overrides: list[str] | None) -> Config:
    for text in overrides or []:
        section, key, value = parse_override(text)
        current = raw.setdefault(section, {})
        if not isinstance(current, dict):
            raise ConfigError(f"{section}: expected a mapping, got {current!r}")
        current[key] = value
    return from_dict(raw)
