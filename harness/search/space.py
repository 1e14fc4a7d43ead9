"""A search file (``experiments/search/*.yaml``): which experiment, which keys to vary and how, and how
the study samples, prunes and scores its trials. Validated like a config: every bad key, range or
distribution is one line naming the file and key, exit code 2, before any trial starts.

```yaml
base: ../resnet18_cpu.yaml            # the experiment every trial starts from (relative to this file)
trials: 24                            # complete + pruned trials the study runs (re-running continues it)
space:                                # dotted config keys -> distributions
  optimizer.lr: {type: float, low: 0.03, high: 0.3, log: true}
  train.label_smoothing: {type: float, low: 0.0, high: 0.2}
  data.batch_size: {type: categorical, choices: [128, 256]}
  train.low_res_epochs: {type: int, low: 0, high: 9}
objective: {metric: final_val_acc}    # final_val_acc (default) | best_val_acc | final_val_loss: validation only
sampler: {name: tpe, seed: 0}         # tpe (default) | random | grid (categorical spaces)
pruner: {name: successive_halving}    # successive_halving (default) | median | none
overrides: {}                         # every run: the trials and their confirmations
trial_overrides: {train.epochs: 6}    # the trials only (a smaller budget); confirmations run the base's
baseline_first: true                  # trial 0 runs the base's own values of the searched keys
```
"""

from __future__ import annotations

import copy
import functools
import math
from pathlib import Path
from typing import Any, Literal

import optuna
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from harness.config import Config, config_from_dict, set_key
from harness.core.errors import ConfigError
from harness.core.schema import Section, format_validation_error
from harness.core.yaml_io import read_yaml

METRICS = {"final_val_acc": "maximize", "best_val_acc": "maximize", "final_val_loss": "minimize"}
# What a trial runs unless the search file says otherwise: no analysis or report per trial.
TRIAL_DEFAULTS = {"analysis.enabled": False, "report.enabled": False}


class FloatDistribution(Section):
    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: float | None = Field(None, gt=0.0)


class IntDistribution(Section):
    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: int = Field(1, ge=1)


class CategoricalDistribution(Section):
    type: Literal["categorical"]
    choices: list[Any] = Field(min_length=1)


Distribution = FloatDistribution | IntDistribution | CategoricalDistribution
DISTRIBUTIONS: dict[str, type[Section]] = {
    "float": FloatDistribution,
    "int": IntDistribution,
    "categorical": CategoricalDistribution,
}


class ObjectiveConfig(Section):
    # Validation metrics only: a search that read the test set would choose on it.
    metric: Literal["final_val_acc", "best_val_acc", "final_val_loss"] = "final_val_acc"

    @property
    def direction(self) -> str:
        return METRICS[self.metric]


class SamplerConfig(Section):
    name: Literal["tpe", "random", "grid"] = "tpe"
    seed: int = Field(0, ge=0, lt=2**32)


class PrunerConfig(Section):
    name: Literal["successive_halving", "median", "none"] = "successive_halving"
    min_epochs: int = Field(1, ge=1)  # successive halving: the first rung, in epochs
    reduction_factor: int = Field(3, ge=2)  # successive halving: 1/reduction_factor of the trials climb each rung
    startup_trials: int = Field(5, ge=0)  # median: trials that finish before it prunes
    warmup_epochs: int = Field(1, ge=0)  # median: epochs a trial runs before it can be pruned


class HeartbeatConfig(Section):
    # A worker killed mid-trial stops beating; after grace_s another worker fails its trial and retries it.
    interval_s: int = Field(10, ge=1)
    grace_s: int = Field(60, ge=2)
    max_retry: int = Field(3, ge=0)


class SearchConfig(Section):
    base: str
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=100)
    trials: int | None = Field(None, ge=1)
    space: dict[str, dict[str, Any]] = Field(min_length=1)  # each entry read by parse_distribution
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    pruner: PrunerConfig = Field(default_factory=PrunerConfig)
    heartbeat: HeartbeatConfig = Field(default_factory=HeartbeatConfig)
    overrides: dict[str, Any] = Field(default_factory=dict)
    trial_overrides: dict[str, Any] = Field(default_factory=dict)
    # The first trial runs the base's own values of the searched keys: without it a search cannot say
    # whether anything it found beats the recipe it started from (or only the other samples).
    baseline_first: bool = False


class Search(BaseModel):
    """A validated search file, with its base experiment read and every distribution tried against it."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    path: Path
    spec: SearchConfig
    space: dict[str, Distribution]
    base_path: Path
    base_raw: dict[str, Any]  # the base experiment as read (base: chains resolved), before any override
    name: str
    trials: int

    def raw_changes(self, params: dict[str, Any], for_trial: bool) -> dict[str, Any]:
        """What a run changes in the base, in order: overrides, (trial defaults and trial overrides,) params."""
        trial_only = {**TRIAL_DEFAULTS, **self.spec.trial_overrides} if for_trial else {}
        return {**self.spec.overrides, **trial_only, **params}

    def raw_config(self, params: dict[str, Any], for_trial: bool) -> dict[str, Any]:
        """The experiment as a dict: the base with ``raw_changes`` applied."""
        raw = copy.deepcopy(self.base_raw)
        for key, value in self.raw_changes(params, for_trial).items():
            set_key(raw, key, value)
        return raw

    def config(self, params: dict[str, Any], for_trial: bool, extra: list[str] = ()) -> Config:
        return config_from_dict(self.raw_config(params, for_trial), list(extra), source=str(self.path))

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """The trial's parameters (an enqueued or retried trial gets its fixed ones back)."""
        params = {}
        for key, d in self.space.items():
            if isinstance(d, FloatDistribution):
                params[key] = trial.suggest_float(key, d.low, d.high, log=d.log, step=d.step)
            elif isinstance(d, IntDistribution):
                params[key] = trial.suggest_int(key, d.low, d.high, log=d.log, step=d.step)
            else:
                params[key] = trial.suggest_categorical(key, d.choices)
        return params

    def base_params(self, extra: list[str] = ()) -> dict[str, Any]:
        """The searched keys' values in the trials' config before any is sampled (``baseline_first``)."""
        config = self.config({}, True, extra)
        return {key: functools.reduce(getattr, key.split("."), config) for key in self.space}

    def pruner_warning(self, extra: list[str] = ()) -> str | None:
        """Why the pruner can never stop a trial (its first chance after the trials' last epoch, with the
        command line's ``--set`` ``extra``), or None."""
        epochs = self.config({}, True, extra).train.epochs
        p = self.spec.pruner
        first = p.min_epochs if p.name == "successive_halving" else p.warmup_epochs + 1 if p.name == "median" else None
        if first is None or first < epochs:
            return None
        setting = "min_epochs" if p.name == "successive_halving" else "warmup_epochs"
        return (
            f"the {p.name} pruner never stops a trial: its first decision comes after epoch {first} "
            f"(pruner.{setting}) and the trials end at epoch {epochs}; set it lower, or pruner.name: none"
        )

    def grid(self) -> dict[str, list[Any]]:
        return {key: list(d.choices) for key, d in self.space.items()}


def _admits(dist: Distribution, value: Any) -> bool:
    if isinstance(dist, CategoricalDistribution):
        return value in dist.choices
    return isinstance(value, int | float) and dist.low <= value <= dist.high


def parse_distribution(source: str, key: str, raw: Any) -> Distribution:
    """One ``space:`` entry, checked: a mapping with a known ``type``, valid fields, a sensible range."""
    where = f"{source}: space.{key}"
    kind = raw.get("type") if isinstance(raw, dict) else None
    if kind not in DISTRIBUTIONS:
        got = f"type = {kind!r}" if isinstance(raw, dict) else f"= {raw!r}"
        raise ConfigError(f"{where} {got}: expected a mapping with type: float, int or categorical")
    try:
        dist = DISTRIBUTIONS[kind].model_validate(raw)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, source, DISTRIBUTIONS[kind], f"space.{key}")) from None
    if isinstance(dist, CategoricalDistribution):
        for choice in dist.choices:
            if not (choice is None or isinstance(choice, bool | int | float | str)):
                raise ConfigError(f"{where}: choice {choice!r}: expected numbers, strings, booleans or null")
        if len({repr(c) for c in dist.choices}) < len(dist.choices):
            raise ConfigError(f"{where}: choices {dist.choices}: expected each choice once")
        return dist
    if not dist.low < dist.high:
        raise ConfigError(f"{where}: low {dist.low} and high {dist.high}: expected low < high")
    if dist.log and dist.low <= 0:
        raise ConfigError(f"{where}: low {dist.low} with log: true: expected low > 0")
    if dist.log and (dist.step if isinstance(dist, FloatDistribution) else dist.step != 1):
        raise ConfigError(f"{where}: step {dist.step} with log: true: expected no step")
    return dist


def _corners(dist: Distribution) -> list[Any]:
    """The values a distribution can produce that are most likely to break a config: its ends, every choice."""
    return list(dist.choices) if isinstance(dist, CategoricalDistribution) else [dist.low, dist.high]


def load_search(path: str | Path, trials: int | None = None, extra: list[str] = ()) -> Search:
    """Read and check a search file: its schema, its base experiment, and every distribution's ends
    (or choices) through the experiment's own schema, with ``extra`` (``--set``) applied last."""
    path = Path(path)
    source = str(path)
    raw = read_yaml(path, follow_base=False)
    try:
        spec = SearchConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, source, SearchConfig)) from None
    space = {key: parse_distribution(source, key, entry) for key, entry in spec.space.items()}
    if spec.sampler.name == "grid":
        numeric = [k for k, d in space.items() if not isinstance(d, CategoricalDistribution)]
        if numeric:
            raise ConfigError(f"{source}: space.{numeric[0]}: the grid sampler needs type: categorical (listed values)")
    grid_size = math.prod(len(d.choices) for d in space.values()) if spec.sampler.name == "grid" else None
    base_path = (path.parent / spec.base).resolve()
    if not base_path.is_file():
        raise ConfigError(f"{source}: base = {spec.base!r}: expected an experiment file ({base_path} not found)")
    search = Search(
        path=path,
        spec=spec,
        space=space,
        base_path=base_path,
        base_raw=read_yaml(base_path),
        name=spec.name or path.stem,
        trials=trials or spec.trials or grid_size or 20,
    )
    for text in extra:
        key = text.partition("=")[0].strip()
        if key in space:
            raise ConfigError(f"--set {text!r}: {key} is searched (space.{key} in {source}); set it there or nowhere")
    # The trials read the validation split; the confirmations may train on every image (val_size 0 in
    # the base, the split held out through trial_overrides), as a recipe does once it is chosen.
    if search.config({}, True, extra).data.val_size == 0:
        raise ConfigError(f"{source}: data.val_size = 0: a search reads the validation split; expected > 0")
    if spec.baseline_first and spec.sampler.name == "grid":
        raise ConfigError(f"{source}: baseline_first = true: the grid sampler runs every point already; expected false")
    for key, dist in space.items():
        for value in _corners(dist):
            try:
                search.config({key: value}, True, extra)
            except ConfigError as error:
                reason = str(error).split(": ", 1)[-1]
                raise ConfigError(f"{source}: space.{key} = {value!r}: {reason}") from None
    if spec.baseline_first:
        for key, value in search.base_params(extra).items():
            if not _admits(space[key], value):
                raise ConfigError(f"{source}: baseline_first: the base's {key} = {value!r} lies outside space.{key}")
    return search
