"""Experiment configuration: a typed and validated ``Config`` (a pydantic v2 schema) that gathers
the sections each stage owns: ``data`` (``harness.data.config``), ``model`` (``harness.models.config``),
``optimizer``, ``scheduler``, ``train``, ``checkpoint``, ``logging``, ``diagnostics``
(``harness.training.config``), ``analysis`` (``harness.analysis.config``) and ``report``
(``harness.reporting.config``), and the rules that involve more than one of them.

A YAML file names only what it changes, and may start from another file (``base: other.yaml``,
``harness.core.yaml_io``). ``--set key.path=value`` overrides any key. Every problem is reported in
one line naming the file, the key path, the value and what was expected. Validating a config imports
no torch: names are checked against lazy registries, and plug-ins are imported when a run builds them.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError

from harness.analysis.config import CAM_METHODS, AnalysisConfig
from harness.core.errors import ConfigError
from harness.core.registry import Registry
from harness.core.schema import Section, error_key, format_validation_error
from harness.core.yaml_io import absolute_plugin_files, dump_yaml, parse_yaml, read_yaml
from harness.data.config import SOURCES, DataConfig
from harness.models.config import MODELS, ModelConfig
from harness.reporting.config import ReportConfig
from harness.training.config import (
    OPTIMIZERS,
    SCHEDULERS,
    CheckpointConfig,
    DiagnosticsConfig,
    LoggingConfig,
    OptimizerConfig,
    SchedulerConfig,
    TrainConfig,
)

__all__ = [
    "Config",
    "ConfigError",
    "REGISTRIES",
    "config_from_dict",
    "dump_config",
    "load_config",
    "parse_override",
    "set_key",
]

# Every config key that names a registered entry or a plug-in, and its registry.
REGISTRIES: dict[str, Registry] = {
    "model.name": MODELS,
    "optimizer.name": OPTIMIZERS,
    "scheduler.name": SCHEDULERS,
    "data.dataset": SOURCES,
    "analysis.cam_methods": CAM_METHODS,  # a list of names
}


class Config(Section):
    # The run folder is results/<name>/...: a name, not a path.
    name: str = Field(
        "resnet18",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        max_length=100,
        description=(
            "experiment name (letters, digits, `.`, `_`, `-`); the run folder is `results/<name>/<timestamp>`"
        ),
    )
    seed: int = Field(
        0, ge=0, lt=2**32, description="seeds weights, data order, augmentation and subsets (0 to 2^32 - 1)"
    )
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

    def plugin_names(self) -> dict[str, str | list[str]]:
        """The value of every key that names registered entries or plug-ins: a name (``{"model.name":
        "resnet18", ...}``), or for ``analysis.cam_methods`` a list of them, ``all`` spelled out."""
        names: dict[str, str | list[str]] = {
            key: getattr(getattr(self, key.split(".")[0]), key.split(".")[1]) for key in REGISTRIES
        }
        names["analysis.cam_methods"] = self.analysis.cam_method_names()
        return names


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
    t = cfg.train
    if t.low_res_epochs and t.low_res_size is None:
        raise ConfigError(f"{source}: train.low_res_epochs = {t.low_res_epochs}: expected train.low_res_size as well")
    first_step = s.step_epochs if s.name == "step" else min(s.milestones, default=None)
    if s.name in ("step", "multistep") and first_step is not None and first_step <= s.warmup_epochs_used(t.epochs):
        raise ConfigError(
            f"{source}: scheduler.warmup_epochs = {s.warmup_epochs}: "
            f"expected the warm-up to end before the first step (epoch {first_step})"
        )


def _source_of(key: str, overrides: list[str], source: str) -> str:
    """Where a bad key came from: the ``--set`` that gave it (the last one wins), or the file."""
    for text in reversed(overrides):
        given = text.partition("=")[0].strip()
        if key == given or key.startswith((f"{given}.", f"{given}[")) or given.startswith(f"{key}."):
            return f"--set {text!r}"
    return source


def config_from_dict(raw: dict, overrides: list[str] = (), source: str = "<config>") -> Config:
    """Validate a config given as a dict (a YAML file's, read), with ``--set`` overrides applied; a
    plug-in file named by a relative path (``./my_models.py:Net``) is taken from the working folder."""
    raw = copy.deepcopy(raw)
    for text in overrides:
        path, value = parse_override(text)
        _apply_override(raw, path, value, f"--set {text!r}")
    raw = absolute_plugin_files(raw, Path.cwd())
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(
            format_validation_error(error, _source_of(error_key(error), overrides, source), Config)
        ) from None
    _check_consistency(cfg, source)
    return cfg


def load_config(path: str | Path, overrides: list[str] = ()) -> Config:
    """Read, override (``--set``) and validate a config file."""
    return config_from_dict(read_yaml(path), overrides, source=str(path))


def dump_config(cfg: Config) -> str:
    return dump_yaml(cfg.to_dict())
