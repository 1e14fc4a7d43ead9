"""``python -m harness.tune SEARCH.yaml [--trials N] [--workers K] [--storage URL] [--out DIR]
[--set K=V ...] [--confirm K --seeds 0 1 2]``: a hyperparameter search on the validation split.

An Optuna study (``harness.search.engine``): ``--workers K`` processes on this machine ask its
storage for trials (an SQLite file in DIR by default; the same command on other machines with the
same ``--storage`` URL joins the study), each trial a full run folder ``DIR/trial-<number>/`` pruned
on its validation accuracy. Re-running the command continues the study up to N complete or pruned
trials. Then ``DIR/trials.csv``, ``DIR/study.html`` and ``DIR/best.yaml``.

``--confirm K --seeds 0 1 2`` re-runs the K best configs at the base's full budget over the seeds
(``DIR/confirm/``) and compares them **on the test set** (compare.html, leaderboard.csv): search on
validation, report on test.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from harness.core import atomic_io
from harness.core.errors import ArgumentParser, HarnessError, exit_on_harness_error, redact
from harness.core.full_disk import DiskFullError, log_to_a_disk_that_may_fill
from harness.core.run_folder import create_output_dir
from harness.search.engine import listen_to_interrupts, start_workers, supervise, work
from harness.search.plans import SearchPlan
from harness.search.progress import StudyStatus, counted, retries
from harness.search.space import PrunerConfig, Search, load_search
from harness.search.storage import default_storage, exclusive, open_storage, open_study
from harness.search.study_report import (
    best_trial,
    completed_baseline,
    lost_baseline,
    top_trials,
    trial_experiment,
    trials_table,
    write_outputs,
)
from harness.search.tracking import close_parent, open_parent, study_tracking, worker_env


class GridSampler(optuna.samplers.GridSampler):
    """Optuna's grid, without its ``study.stop()`` once the grid is used up: outside ``optimize()``
    that raises from ``tell``. The plan counts the trials itself."""

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Any) -> None:
        pass


def build_sampler(search: Search, worker: int, trials_so_far: int) -> optuna.samplers.BaseSampler:
    """The configured sampler. Its seed differs per worker and per start (the trials already in the
    study), or every worker, and every re-run of the command, would draw the same first trials."""
    s = search.spec.sampler
    if s.name == "grid":
        return GridSampler(search.grid(), seed=s.seed)
    seed = (s.seed * 1_000_003 + worker * 10_007 + trials_so_far) % 2**32
    if s.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def build_pruner(p: PrunerConfig) -> optuna.pruners.BasePruner:
    if p.name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=p.startup_trials, n_warmup_steps=p.warmup_epochs)
    if p.name == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=p.min_epochs, reduction_factor=p.reduction_factor)


def parse_args(argv: list[str] | None) -> Any:
    parser = ArgumentParser(
        prog="python -m harness.tune",
        description="Search hyperparameters on the validation split (Optuna, several workers), then confirm the "
        "best over seeds on the test set.",
    )
    parser.add_argument("search", type=Path, help="search file, e.g. experiments/search/resnet18_cpu.yaml")
    parser.add_argument("--trials", type=int, help="complete + pruned trials to reach (default: the file's)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes on this machine (default 1)")
    parser.add_argument("--storage", help="study storage URL (default: sqlite:///DIR/study.db); PostgreSQL: "
                        "postgresql://user:password@host/db")  # fmt: skip
    parser.add_argument("--out", type=Path, help="study folder (default: results/tune/<search name>)")
    parser.add_overrides()
    parser.add_argument("--confirm", type=int, default=0, metavar="K", help="re-run the K best configs over --seeds")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of --confirm (default 0 1 2)")
    parser.add_argument("--as-worker", type=int, help=argparse.SUPPRESS)  # the worker processes' own flag
    args = parser.parse_args(argv)
    if args.trials is not None and args.trials < 1:
        parser.error(f"--trials {args.trials}: expected at least 1")
    if args.workers < 1:
        parser.error(f"--workers {args.workers}: expected at least 1")
    if args.confirm < 0:
        parser.error(f"--confirm {args.confirm}: expected 0 or more")
    return args


def worker_command(args: Any, search: Search, out: Path, storage_url: str) -> list[str]:
    command = [sys.executable, "-m", "harness.tune", str(args.search), "--trials", str(search.trials)]
    command += ["--out", str(out), "--storage", storage_url]
    return command + (["--set", *args.overrides] if args.overrides else [])


def progress_printer(search: Search, workers: int) -> Any:
    """Prints a line per trial as it ends and the study's status line on every change, and rewrites
    trials.csv, from what the storage says."""
    told: set[int] = set()
    metric = search.spec.objective.metric
    maximize = search.spec.objective.direction == "maximize"

    def on_change(study: optuna.Study, trials: list[FrozenTrial], out: Path) -> None:
        try:
            with atomic_io.one_writer(out):  # another command on the same study may be writing it too
                atomic_io.write_text(out / "trials.csv", trials_table(study, search).to_csv(index=False))
        except DiskFullError:
            pass  # written again once the workers end, which reports a disk still full
        taken_over = retries(trials)
        for t in trials:
            if t.number in told or t.state in (TrialState.RUNNING, TrialState.WAITING):
                continue
            told.add(t.number)
            if t.user_attrs.get("surplus"):
                continue
            if t.number in taken_over:  # its worker died or was stopped: nothing failed
                by = taken_over[t.number]
                print(f"trial {t.number}: stopped, continued by trial {by} from its run folder", flush=True)
                continue
            what = f"{metric} {t.value:.4f}" if t.state == TrialState.COMPLETE else t.state.name.lower()
            if t.state == TrialState.FAIL:
                what = "interrupted" if t.user_attrs.get("interrupted") else f"failed: {t.user_attrs.get('error', '?')}"
            epochs = t.user_attrs.get("epochs")
            print(f"trial {t.number}: {what} ({epochs} epochs, {t.user_attrs.get('time_s', '?')} s)", flush=True)
        own = [t for t in trials if counted(t) and t.number not in taken_over]
        status = StudyStatus("trials", search.trials, own, metric=metric, maximize=maximize)
        print(status.line(workers, datetime.now()), flush=True)

    return on_change


def write_confirmation_configs(search: Search, trials: list[FrozenTrial], out: Path, extra: list[str]) -> list[Path]:
    """The best trials' configs at the base's full budget, each a ready experiment file."""
    names = [f"{search.name}-trial{trial.number}" for trial in trials]
    return [
        atomic_io.write_text(out / f"{name}.yaml", trial_experiment(search, trial, extra, name))
        for trial, name in zip(trials, names, strict=True)
    ]


@exit_on_harness_error
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    listen_to_interrupts()
    search = load_search(args.search, args.trials, args.overrides)  # every bad key fails here
    out = args.out or Path("results") / "tune" / search.name
    storage_url = args.storage or default_storage(out, "study")
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our lines say what happened
    if args.as_worker is not None:
        log_to_a_disk_that_may_fill()
        storage = open_storage(storage_url, search.spec.heartbeat)
        plan = SearchPlan(search, out, args.overrides)
        study = open_study(
            storage, search.name, plan.kind, search.spec.objective.direction, pruner=build_pruner(search.spec.pruner)
        )
        study.sampler = build_sampler(search, args.as_worker, len(study.get_trials(deepcopy=False)))
        return work(study, plan, search.spec.heartbeat.interval_s)

    tracking = study_tracking([search.config({}, True, args.overrides)], "search", storage_url)
    create_output_dir(out)
    storage = open_storage(storage_url, search.spec.heartbeat)
    plan = SearchPlan(search, out, args.overrides)
    with exclusive(storage_url):  # another command starting on the same study waits: one baseline
        study = open_study(storage, search.name, plan.kind, search.spec.objective.direction)
        finished = counted_finished(study)
        if args.confirm and args.trials is None and finished:
            # Confirming a study that exists: what it has, never more trials unasked for.
            if finished < search.trials:
                print(
                    f"note: --confirm without --trials confirms the {finished} finished trials; the file asks for "
                    f"{search.trials}: add --trials {search.trials} to finish the search first",
                    flush=True,
                )
            search = search.model_copy(update={"trials": finished})
            plan = SearchPlan(search, out, args.overrides)
        plan.queue_baseline(study)
        params = {**search.spec.model_dump(), "trials": search.trials, "set": " ".join(args.overrides)}
        parent = open_parent(study, storage_url, tracking, out, plan.kind, params)
    print(
        f"search {search.name}: {search.trials} trials of {search.spec.base} over {', '.join(search.space)}, "
        f"{args.workers} worker(s), storage {redact(storage_url)}, folder {out}",
        flush=True,
    )
    if search.pruner_warning(args.overrides):
        print(f"warning: {search.pruner_warning(args.overrides)}", file=sys.stderr, flush=True)
    on_change = progress_printer(search, args.workers)
    code = 0
    if plan.state(study) != "done":  # a finished study starts no worker
        command = worker_command(args, search, out, storage_url)
        workers = start_workers(command, args.workers, out / "logs", worker_env(parent))
        code = supervise(workers, study, lambda trials: on_change(study, trials, out))
    with atomic_io.one_writer(out):
        written = write_outputs(study, search, out, storage_url, args.overrides)
    print(f"trials: {written['trials.csv']}, report: {written['study.html']}", flush=True)
    best = best_trial(study) if "best.yaml" in written else None
    if best is not None:
        print(f"best: trial {best.number}, {search.spec.objective.metric} {best.value:.4f}: {written['best.yaml']}")
    finished = counted_finished(study)
    if parent is not None:
        figures = {search.spec.objective.metric: best.value} if best is not None else {}
        close_parent(parent, written.values(), figures, code or int(finished < search.trials))
    if code:
        return code
    if finished < search.trials:
        raise HarnessError(f"the study has {finished} of {search.trials} trials (see {out / 'logs'}); run it again")
    lost = lost_baseline(study, search)
    if lost is not None:
        print(f"error: the baseline (trial {lost.number}, the base's own values) failed: "
              f"{lost.user_attrs.get('error', '?')}; nothing in this study is measured against the recipe "
              f"(see {lost.user_attrs.get('run_dir', out)})", file=sys.stderr)  # fmt: skip
    if args.confirm:
        code = confirm(study, search, args, out)
    return code or (1 if lost is not None else 0)  # 1: a run failed, as a sweep says it


def counted_finished(study: optuna.Study) -> int:
    """Complete and pruned trials: what counts towards a search's ``trials``."""
    return sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.get_trials(deepcopy=False))


def confirm(study: optuna.Study, search: Search, args: Any, out: Path) -> int:
    """The K best trials, and the baseline (the base's own values) beside them when the study has one,
    at the base's full budget over the seeds, compared on the test set: does the search beat the recipe?"""
    from harness.reporting.compare import verdict
    from harness.sweep import run_sweep

    best = top_trials(study, args.confirm)
    files = write_confirmation_configs(search, best, out / "confirm", args.overrides)
    baseline = completed_baseline(study)
    reference = None
    if baseline is not None and baseline.number not in {t.number for t in best}:
        reference = f"{search.name}-baseline"
        files.append(
            atomic_io.write_text(
                out / "confirm" / f"{reference}.yaml", trial_experiment(search, baseline, args.overrides, reference)
            )
        )
    elif baseline is not None:
        reference = f"{search.name}-trial{baseline.number}"
    beside = f" beside the baseline (trial {baseline.number})" if baseline is not None else ""
    print(
        f"confirming the {len(best)} best trial(s){beside} over seeds {args.seeds} on the test set: {out / 'confirm'}"
    )
    code = run_sweep(files, args.seeds, [], out / "confirm", args.workers, None, reference=reference)
    board = out / "confirm" / "leaderboard.csv"
    if board.is_file() and (said := verdict(pd.read_csv(board), reference)):
        print(f"confirmation: {said}", flush=True)
    return code


def cli() -> NoReturn:
    """The console script ``harness-tune``, and ``python -m harness.tune``."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
