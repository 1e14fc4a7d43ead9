"""The engine under ``harness.tune`` and ``harness.sweep``: an Optuna study whose storage coordinates
the workers (an SQLite file by default; a PostgreSQL URL when several machines share one study).
No coordinator process of our own: every worker asks the storage for its next trial, runs it as a
``harness.run`` run in its own process, and tells the storage the result.

- A trial is a run folder; a retried or resumed trial continues that folder from its checkpoint.
- A worker beats a heartbeat while its trial runs; a worker killed with kill -9 stops beating, and
  after the grace period another worker (or the next command) fails the trial and retries it
  (Optuna's ``RetryHeartbeatStaleTrialCallback``), resuming the same run folder.
- SIGINT/SIGTERM: the run saves a checkpoint and stops; the trial is failed with ``interrupted`` and
  queued again, so re-running the command resumes it.
- The storage (``harness.search.storage``) gives a queued trial to exactly one worker, and retries a
  storage that went away. A result is told in one transaction, so a trial is recorded whole or not at all.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import optuna
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from harness.config import Config
from harness.core.errors import EXIT_BAD_INPUT, HarnessError
from harness.core.full_disk import RUN_AGAIN, DiskFullError
from harness.core.provenance import git_commit
from harness.core.run_folder import RunFiles
from harness.core.yaml_io import read_yaml_or_empty
from harness.runner.experiment import run_experiment
from harness.search.storage import STORAGE_ERRORS, retrying

POLL_S = 2.0


# ---------------------------------------------------------------- the study


def frozen(study: optuna.Study, trial: optuna.Trial) -> optuna.trial.FrozenTrial:
    # A live trial does not show its system attributes (the fixed parameters of an enqueued trial).
    return study._storage.get_trial(trial._trial_id)


def trials_by_state(study: optuna.Study) -> dict[TrialState, list[optuna.trial.FrozenTrial]]:
    trials = retrying("reading the trials", lambda: study.get_trials(deepcopy=False))
    found: dict[TrialState, list] = {state: [] for state in TrialState}
    for trial in trials:
        found[trial.state].append(trial)
    return found


class Heartbeat:
    """Tells the storage every ``interval_s`` that this worker's trial is alive. Unlike Optuna's own
    thread it survives a storage outage: it keeps trying, so a database restart shorter than the
    grace period does not get a live trial retried elsewhere."""

    def __init__(self, storage: RDBStorage, trial_id: int, interval_s: int) -> None:
        self._storage, self._trial_id, self._interval = storage, trial_id, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self._stop.is_set():
            try:
                self._storage.record_heartbeat(self._trial_id)
            except (*STORAGE_ERRORS, DiskFullError):
                pass  # the next beat tries again; the trial's calls print the outage or the full disk
            self._stop.wait(self._interval)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self._thread.join()


# ---------------------------------------------------------------- one worker


@dataclass
class Job:
    """What one trial runs: the experiment ``config`` into ``run_dir`` (resumed when it exists)."""

    run_dir: Path
    config: Config
    params: dict[str, Any] = field(default_factory=dict)  # a search's sampled parameters
    attrs: dict[str, Any] = field(default_factory=dict)  # what else names the job (a sweep's run), kept on a requeue


class Plan(Protocol):
    """What a kind of study runs (a search, a sweep): its trials' jobs and when it is done."""

    kind: str
    prunes: bool
    reported_metric: str  # what the runs report each epoch: ``accuracy`` or ``loss`` (of the validation split)

    def job(self, study: optuna.Study, trial: optuna.Trial) -> Job | None:
        """The run this trial is; None when the trial is surplus (nothing left to run for it)."""

    def value(self, summary: dict[str, Any]) -> float | None:
        """The trial's value, from the run's summary.json (a validation metric: never the test set's)."""

    def state(self, study: optuna.Study) -> str:
        """``done``, ``wait`` (the rest is running elsewhere) or ``ask`` (there is a trial to run)."""

    def failure_ends_trial(self) -> bool:
        """Whether a failed run is done (a sweep's) or gives its budget back (a search's)."""

    def after(self, job: Job) -> None:
        """Whatever follows a told trial in the worker (a sweep rewrites its comparison)."""


class OptunaReporter:
    """The run's side of pruning: report each epoch's validation ``metric`` (``accuracy``, or ``loss``
    for a study that minimizes it) to the trial, and ask the pruner."""

    def __init__(self, trial: optuna.Trial, metric: str) -> None:
        self.trial, self.metric = trial, metric

    def report(self, val_metrics: dict[str, float], epoch: int) -> bool:
        value = float(val_metrics[self.metric])
        retrying(f"reporting epoch {epoch} of trial {self.trial.number}", lambda: self.trial.report(value, epoch))
        return retrying(f"asking the pruner about trial {self.trial.number}", self.trial.should_prune)


def run_status(run_dir: Path) -> str | None:
    """``completed`` once trained and, when asked for, analyzed and reported; else the status."""
    files = RunFiles(run_dir)
    status = files.read_summary().get("status")
    if status == "completed":
        wants_report = read_yaml_or_empty(files.config).get("report", {}).get("enabled", True)
        if wants_report and not files.report.is_file():
            return "unfinished"  # killed after training: --resume finishes the analysis and the report
    return status or ("started" if files.config.is_file() else None)


class Interrupted(Exception):
    def __init__(self, signum: int) -> None:
        self.signum = signum


def execute(job: Job, trial: optuna.Trial | None, metric: str = "accuracy") -> dict[str, Any]:
    """Run (or resume, or just read) the job's run folder in this process; its summary.json."""
    status = run_status(job.run_dir)
    if status not in ("completed", "pruned", "diverged"):
        reporter = OptunaReporter(trial, metric) if trial is not None else None
        try:
            if status:  # started before: the folder's own config.yaml
                result = run_experiment(run_dir=job.run_dir, resume=True, trial=reporter)
            else:
                result = run_experiment(job.config, job.run_dir, trial=reporter)
        except KeyboardInterrupt:  # a signal outside the training loop (data loading, analysis)
            raise Interrupted(signal.SIGINT) from None
        if result.exit_code >= 128:
            raise Interrupted(result.exit_code - 128)
    return RunFiles(job.run_dir).read_summary()


Runner = Callable[[Job, "optuna.Trial | None", str], dict[str, Any]]


def run_trial(study: optuna.Study, plan: Plan, trial: optuna.Trial, job: Job, run: Runner = execute) -> str:
    """One trial from start to its told result (``run`` runs the job: ``execute``, or a stand-in that
    measures the engine alone); returns its state in words. The caller keeps its heartbeat going."""
    started = time.time()
    attrs = {"run_dir": str(job.run_dir), "commit": git_commit(), "host": socket.gethostname(), "pid": os.getpid()}
    for key, value in attrs.items():
        retrying(f"starting trial {trial.number}", lambda key=key, value=value: trial.set_user_attr(key, value))
    error = None
    try:
        summary = run(job, trial if plan.prunes else None, plan.reported_metric)
    except Interrupted as stop:
        try:
            retrying(f"recording trial {trial.number}", lambda: trial.set_user_attr("interrupted", True))
            queue_again(study, trial, job)
        except optuna.exceptions.UpdateFinishedTrialError:
            raise stop from None  # given up as stale meanwhile: its retry is queued already
        raise stop
    except DiskFullError as full:  # not the trial's failure: the command continues its run once there is room
        again = full.then(RUN_AGAIN)
        retrying(f"recording trial {trial.number}", lambda: trial.set_user_attr("error", str(again)))
        queue_again(study, trial, job)
        raise again from None
    except HarnessError as failure:
        summary, error = RunFiles(job.run_dir).read_summary(), str(failure)
    status = summary.get("status")
    extra = {
        "status": status,
        "epochs": summary.get("epochs_completed"),
        "time_s": round(time.time() - started, 2),
        "train_time_s": summary.get("total_time_s"),
        "device": summary.get("device"),
    }
    if error or status not in ("completed", "pruned"):
        extra["error"] = error or summary.get("error") or f"the run ended {status}"
    for key, value in extra.items():
        retrying(f"recording trial {trial.number}", lambda key=key, value=value: trial.set_user_attr(key, value))
    value = plan.value(summary) if status == "completed" else None
    if status == "pruned":
        told, state = TrialState.PRUNED, "pruned"
    elif status == "completed" and value is not None:
        told, state = TrialState.COMPLETE, "complete"
    else:
        told, state = TrialState.FAIL, "failed"
    retrying(
        f"recording trial {trial.number}",
        lambda: study.tell(trial, value if told == TrialState.COMPLETE else None, state=told),
    )
    return state


def listen_to_interrupts() -> None:
    """SIGINT and SIGTERM as Ctrl-C (KeyboardInterrupt). A command started in the background by a
    script, or a worker started by such a command, begins with SIGINT ignored (the shell does that
    to background jobs, and children inherit it): it would never stop on kill -INT."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.default_int_handler)


def fail(study: optuna.Study, trial: optuna.Trial) -> None:
    retrying(f"recording trial {trial.number}", lambda: study.tell(trial, state=TrialState.FAIL))


def queue_again(study: optuna.Study, trial: optuna.Trial, job: Job) -> None:
    """Fail a trial that did not end on its own and queue it again with its folder (and nothing of this
    attempt's outcome): the next worker, or the next command, resumes it."""
    fail(study, trial)
    again = {**job.attrs, "run_dir": str(job.run_dir), "resumes": trial.number}
    if trial.user_attrs.get("baseline"):  # a requeued baseline is still the baseline
        again["baseline"] = True
    retrying(f"queueing trial {trial.number} again", lambda: study.enqueue_trial(job.params, user_attrs=again))


def discard_surplus(study: optuna.Study, trial: optuna.Trial) -> None:
    """A trial asked for beyond the plan: failed, marked surplus, never run (trials.csv leaves it out)."""
    retrying("recording a surplus trial", lambda: trial.set_user_attr("surplus", True))
    fail(study, trial)


def planned_job(study: optuna.Study, plan: Plan, trial: optuna.Trial) -> Job | None:
    """The asked trial's job; None, and the trial discarded, when another worker took the last one
    between our look and our ask. A plan that fails fails the trial."""
    try:
        job = plan.job(study, trial)
    except optuna.exceptions.UpdateFinishedTrialError:
        raise  # finished by another worker (a sampled parameter could not be stored): the worker moves on
    except Exception:
        fail(study, trial)
        raise
    if job is None:
        discard_surplus(study, trial)
    return job


def work(study: optuna.Study, plan: Plan, heartbeat_s: int, max_failures: int = 3, run: Runner = execute) -> int:
    """The worker loop: until the plan is done, ask for a trial and run it. Returns the exit code."""
    failures = 0
    listen_to_interrupts()
    while True:
        retrying("checking for stale trials", lambda: optuna.storages.fail_stale_trials(study))
        state = plan.state(study)
        if state == "done":
            return 0
        if state == "wait":
            time.sleep(heartbeat_s)
            continue
        trial = retrying("asking for a trial", study.ask)
        # Beating from the moment the trial is RUNNING: a worker that dies before its run starts leaves
        # a stale trial, retried elsewhere, not one that waits forever.
        with Heartbeat(study._storage, trial._trial_id, heartbeat_s):
            try:
                job = planned_job(study, plan, trial)
                outcome = run_trial(study, plan, trial, job, run) if job is not None else None
            except Interrupted as stop:
                print(f"trial {trial.number} interrupted; run the same command again to resume it", flush=True)
                return 128 + stop.signum
            except optuna.exceptions.UpdateFinishedTrialError:
                # This worker was given up as stale (its heartbeat late past the grace period) and the
                # trial retried elsewhere, whose run resumes the same folder: nothing of ours to record.
                print(f"warning: trial {trial.number} was finished by another worker; moving on", file=sys.stderr)
                continue
        if job is None:
            continue
        print(f"trial {trial.number}: {outcome} ({job.run_dir})", flush=True)
        plan.after(job)
        failures = failures + 1 if outcome == "failed" and not plan.failure_ends_trial() else 0
        if failures >= max_failures:
            print(f"error: {failures} trials in a row failed; stopping (see the runs' summary.json)", file=sys.stderr)
            return 1


# ---------------------------------------------------------------- workers on this machine


def worker_environments(count: int, extra: dict[str, str]) -> list[dict[str, str]]:
    """One environment per worker, this one's with ``extra``: a GPU each when there are GPUs, else an
    equal share of the cores."""
    import torch

    base = {**os.environ, **extra}
    gpus = torch.cuda.device_count()
    if gpus:
        visible = base.get("CUDA_VISIBLE_DEVICES", ",".join(map(str, range(gpus)))).split(",")
        return [{**base, "CUDA_VISIBLE_DEVICES": visible[k % len(visible)]} for k in range(count)]
    threads = str(max(1, (os.cpu_count() or 1) // count))
    return [{**base, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads} for _ in range(count)]


def start_workers(
    command: list[str], count: int, log_dir: Path, extra_env: dict[str, str] | None = None
) -> list[tuple[subprocess.Popen, Path]]:
    """``count`` worker processes of ``command`` (``--as-worker K`` appended), each logging to its own
    file, their environment this one's with ``extra_env`` added."""
    log_dir.mkdir(parents=True, exist_ok=True)
    workers = []
    for k, env in enumerate(worker_environments(count, extra_env or {})):
        log = log_dir / f"worker-{k}.log"
        with open(log, "a", encoding="utf-8") as handle:
            process = subprocess.Popen(
                [*command, "--as-worker", str(k)], stdout=handle, stderr=subprocess.STDOUT, env=env
            )
        print(f"worker {k}: pid {process.pid}, log {log}", flush=True)
        workers.append((process, log))
    return workers


def supervise(
    workers: list[tuple[subprocess.Popen, Path]], study: optuna.Study, on_change: Callable[[list], None]
) -> int:
    """Wait for the workers, forwarding SIGINT/SIGTERM to them, and report each trial as its state
    changes (read from the storage). Returns 0, or 128 + the signal that stopped them."""
    stopped: list[int] = []

    def forward(signum: int, _frame: Any) -> None:
        stopped.append(signum)
        for process, _ in workers:
            if process.poll() is None:
                process.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    seen: dict[int, TrialState] = {}
    try:
        while True:
            running = [p for p, _ in workers if p.poll() is None]
            try:
                trials = study.get_trials(deepcopy=False)
            except STORAGE_ERRORS:
                trials = None  # the workers retry on their own; look again next time
            if trials is not None and any(seen.get(t.number) != t.state for t in trials):
                seen = {t.number: t.state for t in trials}
                on_change(trials)
            if not running:
                break
            time.sleep(POLL_S)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    for k, (process, log) in enumerate(workers):
        if process.returncode == EXIT_BAD_INPUT and not stopped:  # a full disk, a bad plug-in: the command's error
            raise HarnessError(last_error(log) or f"worker {k} ended with exit code 2; its log {log} could not say why")
        if process.returncode not in (0, None) and not stopped:
            last = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:] or [""]
            print(f"warning: worker {k} ended with exit code {process.returncode} (log: {log}): {last[0]}",
                  file=sys.stderr)  # fmt: skip
    return 128 + stopped[0] if stopped else 0


def last_error(log: Path) -> str | None:
    """The one-line error a worker printed last (None when its log has none: a full disk can refuse it)."""
    errors = [line for line in log.read_text(errors="replace").splitlines() if line.startswith("error: ")]
    return errors[-1].removeprefix("error: ") if errors else None
