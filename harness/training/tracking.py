"""A run tracked in MLflow (``logging.mlflow``), written by rank 0 through Ignite's ``MLflowLogger``:
the config as parameters, each epoch's metrics at its iteration, the summary's figures, the run's
files as artifacts, and tags that say where and how it ran, its ``status`` kept current.

- **The store** is first opened under a lock beside an SQLite file: MLflow creates its tables on
  first use, and two processes creating them at once fail. An unreachable store or a deleted
  experiment is one line before training (``check_tracking``). An experiment keeps its files in
  ``mlflow-artifacts/`` beside the SQLite file (in ``results/`` with PostgreSQL; a server keeps
  them itself), never in the ``./mlruns`` of wherever a process started.
- **One run per run folder**: its MLflow run id is kept in summary.json; a resumed run continues it,
  logging the epochs MLflow lacks (those logged before a kill and past the checkpoint are kept).
- **A child run** (a sweep's run, a search's trial) names its parent in ``PARENT_RUN_ENV``, set by
  the command for its workers, and goes into its parent's experiment.
- **MLflow failing never costs the run**: past the start, the first failure is one warning and the
  run goes on untracked; the run folder keeps everything, and the run's next start (``--resume``),
  or its end, logs what MLflow missed.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ignite.engine import Engine, Events
from ignite.handlers.mlflow_logger import MLflowLogger

from harness.core import atomic_io
from harness.core.errors import HarnessError, redact
from harness.core.run_folder import RunFiles, read_csv_rows
from harness.training.config import MlflowConfig, sqlite_file

if TYPE_CHECKING:
    from mlflow import MlflowClient

PARENT_RUN_ENV = "HARNESS_MLFLOW_PARENT_RUN"
REACH_TIMEOUT_S = 5
ARTIFACTS_FOLDER = "mlflow-artifacts"  # beside an SQLite store: the experiments' files, never ./mlruns
EPOCH_METRICS = ("lr", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc",
                 "epoch_time_s", "train_images_per_s")  # fmt: skip
SUMMARY_FIGURES = ("epochs_completed", "best_val_acc", "best_epoch", "final_val_acc", "final_val_loss",
                   "final_test_acc", "final_test_loss", "total_time_s", "num_params", "analysis_accuracy", "ece", "nll",
                   "temperature", "ece_scaled", "nll_scaled")  # fmt: skip
RUN_STATES = {"completed": "FINISHED", "pruned": "FINISHED", "diverged": "FAILED", "failed": "FAILED",
              "interrupted": "KILLED", "running": "RUNNING"}  # fmt: skip
MAX_PARAM_CHARS = 6000  # MLflow refuses a longer parameter value


def reason(error: BaseException) -> str:
    """An error in a few words: the operating system's reason when there is one (connection refused)."""
    text = str(error)
    found = re.search(r"\[Errno -?\d+\] [^\"')\n]+", text)
    return found.group(0) if found else f"{type(error).__name__}: {text.strip().splitlines()[0][:200] if text else ''}"


def run_name(folder: Path) -> str:
    """A run's name in MLflow: the last two parts of its folder (``resnet18/20250101T120000Z``, ``tune/trial-0003``)."""
    return "/".join(Path(folder).resolve().parts[-2:])


def flatten(node: Any, prefix: str = "") -> dict[str, str]:
    """A nested config as dotted keys and their values in words (``optimizer.lr: '0.2'``)."""
    if isinstance(node, dict) and node:
        flat: dict[str, str] = {}
        for key, value in node.items():
            flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    text = str(node)
    return {prefix: text if len(text) <= MAX_PARAM_CHARS else text[: MAX_PARAM_CHARS - 1] + "…"}


# ---------------------------------------------------------------- the store


def _check_reachable(uri: str) -> None:
    """Fail within ``REACH_TIMEOUT_S`` when nothing answers at ``uri``: MLflow's own client retries a
    server, or a database, for minutes."""
    if uri.startswith(("http://", "https://")):
        from mlflow.utils.credentials import get_default_host_creds
        from mlflow.utils.rest_utils import http_request

        endpoint = "/api/2.0/mlflow/experiments/search"
        http_request(get_default_host_creds(uri), endpoint, "GET", max_retries=0, timeout=REACH_TIMEOUT_S,
                     raise_on_status=False, params={"max_results": 1})  # fmt: skip
    elif not uri.startswith("sqlite:"):
        import sqlalchemy

        engine = sqlalchemy.create_engine(uri, poolclass=sqlalchemy.pool.NullPool,
                                          connect_args={"connect_timeout": REACH_TIMEOUT_S})  # fmt: skip
        try:
            engine.connect().close()
        finally:
            engine.dispose()


def open_store(uri: str) -> MlflowClient:
    """A client of the store at ``uri``, its tables created and migrated (once: under a lock beside an
    SQLite file, so that processes starting together do not migrate it at the same time)."""
    try:
        from mlflow import MlflowClient
    except ImportError:
        raise HarnessError(
            "logging.mlflow: MLflow's client is not installed; expected mlflow-skinny (pip install mlflow-skinny, "
            "or the harness's [mlflow] extra)"
        ) from None
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # our lines say what happens
    file = sqlite_file(uri)
    try:
        _check_reachable(uri)
        if file is None:
            client = MlflowClient(uri)
            client.search_experiments(max_results=1)
        else:
            with atomic_io.locked(file.with_name(f"{file.name}.lock")):
                if not file.is_file():
                    print(f"MLflow: creating the store {file} (once, some seconds)", flush=True)
                client = MlflowClient(uri)
                client.search_experiments(max_results=1)
    except Exception as error:  # MLflow's, SQLAlchemy's, the network's or the file system's
        raise HarnessError(
            f"logging.mlflow.tracking_uri = {redact(uri)!r}: cannot be opened ({reason(error)}); expected a store "
            "this machine reaches and may write"
        ) from None
    return client


def artifact_location(uri: str, experiment: str) -> str | None:
    """Where a new experiment keeps its files: beside an SQLite store, in ``results/`` of the working
    folder beside a database server (MLflow's default is ``./mlruns`` of wherever the process started);
    None for a tracking server, which keeps them itself."""
    if uri.startswith(("http://", "https://")):
        return None
    file = sqlite_file(uri)
    folder = file.parent if file is not None else Path("results").resolve()
    return str(folder / ARTIFACTS_FOLDER / experiment)


def experiment_id(client: MlflowClient, uri: str, name: str) -> str:
    """The experiment ``name`` (created when missing); a deleted one is refused."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is None:
        try:
            return client.create_experiment(name, artifact_location=artifact_location(uri, name))
        except MlflowException as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            found = client.get_experiment_by_name(name)  # another process created it meanwhile
    if found.lifecycle_stage == "deleted":
        raise HarnessError(
            f"logging.mlflow.experiment = {name!r}: deleted in {redact(uri)}; expected a live experiment "
            f"(restore it: mlflow experiments restore --experiment-id {found.experiment_id}, or name another)"
        )
    return found.experiment_id


def check_tracking(settings: MlflowConfig, name: str, parent: str | None) -> None:
    """Before training: the store opens, and the run's experiment (``settings.experiment`` or ``name``;
    its ``parent`` run's, when it has one) is usable; one line otherwise."""
    client = open_store(settings.tracking_uri)
    try:
        if parent is not None:
            client.get_run(parent)
        else:
            experiment_id(client, settings.tracking_uri, settings.experiment or name)
    except HarnessError:
        raise
    except Exception as error:
        what = f"the parent run {parent}" if parent else f"logging.mlflow.experiment = {settings.experiment or name!r}"
        raise HarnessError(f"{what}: cannot be used in {redact(settings.tracking_uri)} ({reason(error)})") from None


# ---------------------------------------------------------------- one run


class MlflowRun(MLflowLogger):
    """One MLflow run written through a client bound to its id: Ignite's ``MLflowLogger`` (handlers
    attached to an engine log through ``log_metrics``), and the run's parameters, tags, rows of
    metrics, files and end. Every call swallows MLflow's failures: the first is one warning, then
    the run goes on without MLflow."""

    def __init__(self, client: MlflowClient, run_id: str, uri: str) -> None:
        # Not MLflowLogger.__init__: it starts or joins mlflow's one process-wide active run, while a
        # search's worker runs one run after another and the Python API may run beside a user's own.
        self.client, self.run_id, self.uri = client, run_id, uri
        self.failed = False
        self.logged_steps: set[int] | None = None  # the iterations whose epoch MLflow holds, read when first needed

    def guarded(self, what: str, call: Callable[[], Any]) -> None:
        if self.failed:
            return
        try:
            call()
        except Exception as error:  # a locked or full database, a server gone: the run goes on
            self.failed = True
            print(
                f"warning: MLflow ({redact(self.uri)}): {what} failed ({reason(error)}); the run goes on without "
                "MLflow (its folder keeps everything; its next start or end logs what MLflow missed)",
                file=sys.stderr,
                flush=True,
            )

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """What Ignite's handlers call."""
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        batch = [Metric(key, float(value), stamp, step or 0) for key, value in metrics.items()]
        self.guarded(f"logging step {step}", lambda: self.client.log_batch(self.run_id, metrics=batch))

    def log_params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        batch = [Param(key, value) for key, value in params.items()]
        self.guarded("logging the parameters", lambda: self.client.log_batch(self.run_id, params=batch))

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        batch = [RunTag(key, str(value)) for key, value in tags.items()]
        self.guarded("setting the tags", lambda: self.client.log_batch(self.run_id, tags=batch))

    def log_rows(self, rows: Iterable[dict[str, Any]]) -> None:
        """The epochs of ``rows`` (metrics.csv's) that MLflow lacks, each at its iteration."""
        if self.logged_steps is None:
            self.guarded("reading the logged epochs", self._read_logged_steps)
        if self.failed:
            return
        for row in rows:
            step = int(row["iteration"])
            if step not in self.logged_steps:
                measured = {key: float(row[key]) for key in EPOCH_METRICS if row.get(key) not in (None, "")}
                self.log_metrics(measured, step)
                self.logged_steps.add(step)

    def _read_logged_steps(self) -> None:
        self.logged_steps = {m.step for m in self.client.get_metric_history(self.run_id, "train_loss")}

    def attach_to(self, trainer: Engine, rows: Callable[[], list[dict[str, Any]]]) -> None:
        """Log each epoch's metrics once its row is written (attach after the evaluation that writes it)."""
        self.attach(trainer, lambda engine, logger, event: logger.log_rows(rows()), Events.EPOCH_COMPLETED)

    def log_files(self, paths: Iterable[Path], folder: str | None = None) -> None:
        for path in paths:
            store = functools.partial(self.client.log_artifact, self.run_id, str(path), folder)
            self.guarded(f"storing {path.name}", store)

    def set_status(self, status: str) -> None:
        """The run's ``status`` tag, and MLflow's state of the run for it (RUNNING again while it goes on)."""
        self.set_tags({"status": status})
        state = RUN_STATES.get(status, "FAILED")
        if state == "RUNNING":
            self.guarded("marking the run running", lambda: self.client.update_run(self.run_id, status=state))
        else:
            self.guarded("ending the run", lambda: self.client.set_terminated(self.run_id, state))

    def close(self) -> None:
        """Nothing to release; MLflowLogger's would end mlflow's process-wide active run (``set_status`` ends ours)."""


def open_run(
    settings: MlflowConfig,
    experiment: str,
    folder: Path,
    run_id: str | None,
    parent: str | None,
    params: dict[str, Any],
    tags: dict[str, Any],
) -> MlflowRun:
    """The MLflow run of ``folder`` (a run's, a sweep's or a search's), marked running: ``run_id`` when
    the store holds it, else a new run in ``experiment`` (in its ``parent``'s, as its child, when given)
    with ``params`` flattened. MLflow's errors here are raised; from here on they are warnings."""
    from mlflow.exceptions import MlflowException

    uri = settings.tracking_uri
    client = open_store(uri)
    if run_id is not None:
        try:
            client.get_run(run_id)
        except MlflowException as error:
            if error.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            run_id = None  # the store was replaced: a new run
    new = run_id is None
    if new:
        into = client.get_run(parent).info.experiment_id if parent else experiment_id(client, uri, experiment)
        family = {"mlflow.parentRunId": parent} if parent else {}
        run_id = client.create_run(into, run_name=run_name(folder), tags=family).info.run_id
    run = MlflowRun(client, run_id, uri)
    if new:  # once: MLflow refuses a parameter's value changed (a command run again with other arguments)
        run.logged_steps = set()
        run.log_params(flatten(params))
    run.set_tags({**tags, "run_dir": str(Path(folder).resolve())})
    run.set_status("running")
    return run


def start_run(
    settings: MlflowConfig,
    name: str,
    run_dir: Path,
    run_id: str | None,
    parent: str | None,
    params: dict[str, Any],
    tags: dict[str, Any],
) -> MlflowRun | None:
    """``open_run`` for a harness run (its experiment ``settings.experiment`` or ``name``); None, after
    one warning, when MLflow fails now: the run goes on."""
    try:
        return open_run(settings, settings.experiment or name, run_dir, run_id, parent, params, tags)
    except Exception as error:
        print(f"warning: MLflow ({redact(settings.tracking_uri)}): starting the run failed ({reason(error)}); the "
              "run goes on without MLflow", file=sys.stderr, flush=True)  # fmt: skip
        return None


def reopen_run(settings: MlflowConfig, run_id: str) -> MlflowRun | None:
    """The run ``run_id`` again (after the training's processes ended); None, after one warning, when MLflow fails."""
    try:
        return MlflowRun(open_store(settings.tracking_uri), run_id, settings.tracking_uri)
    except HarnessError as error:
        print(f"warning: MLflow: {error}; the run's files are not stored in it", file=sys.stderr, flush=True)
        return None


def summary_figures(summary: dict[str, Any]) -> dict[str, float]:
    """The figures summary.json holds of what the run found (``SUMMARY_FIGURES``, those it has)."""
    return {key: float(summary[key]) for key in SUMMARY_FIGURES if isinstance(summary.get(key), int | float)}


def finish_run(run: MlflowRun, run_dir: Path) -> None:
    """What a run ends with: its epochs MLflow missed, the summary's figures, its files (config.yaml,
    summary.json, metrics.csv, report.html, the analysis figures), its status."""
    files = RunFiles(run_dir)
    summary = files.read_summary()
    if files.metrics.is_file():
        run.log_rows(read_csv_rows(files.metrics))
    run.log_metrics(summary_figures(summary), 0)
    run.log_files(p for p in (files.config, files.summary, files.metrics, files.report) if p.is_file())
    run.log_files(sorted(files.analysis.glob("*.png")), "analysis")
    run.set_status(summary.get("status") or "failed")


def env_parent() -> str | None:
    """The parent run a sweep's or a search's command gave its workers."""
    return os.environ.get(PARENT_RUN_ENV) or None
