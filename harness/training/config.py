"""The training stage's config sections (``optimizer``, ``scheduler``, ``train``, ``checkpoint``,
``logging``, ``diagnostics``) and the registries of optimizers and schedules their names come from
(lazy: validating a config imports no torch or Ignite), and ``RunSpec``: what this stage reads of a
whole config (``harness.config.Config`` is one)."""

from __future__ import annotations

import itertools
from typing import Annotated, Any, Literal, Protocol

from pydantic import AfterValidator, Field, PlainValidator

from harness.core.registry import Registry
from harness.core.schema import Section, registered
from harness.data.config import DataConfig
from harness.models.config import ModelConfig

OPTIMIZERS = Registry(
    "optimizer.name",
    "optimizer",
    "a torch.optim.Optimizer class, called with the parameter groups, lr and optimizer.kwargs: torch.optim:RMSprop",
)
for _name, _description in {
    "sgd": "SGD with momentum (optimizer.momentum) and Nesterov's update (optimizer.nesterov)",
    "adam": "Adam (Kingma & Ba 2015); weight decay added to the gradient as L2",
    "adamw": "AdamW (Loshchilov & Hutter 2019): decoupled weight decay",
}.items():
    OPTIMIZERS.add(_name, f"harness.training.optim:{_name}", _description, native=True)

SCHEDULERS = Registry(
    "scheduler.name",
    "scheduler",
    "a torch.optim.lr_scheduler class, called with the optimizer and scheduler.kwargs, stepped every "
    "scheduler.interval: torch.optim.lr_scheduler:StepLR",
)
for _name, _description in {
    "onecycle": "linear warm-up to optimizer.lr, then linear decay to lr x final_factor (Smith & Topin 2017)",
    "constant": "optimizer.lr throughout, after the warm-up",
    "step": "lr x gamma every step_epochs epochs",
    "multistep": "lr x gamma at each of milestones (epochs)",
    "cosine": "cosine decay to lr x final_factor (Loshchilov & Hutter 2017), after the warm-up",
    "plateau": "lr x gamma after plateau_patience epochs without a better validation accuracy",
}.items():
    SCHEDULERS.add(_name, f"harness.training.schedules:{_name}", _description, native=True)


class OptimizerConfig(Section):
    name: Annotated[str, registered(OPTIMIZERS)] = "sgd"
    lr: float = Field(0.2, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)  # sgd
    nesterov: bool = True  # sgd
    weight_decay: float = Field(5e-4, ge=0.0)  # on weights only, never on BatchNorm parameters or biases
    # More keyword arguments of the optimizer's constructor (betas, eps, ...): a plug-in's, or a built-in's.
    kwargs: dict[str, Any] = Field(default_factory=dict)


def _strictly_increasing(values: list[int]) -> list[int]:
    if any(b <= a for a, b in itertools.pairwise(values)) or any(v < 1 for v in values):
        raise ValueError("expected strictly increasing epochs >= 1")
    return values


class SchedulerConfig(Section):
    name: Annotated[str, registered(SCHEDULERS)] = "onecycle"
    warmup_epochs: float = Field(0.0, ge=0.0)
    # Learning rate at the start of warm-up and at the end of onecycle/cosine, as fractions of lr.
    start_factor: float = Field(0.1, ge=0.0, le=1.0)
    final_factor: float = Field(0.0, ge=0.0, le=1.0)
    step_epochs: int = Field(10, ge=1)
    milestones: Annotated[list[int], AfterValidator(_strictly_increasing)] = Field(default_factory=lambda: [10, 15])
    gamma: float = Field(0.1, gt=0.0, le=1.0)
    plateau_patience: int = Field(2, ge=0)
    # A torch.optim.lr_scheduler class by import path: its keyword arguments, and whether it steps
    # every iteration (OneCycleLR, CyclicLR) or every epoch (StepLR, CosineAnnealingLR with T_max in epochs).
    kwargs: dict[str, Any] = Field(default_factory=dict)
    interval: Literal["epoch", "iteration"] = "epoch"

    def warmup_epochs_used(self, epochs: int) -> float:
        """The warm-up, at most half of a run of ``epochs``: a recipe shortened for a first try
        (``--set train.epochs=2``) keeps a warm-up and its decay (the last half of the run)."""
        return min(self.warmup_epochs, epochs / 2)


def _low_res_size(value: Any) -> int | float | None:
    is_pixels = isinstance(value, int) and not isinstance(value, bool) and value >= 8
    if value is None or is_pixels or (isinstance(value, float) and 0.0 < value < 1.0):
        return value
    raise ValueError("expected null, a side of at least 8 pixels, or a fraction of the images' side in (0, 1)")


class TrainConfig(Section):
    epochs: int = Field(20, ge=1)
    label_smoothing: float = Field(0.1, ge=0.0, lt=1.0)
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"
    channels_last: bool = True
    grad_clip: float | None = Field(None, gt=0.0)
    compile: bool = False
    tta_flip: bool = False
    ema_decay: float | None = Field(None, gt=0.0, lt=1.0)
    # Progressive resizing: the first low_res_epochs train on images scaled down to low_res_size (pixels,
    # or a float: a fraction of the images' side, 0.75 for 24 on 32x32); the last epoch always trains at
    # full size (TrainConfig.low_res_epochs_used), so shortening a run stays valid.
    low_res_size: Annotated[int | float | None, PlainValidator(_low_res_size)] = None
    low_res_epochs: int = Field(0, ge=0)
    backend: Literal["nccl", "gloo"] | None = None

    @property
    def low_res_epochs_used(self) -> int:
        return min(self.low_res_epochs, self.epochs - 1) if self.low_res_size else 0

    def low_res_pixels(self, height: int, width: int) -> tuple[int, int] | None:
        """The size the low-resolution epochs train at, for images of ``height`` x ``width``."""
        if self.low_res_size is None:
            return None
        if isinstance(self.low_res_size, float):
            return (max(8, round(self.low_res_size * height)), max(8, round(self.low_res_size * width)))
        return (self.low_res_size, self.low_res_size)


class CheckpointConfig(Section):
    every_epochs: int = Field(1, ge=1)
    every_iters: int | None = Field(None, ge=1)
    n_saved: int = Field(2, ge=1)


class LoggingConfig(Section):
    tensorboard: bool = True  # event files in RUN_DIR/tensorboard/: tensorboard --logdir results


class DiagnosticsConfig(Section):
    samples_per_epoch: int = Field(20, ge=0)  # weight-update samples in weights.csv per epoch; 0 turns them off


class RunSpec(Protocol):
    """What training reads of a config: ``harness.config.Config`` has these and more."""

    name: str
    seed: int
    data: DataConfig
    model: ModelConfig
    optimizer: OptimizerConfig
    scheduler: SchedulerConfig
    train: TrainConfig
    checkpoint: CheckpointConfig
    logging: LoggingConfig
    diagnostics: DiagnosticsConfig
