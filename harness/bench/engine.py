"""Benchmark of the search engine: what a trial costs besides its run."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from harness.search.engine import open_storage, open_study, work
from harness.search.plans import SearchPlan
from harness.search.space import load_search


def bench_engine(trials: int) -> dict[str, Any]:
    """The search engine's own cost per trial: ``harness.search.engine.work`` on a fresh SQLite study
    with a run that does nothing but return a summary, so what is timed is the engine alone."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "base.yaml").write_text("name: bench\n")
        (folder / "search.yaml").write_text(
            f"base: base.yaml\ntrials: {trials}\nspace:\n  optimizer.lr: {{type: float, low: 0.01, high: 1.0}}\n"
        )
        search = load_search(folder / "search.yaml")
        study = open_study(
            open_storage(f"sqlite:///{folder / 'study.db'}", search.spec.heartbeat), search.name, "search", "maximize"
        )

        def no_run(job: Any, trial: Any, metric: str) -> dict[str, Any]:
            return {"status": "completed", "final_val_acc": 0.5, "epochs_completed": 1}

        start = time.perf_counter()
        work(study, SearchPlan(search, folder, []), heartbeat_s=search.spec.heartbeat.interval_s, run=no_run)
        elapsed = time.perf_counter() - start
    return {"trials": trials, "storage": "sqlite", "ms_per_trial": 1000 * elapsed / trials}
