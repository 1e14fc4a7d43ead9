"""``python -m tests.kill_at POINT harness.run-ARGS...``: harness.run that kill -9's itself at POINT.

The points a crash can hit, each reached exactly (a timer would land anywhere):
  iteration:N     after training iteration N
  evaluation:E    inside the test-set evaluation that ends epoch E
  checkpoint:N    halfway through writing the checkpoint of iteration N
  summary         after training, before the final summary.json
  analysis        in the middle of the analysis (before the Grad-CAM figures)
  report          while the report is being rendered
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import torch
from ignite.engine import Events

import harness.analysis.pipeline
import harness.reporting.run_report
import harness.run
import harness.runner.experiment


def die(*_: Any) -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def replace(module: Any, name: str, stand_in: Any) -> None:
    """Put ``stand_in`` in the place of ``module.name``, which must exist: a kill point whose function was
    renamed would otherwise never fire, and the run would complete unharmed."""
    if not hasattr(module, name):
        raise SystemExit(f"kill point: {module.__name__} has no {name}")
    setattr(module, name, stand_in)


def kill_in_training(point: str, value: int) -> None:
    build = harness.runner.experiment.build_training

    def build_and_arm(*args: Any, **kwargs: Any) -> Any:
        run = build(*args, **kwargs)
        if point == "iteration":
            run.trainer.add_event_handler(Events.ITERATION_COMPLETED(once=value), die)
        else:
            run.test_evaluator.add_event_handler(
                Events.ITERATION_COMPLETED(event_filter=lambda *_: run.trainer.state.epoch == value), die
            )
        return run

    replace(harness.runner.experiment, "build_training", build_and_arm)


def kill_while_saving(iteration: int) -> None:
    save = torch.save

    def save_half_then_die(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        if isinstance(obj, dict) and obj.get("trainer", {}).get("iteration") == iteration:
            save(obj, f, *args, **kwargs)
            f.truncate(f.tell() // 2)  # what a crash mid-write leaves
            f.flush()
            die()
        save(obj, f, *args, **kwargs)

    torch.save = save_half_then_die


def arm(point: str) -> None:
    name, _, value = point.partition(":")
    if name in ("iteration", "evaluation"):
        kill_in_training(name, int(value))
    elif name == "checkpoint":
        kill_while_saving(int(value))
    elif name == "summary":
        replace(harness.runner.experiment, "training_status", die)
    elif name == "analysis":
        replace(harness.analysis.pipeline, "cam_maps", die)
    elif name == "report":
        replace(harness.reporting.run_report, "run_context", die)
    else:
        raise SystemExit(f"unknown kill point {point!r}")


if __name__ == "__main__":
    arm(sys.argv[1])
    sys.argv = ["harness.run", *sys.argv[2:]]
    harness.run.cli()
