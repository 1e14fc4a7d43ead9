"""Optimizers and learning-rate schedules (Ignite param schedulers, stepped every iteration)."""
from __future__ import annotations

from typing import Any

import torch
from ignite.engine import Engine, Events
from ignite.handlers import CosineAnnealingScheduler, PiecewiseLinear, ReduceLROnPlateauScheduler
from ignite.handlers.param_scheduler import create_lr_scheduler_with_warmup
from torch import nn

from harness.config import OptimizerConfig, SchedulerConfig
from harness.errors import HarnessError


def build_optimizer(cfg: OptimizerConfig, model: nn.Module) -> torch.optim.Optimizer:
    # No weight decay on BatchNorm weights and biases: decaying them only fights the normalization.
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def _step_points(cfg: SchedulerConfig, lr: float, iters_per_epoch: int, total_iters: int, step_epochs: list[int]) -> list:
    warmup_iters = round(cfg.warmup_epochs * iters_per_epoch)
    points = [(0, lr * cfg.start_factor), (warmup_iters, lr)] if warmup_iters else [(0, lr)]
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


def lr_milestones(cfg: SchedulerConfig, lr: float, iters_per_epoch: int, epochs: int) -> list[tuple[int, float]] | None:
    """The schedule as (iteration, lr) corners joined by straight lines; None for cosine and plateau."""
    total = iters_per_epoch * epochs
    warmup_iters = round(cfg.warmup_epochs * iters_per_epoch)
    if cfg.name == "onecycle":
        start = [(0, lr * cfg.start_factor), (warmup_iters, lr)] if warmup_iters else [(0, lr)]
        return start + [(total, lr * cfg.final_factor)]
    if cfg.name == "constant":
        return _step_points(cfg, lr, iters_per_epoch, total, [])
    if cfg.name == "step":
        return _step_points(cfg, lr, iters_per_epoch, total, list(range(cfg.step_epochs, epochs + 1, cfg.step_epochs)))
    if cfg.name == "multistep":
        return _step_points(cfg, lr, iters_per_epoch, total, cfg.milestones)
    return None


def attach_lr_scheduler(
    cfg: SchedulerConfig,
    optimizer: torch.optim.Optimizer,
    trainer: Engine,
    evaluator: Engine,
    iters_per_epoch: int,
    epochs: int,
) -> Any:
    """Attach the configured schedule; return it so that checkpoints can save its state."""
    lr = optimizer.param_groups[0]["lr"]
    if cfg.name == "plateau":
        scheduler = ReduceLROnPlateauScheduler(
            optimizer, metric_name="accuracy", mode="max", factor=cfg.gamma, patience=cfg.plateau_patience
        )
        evaluator.add_event_handler(Events.COMPLETED, scheduler)
        return scheduler
    points = lr_milestones(cfg, lr, iters_per_epoch, epochs)
    if points is not None:
        scheduler = PiecewiseLinear(optimizer, "lr", milestones_values=points)
    else:  # cosine
        warmup_iters = round(cfg.warmup_epochs * iters_per_epoch)
        scheduler = CosineAnnealingScheduler(
            optimizer, "lr", start_value=lr, end_value=lr * cfg.final_factor, cycle_size=iters_per_epoch * epochs - warmup_iters + 1
        )
        if warmup_iters:
            scheduler = create_lr_scheduler_with_warmup(
                scheduler, warmup_start_value=lr * cfg.start_factor, warmup_duration=warmup_iters, warmup_end_value=lr
            )
    trainer.add_event_handler(Events.ITERATION_STARTED, scheduler)
    return scheduler
