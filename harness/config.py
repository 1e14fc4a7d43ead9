"""Experiment configuration: YAML in, a typed and validated ``Config`` out.

Every key has a default here; a YAML file names only what it changes. Validation errors name the
file, the key path, the value and what was expected, in one line (see ``harness.errors``).
"""
from __future__ import annotations

import copy
import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from harness.errors import HarnessError

CIFAR10_MEAN = [0.4914, 0.4822, 0.4465]
CIFAR10_STD = [0.2470, 0.2435, 0.2616]


def _range(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False, hi_open: bool = False) -> dict:
    return {"lo": lo, "hi": hi, "lo_open": lo_open, "hi_open": hi_open}


def _default_augment() -> list[dict[str, Any]]:
    # RandomCrop(32, padding=4) + horizontal flip + Cutout 16x16: the seed's recipe plus flips.
    return [
        {"name": "PadIfNeeded", "min_height": 40, "min_width": 40, "border_mode": 0, "fill": 0, "p": 1.0},
        {"name": "RandomCrop", "height": 32, "width": 32, "p": 1.0},
        {"name": "HorizontalFlip", "p": 0.5},
        {
            "name": "CoarseDropout",
            "num_holes_range": [1, 1],
            "hole_height_range": [16, 16],
            "hole_width_range": [16, 16],
            "fill": 0,
            "p": 1.0,
        },
    ]


@dataclass
class DataConfig:
    dataset: Literal["cifar10", "image_folder", "synthetic"] = "cifar10"
    root: str = "data/cifar10"
    download: bool = True
    cache_dir: Union[str, None] = None
    train_subset: Union[int, None] = field(default=None, metadata=_range(1))
    test_subset: Union[int, None] = field(default=None, metadata=_range(1))
    synthetic_train_size: int = field(default=512, metadata=_range(10))
    synthetic_test_size: int = field(default=256, metadata=_range(10))
    batch_size: int = field(default=512, metadata=_range(1))
    eval_batch_size: int = field(default=1024, metadata=_range(1))
    num_workers: Union[int, None] = field(default=None, metadata=_range(0))
    mean: list[float] = field(default_factory=lambda: list(CIFAR10_MEAN))
    std: list[float] = field(default_factory=lambda: list(CIFAR10_STD))
    augment: list[dict[str, Any]] = field(default_factory=_default_augment)
    augment_on: Literal["loader", "device"] = "loader"


@dataclass
class ModelConfig:
    name: Literal["resnet18"] = "resnet18"
    width: int = field(default=64, metadata=_range(1))


@dataclass
class OptimizerConfig:
    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = field(default=0.2, metadata=_range(0.0, lo_open=True))
    momentum: float = field(default=0.9, metadata=_range(0.0, 1.0, hi_open=True))
    nesterov: bool = True
    weight_decay: float = field(default=5e-4, metadata=_range(0.0))


@dataclass
class SchedulerConfig:
    name: Literal["onecycle", "cosine", "step", "multistep", "plateau", "constant"] = "onecycle"
    warmup_epochs: float = field(default=0.0, metadata=_range(0.0))
    # Learning rate at the start of warm-up and at the end of onecycle/cosine, as fractions of lr.
    start_factor: float = field(default=0.1, metadata=_range(0.0, 1.0))
    final_factor: float = field(default=0.0, metadata=_range(0.0, 1.0))
    step_epochs: int = field(default=10, metadata=_range(1))
    milestones: list[int] = field(default_factory=lambda: [10, 15])
    gamma: float = field(default=0.1, metadata=_range(0.0, 1.0, lo_open=True))
    plateau_patience: int = field(default=2, metadata=_range(0))


@dataclass
class TrainConfig:
    epochs: int = field(default=20, metadata=_range(1))
    label_smoothing: float = field(default=0.1, metadata=_range(0.0, 1.0, hi_open=True))
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"
    channels_last: bool = True
    grad_clip: Union[float, None] = field(default=None, metadata=_range(0.0, lo_open=True))
    compile: bool = False
    tta_flip: bool = False
    ema_decay: Union[float, None] = field(default=None, metadata=_range(0.0, 1.0, lo_open=True, hi_open=True))
    backend: Union[Literal["nccl", "gloo"], None] = None


@dataclass
class CheckpointConfig:
    every_epochs: int = field(default=1, metadata=_range(1))
    every_iters: Union[int, None] = field(default=None, metadata=_range(1))
    n_saved: int = field(default=2, metadata=_range(1))


@dataclass
class AnalysisConfig:
    enabled: bool = True
    # Each is a row of every Grad-CAM figure; past a few hundred rows a PNG outgrows what viewers open.
    misclassified: int = field(default=20, metadata=_range(0, 200))
    order: Literal["first", "confident"] = "first"
    gradcam_layers: list[Literal["layer1", "layer2", "layer3", "layer4"]] = field(
        default_factory=lambda: ["layer1", "layer2", "layer3", "layer4"]
    )
    gradcam_targets: list[Literal["predicted", "true"]] = field(default_factory=lambda: ["predicted", "true"])


@dataclass
class ReportConfig:
    enabled: bool = True


@dataclass
class Config:
    name: str = "resnet18"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    report: ReportConfig = field(default_factory=ReportConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class ConfigError(HarnessError):
    pass


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is list:
        return f"a list of {_describe(args[0])}" if args else "a list"
    if origin is dict:
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "null"}.get(
        hint, getattr(hint, "__name__", str(hint))
    )


def _range_text(meta: dict) -> str:
    parts = []
    if meta.get("lo") is not None:
        parts.append(f"{'>' if meta['lo_open'] else '>='} {meta['lo']}")
    if meta.get("hi") is not None:
        parts.append(f"{'<' if meta['hi_open'] else '<='} {meta['hi']}")
    return " and ".join(parts)


def _in_range(value: float, meta: dict) -> bool:
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None and (value < lo or (meta["lo_open"] and value == lo)):
        return False
    if hi is not None and (value > hi or (meta["hi_open"] and value == hi)):
        return False
    return True


_SCIENTIFIC = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


_SCALAR_CHECKS = {
    type(None): lambda v: v is None,
    bool: lambda v: isinstance(v, bool),
    int: lambda v: isinstance(v, int) and not isinstance(v, bool),  # YAML's true is not a count
    str: lambda v: isinstance(v, str),
}


class _Mismatch(Exception):
    pass


def _coerce(value: Any, hint: Any, key: str, source: str) -> Any:
    """Return ``value`` checked against the type ``hint``; raise _Mismatch when it does not fit."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key, source)
    if origin in (Union, types.UnionType):
        for option in args:
            try:
                return _coerce(value, option, key, source)
            except _Mismatch:
                continue
        raise _Mismatch
    if origin is Literal:
        if value in args and type(value) is type(args[args.index(value)]):
            return value
        raise _Mismatch
    if origin is list:
        if not isinstance(value, list):
            raise _Mismatch
        return [_coerce(item, args[0], f"{key}[{i}]", source) for i, item in enumerate(value)] if args else value
    if origin is dict:
        if not isinstance(value, dict):
            raise _Mismatch
        return dict(value)
    if hint in _SCALAR_CHECKS:
        if _SCALAR_CHECKS[hint](value):
            return value
        raise _Mismatch
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _SCIENTIFIC.match(value):  # YAML 1.1 reads 1e-3 as a string
            return float(value)
        raise _Mismatch
    if hint is Any:
        return value
    raise TypeError(f"unsupported config type {hint!r} at {key}")


def _build(cls: type, raw: Any, prefix: str, source: str) -> Any:
    where = prefix or "the top level"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {where} = {raw!r}: expected a mapping of keys to values")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in raw:
        if key not in fields:
            path = f"{prefix}.{key}" if prefix else str(key)
            raise ConfigError(f"{source}: unknown key '{path}' (expected one of: {', '.join(fields)})")
    values = {}
    for name, f in fields.items():
        path = f"{prefix}.{name}" if prefix else name
        if name not in raw:
            continue
        value = raw[name]
        try:
            checked = _coerce(value, hints[name], path, source)
        except _Mismatch:
            raise ConfigError(f"{source}: {path} = {value!r}: expected {_describe(hints[name])}") from None
        meta = f.metadata
        if meta and checked is not None and not _in_range(checked, meta):
            raise ConfigError(f"{source}: {path} = {value!r}: expected a value {_range_text(meta)}")
        values[name] = checked
    return cls(**values)


def _check_consistency(cfg: Config, source: str) -> None:
    for key in ("mean", "std"):
        values = getattr(cfg.data, key)
        if len(values) != 3:
            raise ConfigError(f"{source}: data.{key} = {values!r}: expected 3 numbers (one per RGB channel)")
    if any(s <= 0 for s in cfg.data.std):
        raise ConfigError(f"{source}: data.std = {cfg.data.std!r}: expected positive numbers")
    for i, item in enumerate(cfg.data.augment):
        if not isinstance(item.get("name"), str):
            raise ConfigError(f"{source}: data.augment[{i}] = {item!r}: expected a 'name' key with a transform name")
    if cfg.scheduler.name == "plateau" and cfg.scheduler.warmup_epochs > 0:
        raise ConfigError(f"{source}: scheduler.warmup_epochs = {cfg.scheduler.warmup_epochs}: expected 0 with the plateau scheduler")
    if cfg.scheduler.warmup_epochs >= cfg.train.epochs and cfg.scheduler.name in ("onecycle", "cosine"):
        raise ConfigError(
            f"{source}: scheduler.warmup_epochs = {cfg.scheduler.warmup_epochs}: expected fewer than train.epochs ({cfg.train.epochs})"
        )
    first_step = cfg.scheduler.step_epochs if cfg.scheduler.name == "step" else min(cfg.scheduler.milestones, default=None)
    if cfg.scheduler.name in ("step", "multistep") and first_step is not None and first_step <= cfg.scheduler.warmup_epochs:
        raise ConfigError(
            f"{source}: scheduler.warmup_epochs = {cfg.scheduler.warmup_epochs}: expected the warm-up to end before the first step (epoch {first_step})"
        )
    if sorted(cfg.scheduler.milestones) != cfg.scheduler.milestones or any(m < 1 for m in cfg.scheduler.milestones):
        raise ConfigError(f"{source}: scheduler.milestones = {cfg.scheduler.milestones!r}: expected increasing epochs >= 1")


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``key.path=value`` from ``--set``; the value is read as a YAML scalar or list."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected KEY.PATH=VALUE, e.g. --set train.epochs=5")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        raise ConfigError(f"--set {text!r}: the value {value!r} is not valid YAML") from None
    return key.strip().split("."), parsed


def _apply_override(raw: dict, path: list[str], value: Any, text: str) -> None:
    node = raw
    for i, part in enumerate(path[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {text!r}: '{'.'.join(path[: i + 1])}' is not a section")
        node = child
    node[path[-1]] = value


def _deep_merge(base: dict, changes: dict) -> dict:
    merged = dict(base)
    for key, value in changes.items():
        merged[key] = _deep_merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def read_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """A config file as a dict; ``base: other.yaml`` (relative to the file) is read first and
    overlaid, so that a variant names only what it changes."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or "could not be parsed"
        raise ConfigError(f"{path}: malformed YAML{where}: {problem}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level, got {type(raw).__name__}")
    if "base" not in raw:
        return raw
    base = raw.pop("base")
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base = {base!r}: expected the path of another config file")
    base_path = (path.parent / base).resolve()
    if base_path in _seen:
        raise ConfigError(f"{path}: base = {base!r}: the chain of base files loops")
    return _deep_merge(read_yaml(base_path, (*_seen, path.resolve())), raw)


def config_from_dict(raw: dict, overrides: list[str] = (), source: str = "<config>") -> Config:
    raw = copy.deepcopy(raw)
    for text in overrides:
        path, value = parse_override(text)
        _apply_override(raw, path, value, text)
    cfg = _build(Config, raw, "", source)
    _check_consistency(cfg, source)
    return cfg


def load_config(path: str | Path, overrides: list[str] = ()) -> Config:
    """Read, override (``--set``) and validate a config file."""
    return config_from_dict(read_yaml(path), overrides, source=str(path))


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False, default_flow_style=None)
