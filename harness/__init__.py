"""harness: config-driven Ignite training of ResNet18 on CIFAR-10 (or your own model and data), with
analysis, reports, comparisons and searches.

The Python API, the same functions the commands call::

    from harness import load_config, run_experiment, analyze_run, compare_runs

    cfg = load_config("experiments/resnet18_cpu.yaml", ["train.epochs=2"])
    result = run_experiment(cfg)                 # RunResult: run_dir, status, summary, metrics (a DataFrame)
    compare_runs([result.run_dir, ...], "results/compare.html")

Importing ``harness`` imports nothing heavy: each name is loaded when first used, so that validating
a config (``harness.config``) needs no torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["Config", "RunResult", "analyze_run", "compare_runs", "load_config", "run_experiment"]
__version__ = "0.5.0"

_WHERE = {
    "Config": "harness.config",
    "load_config": "harness.config",
    "run_experiment": "harness.runner.experiment",
    "RunResult": "harness.runner.experiment",
    "analyze_run": "harness.runner.existing_runs",
    "compare_runs": "harness.runner.existing_runs",
}

if TYPE_CHECKING:
    from harness.config import Config, load_config
    from harness.runner.existing_runs import analyze_run, compare_runs
    from harness.runner.experiment import RunResult, run_experiment


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'harness' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
