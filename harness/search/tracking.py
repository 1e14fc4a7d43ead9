"""A sweep's or a search's parent run in MLflow: the command creates it (once per study: its id is a
user attribute of the study, so a re-run command or a second command on the same study continues
it) before its workers start, and hands its id to them in ``PARENT_RUN_ENV``; each run the workers
start is its child. Creating it opens the store first, so that the workers find it created."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy

from harness.config import Config
from harness.core.errors import HarnessError, redact
from harness.core.provenance import git_commit
from harness.search.storage import retrying
from harness.training.config import MlflowConfig
from harness.training.tracking import PARENT_RUN_ENV, MlflowRun, check_tracking, open_run, reason

PARENT_ATTR = "mlflow_run_id"


def same_database(url: str, other: str) -> bool:
    """Whether two database URLs name one database, whatever their drivers and credentials."""
    try:
        a, b = sqlalchemy.engine.make_url(url), sqlalchemy.engine.make_url(other)
    except sqlalchemy.exc.ArgumentError:  # a tracking server's http(s):// URL
        return False
    return (a.get_backend_name(), a.host, a.port, a.database) == (b.get_backend_name(), b.host, b.port, b.database)


def study_tracking(configs: Iterable[Config], kind: str, storage_url: str) -> MlflowConfig | None:
    """The store and the experiment of a study's runs, checked before the study's folder exists (one
    line when unusable); None when none of its runs is tracked. The experiment is the one the runs
    name (``logging.mlflow.experiment``, else their ``name``), or ``kind`` when they name several."""
    tracked = [cfg for cfg in configs if cfg.logging.mlflow is not None]
    if not tracked:
        return None
    stores = sorted({cfg.logging.mlflow.tracking_uri for cfg in tracked})
    if len(stores) > 1:
        raise HarnessError(f"logging.mlflow.tracking_uri: expected one MLflow store for the runs of a {kind}; "
                           f"its files name {' and '.join(map(redact, stores))}")  # fmt: skip
    if same_database(stores[0], storage_url):  # both keep their schema's version in a table alembic_version
        raise HarnessError(f"logging.mlflow.tracking_uri = {redact(stores[0])!r}: expected a database of its own, "
                           f"not the {kind}'s --storage")  # fmt: skip
    experiments = {cfg.logging.mlflow.experiment or cfg.name for cfg in tracked}
    experiment = experiments.pop() if len(experiments) == 1 else kind
    check_tracking(tracked[0].logging.mlflow, experiment, None)
    return tracked[0].logging.mlflow.model_copy(update={"experiment": experiment})


def open_parent(
    study: optuna.Study,
    storage_url: str,
    tracking: MlflowConfig | None,
    folder: Path,
    kind: str,
    params: dict[str, Any],
) -> MlflowRun | None:
    """The study's parent run in ``tracking`` (None without), marked running; created with ``params``
    when the study has none. The caller holds the storage's lock (``exclusive``): commands starting
    together create one."""
    if tracking is None:
        return None
    tags = {"kind": kind, "commit": git_commit(), "storage": redact(storage_url)}
    stored = retrying("reading the study", lambda: study.user_attrs.get(PARENT_ATTR))
    try:
        parent = open_run(tracking, tracking.experiment, folder, stored, None, params, tags)
    except HarnessError:
        raise
    except Exception as error:
        raise HarnessError(
            f"logging.mlflow: the {kind}'s parent run cannot be created in {redact(tracking.tracking_uri)} "
            f"({reason(error)})"
        ) from None
    retrying("keeping the MLflow run on the study", lambda: study.set_user_attr(PARENT_ATTR, parent.run_id))
    return parent


def worker_env(parent: MlflowRun | None) -> dict[str, str]:
    """What the workers' environment adds: the parent run of the runs they start."""
    return {PARENT_RUN_ENV: parent.run_id} if parent is not None else {}


def close_parent(parent: MlflowRun, files: Iterable[Path], figures: dict[str, float], code: int) -> None:
    """The parent's files (the study's outputs), figures and status from the command's exit ``code``."""
    parent.log_files(path for path in files if path.is_file())
    parent.log_metrics(figures, 0)
    parent.set_status("completed" if code == 0 else "interrupted" if code >= 128 else "failed")
