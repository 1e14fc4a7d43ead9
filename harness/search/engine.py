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
- A storage that goes away: every call is retried for ``STORAGE_WAIT_S``; after that, one line. A
  result is told in one transaction, so a trial is recorded whole or not at all.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import optuna
import sqlalchemy.exc
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from harness.config import Config
from harness.core.errors import HarnessError
from harness.core.provenance import git_commit
from harness.core.run_folder import RunFiles
from harness.core.yaml_io import read_yaml_or_empty
from harness.runner.experiment import run_experiment
from harness.search.space import HeartbeatConfig

STORAGE_WAIT_S = 120.0  # how long a worker keeps retrying a storage that went away
POLL_S = 2.0
T = TypeVar("T")
STORAGE_ERRORS = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    optuna.exceptions.StorageInternalError,
)


# ---------------------------------------------------------------- storage


def default_storage(out: Path, kind: str) -> str:
    return f"sqlite:///{(out / f'{kind}.db').resolve()}"


def retrying(what: str, call: Callable[[], T], wait_s: float = STORAGE_WAIT_S) -> T:
    """``call()``, retried while the storage is unreachable; a HarnessError once ``wait_s`` has passed."""
    deadline, warned = time.monotonic() + wait_s, False
    while True:
        try:
            return call()
        except STORAGE_ERRORS as error:
            reason = str(error).strip().splitlines()[0][:200]
            if time.monotonic() > deadline:
                raise HarnessError(f"storage unreachable for {wait_s:.0f} s while {what} ({reason})") from None
            if not warned:
                print(f"warning: storage unreachable while {what} ({reason}); retrying", file=sys.stderr, flush=True)
                warned = True
            time.sleep(2.0)


def open_storage(url: str, heartbeat: HeartbeatConfig) -> RDBStorage:
    """An RDB storage with heartbeats; a stale trial is retried (its intermediate values kept)."""
    # Heartbeats, their retry callback and fail_stale_trials are "experimental" in Optuna 5 (since 2.8);
    # and we ask and tell with our own heartbeat, since Study.optimize's thread dies at the first storage error.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}  # reconnect after a database restart
    if url.startswith("sqlite"):
        engine_kwargs["connect_args"] = {"timeout": 60}  # several worker processes share one file
    try:
        return retrying(
            f"opening {url}",
            lambda: RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat.interval_s,
                grace_period=heartbeat.grace_s,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
                    max_retry=heartbeat.max_retry, inherit_intermediate_values=True
                ),
            ),
            wait_s=10.0,
        )
    except (ValueError, ImportError, sqlalchemy.exc.ArgumentError, sqlalchemy.exc.NoSuchModuleError) as error:
        raise HarnessError(f"--storage {url}: cannot be opened ({str(error).splitlines()[0]})") from None


def open_study(
    storage: RDBStorage,
    name: str,
    kind: str,
    direction: str,
    sampler: optuna.samplers.BaseSampler | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
) -> optuna.Study:
    """Create the study, or join it; a study of another kind or direction under that name is refused."""
    study = retrying(
        f"opening study {name!r}",
        lambda: optuna.create_study(
            storage=storage,
            study_name=name,
            direction=direction,
            sampler=sampler,
            pruner=pruner,
            load_if_exists=True,
        ),
    )
    found = study.user_attrs.get("kind")
    if found is None:
        retrying("marking the study", lambda: study.set_user_attr("kind", kind))
    elif found != kind:
        raise HarnessError(f"study {name!r} in this storage is a {found}, not a {kind}: choose another --out or name")
    if study.direction.name.lower() != direction:
        raise HarnessError(f"study {name!r} in this storage is to {study.direction.name.lower()}, not to {direction}")
    return study


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
            except STORAGE_ERRORS:
                pass  # the next beat tries again; the trial's calls print the outage
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
        retrying(f"recording trial {trial.number}", lambda: trial.set_user_attr("interrupted", True))
        fail(study, trial)
        # Queued again with its folder (and nothing of this attempt's outcome): the next worker, or the
        # next command, resumes it.
        again = {**job.attrs, "run_dir": str(job.run_dir), "resumes": trial.number}
        retrying(f"queueing trial {trial.number} again", lambda: study.enqueue_trial(job.params, user_attrs=again))
        raise stop
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
    try:
        retrying(
            f"recording trial {trial.number}",
            lambda: study.tell(trial, value if told == TrialState.COMPLETE else None, state=told),
        )
    except optuna.exceptions.UpdateFinishedTrialError:
        # Given up as stale while the storage was away: its retry reads this finished folder.
        print(f"warning: trial {trial.number} was retried elsewhere; the retry reads {job.run_dir}", file=sys.stderr)
    return state


def fail(study: optuna.Study, trial: optuna.Trial) -> None:
    retrying(f"recording trial {trial.number}", lambda: study.tell(trial, state=TrialState.FAIL))


def discard_surplus(study: optuna.Study, trial: optuna.Trial) -> None:
    """A trial asked for beyond the plan: failed, marked surplus, never run (trials.csv leaves it out)."""
    retrying("recording a surplus trial", lambda: trial.set_user_attr("surplus", True))
    fail(study, trial)


def work(study: optuna.Study, plan: Plan, heartbeat_s: int, max_failures: int = 3, run: Runner = execute) -> int:
    """The worker loop: until the plan is done, ask for a trial and run it. Returns the exit code."""
    failures = 0
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM outside training: as Ctrl-C
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
                job = plan.job(study, trial)
            except Exception:
                fail(study, trial)
                raise
            if job is None:  # another worker took the last one between our look and our ask
                discard_surplus(study, trial)
                continue
            try:
                outcome = run_trial(study, plan, trial, job, run)
            except Interrupted as stop:
                print(f"trial {trial.number} interrupted; run the same command again to resume it", flush=True)
                return 128 + stop.signum
        print(f"trial {trial.number}: {outcome} ({job.run_dir})", flush=True)
        plan.after(job)
        failures = failures + 1 if outcome == "failed" and not plan.failure_ends_trial() else 0
        if failures >= max_failures:
            print(f"error: {failures} trials in a row failed; stopping (see the runs' summary.json)", file=sys.stderr)
            return 1


# ---------------------------------------------------------------- workers on this machine


def worker_environments(count: int) -> list[dict[str, str]]:
    """One environment per worker: a GPU each when there are GPUs, else an equal share of the cores."""
    import torch

    base = dict(os.environ)
    gpus = torch.cuda.device_count()
    if gpus:
        visible = base.get("CUDA_VISIBLE_DEVICES", ",".join(map(str, range(gpus)))).split(",")
        return [{**base, "CUDA_VISIBLE_DEVICES": visible[k % len(visible)]} for k in range(count)]
    threads = str(max(1, (os.cpu_count() or 1) // count))
    return [{**base, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads} for _ in range(count)]


def start_workers(command: list[str], count: int, log_dir: Path) -> list[tuple[subprocess.Popen, Path]]:
    """``count`` worker processes of ``command`` (``--as-worker K`` appended), each logging to its own file."""
    log_dir.mkdir(parents=True, exist_ok=True)
    workers = []
    for k, env in enumerate(worker_environments(count)):
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
        if process.returncode not in (0, None) and not stopped:
            print(f"warning: worker {k} ended with exit code {process.returncode} (log: {log})", file=sys.stderr)
    return 128 + stopped[0] if stopped else 0
