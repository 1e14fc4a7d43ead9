"""Benchmark of the search engine: what a trial costs besides its run, with one worker or many
worker processes sharing one study (the load a cluster puts on the study's storage).

The workers run ``harness.search.engine.work`` as ``harness.tune``'s workers do, with a stand-in for
the run: it makes the trial's run folder (refusing one that exists: a trial run twice), waits
``run_s`` and returns a summary. What is timed is the engine and the storage alone.
"""

from __future__ import annotations

import multiprocessing
import os
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna

from harness.core.errors import HarnessError
from harness.search.engine import Job, work
from harness.search.plans import SearchPlan
from harness.search.space import Search, load_search
from harness.search.storage import default_storage, exclusive, open_storage, open_study


def stand_in_run(run_s: float) -> Callable[[Job, Any, str], dict[str, Any]]:
    """A run that only makes its folder, once (``mkdir`` refuses a folder made before), and takes ``run_s``."""

    def run(job: Job, trial: Any, metric: str) -> dict[str, Any]:
        job.run_dir.mkdir(parents=True)
        time.sleep(run_s)
        return {"status": "completed", "final_val_acc": 0.5, "epochs_completed": 1}

    return run


def engine_search(folder: Path, trials: int) -> Search:
    """A search of ``trials`` trials over one float, its baseline queued first as ``harness.tune``
    queues it, with a 1 s heartbeat (a waiting worker looks again every second) and a grace long
    enough that a worker slowed by the load is not taken for dead."""
    (folder / "base.yaml").write_text("name: bench\n")
    (folder / "search.yaml").write_text(
        f"name: engine-{uuid.uuid4().hex[:8]}\nbase: base.yaml\ntrials: {trials}\n"  # a new study, whatever the storage
        "space:\n  optimizer.lr: {type: float, low: 0.01, high: 1.0}\n"
        "baseline_first: true\nheartbeat: {interval_s: 1, grace_s: 60}\n"
    )
    return load_search(folder / "search.yaml")


def _worker(search: Search, out: Path, url: str, run_s: float, ready: Any, log: Path) -> None:
    """One worker process: its output to ``log``, then the worker loop once every worker has opened the study."""
    handle = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(handle, 1)
    os.dup2(handle, 2)
    study = open_study(open_storage(url, search.spec.heartbeat), search.name, SearchPlan.kind, "maximize")
    ready.wait()
    code = work(study, SearchPlan(search, out, []), search.spec.heartbeat.interval_s, run=stand_in_run(run_s))
    raise SystemExit(code)


def run_workers(search: Search, out: Path, url: str, workers: int, run_s: float) -> dict[str, Any]:
    """``workers`` processes on one study, started together; their wall time, exit codes and logs."""
    storage = open_storage(url, search.spec.heartbeat)
    with exclusive(url):
        SearchPlan(search, out, []).queue_baseline(open_study(storage, search.name, SearchPlan.kind, "maximize"))
    storage.engine.dispose()  # no connection of this process is carried into the workers
    fork = multiprocessing.get_context("fork")  # the workers share this process's imports: no 2 s start each
    ready = fork.Barrier(workers + 1)
    logs = [out / f"worker-{k}.log" for k in range(workers)]
    processes = [fork.Process(target=_worker, args=(search, out, url, run_s, ready, log)) for log in logs]
    for process in processes:
        process.start()
    ready.wait()
    began = time.perf_counter()
    for process in processes:
        process.join()
    return {
        "wall_s": time.perf_counter() - began,
        "exit_codes": [process.exitcode for process in processes],
        "logs": [log.read_text() for log in logs],
    }


def bench_engine(trials: int, workers: int = 1, storage_url: str | None = None, run_s: float = 0.0) -> dict[str, Any]:
    """The engine's own cost per trial: ``workers`` worker processes on a fresh study (an SQLite file
    unless ``storage_url``) whose runs take ``run_s``. ``ms_per_trial`` is the worker time a trial
    costs besides its run (waiting for the storage included): workers x wall time / trials - run_s."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        search = engine_search(folder, trials)
        url = storage_url or default_storage(folder, "study")
        result = run_workers(search, folder, url, workers, run_s)
        if storage_url:
            optuna.delete_study(study_name=search.name, storage=url)  # a benchmark leaves nothing in a database
    failed = [(k, code) for k, code in enumerate(result["exit_codes"]) if code != 0]
    if failed:
        k, code = failed[0]
        last = result["logs"][k].strip().splitlines()[-1:] or [""]
        raise HarnessError(f"engine benchmark: worker {k} ended with exit code {code}: {last[0]}")
    per_trial_s = workers * result["wall_s"] / trials - run_s
    return {
        "trials": trials,
        "workers": workers,
        "storage": url.split(":", 1)[0],
        "run_s": run_s,
        "trials_per_s": trials / result["wall_s"],
        "ms_per_trial": 1000 * per_trial_s,
    }
