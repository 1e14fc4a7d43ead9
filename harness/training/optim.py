"""Optimizers by name (``optimizer.name``), with no weight decay on BatchNorm weights and biases."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import torch
from pydantic import Field
from torch import nn

from harness.core.registry import Registry
from harness.core.schema import Section, registered

ParamGroups = list[dict[str, Any]]
OPTIMIZERS: Registry[Callable[[OptimizerConfig, ParamGroups], torch.optim.Optimizer]] = Registry("optimizer.name")


class OptimizerConfig(Section):
    name: Annotated[str, registered(OPTIMIZERS)] = "sgd"
    lr: float = Field(0.2, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    nesterov: bool = True
    weight_decay: float = Field(5e-4, ge=0.0)


@OPTIMIZERS.register("sgd")
def sgd(cfg: OptimizerConfig, groups: ParamGroups) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)


@OPTIMIZERS.register("adam")
def adam(cfg: OptimizerConfig, groups: ParamGroups) -> torch.optim.Optimizer:
    return torch.optim.Adam(groups, lr=cfg.lr)  # weight decay as L2 added to the gradient


@OPTIMIZERS.register("adamw")
def adamw(cfg: OptimizerConfig, groups: ParamGroups) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=cfg.lr)  # decoupled weight decay


def parameter_groups(model: nn.Module, weight_decay: float) -> ParamGroups:
    # No weight decay on BatchNorm weights and biases: decaying them only fights the normalization.
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(cfg: OptimizerConfig, model: nn.Module) -> torch.optim.Optimizer:
    return OPTIMIZERS[cfg.name](cfg, parameter_groups(model, cfg.weight_decay))
