"""Learning-rate schedules by name (``scheduler.name``), as Ignite param schedulers.

Every schedule but ``plateau`` is stepped before every iteration, so warm-up and decay are smooth
within an epoch; ``plateau`` reacts to each evaluation's validation accuracy (never the test set's).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import torch
from ignite.engine import Engine, Events
from ignite.handlers import CosineAnnealingScheduler, PiecewiseLinear, ReduceLROnPlateauScheduler
from ignite.handlers.param_scheduler import create_lr_scheduler_with_warmup
from pydantic import AfterValidator, Field

from harness.core.errors import HarnessError
from harness.core.registry import Registry
from harness.core.schema import Section, registered


@dataclass
class Schedule:
    handler: Any  # an Ignite param scheduler: checkpoints save its state
    after_evaluation: bool = False  # stepped on the evaluator's COMPLETED instead of each iteration


ScheduleBuilder = Callable[["SchedulerConfig", torch.optim.Optimizer, int, int], Schedule]
SCHEDULERS: Registry[ScheduleBuilder] = Registry("scheduler.name")


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


def _warmup_start(cfg: SchedulerConfig, lr: float, iters_per_epoch: int) -> list[tuple[int, float]]:
    warmup_iters = round(cfg.warmup_epochs * iters_per_epoch)
    return [(0, lr * cfg.start_factor), (warmup_iters, lr)] if warmup_iters else [(0, lr)]


def _step_points(cfg: SchedulerConfig, lr: float, iters_per_epoch: int, epochs: int, step_epochs: list[int]) -> list:
    """Warm-up, then the learning rate times gamma at each of ``step_epochs``, as (iteration, lr) corners."""
    total_iters = iters_per_epoch * epochs
    points = _warmup_start(cfg, lr, iters_per_epoch)
    value = lr
    for epoch in step_epochs:
        at = epoch * iters_per_epoch
        if at >= total_iters:
            break
        if at - 1 <= points[-1][0]:
            raise HarnessError(f"scheduler: a step at epoch {epoch} falls inside the {cfg.warmup_epochs}-epoch warm-up")
        points += [(at - 1, value), (at, value * cfg.gamma)]
        value *= cfg.gamma
    if points[-1][0] < total_iters:
        points.append((total_iters, value))
    return points


def _piecewise(points: list[tuple[int, float]], optimizer: torch.optim.Optimizer) -> Schedule:
    return Schedule(PiecewiseLinear(optimizer, "lr", milestones_values=points))


@SCHEDULERS.register("onecycle")
def onecycle(cfg: SchedulerConfig, optimizer: torch.optim.Optimizer, iters_per_epoch: int, epochs: int) -> Schedule:
    """Linear warm-up to lr, then linear decay to lr * final_factor (Smith & Topin, 2017)."""
    lr = optimizer.param_groups[0]["lr"]
    points = _warmup_start(cfg, lr, iters_per_epoch) + [(iters_per_epoch * epochs, lr * cfg.final_factor)]
    return _piecewise(points, optimizer)


@SCHEDULERS.register("constant")
def constant(cfg: SchedulerConfig, optimizer: torch.optim.Optimizer, iters_per_epoch: int, epochs: int) -> Schedule:
    return _piecewise(_step_points(cfg, optimizer.param_groups[0]["lr"], iters_per_epoch, epochs, []), optimizer)


@SCHEDULERS.register("step")
def step(cfg: SchedulerConfig, optimizer: torch.optim.Optimizer, iters_per_epoch: int, epochs: int) -> Schedule:
    steps = list(range(cfg.step_epochs, epochs + 1, cfg.step_epochs))
    return _piecewise(_step_points(cfg, optimizer.param_groups[0]["lr"], iters_per_epoch, epochs, steps), optimizer)


@SCHEDULERS.register("multistep")
def multistep(cfg: SchedulerConfig, optimizer: torch.optim.Optimizer, iters_per_epoch: int, epochs: int) -> Schedule:
    return _piecewise(
        _step_points(cfg, optimizer.param_groups[0]["lr"], iters_per_epoch, epochs, cfg.milestones), optimizer
    )


@SCHEDULERS.register("cosine")
def cosine(cfg: SchedulerConfig, optimizer: torch.optim.Optimizer, iters_per_epoch: int, epochs: int) -> Schedule:
    lr = optimizer.param_groups[0]["lr"]
    warmup_iters = round(cfg.warmup_epochs * iters_per_epoch)
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


@SCHEDULERS.register("plateau")
def plateau(cfg: SchedulerConfig, optimizer: torch.optim.Optimizer, iters_per_epoch: int, epochs: int) -> Schedule:
    """lr times gamma after plateau_patience evaluations without a better validation accuracy."""
    handler = ReduceLROnPlateauScheduler(
        optimizer, metric_name="accuracy", mode="max", factor=cfg.gamma, patience=cfg.plateau_patience
    )
    return Schedule(handler, after_evaluation=True)


def build_schedule(
    cfg: SchedulerConfig, optimizer: torch.optim.Optimizer, iters_per_epoch: int, epochs: int
) -> Schedule:
    return SCHEDULERS[cfg.name](cfg, optimizer, iters_per_epoch, epochs)


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
    else:
        trainer.add_event_handler(Events.ITERATION_STARTED, schedule.handler)
    return schedule.handler


def check_schedule(cfg: SchedulerConfig, iters_per_epoch: int, epochs: int) -> None:
    """Build the schedule on a stand-in optimizer: a schedule the run cannot make fails before the run folder exists."""
    build_schedule(cfg, torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), iters_per_epoch, epochs)
