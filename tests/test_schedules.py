from __future__ import annotations

import math

import pytest
import torch
from ignite.engine import Engine, Events

from harness.training.schedules import SchedulerConfig, attach_lr_scheduler

ITERS_PER_EPOCH = 10
EPOCHS = 6


def lrs_applied(cfg: SchedulerConfig, lr: float = 1.0) -> list[float]:
    """The learning rate in force during each iteration (1-based index = iteration)."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=lr)
    trainer = Engine(lambda engine, batch: None)
    attach_lr_scheduler(cfg, optimizer, trainer, Engine(lambda e, b: None), ITERS_PER_EPOCH, EPOCHS)
    seen = [math.nan]
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(optimizer.param_groups[0]["lr"]))
    trainer.run([0] * ITERS_PER_EPOCH, max_epochs=EPOCHS)
    return seen


def test_onecycle_warms_up_linearly_then_anneals_to_final():
    lrs = lrs_applied(SchedulerConfig(name="onecycle", warmup_epochs=2, start_factor=0.1, final_factor=0.0))
    # ignite steps before each iteration, from event index 0 at iteration 1
    assert lrs[1] == pytest.approx(0.1)
    assert lrs[11] == pytest.approx(0.1 + 0.9 * 10 / 20)
    assert lrs[21] == pytest.approx(1.0)
    assert lrs[41] == pytest.approx(1.0 * (60 - 40) / 40)
    assert lrs[60] == pytest.approx(1.0 / 40)


def test_step_and_multistep_drop_at_epoch_boundaries():
    step = lrs_applied(SchedulerConfig(name="step", step_epochs=2, gamma=0.5))
    assert step[20] == pytest.approx(1.0) and step[21] == pytest.approx(0.5) and step[41] == pytest.approx(0.25)
    multi = lrs_applied(SchedulerConfig(name="multistep", milestones=[1, 5], gamma=0.1))
    assert multi[10] == pytest.approx(1.0) and multi[11] == pytest.approx(0.1)
    assert multi[50] == pytest.approx(0.1) and multi[51] == pytest.approx(0.01)


def test_cosine_with_warmup_and_constant():
    cosine = lrs_applied(SchedulerConfig(name="cosine", warmup_epochs=1, start_factor=0.0, final_factor=0.0))
    assert cosine[1] == pytest.approx(0.0)
    assert max(cosine[1:]) == pytest.approx(1.0, abs=0.02)
    halfway = 10 + 25  # 50 cosine iterations after 10 of warm-up
    assert cosine[halfway + 1] == pytest.approx(0.5, abs=0.04)
    assert cosine[60] < 0.01
    assert set(lrs_applied(SchedulerConfig(name="constant"))[1:]) == {1.0}


def test_plateau_multiplies_by_gamma_after_patience_evaluations_without_a_better_accuracy():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    trainer, evaluator = Engine(lambda e, b: None), Engine(lambda e, b: None)
    cfg = SchedulerConfig(name="plateau", gamma=0.5, plateau_patience=1)
    attach_lr_scheduler(cfg, optimizer, trainer, evaluator, ITERS_PER_EPOCH, EPOCHS)
    accuracies = iter([0.5, 0.6, 0.6, 0.6, 0.7])
    seen = []

    @evaluator.on(Events.STARTED)
    def fake_accuracy(engine):
        engine.state.metrics["accuracy"] = next(accuracies)

    evaluator.add_event_handler(Events.COMPLETED, lambda e: seen.append(optimizer.param_groups[0]["lr"]))
    for _ in range(5):
        evaluator.run([0])
    # better, better, same (patience 1 used up), same -> halved, better
    assert seen == [1.0, 1.0, 1.0, 0.5, 0.5]
