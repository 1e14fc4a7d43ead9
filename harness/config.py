"""Experiment configuration: a typed and validated ``Config`` (a pydantic v2 schema).

Every key has a default here or in the section of the stage it configures (``data``:
``harness.data.config``, ``model``: ``harness.models.builders``, ``optimizer``:
``harness.training.optim``, ``scheduler``: ``harness.training.schedules``, each beside the registry
its names are checked against). A YAML file names only what it changes, and may start from another
file (``base: other.yaml``, ``harness.core.yaml_io``). ``--set key.path=value`` overrides any key.
Every problem is reported in one line naming the file, the key path, the value and what was expected.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError

from harness.core.errors import ConfigError
from harness.core.schema import Section, format_validation_error
from harness.core.yaml_io import dump_yaml, parse_yaml, read_yaml
from harness.data import sources as _sources  # noqa: F401 - registers the data sources data.dataset names
from harness.data.config import DataConfig
from harness.models.builders import ModelConfig
from harness.training.optim import OptimizerConfig
from harness.training.schedules import SchedulerConfig

__all__ = ["Config", "ConfigError", "config_from_dict", "dump_config", "load_config", "parse_override", "set_key"]


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


# ---------------------------------------------------------------- --set and files


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
        raise ConfigError(format_validation_error(error, source, Config)) from None
    _check_consistency(cfg, source)
    return cfg


def load_config(path: str | Path, overrides: list[str] = ()) -> Config:
    """Read, override (``--set``) and validate a config file."""
    return config_from_dict(read_yaml(path), overrides, source=str(path))


def dump_config(cfg: Config) -> str:
    return dump_yaml(cfg.to_dict())
