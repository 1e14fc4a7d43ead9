"""Learning-rate schedules by name (``scheduler.name``, registered in ``harness.training.config``),
as Ignite param schedulers, or any ``torch.optim.lr_scheduler`` class by import path.

Every built-in schedule but ``plateau`` is stepped before every iteration, so warm-up and decay are
smooth within an epoch; ``plateau`` reacts to each evaluation's validation accuracy (never the test
set's). A torch scheduler steps as PyTorch steps it, after the optimizer: after every iteration, or
after the last iteration of every epoch (``scheduler.interval``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from ignite.engine import Engine, Events
from ignite.handlers import CosineAnnealingScheduler, PiecewiseLinear, ReduceLROnPlateauScheduler
from ignite.handlers.param_scheduler import create_lr_scheduler_with_warmup

from harness.core.errors import HarnessError
from harness.core.registry import PluginError, call_plain
from harness.training.config import SCHEDULERS, SchedulerConfig


@dataclass
class Schedule:
    handler: Any  # an Ignite param scheduler, or a StepTorchScheduler: checkpoints save its state
    after_evaluation: bool = False  # stepped on the evaluator's COMPLETED instead of each iteration
    torch_interval: str | None = None  # a torch scheduler: stepped after each "iteration" or each "epoch"


class StepTorchScheduler:
    """A ``torch.optim.lr_scheduler`` as an Ignite handler: ``step()`` after the optimizer's, and its
    state in every checkpoint. (Ignite's own ``LRScheduler`` wrapper applies the first step before the
    first iteration with recent torch: the first iteration would not train at the initial lr.)"""

    def __init__(self, scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
        self.scheduler = scheduler

    def __call__(self, engine: Engine) -> None:
        self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state)


def _warmup_start(cfg: SchedulerConfig, lr: float, iters_per_epoch: int, epochs: int) -> list[tuple[int, float]]:
    warmup_iters = round(cfg.warmup_epochs_used(epochs) * iters_per_epoch)
    return [(0, lr * cfg.start_factor), (warmup_iters, lr)] if warmup_iters else [(0, lr)]


def _step_points(cfg: SchedulerConfig, lr: float, iters_per_epoch: int, epochs: int, step_epochs: list[int]) -> list:
    """Warm-up, then the learning rate times gamma at each of ``step_epochs``, as (iteration, lr) corners."""
    total_iters = iters_per_epoch * epochs
    points = _warmup_start(cfg, lr, iters_per_epoch, epochs)
    value = lr
    for epoch in step_epochs:
        at = epoch * iters_per_epoch
        if at >= total_iters:
            break
        if at - 1 <= points[-1][0]:
            warmup = cfg.warmup_epochs_used(epochs)
            raise HarnessError(f"scheduler: a step at epoch {epoch} falls inside the {warmup}-epoch warm-up")
        points += [(at - 1, value), (at, value * cfg.gamma)]
        value *= cfg.gamma
    if points[-1][0] < total_iters:
        points.append((total_iters, value))
    return points


def _piecewise(points: list[tuple[int, float]], optimizer: torch.optim.Optimizer) -> Schedule:
    return Schedule(PiecewiseLinear(optimizer, "lr", milestones_values=points))


def onecycle(cfg: SchedulerConfig, optimizer: torch.optim.Optimizer, iters_per_epoch: int, epochs: int) -> Schedule:
    """Linear warm-up to lr, then linear decay to lr * final_factor (Smith & Topin, 2017)."""
    lr = optimizer.param_groups[0]["lr"]
    points = _warmup_start(cfg, lr, iters_per_epoch, epochs) + [(iters_per_epoch * epochs, lr * cfg.final_factor)]
    return _piecewise(points, optimizer)


def constant(cfg: SchedulerConfig, optimizer: torch.optim.Optimizer, iters_per_epoch: int, epochs: int) -> Schedule:
    return _piecewise(_step_points(cfg, optimizer.param_groups[0]["lr"], iters_per_epoch, epochs, []), optimizer)


def step(cfg: SchedulerConfig, optimizer: torch.optim.Optimizer, iters_per_epoch: int, epochs: int) -> Schedule:
    steps = list(range(cfg.step_epochs, epochs + 1, cfg.step_epochs))
    return _piecewise(_step_points(cfg, optimizer.param_groups[0]["lr"], iters_per_epoch, epochs, steps), optimizer)


def multistep(cfg: SchedulerConfig, optimizer: torch.optim.Optimizer, iters_per_epoch: int, epochs: int) -> Schedule:
    return _piecewise(
        _step_points(cfg, optimizer.param_groups[0]["lr"], iters_per_epoch, epochs, cfg.milestones), optimizer
    )


def cosine(cfg: SchedulerConfig, optimizer: torch.optim.Optimizer, iters_per_epoch: int, epochs: int) -> Schedule:
    lr = optimizer.param_groups[0]["lr"]
    warmup_iters = round(cfg.warmup_epochs_used(epochs) * iters_per_epoch)
    scheduler = CosineAnnealingScheduler(
        optimizer,
        "lr",
        start_value=lr,
        end_value=lr * cfg.final_factor,
        cycle_size=iters_per_epoch * epochs - warmup_iters + 1,
    )
    if warmup_iters:
        scheduler = create_lr_scheduler_with_warmup(
            scheduler, warmup_start_value=lr * cfg.start_factor, warmup_duration=warmup_iters, warmup_end_value=lr
        )
    return Schedule(scheduler)


def plateau(cfg: SchedulerConfig, optimizer: torch.optim.Optimizer, iters_per_epoch: int, epochs: int) -> Schedule:
    """lr times gamma after plateau_patience evaluations without a better validation accuracy."""
    handler = ReduceLROnPlateauScheduler(
        optimizer, metric_name="accuracy", mode="max", factor=cfg.gamma, patience=cfg.plateau_patience
    )
    return Schedule(handler, after_evaluation=True)


def torch_schedule(
    found: Any, cfg: SchedulerConfig, optimizer: torch.optim.Optimizer, iters_per_epoch: int, epochs: int
) -> Schedule:
    """A ``torch.optim.lr_scheduler`` class, built as ``Class(optimizer, **scheduler.kwargs)``."""
    base = torch.optim.lr_scheduler.LRScheduler
    if isinstance(found.obj, type) and issubclass(found.obj, torch.optim.lr_scheduler.ReduceLROnPlateau):
        raise PluginError("a scheduler that watches a metric: use scheduler.name: plateau (validation accuracy)")
    if not (isinstance(found.obj, type) and issubclass(found.obj, base)):
        raise PluginError(f"expected a torch.optim.lr_scheduler.LRScheduler class, found {found.obj!r:.80}")
    if cfg.warmup_epochs:
        raise PluginError(
            f"scheduler.warmup_epochs = {cfg.warmup_epochs}: expected 0 with a torch scheduler "
            "(chain a warm-up with torch.optim.lr_scheduler:SequentialLR and LinearLR)"
        )
    scheduler = call_plain(found, "scheduler.kwargs", cfg.kwargs, optimizer)
    return Schedule(StepTorchScheduler(scheduler), torch_interval=cfg.interval)


def build_schedule(
    cfg: SchedulerConfig, optimizer: torch.optim.Optimizer, iters_per_epoch: int, epochs: int
) -> Schedule:
    try:
        found = SCHEDULERS.resolve(cfg.name)
        if found.native:
            return found.obj(cfg, optimizer, iters_per_epoch, epochs)
        return torch_schedule(found, cfg, optimizer, iters_per_epoch, epochs)
    except PluginError as problem:
        raise HarnessError(f"scheduler.name = {cfg.name!r}: {problem}") from None


def attach_lr_scheduler(
    cfg: SchedulerConfig,
    optimizer: torch.optim.Optimizer,
    trainer: Engine,
    val_evaluator: Engine | None,
    iters_per_epoch: int,
    epochs: int,
) -> Any:
    """Attach the configured schedule; return it so that checkpoints can save its state. A schedule
    that reacts to evaluations watches the validation evaluator (the config refuses one without a
    validation split: harness.config)."""
    schedule = build_schedule(cfg, optimizer, iters_per_epoch, epochs)
    if schedule.after_evaluation:
        val_evaluator.add_event_handler(Events.COMPLETED, schedule.handler)
    elif schedule.torch_interval == "iteration":
        trainer.add_event_handler(Events.ITERATION_COMPLETED, schedule.handler)
    elif schedule.torch_interval == "epoch":
        # After the epoch's last iteration, not on EPOCH_COMPLETED: a checkpoint of the epoch's end
        # (saved after this, being attached later) then holds the stepped schedule.
        last_of_epoch = Events.ITERATION_COMPLETED(event_filter=lambda _, i: i % iters_per_epoch == 0)
        trainer.add_event_handler(last_of_epoch, schedule.handler)
    else:
        trainer.add_event_handler(Events.ITERATION_STARTED, schedule.handler)
    return schedule.handler


def check_schedule(cfg: SchedulerConfig, iters_per_epoch: int, epochs: int) -> None:
    """Build the schedule on a stand-in optimizer: a schedule the run cannot make fails before the run folder exists."""
    build_schedule(cfg, torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), iters_per_epoch, epochs)
