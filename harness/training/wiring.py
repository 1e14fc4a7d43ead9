"""The wiring of one training run: loaders, model, optimizer, engines and every handler.

``build_training`` returns everything ``harness.run`` needs to start or resume, and what
``harness.bench`` needs to time the harness against a plain loop.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint
from ignite.metrics import Metric
from torch import nn
from torch.utils.data import DataLoader

from harness.core.errors import HarnessError
from harness.core.run_folder import RunFiles, RunLog
from harness.data.arrays import ImageArrays
from harness.data.device_augment import DeviceAugment, plan_from_augment
from harness.data.loaders import (
    AugmentedArrayDataset,
    EpochBatchSampler,
    build_loader,
    build_train_dataset,
    check_batch_size,
    per_rank_batch,
    resolve_num_workers,
)
from harness.data.sources import DataSplits
from harness.data.transforms import build_eval_transform
from harness.models.builders import (
    ONEDNN_BLOCK,
    build_model,
    compile_or_fall_back,
    count_parameters,
    nhwc_unsafe_conv,
    place_model,
    resolve_channels_last,
)
from harness.training.config import RunSpec, TrainConfig
from harness.training.diagnostics import UpdateDiagnostics
from harness.training.handlers import (
    RNGState,
    StopRequest,
    Stopwatch,
    attach_checkpoints,
    attach_epoch_timer,
    attach_evaluation,
    attach_lr_logging,
    attach_nan_guard,
    attach_stop_on_signal,
    attach_tensorboard,
    attach_update_diagnostics,
    attach_weight_average,
    build_best_checkpoint,
)
from harness.training.optim import build_optimizer
from harness.training.progress import attach_progress, relative_epoch_cost
from harness.training.pruning import TrialReporter, attach_pruning
from harness.training.schedules import attach_lr_scheduler
from harness.training.steps import (
    cpu_has_native_bf16,
    create_evaluator,
    create_trainer,
    make_train_step,
    resolve_amp_dtype,
)


def sync_every(device: torch.device) -> int:
    """How often the NaN guard and the progress display read the loss back: every step on a CPU, every
    10th on a GPU (a read-back stalls the device's queue)."""
    return 1 if device.type == "cpu" else 10


@dataclass
class Loaders:
    """A run's loaders: ``val`` is None without a validation split (``data.val_size: 0``)."""

    train: DataLoader
    val: DataLoader | None
    test: DataLoader
    train_sampler: EpochBatchSampler
    num_workers: int


@dataclass(kw_only=True)
class Training:
    trainer: Engine
    # The validation evaluator decides (best checkpoint, plateau, pruning); the test one only reports.
    val_evaluator: Engine | None
    test_evaluator: Engine
    model: nn.Module
    loaders: Loaders
    log: RunLog
    stop: StopRequest
    to_save: dict[str, Any]
    train_metrics: dict[str, Metric]
    iters_per_epoch: int
    num_params: int
    num_workers: int
    amp_dtype: torch.dtype | None
    compiled: bool
    channels_last: bool
    eval_model: nn.Module | None = None  # what is evaluated and kept: the model, or its weight average
    diagnostics: UpdateDiagnostics | None = None
    scaler: torch.amp.GradScaler | None = None
    lr_scheduler: Any = None
    pending_metric_state: dict[str, Any] = field(default_factory=dict)
    stopwatch: Stopwatch = field(default_factory=Stopwatch)
    closers: list[Callable[[], None]] = field(default_factory=list)

    @property
    def evaluations(self) -> dict[str, tuple[Engine, DataLoader]]:
        """The evaluated splits in order, each an engine and its loader: ``val`` (when held out), ``test``."""
        pairs = {"val": (self.val_evaluator, self.loaders.val), "test": (self.test_evaluator, self.loaders.test)}
        return {split: pair for split, pair in pairs.items() if pair[0] is not None}

    def close(self) -> None:
        """Release what the run holds open (TensorBoard's event file)."""
        for close in self.closers:
            close()

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore a checkpoint. A checkpoint from inside an epoch also carries that epoch's running
        train metrics, restored when the epoch restarts; one from an epoch's end does not: the next
        epoch starts its averages afresh."""
        # A checkpoint written before the stopwatch was saved has none: its run's time starts at zero.
        objects = {
            k: v for k, v in self.to_save.items() if not k.startswith("metric_") and (k in state or k != "stopwatch")
        }
        Checkpoint.load_objects(objects, state)
        if self.trainer.state.iteration % self.iters_per_epoch:
            self.pending_metric_state.update({name: state[f"metric_{name}"] for name in self.train_metrics})
        self.log.restore(self.trainer.state.iteration, self.iters_per_epoch)


def build_loaders(cfg: RunSpec, splits: DataSplits, device: torch.device) -> Loaders:
    rank, world_size = idist.get_rank(), idist.get_world_size()
    check_batch_size(cfg.data, len(splits.train), world_size)
    batch = per_rank_batch(cfg.data.batch_size, world_size, "data.batch_size")
    train_sampler = EpochBatchSampler(
        len(splits.train), batch, cfg.seed, shuffle=True, rank=rank, world_size=world_size
    )
    num_workers = resolve_num_workers(cfg.data, device, idist.get_nproc_per_node())
    eval_transform = build_eval_transform(cfg.data)
    eval_batch = max(1, cfg.data.eval_batch_size // world_size)

    def eval_loader(arrays: ImageArrays) -> DataLoader:
        sampler = EpochBatchSampler(len(arrays), eval_batch, cfg.seed, shuffle=False, rank=rank, world_size=world_size)
        return build_loader(AugmentedArrayDataset(arrays, eval_transform), sampler, num_workers, device)

    # Our own batch sampler, not idist.auto_dataloader's DistributedSampler: it shards per rank
    # itself, replays an interrupted epoch, and never pads an evaluation set (no image counted twice).
    return Loaders(
        build_loader(build_train_dataset(splits.train, cfg.data), train_sampler, num_workers, device),
        eval_loader(splits.val) if splits.val is not None else None,
        eval_loader(splits.test),
        train_sampler,
        num_workers,
    )


def resolve_train_config(cfg: RunSpec, model: nn.Module, device: torch.device) -> TrainConfig:
    """``cfg.train`` with what depends on the model and device decided once: ``channels_last``, and
    ``amp`` (``auto`` as ``bf16``, ``fp16`` or ``off``), which every step and evaluator then read."""
    amp_dtype = resolve_amp_dtype(cfg.train.amp, device)
    amp = {torch.bfloat16: "bf16", torch.float16: "fp16", None: "off"}[amp_dtype]
    channels_last = resolve_channels_last(cfg.train.channels_last, model, device)
    if cfg.train.channels_last and not channels_last and idist.get_rank() == 0:
        conv = nhwc_unsafe_conv(model, device)
        print(
            f"note: training in NCHW, not train.channels_last: a strided 1x1 convolution with {conv.in_channels} "
            f"input channels (fewer than {ONEDNN_BLOCK}) hits a oneDNN bug in NHWC on this CPU "
            "(uxlfoundation/oneDNN#6035)",
            flush=True,
        )
    return cfg.train.model_copy(update={"channels_last": channels_last, "amp": amp})


def build_train_step(
    cfg: RunSpec,
    train_cfg: TrainConfig,
    step_model: nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    image_size: tuple[int, int],
    diagnostics: UpdateDiagnostics | None = None,
) -> tuple[Callable[[Engine | None, Any], dict[str, torch.Tensor]], torch.amp.GradScaler | None]:
    """The training step of a run (loss, precision, device augmentation) and its GradScaler (fp16 only):
    what ``build_training`` and the LR finder share."""
    scaler = torch.amp.GradScaler(device.type) if resolve_amp_dtype(train_cfg.amp, device) == torch.float16 else None
    loss_fn = nn.CrossEntropyLoss(label_smoothing=train_cfg.label_smoothing).to(device)
    batch_augment = None
    if cfg.data.augment_on == "device":
        plan = plan_from_augment(cfg.data.augment, image_size)
        batch_augment = DeviceAugment(
            plan, cfg.data.mean, cfg.data.std, cfg.seed, device, idist.get_rank(), idist.get_world_size()
        )
    step = make_train_step(step_model, optimizer, loss_fn, device, train_cfg, scaler, batch_augment, diagnostics)
    return step, scaler


@dataclass
class Learner:
    """What learns: the model (wrapped for DDP), its optimizer, the module the steps call (compiled or
    not), and the training settings resolved for this model and device."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    step_model: nn.Module
    compiled: bool
    train_cfg: TrainConfig
    num_params: int
    batch_shape: tuple[int, int, int, int]


def build_learner(
    cfg: RunSpec, device: torch.device, num_classes: int, batch_shape: tuple[int, int, int, int]
) -> Learner:
    """The model, its optimizer and its step module for batches of ``batch_shape`` (one rank's)."""
    model = build_model(cfg.model, num_classes, in_channels=batch_shape[1])
    num_params = count_parameters(model)
    train_cfg = resolve_train_config(cfg, model, device)
    model = idist.auto_model(place_model(model, device, train_cfg.channels_last))
    optimizer = idist.auto_optim(build_optimizer(cfg.optimizer, model))
    step_model, compiled = (
        compile_or_fall_back(model, device, train_cfg.channels_last, batch_shape)
        if cfg.train.compile
        else (model, False)
    )
    amp_dtype = resolve_amp_dtype(train_cfg.amp, device)
    if amp_dtype is not None and device.type == "cpu" and not cpu_has_native_bf16() and idist.get_rank() == 0:
        print(
            f"warning: train.amp = {cfg.train.amp}: this CPU has no AVX512-BF16 or AMX, so {amp_dtype} is emulated and "
            "about 10x slower than fp32; train.amp=auto uses fp32 here",
            file=sys.stderr,
        )
    return Learner(model, optimizer, step_model, compiled, train_cfg, num_params, batch_shape)


def build_engines(cfg: RunSpec, run_dir: Path, loaders: Loaders, learner: Learner, device: torch.device) -> Training:
    """The trainer (its step, metrics, weight average and diagnostics) and the evaluators, as a Training
    with nothing attached yet but the epoch start (data order, resumed running averages)."""
    iters_per_epoch = len(loaders.train_sampler)
    # Rank 0 alone: the gradients are all-reduced, so every rank would measure the same.
    diagnostics = (
        UpdateDiagnostics(learner.model, cfg.diagnostics.samples_per_epoch, iters_per_epoch)
        if cfg.diagnostics.samples_per_epoch and idist.get_rank() == 0
        else None
    )
    train_cfg = learner.train_cfg
    train_step, scaler = build_train_step(
        cfg, train_cfg, learner.step_model, learner.optimizer, device, learner.batch_shape[2:], diagnostics
    )
    trainer, train_metrics = create_trainer(train_step, device)
    # With train.ema_decay the averaged weights are what gets evaluated, kept as best and analyzed.
    # Attached first, so that every other handler sees this iteration's average.
    model = learner.model
    eval_model = model if train_cfg.ema_decay is None else attach_weight_average(trainer, model, train_cfg.ema_decay)
    eval_step_model = learner.step_model
    if eval_model is not model:
        eval_step_model = (
            compile_or_fall_back(eval_model, device, train_cfg.channels_last, learner.batch_shape)[0]
            if learner.compiled
            else eval_model
        )
    run = Training(
        trainer=trainer,
        val_evaluator=create_evaluator(eval_step_model, device, train_cfg) if loaders.val is not None else None,
        test_evaluator=create_evaluator(eval_step_model, device, train_cfg),
        model=model,
        loaders=loaders,
        log=RunLog(run_dir, write=idist.get_rank() == 0, weights=diagnostics is not None),
        stop=StopRequest(),
        to_save={},
        train_metrics=train_metrics,
        iters_per_epoch=iters_per_epoch,
        num_params=learner.num_params,
        num_workers=loaders.num_workers,
        amp_dtype=resolve_amp_dtype(train_cfg.amp, device),
        compiled=learner.compiled,
        channels_last=train_cfg.channels_last,
        eval_model=eval_model,
        diagnostics=diagnostics,
        scaler=scaler,
    )

    @trainer.on(Events.EPOCH_STARTED)
    def start_epoch(engine: Engine) -> None:
        done_in_epoch = engine.state.iteration - (engine.state.epoch - 1) * iters_per_epoch
        loaders.train_sampler.set_epoch(engine.state.epoch, skip_batches=done_in_epoch)
        for name, state in run.pending_metric_state.items():  # a resumed epoch keeps its running averages
            train_metrics[name].load_state_dict(state)
        run.pending_metric_state.clear()

    return run


def attach_epoch_end(
    run: Training, cfg: RunSpec, learner: Learner, run_dir: Path, start_iteration: int, trial: TrialReporter | None
) -> Callable[[], None]:
    """What happens around each epoch's end, in this order: timing, the learning rate, the NaN guard,
    the progress display, the schedule, TensorBoard and diagnostics, the evaluation and its log row,
    pruning. Returns the function that flushes every log (each checkpoint calls it first)."""
    trainer, optimizer, device = run.trainer, learner.optimizer, idist.device()
    timer = attach_epoch_timer(trainer)
    attach_lr_logging(trainer, optimizer, run.log)
    attach_nan_guard(trainer, sync_every(device))
    # After the NaN guard: it reads the loss back on the iterations the display looks at. Before the
    # evaluation: the epoch's bar is gone when the evaluation's and the epoch's line show.
    progress = attach_progress(
        trainer,
        {split: engine for split, (engine, _) in run.evaluations.items()},
        cfg.logging.progress,
        cfg.data.batch_size,
        lambda: optimizer.param_groups[0]["lr"],
        sync_every(device),
        relative_epoch_cost(learner.train_cfg, learner.batch_shape[2:]),
        device,
    )
    if progress is not None:
        run.closers.append(progress.close)
    run.lr_scheduler = attach_lr_scheduler(
        cfg.scheduler, optimizer, trainer, run.val_evaluator, run.iters_per_epoch, learner.train_cfg.epochs
    )
    flushers = [run.log.flush]
    tensorboard = None
    if cfg.logging.tensorboard and idist.get_rank() == 0:
        engines = {split: engine for split, (engine, _) in run.evaluations.items()}
        tensorboard = attach_tensorboard(trainer, engines, optimizer, RunFiles(run_dir).tensorboard, start_iteration)
        flushers.append(tensorboard.writer.flush)  # with each checkpoint: a resumed run continues from there
        run.closers.append(tensorboard.close)
    if run.diagnostics is not None:  # before the evaluation, which writes the epoch's logs
        flushers.insert(0, attach_update_diagnostics(trainer, run.diagnostics, run.log, tensorboard))
    attach_evaluation(trainer, run.evaluations, run.log, timer, optimizer, cfg.data.batch_size)
    # Rank 0 alone holds the trial; every rank attaches the handler, since every rank takes part in the
    # broadcast of its decision. After the evaluation it reads, before the checkpoints (a pruned epoch is not saved).
    in_trial = trial is not None
    if idist.get_world_size() > 1:
        in_trial = bool(idist.broadcast(torch.tensor(int(in_trial), device=idist.device()), src=0).item())
    if in_trial:
        if run.val_evaluator is None:
            raise HarnessError("a search trial needs a validation split to report (data.val_size > 0)")
        attach_pruning(trainer, run.val_evaluator, trial)

    def flush_logs() -> None:
        for flush in flushers:
            flush()

    return flush_logs


def attach_saving(run: Training, cfg: RunSpec, learner: Learner, run_dir: Path, flush_logs: Callable[[], None]) -> None:
    """The best checkpoint (chosen on validation), the resumable checkpoints of everything in
    ``run.to_save``, and the clean stop on a signal."""
    trainer = run.trainer
    # Chosen on the validation split alone; without one there is no "best", only the final weights.
    best = (
        build_best_checkpoint(run.eval_model, run.val_evaluator, trainer, RunFiles(run_dir).checkpoints)
        if run.val_evaluator
        else None
    )
    run.to_save.update(
        {
            "model": run.model,
            "optimizer": learner.optimizer,
            "lr_scheduler": run.lr_scheduler,
            "trainer": trainer,
            "rng": RNGState(),
            "stopwatch": run.stopwatch,
            **{f"metric_{name}": metric for name, metric in run.train_metrics.items()},
        }
    )
    if best is not None:
        run.to_save["best_checkpointer"] = best
    if run.scaler is not None:
        run.to_save["scaler"] = run.scaler
    if run.eval_model is not run.model:
        run.to_save["ema_model"] = run.eval_model
    c = cfg.checkpoint
    save = attach_checkpoints(
        trainer, run.to_save, RunFiles(run_dir).checkpoints, c.every_epochs, c.every_iters, c.n_saved, best, flush_logs
    )
    attach_stop_on_signal(trainer, run.stop, save)


def build_training(
    cfg: RunSpec, run_dir: Path, splits: DataSplits, start_iteration: int = 0, trial: TrialReporter | None = None
) -> Training:
    """Everything a run needs; ``start_iteration`` is that of the checkpoint a resumed run will load;
    ``trial``: the search trial this run is, told the validation accuracy after each epoch (and pruned).
    Handler order matters at EPOCH_COMPLETED: timer, progress, evaluation + log, pruning, checkpoints, stop."""
    device = idist.device()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed image shapes: autotuned kernels pay off at once
    loaders = build_loaders(cfg, splits, device)
    _, height, width, channels = splits.train.images.shape
    batch_shape = (loaders.train_sampler.batch_size, channels, height, width)
    learner = build_learner(cfg, device, len(splits.classes), batch_shape)
    run = build_engines(cfg, run_dir, loaders, learner, device)
    flush_logs = attach_epoch_end(run, cfg, learner, run_dir, start_iteration, trial)
    attach_saving(run, cfg, learner, run_dir, flush_logs)
    return run
