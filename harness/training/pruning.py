"""Pruning a trial from inside its run: an Ignite handler that reports the validation accuracy
after every epoch and stops the run when the reporter says so (optuna-examples'
``pytorch_ignite_simple.py``, made safe for several processes).

Only rank 0 holds a reporter (it talks to the study's storage); it decides and broadcasts the
decision, so every rank stops after the same epoch. The test set is never reported: a pruner that
saw it would be choosing on it.
"""

from __future__ import annotations

from typing import Protocol

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events


class TrialReporter(Protocol):
    """What a run tells the search about itself, epoch by epoch."""

    def report(self, val_metrics: dict[str, float], epoch: int) -> bool:
        """Record the epoch's validation metrics (``accuracy``, ``loss``); True if the trial should stop here."""


def attach_pruning(trainer: Engine, val_evaluator: Engine, reporter: TrialReporter | None) -> None:
    """After each epoch's evaluation: report, and on a prune decision mark the trainer
    (``state.pruned_at_epoch``) and terminate it. Attach after the evaluation, before the checkpoints."""

    @trainer.on(Events.EPOCH_COMPLETED)
    def report_and_maybe_stop(engine: Engine) -> None:
        prune = False
        if reporter is not None:  # rank 0
            prune = reporter.report(dict(val_evaluator.state.metrics), engine.state.epoch)
        if idist.get_world_size() > 1:
            prune = bool(idist.broadcast(torch.tensor(int(prune), device=idist.device()), src=0).item())
        if prune:
            engine.state.pruned_at_epoch = engine.state.epoch
            engine.terminate()
