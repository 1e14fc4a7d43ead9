"""Experiment configuration: YAML in, a typed and validated ``Config`` out (a pydantic v2 schema).

Every key has a default here; a YAML file names only what it changes, and may start from another
file (``base: other.yaml``). ``--set key.path=value`` overrides any key. Every problem is reported
in one line naming the file, the key path, the value and what was expected.

YAML is read with the YAML 1.2 rules for scalars: only true/false are booleans (YAML 1.1, PyYAML's
default, reads ``amp: off`` as false and ``1e-3`` as a string), decimal integers have no octal
form (``010`` is 10), and a key written twice in one mapping is an error, not a silent overwrite.
"""

from __future__ import annotations

import copy
import itertools
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainValidator, ValidationError

from harness.core.errors import HarnessError
from harness.core.registry import Registry
from harness.data.sources import SOURCES
from harness.models.builders import MODELS
from harness.training.optim import OPTIMIZERS
from harness.training.schedules import SCHEDULERS

CIFAR10_MEAN = [0.4914, 0.4822, 0.4465]
CIFAR10_STD = [0.2470, 0.2435, 0.2616]


class ConfigError(HarnessError):
    pass


# ---------------------------------------------------------------- YAML 1.2 scalars


class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 booleans, integers and floats, refusing duplicate keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                mark = key_node.start_mark
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (line {mark.line + 1})", mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_BOOL, _INT, _FLOAT = "tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in (_BOOL, _INT, _FLOAT)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_Yaml12Loader.add_implicit_resolver(_INT, re.compile(r"^[-+]?[0-9]+$"), list("-+0123456789"))
_Yaml12Loader.add_implicit_resolver(
    _FLOAT,
    re.compile(
        r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"
    ),
    list("-+0123456789."),
)
_Yaml12Loader.add_constructor(_INT, lambda loader, node: int(loader.construct_scalar(node)))


class _QuotingDumper(yaml.SafeDumper):
    """Quotes every string that YAML 1.1 or 1.2 would read as something else ("off", "1e5"), so that
    config.yaml reads back the same in either."""


for _first, _resolvers in _Yaml12Loader.yaml_implicit_resolvers.items():
    for _tag, _regexp in _resolvers:
        _QuotingDumper.add_implicit_resolver(_tag, _regexp, [_first])


def parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Yaml12Loader)  # noqa: S506 - a SafeLoader subclass


# ---------------------------------------------------------------- the schema


def _registered(registry: Registry) -> AfterValidator:
    def check(name: str) -> str:
        if name not in registry:
            raise ValueError(f"expected {registry.expected()}")
        return name

    return AfterValidator(check)


def _strictly_increasing(values: list[int]) -> list[int]:
    if any(b <= a for a, b in itertools.pairwise(values)) or any(v < 1 for v in values):
        raise ValueError("expected strictly increasing epochs >= 1")
    return values


def _rgb(values: list[float]) -> list[float]:
    if len(values) != 3:
        raise ValueError("expected 3 numbers (one per RGB channel)")
    return values


def _positive_rgb(values: list[float]) -> list[float]:
    if any(v <= 0 for v in _rgb(values)):
        raise ValueError("expected 3 positive numbers (one per RGB channel)")
    return values


def _image_count_or_fraction(value: Any) -> int | float:
    """An integer >= 0 (images) or a float in [0, 1) (a fraction); one check, so one message for both."""
    is_count = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    is_fraction = isinstance(value, float) and 0.0 <= value < 1.0  # NaN fails both comparisons
    if not (is_count or is_fraction):
        raise ValueError("expected an image count (an integer >= 0) or a fraction of the training images in [0, 1)")
    return value


def _named_transform(item: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(item.get("name"), str):
        raise ValueError("expected a 'name' key with an albumentations transform name")
    return item


class Section(BaseModel):
    # strict: "3" is not a number and 1 is not true; a YAML user writes what they mean.
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, validate_default=False)


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


class DataConfig(Section):
    dataset: Annotated[str, _registered(SOURCES)] = "cifar10"
    root: str = "data/cifar10"
    download: bool = True
    cache_dir: str | None = None
    # The validation split decides (best checkpoint, plateau, pruning, search); the test set only reports.
    # Held out of the whole training split with its own seed, so every run of a study holds out the same images.
    val_size: Annotated[int | float, PlainValidator(_image_count_or_fraction)] = 0.1
    val_seed: int = Field(0, ge=0, lt=2**32)
    train_subset: int | None = Field(None, ge=1)
    test_subset: int | None = Field(None, ge=1)
    synthetic_train_size: int = Field(512, ge=10)
    synthetic_test_size: int = Field(256, ge=10)
    batch_size: int = Field(512, ge=1)
    eval_batch_size: int = Field(1024, ge=1)
    num_workers: int | None = Field(None, ge=0)
    mean: Annotated[list[float], AfterValidator(_rgb)] = Field(default_factory=lambda: list(CIFAR10_MEAN))
    std: Annotated[list[float], AfterValidator(_positive_rgb)] = Field(default_factory=lambda: list(CIFAR10_STD))
    augment: list[Annotated[dict[str, Any], AfterValidator(_named_transform)]] = Field(default_factory=_default_augment)
    augment_on: Literal["loader", "device"] = "loader"


class ModelConfig(Section):
    name: Annotated[str, _registered(MODELS)] = "resnet18"
    width: int = Field(64, ge=1, le=4096)


class OptimizerConfig(Section):
    name: Annotated[str, _registered(OPTIMIZERS)] = "sgd"
    lr: float = Field(0.2, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    nesterov: bool = True
    weight_decay: float = Field(5e-4, ge=0.0)


class SchedulerConfig(Section):
    name: Annotated[str, _registered(SCHEDULERS)] = "onecycle"
    warmup_epochs: float = Field(0.0, ge=0.0)
    # Learning rate at the start of warm-up and at the end of onecycle/cosine, as fractions of lr.
    start_factor: float = Field(0.1, ge=0.0, le=1.0)
    final_factor: float = Field(0.0, ge=0.0, le=1.0)
    step_epochs: int = Field(10, ge=1)
    milestones: Annotated[list[int], AfterValidator(_strictly_increasing)] = Field(default_factory=lambda: [10, 15])
    gamma: float = Field(0.1, gt=0.0, le=1.0)
    plateau_patience: int = Field(2, ge=0)


class TrainConfig(Section):
    epochs: int = Field(20, ge=1)
    label_smoothing: float = Field(0.1, ge=0.0, lt=1.0)
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"
    channels_last: bool = True
    grad_clip: float | None = Field(None, gt=0.0)
    compile: bool = False
    tta_flip: bool = False
    ema_decay: float | None = Field(None, gt=0.0, lt=1.0)
    # Progressive resizing: the first low_res_epochs train on images scaled down to low_res_size; the
    # last epoch always trains at full size (TrainConfig.low_res_epochs_used), so shortening a run stays valid.
    low_res_size: int | None = Field(None, ge=8)
    low_res_epochs: int = Field(0, ge=0)

    @property
    def low_res_epochs_used(self) -> int:
        return min(self.low_res_epochs, self.epochs - 1) if self.low_res_size else 0

    backend: Literal["nccl", "gloo"] | None = None


class CheckpointConfig(Section):
    every_epochs: int = Field(1, ge=1)
    every_iters: int | None = Field(None, ge=1)
    n_saved: int = Field(2, ge=1)


class AnalysisConfig(Section):
    enabled: bool = True
    # Each is a row of every Grad-CAM figure; past a few hundred rows a PNG outgrows what viewers open.
    misclassified: int = Field(20, ge=0, le=200)
    order: Literal["first", "confident"] = "first"
    gradcam_layers: list[str] = Field(default_factory=lambda: ["layer1", "layer2", "layer3", "layer4"])
    gradcam_targets: list[Literal["predicted", "true"]] = Field(default_factory=lambda: ["predicted", "true"])


class ReportConfig(Section):
    enabled: bool = True


class LoggingConfig(Section):
    tensorboard: bool = True  # event files in RUN_DIR/tensorboard/: tensorboard --logdir results


class DiagnosticsConfig(Section):
    samples_per_epoch: int = Field(20, ge=0)  # weight-update samples in weights.csv per epoch; 0 turns them off


class Config(Section):
    # The run folder is results/<name>/...: a name, not a path.
    name: str = Field("resnet18", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=100)
    seed: int = Field(0, ge=0, lt=2**32)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    analysis: AnalysisConfig = Field(default_factory=AnalysisConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    diagnostics: DiagnosticsConfig = Field(default_factory=DiagnosticsConfig)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()


# ---------------------------------------------------------------- one-line errors

_EXPECTED = {
    "int_type": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "finite_number": "a finite number",
    "bool_type": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping of keys to values",
    "model_attributes_type": "a mapping of keys to values",
}
_BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}


def _key_path(loc: tuple) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _field(loc: tuple, schema: type[BaseModel]) -> Any:
    """The pydantic FieldInfo at a key path, or the section model when the path ends at one."""
    node: Any = schema
    for part in loc:
        if isinstance(part, int):
            continue
        model = node.annotation if hasattr(node, "annotation") else node
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or part not in model.model_fields:
            return None
        node = model.model_fields[part]
    return node


def _section_fields(loc: tuple, schema: type[BaseModel]) -> list[str]:
    node = _field(loc, schema)
    model = node.annotation if hasattr(node, "annotation") else node
    return list(model.model_fields) if isinstance(model, type) and issubclass(model, BaseModel) else []


def _bounds(loc: tuple, schema: type[BaseModel]) -> str:
    """Every bound of the field at ``loc``, e.g. '>= 0 and <= 200'."""
    symbols = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
    node = _field(loc, schema)
    parts = []
    for constraint in getattr(node, "metadata", []):
        for attr, symbol in symbols.items():
            if getattr(constraint, attr, None) is not None:
                parts.append(f"{symbol} {getattr(constraint, attr)}")
    return " and ".join(parts)


def format_validation_error(
    error: ValidationError, source: str, schema: type[BaseModel] | None = None, prefix: str = ""
) -> str:
    """A pydantic error of ``schema`` (default: the experiment's ``Config``) as one line naming the
    file, the key path (under ``prefix`` when the schema is part of a file), the value and what was expected."""
    schema = schema or Config
    first = error.errors()[0]
    kind, loc, ctx = first["type"], tuple(first["loc"]), first.get("ctx") or {}
    path = ".".join(part for part in (prefix, _key_path(loc)) if part)
    if kind == "missing":
        return f"{source}: {path}: missing (this key is required)"
    if kind == "extra_forbidden":
        known = ", ".join(_section_fields(loc[:-1], schema))
        return f"{source}: unknown key '{path}' (expected one of: {known})"
    if kind in _BOUNDS:
        expected = f"a value {_bounds(loc, schema) or _BOUNDS[kind] + ' ' + str(next(iter(ctx.values())))}"
    elif kind == "literal_error":
        expected = f"one of {ctx['expected'].replace(' or ', ', ')}"
    elif kind == "string_pattern_mismatch":
        expected = "a name of letters, digits, '.', '_' or '-' (it names the run folder)"
    elif kind == "value_error":
        expected = str(ctx.get("error", first["msg"])).removeprefix("expected ")
    else:
        expected = _EXPECTED.get(kind) or first["msg"].removeprefix("Input should be ")
    where = path or "the top level"
    return f"{source}: {where} = {first['input']!r}: expected {expected}"


# ---------------------------------------------------------------- files, base: and --set


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``key.path=value`` from ``--set``; the value is read as a YAML scalar or list."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected KEY.PATH=VALUE, e.g. --set train.epochs=5")
    try:
        parsed = parse_yaml(value) if value.strip() else None
    except yaml.YAMLError:
        raise ConfigError(f"--set {text!r}: the value {value!r} is not valid YAML") from None
    return key.strip().split("."), parsed


def _apply_override(raw: dict, path: list[str], value: Any, text: str) -> None:
    node = raw
    for i, part in enumerate(path[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{text}: '{'.'.join(path[: i + 1])}' is not a section")
        node = child
    node[path[-1]] = value


def set_key(raw: dict, dotted: str, value: Any) -> None:
    """Set ``a.b.c`` in a raw config dict, creating sections on the way (the schema checks the key later)."""
    _apply_override(raw, dotted.split("."), value, dotted)


def _deep_merge(base: dict, changes: dict) -> dict:
    merged = dict(base)
    for key, value in changes.items():
        both_sections = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = _deep_merge(merged[key], value) if both_sections else value
    return merged


def read_yaml(path: str | Path, _seen: tuple[Path, ...] = (), follow_base: bool = True) -> dict:
    """A config file as a dict; ``base: other.yaml`` (relative to the file) is read first and
    overlaid, so that a variant names only what it changes (unless ``follow_base`` is false: a
    search file's ``base`` names its experiment, it is not overlaid)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        raw = parse_yaml(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"{path}: not a UTF-8 text file (byte {error.object[error.start]:#04x} at offset {error.start})"
        ) from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot be read ({error.strerror or error})") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or "could not be parsed"
        raise ConfigError(f"{path}: malformed YAML{where}: {problem}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level, got {type(raw).__name__}")
    if "base" not in raw or not follow_base:
        return raw
    base = raw.pop("base")
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base = {base!r}: expected the path of another config file")
    base_path = (path.parent / base).resolve()
    if base_path in _seen:
        raise ConfigError(f"{path}: base = {base!r}: the chain of base files loops")
    return _deep_merge(read_yaml(base_path, (*_seen, path.resolve())), raw)


def _check_consistency(cfg: Config, source: str) -> None:
    """Rules that involve more than one key."""
    s = cfg.scheduler
    if s.name == "plateau" and cfg.data.val_size == 0:
        raise ConfigError(
            f"{source}: scheduler.name = 'plateau': expected a validation split to watch (data.val_size > 0); "
            "it must not watch the test set"
        )
    if s.name == "plateau" and s.warmup_epochs > 0:
        raise ConfigError(
            f"{source}: scheduler.warmup_epochs = {s.warmup_epochs}: expected 0 with the plateau scheduler"
        )
    if s.warmup_epochs >= cfg.train.epochs and s.name in ("onecycle", "cosine"):
        raise ConfigError(
            f"{source}: scheduler.warmup_epochs = {s.warmup_epochs}: "
            f"expected fewer than train.epochs ({cfg.train.epochs})"
        )
    t = cfg.train
    if t.low_res_epochs and t.low_res_size is None:
        raise ConfigError(f"{source}: train.low_res_epochs = {t.low_res_epochs}: expected train.low_res_size as well")
    first_step = s.step_epochs if s.name == "step" else min(s.milestones, default=None)
    if s.name in ("step", "multistep") and first_step is not None and first_step <= s.warmup_epochs:
        raise ConfigError(
            f"{source}: scheduler.warmup_epochs = {s.warmup_epochs}: "
            f"expected the warm-up to end before the first step (epoch {first_step})"
        )


def config_from_dict(raw: dict, overrides: list[str] = (), source: str = "<config>") -> Config:
    raw = copy.deepcopy(raw)
    for text in overrides:
        path, value = parse_override(text)
        _apply_override(raw, path, value, f"--set {text!r}")
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, source)) from None
    _check_consistency(cfg, source)
    return cfg


def load_config(path: str | Path, overrides: list[str] = ()) -> Config:
    """Read, override (``--set``) and validate a config file."""
    return config_from_dict(read_yaml(path), overrides, source=str(path))


def dump_config(cfg: Config) -> str:
    return yaml.dump(cfg.to_dict(), Dumper=_QuotingDumper, sort_keys=False, default_flow_style=None)
