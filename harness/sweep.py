"""``python -m harness.sweep FILES... [--seeds 0 1 2] [--set K=V ...] [--out SWEEP_DIR] [--workers K]
[--storage URL]``: every experiment with every seed, then the comparison.

The sweep is one folder: its runs live inside it (``SWEEP_DIR/<config name>-seed<k>/``), and
``compare.html`` and ``leaderboard.csv`` are rewritten after each finished run, so a killed sweep
still shows what finished. It runs on the search engine (``harness.search.engine``): every (config,
seed) pair is a queued trial of a study in ``SWEEP_DIR/sweep.db`` (or ``--storage``), and ``--workers
K`` processes take them, each run exactly once (its folder's lock refuses a second). Running the same
command again skips the finished runs and resumes the others from their checkpoints; one failed run
never stops the rest. ``--set`` applies to every run, e.g. narrow, short versions for a CPU:
``python -m harness.sweep experiments/resnet18_*.yaml --seeds 0 1 2 --set model.width=16 train.epochs=3``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import NoReturn

import optuna
from optuna.trial import FrozenTrial, TrialState

from harness.config import load_config
from harness.core import atomic_io
from harness.core.errors import ArgumentParser, HarnessError, exit_on_harness_error
from harness.core.full_disk import log_to_a_disk_that_may_fill
from harness.core.run_folder import create_output_dir, utc_timestamp
from harness.data.transforms import check_augment
from harness.reporting.compare import SPLITS, render_comparison
from harness.runner.plugins import imported_plugins
from harness.search.engine import listen_to_interrupts, run_status, start_workers, supervise, trials_by_state, work
from harness.search.plans import SweepPlan, SweepRun
from harness.search.progress import StudyStatus, latest_per_run
from harness.search.space import HeartbeatConfig
from harness.search.storage import default_storage, exclusive, open_storage, open_study
from harness.search.tracking import close_parent, open_parent, study_tracking, worker_env

STUDY = "sweep"


def plan(configs: list[Path], seeds: list[int] | None, overrides: list[str], sweep_dir: Path) -> list[SweepRun]:
    """Every (config, seed) pair, each validated before any run starts."""
    runs, folders = [], {}
    for path in configs:
        cfg = load_config(path, overrides)
        check_augment(cfg.data)
        imported_plugins(cfg)  # imports each plug-in: one that does not import fails here, before any run
        for seed in seeds if seeds is not None else [cfg.seed]:
            load_config(path, [*overrides, f"seed={seed}"])
            folder = sweep_dir / f"{cfg.name}-seed{seed}"
            if folder in folders:
                raise HarnessError(f"{path}: name {cfg.name!r} is also the name of {folders[folder]}; "
                                   "give each experiment of a sweep its own name")  # fmt: skip
            folders[folder] = path
            runs.append(SweepRun(path.resolve(), seed, folder))
    return runs


def progress_printer(
    runs: list[SweepRun], finished_before: set[str], workers: int
) -> Callable[[list[FrozenTrial]], None]:
    """Prints a line per run as it ends and the sweep's status line on every change, from what the storage says."""
    told: set[int] = set()
    names = {run.name for run in runs}

    def on_change(trials: list[FrozenTrial]) -> None:
        latest = {name: trial for name, trial in latest_per_run(trials).items() if name in names}
        for name, trial in latest.items():
            if trial.number in told or trial.state in (TrialState.RUNNING, TrialState.WAITING):
                continue
            told.add(trial.number)
            attrs = trial.user_attrs
            what = "completed" if trial.state == TrialState.COMPLETE else f"failed: {attrs.get('error', '?')}"
            print(f"run {name}: {what} ({attrs.get('epochs')} epochs, {attrs.get('time_s', '?')} s)", flush=True)
        status = StudyStatus(
            "runs",
            len(runs),
            list(latest.values()),
            done_before=len(finished_before - latest.keys()),
            failure_ends=True,
        )
        print(status.line(workers, datetime.now()), flush=True)

    return on_change


def comparison(runs: list[SweepRun], sweep_dir: Path, reference: str | None = None, rank_on: str = "test") -> None:
    """compare.html and leaderboard.csv of the runs that exist, listed and written under the folder's
    writer lock: workers finishing at once take turns, and the last one shows every run."""
    with atomic_io.one_writer(sweep_dir):
        existing = [r.run_dir for r in runs if r.run_dir.is_dir()]
        if existing:
            render_comparison(existing, sweep_dir / "compare.html", reference=reference, rank_on=rank_on)


def run_sweep(
    configs: list[Path],
    seeds: list[int] | None,
    overrides: list[str],
    sweep_dir: Path,
    workers: int = 1,
    storage_url: str | None = None,
    as_worker: int | None = None,
    reference: str | None = None,
    rank_on: str = "test",
) -> int:
    """Plan, queue, run on ``workers`` processes and compare on ``rank_on`` (the leader against the
    group ``reference`` when given); returns the exit code (1 if a run failed)."""
    runs = plan(configs, seeds, overrides, sweep_dir)  # all fail fast, before any run
    storage_url = storage_url or default_storage(sweep_dir, "sweep")
    sweep = SweepPlan(runs, overrides, lambda: comparison(runs, sweep_dir, reference, rank_on))
    heartbeat = HeartbeatConfig()
    if as_worker is not None:
        log_to_a_disk_that_may_fill()
        study = open_study(open_storage(storage_url, heartbeat), STUDY, sweep.kind, "maximize")
        return work(study, sweep, heartbeat.interval_s)

    tracking = study_tracking([run.experiment(overrides) for run in runs], sweep.kind, storage_url)
    create_output_dir(sweep_dir)
    storage = open_storage(storage_url, heartbeat)
    finished = set()
    for index, run in enumerate(runs, start=1):
        done = run_status(run.run_dir) == "completed"
        print(f"[{index}/{len(runs)}] {run.config} seed {run.seed} -> {run.run_dir}"
              + (": finished earlier; skipped" if done else ""), flush=True)  # fmt: skip
        if done:
            finished.add(run.name)
    with exclusive(storage_url):  # another command queueing the same runs waits, then finds them queued
        study = open_study(storage, STUDY, sweep.kind, "maximize")
        sweep.queue(study, finished)
        params = {"configs": [str(path) for path in configs], "seeds": seeds, "set": " ".join(overrides)}
        parent = open_parent(study, storage_url, tracking, sweep_dir, sweep.kind, params)
    command = [sys.executable, "-m", "harness.sweep", *map(str, configs), "--out", str(sweep_dir)]
    command += ["--storage", storage_url] + (["--seeds", *map(str, seeds)] if seeds is not None else [])
    command += ["--set", *overrides] if overrides else []
    command += ["--reference", reference] if reference else []
    command += ["--rank-on", rank_on]
    code = supervise(
        start_workers(command, workers, sweep_dir / "logs", worker_env(parent)),
        study,
        progress_printer(runs, finished, workers),
    )
    comparison(runs, sweep_dir, reference, rank_on)
    print(f"comparison: {sweep_dir / 'compare.html'}, leaderboard: {sweep_dir / 'leaderboard.csv'}")
    failed = [] if code else failures(study, runs)
    if parent is not None:
        close_parent(parent, [sweep_dir / "compare.html", sweep_dir / "leaderboard.csv"], {}, code or int(bool(failed)))
    if code:
        return code
    if failed:
        print(f"error: failed runs: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def failures(study: optuna.Study, runs: list[SweepRun]) -> list[str]:
    """The planned runs that did not complete, with the reason their last trial gave."""
    last: dict[str, optuna.trial.FrozenTrial] = {}
    for trial in sorted(trials_by_state(study)[TrialState.FAIL], key=lambda t: t.number):
        if not trial.user_attrs.get("surplus"):
            last[trial.user_attrs.get("run")] = trial
    return [f"{run.run_dir} ({last[run.name].user_attrs.get('error', 'failed')})" for run in runs
            if run_status(run.run_dir) != "completed" and run.name in last]  # fmt: skip


@exit_on_harness_error
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m harness.sweep", description="Run experiments x seeds and compare them.")
    parser.add_argument("configs", nargs="+", type=Path)
    parser.add_argument("--seeds", nargs="+", type=int, help="seeds for every config (default: each config's own)")
    parser.add_overrides()
    parser.add_argument("--out", type=Path, help="sweep folder (default: results/sweeps/<UTC timestamp>)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes on this machine (default 1)")
    parser.add_argument("--storage", help="study storage URL (default: sqlite:///SWEEP_DIR/sweep.db)")
    parser.add_argument(
        "--reference", metavar="NAME", help="the experiment the comparison's first sentence measures the leader against"
    )
    parser.add_argument(
        "--rank-on",
        choices=list(SPLITS),
        default="test",
        help="what the comparison ranks and tests: the final test accuracy (default) or the validation accuracy "
        "(to choose between the experiments without reading the test set)",
    )
    parser.add_argument("--as-worker", type=int, help=argparse.SUPPRESS)  # the worker processes' own flag
    args = parser.parse_args(argv)
    listen_to_interrupts()
    if args.workers < 1:
        parser.error(f"--workers {args.workers}: expected at least 1")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sweep_dir = args.out or Path("results") / "sweeps" / utc_timestamp()
    return run_sweep(
        args.configs,
        args.seeds,
        args.overrides,
        sweep_dir,
        args.workers,
        args.storage,
        args.as_worker,
        args.reference,
        args.rank_on,
    )


def cli() -> NoReturn:
    """The console script ``harness-sweep``, and ``python -m harness.sweep``."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
