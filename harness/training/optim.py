"""Optimizers by name (``optimizer.name``, registered in ``harness.training.config``), or any
``torch.optim`` class by import path (``torch.optim:RMSprop``); never weight decay on BatchNorm
weights and biases."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from harness.core.errors import HarnessError
from harness.core.registry import PluginError, call_plain
from harness.training.config import OPTIMIZERS, OptimizerConfig

ParamGroups = list[dict[str, Any]]


def sgd(cfg: OptimizerConfig, groups: ParamGroups) -> torch.optim.Optimizer:
    nesterov = cfg.nesterov and cfg.momentum > 0
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=nesterov, **cfg.kwargs)


def adam(cfg: OptimizerConfig, groups: ParamGroups) -> torch.optim.Optimizer:
    return torch.optim.Adam(groups, lr=cfg.lr, **cfg.kwargs)  # weight decay as L2 added to the gradient


def adamw(cfg: OptimizerConfig, groups: ParamGroups) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=cfg.lr, **cfg.kwargs)  # decoupled weight decay


def parameter_groups(model: nn.Module, weight_decay: float) -> ParamGroups:
    # No weight decay on BatchNorm weights and biases: decaying them only fights the normalization.
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(cfg: OptimizerConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer ``cfg.name`` names over ``model``'s parameters; a plug-in is called as
    ``Class(param_groups, lr=optimizer.lr, **optimizer.kwargs)``."""
    groups = parameter_groups(model, cfg.weight_decay)
    try:
        found = OPTIMIZERS.resolve(cfg.name)
        if found.native:
            try:
                optimizer = found.obj(cfg, groups)
            except TypeError as error:  # optimizer.kwargs the built-in optimizer does not take
                raise PluginError(f"optimizer.kwargs = {cfg.kwargs}: {error}") from None
        else:
            optimizer = call_plain(found, "optimizer.kwargs", cfg.kwargs, groups, lr=cfg.lr)
    except PluginError as problem:
        raise HarnessError(f"optimizer.name = {cfg.name!r}: {problem}") from None
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise HarnessError(
            f"optimizer.name = {cfg.name!r}: expected a torch.optim.Optimizer class, found {type(optimizer).__name__}"
        )
    return optimizer
