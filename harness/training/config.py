"""The training stage's config sections (``optimizer``, ``scheduler``, ``train``, ``checkpoint``,
``logging``, ``diagnostics``) and the registries of optimizers and schedules their names come from
(lazy: validating a config imports no torch or Ignite), and ``RunSpec``: what this stage reads of a
whole config (``harness.config.Config`` is one)."""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol

from pydantic import AfterValidator, BeforeValidator, Field, PlainValidator

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
    name: Annotated[str, registered(OPTIMIZERS)] = Field(
        "sgd",
        description=(
            "`sgd`, `adam` or `adamw`; the registry in `harness/training/config.py`; or any "
            "`torch.optim` class by import path, e.g. `torch.optim:RMSprop`"
        ),
    )
    lr: float = Field(0.2, gt=0.0, description="peak learning rate")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="SGD momentum")  # sgd
    nesterov: bool = Field(True, description="SGD Nesterov momentum")  # sgd
    weight_decay: float = Field(
        5e-4, ge=0.0, description="weight decay on conv and linear weights (not on BatchNorm or biases)"
    )
    # More keyword arguments of the optimizer's constructor (betas, eps, ...): a plug-in's, or a built-in's.
    kwargs: dict[str, Any] = Field(
        default_factory=dict, description="more keyword arguments of the optimizer (`betas`, `eps`, `alpha`, ...)"
    )


def _strictly_increasing(values: list[int]) -> list[int]:
    if any(b <= a for a, b in itertools.pairwise(values)) or any(v < 1 for v in values):
        raise ValueError("expected strictly increasing epochs >= 1")
    return values


class SchedulerConfig(Section):
    name: Annotated[str, registered(SCHEDULERS)] = Field(
        "onecycle",
        description=(
            "`onecycle`, `cosine`, `step`, `multistep`, `plateau` or `constant`; all but `plateau` step"
            " every iteration; the registry in `harness/training/config.py`; or any "
            "`torch.optim.lr_scheduler` class by import path, e.g. `torch.optim.lr_scheduler:StepLR`"
        ),
    )
    warmup_epochs: float = Field(
        0.0,
        ge=0.0,
        description=(
            "linear warm-up from `lr * start_factor` to `lr`, in epochs (fractions allowed; not with `plateau`); "
            "at most half of the run, so a shortened run (`--set train.epochs=2`) keeps a warm-up and a decay"
        ),
    )
    # Learning rate at the start of warm-up and at the end of onecycle/cosine, as fractions of lr.
    start_factor: float = Field(
        0.1, ge=0.0, le=1.0, description="learning rate at the start of warm-up, as a fraction of `lr`"
    )
    final_factor: float = Field(
        0.0, ge=0.0, le=1.0, description="learning rate at the end of `onecycle` and `cosine`, as a fraction of `lr`"
    )
    step_epochs: int = Field(10, ge=1, description="`step`: multiply by `gamma` every this many epochs")
    milestones: Annotated[list[int], AfterValidator(_strictly_increasing)] = Field(
        default_factory=lambda: [10, 15],
        description="`multistep`: epochs at which to multiply by `gamma` (strictly increasing)",
    )
    gamma: float = Field(0.1, gt=0.0, le=1.0, description="factor for `step`, `multistep` and `plateau`")
    plateau_patience: int = Field(
        2,
        ge=0,
        description=(
            "`plateau`: epochs without a better **validation** accuracy before reducing (needs `data.val_size` > 0)"
        ),
    )
    # A torch.optim.lr_scheduler class by import path: its keyword arguments, and whether it steps
    # every iteration (OneCycleLR, CyclicLR) or every epoch (StepLR, CosineAnnealingLR with T_max in epochs).
    kwargs: dict[str, Any] = Field(
        default_factory=dict, description="a torch scheduler's keyword arguments, e.g. `{step_size: 5, gamma: 0.5}`"
    )
    interval: Literal["epoch", "iteration"] = Field(
        "epoch", description="a torch scheduler steps every `epoch` or every `iteration` (OneCycleLR, CyclicLR)"
    )

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
    epochs: int = Field(20, ge=1, description="epochs")
    label_smoothing: float = Field(0.1, ge=0.0, lt=1.0, description="label smoothing of the training loss")
    amp: Literal["auto", "bf16", "fp16", "off"] = Field(
        "auto",
        description=(
            "`auto` (bf16 on GPUs that have it, else fp16; on a CPU bf16 where it runs in hardware, "
            "AVX512-BF16 or AMX, else off: emulated bf16 is about 10x slower than fp32), `bf16`, `fp16`"
            " (with a GradScaler), `off`"
        ),
    )
    channels_last: bool = Field(
        True,
        description=(
            "NHWC memory format (faster convolutions on GPUs and on CPUs); on a CPU, a model with a "
            "strided 1x1 convolution of fewer than 16 input channels (ResNet18 of width < 16), where "
            "oneDNN 3.12 crashes or hangs in NHWC, trains in NCHW with a note (summary.json records it)"
        ),
    )
    grad_clip: float | None = Field(None, gt=0.0, description="clip the gradient norm to this value")
    compile: bool = Field(False, description="`torch.compile` the model, falling back with a message when it fails")
    tta_flip: bool = Field(
        False, description="test-time augmentation: evaluation averages the logits of each image and its mirror image"
    )
    tta_translate: int = Field(
        0,
        ge=0,
        le=4,
        description=(
            "test-time augmentation: with N > 0, half of each image's logits come from the image shifted by N "
            "pixels diagonally both ways (reflected at the border; each shifted view mirrored too under "
            "`tta_flip`), half from the image itself; 0: off"
        ),
    )
    ema_decay: float | None = Field(
        None,
        gt=0.0,
        lt=1.0,
        description=(
            "e.g. `0.999`: keep an exponential moving average of the weights and BatchNorm statistics "
            "(Ignite's `EMAHandler`); the average is what is evaluated (`val_*` columns), kept as the "
            "best model and analyzed, while `train_*` stay the live model's. The decay ramps up as "
            "min(decay, (1+t)/(10+t)) at step t"
        ),
    )
    # Progressive resizing: the first low_res_epochs train on images scaled down to low_res_size (pixels,
    # or a float: a fraction of the images' side, 0.75 for 24 on 32x32); the last epoch always trains at
    # full size (TrainConfig.low_res_epochs_used), so shortening a run stays valid.
    low_res_size: Annotated[int | float | None, PlainValidator(_low_res_size)] = Field(
        None,
        description=(
            "progressive resizing: the first `low_res_epochs` epochs train on batches scaled down "
            "(antialiased bilinear) to `low_res_size` pixels (a float: a fraction of the side, 0.75 for"
            " 24 on 32x32), which costs about (low_res_size / 32)² of a full epoch in compute (about "
            "60% in time at 24 on the 2-core CPU); the later epochs and every evaluation run at full "
            "size, and the last epoch always does (a shortened run stays valid)"
        ),
    )
    low_res_epochs: int = Field(
        0,
        ge=0,
        description=(
            "progressive resizing: the first `low_res_epochs` epochs train on batches scaled down "
            "(antialiased bilinear) to `low_res_size` pixels (a float: a fraction of the side, 0.75 for"
            " 24 on 32x32), which costs about (low_res_size / 32)² of a full epoch in compute (about "
            "60% in time at 24 on the 2-core CPU); the later epochs and every evaluation run at full "
            "size, and the last epoch always does (a shortened run stays valid)"
        ),
    )
    backend: Literal["nccl", "gloo"] | None = Field(
        None, description="distributed backend; null: `nccl` on GPUs, `gloo` on CPUs"
    )
    # Set in a GPU recipe: the config to run instead without a GPU. Started on a CPU, the run says so and goes on.
    cpu_recipe: str | None = Field(
        None,
        description=(
            "set in a GPU recipe: the config to run instead on a machine without a GPU; a run of this "
            "config on a CPU says so in one line, names it, and goes on (`resnet18.yaml` names "
            "`experiments/resnet18_cpu.yaml`)"
        ),
    )

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
    every_epochs: int = Field(
        1, ge=1, description="save a resumable checkpoint every this many epochs (and after the last)"
    )
    every_iters: int | None = Field(
        None, ge=1, description="also save every this many iterations, so a crash loses at most that many"
    )
    n_saved: int = Field(2, ge=1, description="resumable checkpoints kept on disk")


TRACKING_URI_FORMS = "sqlite:///PATH, postgresql://user:password@host/db or http(s)://host:port (a tracking server)"
TRACKING_SCHEMES = ("sqlite", "postgresql", "postgresql+psycopg", "postgresql+psycopg2", "http", "https")
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _tracking_uri(uri: str) -> str:
    """A store every process reaches; an SQLite file named by a relative path (the default's
    ``results/mlflow.db``) made absolute from the working folder, as run folders are, so that a
    resumed run or a worker writes to the same file wherever it runs from."""
    scheme, separator, rest = uri.partition("://")
    if not separator or scheme not in TRACKING_SCHEMES:
        raise ValueError(f"expected {TRACKING_URI_FORMS}")
    if scheme != "sqlite":
        return uri
    path = rest.removeprefix("/")
    if path in ("", ":memory:"):
        raise ValueError("expected sqlite:///PATH, a file every process of a run can open")
    return f"sqlite:///{(Path.cwd() / path).resolve()}"


def sqlite_file(uri: str) -> Path | None:
    """The file of an ``sqlite:///`` tracking URI (absolute once validated); None for another store."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def _experiment_name(name: str | None) -> str | None:
    if name is not None and (len(name) > 100 or not NAME_PATTERN.fullmatch(name)):
        raise ValueError("expected a name of letters, digits, '.', '_' or '-' (it also names the experiment's folder)")
    return name


class MlflowConfig(Section):
    model_config = {**Section.model_config, "validate_default": True}  # `true`'s default URI made absolute too

    tracking_uri: Annotated[str, AfterValidator(_tracking_uri)] = Field(
        "sqlite:///results/mlflow.db",
        description=(
            "the MLflow store: an SQLite file (a relative path is from the working folder, made absolute when "
            "the config is read; the experiments' files go beside it, in `mlflow-artifacts/`), "
            "`postgresql://user:password@host/db`, or a tracking server `http(s)://host:port`"
        ),
    )
    experiment: Annotated[str | None, AfterValidator(_experiment_name)] = Field(
        None,
        description=(
            "the MLflow experiment; null: the config's `name`. A sweep's or a search's runs go into their "
            "parent run's experiment (see Tracking)"
        ),
    )


def _on_off_or_settings(value: Any) -> Any:
    """``true``: the defaults; ``false`` or null: off; a mapping: the settings."""
    if value is True:
        return {}
    if value is False or value is None:
        return None
    if isinstance(value, dict):
        return value
    raise ValueError("expected true, false or a mapping with tracking_uri and experiment")


class LoggingConfig(Section):
    tensorboard: bool = Field(True, description="write TensorBoard event files to `RUN_DIR/tensorboard/`")
    # auto: tqdm bars on a terminal, tqdm.auto's in a notebook, progress lines in a log (harness.training.progress)
    progress: Literal["auto", "bar", "lines", "off"] = Field(
        "auto",
        description=(
            "what shows while training (see Progress): `auto` is tqdm bars on a terminal, `tqdm.auto` "
            "bars in a notebook and progress lines in a log; `bar`, `lines` or `off` force one"
        ),
    )
    mlflow: Annotated[MlflowConfig | None, BeforeValidator(_on_off_or_settings)] = Field(
        None,
        description=(
            "track the run in MLflow (see Tracking): its config as parameters, each epoch's metrics, the "
            "summary's figures, its files and its status; `true` takes the defaults of the keys below, "
            "`false` (or null, the default) tracks nothing"
        ),
    )


class DiagnosticsConfig(Section):
    samples_per_epoch: int = Field(
        20,
        ge=0,
        description=(
            "weight-update samples per epoch in `weights.csv` (and TensorBoard `updates/<block>`); `0` turns them off"
        ),
    )


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
