"""The study's storage, shared by every worker: an SQLite file (the default, one machine) or a
PostgreSQL database (many machines). Opened here so that any number of workers can share it.

- The URLs: ``sqlite:///PATH``, and PostgreSQL as users write it: ``postgresql://`` (SQLAlchemy's
  default driver, psycopg 3), ``postgresql+psycopg://`` or ``postgresql+psycopg2://``. Anything else
  is one line.
- **A trial is taken by one worker.** Optuna's ``ask`` takes a queued (WAITING) trial by reading its
  state and setting it RUNNING in one transaction, and every other update of a trial (telling a
  result, failing a stale one) reads it in the transaction that writes it. PostgreSQL reads it with
  ``SELECT ... FOR UPDATE``, which locks the row: a second worker waits, then reads RUNNING and moves
  on. SQLite has no row locks, and Python's sqlite3 starts a transaction only at its first write, so
  two workers could both read WAITING and both run the trial. Here every SQLite transaction starts
  with ``BEGIN IMMEDIATE``, which takes the file's write lock before the first read: each of those
  read-then-write steps runs alone, as under PostgreSQL's row lock. No transaction then holds a read
  lock while it waits for the write lock (the deadlock SQLite answers at once with "database is
  locked"): a worker waits its turn, up to ``SQLITE_WAIT_S``, and past that SQLite cannot hold the
  load and one line says to use PostgreSQL. The SQLite file is in WAL mode with synchronous=NORMAL:
  a commit no longer waits for the disk (a trial's engine time went from 290 to 65 ms); a kill -9
  loses nothing, a power cut at most the last commits, never the file. WAL wants its workers on one
  machine, as SQLite's locking does anyway: workers on several machines share a PostgreSQL study.
- **What happens once per study** (creating the tables, queueing the baseline or a sweep's runs)
  happens under ``exclusive(url)``: a lock on a file beside the SQLite file, or a PostgreSQL advisory
  lock. The holder's death, even by kill -9, drops either.
- **A storage that goes away** (a database restart): every call is retried for ``STORAGE_WAIT_S``;
  after that, one line.
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import optuna
import sqlalchemy
import sqlalchemy.exc
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

from harness.core import atomic_io
from harness.core.errors import HarnessError
from harness.core.full_disk import DiskFullError, full_disk_reason
from harness.search.space import HeartbeatConfig

STORAGE_WAIT_S = 120.0  # how long a worker keeps retrying a storage that went away
SQLITE_WAIT_S = 60.0  # how long a worker waits for an SQLite file's write lock
POSTGRES_LOCK = 0x6861726E657373  # the advisory lock ``exclusive`` takes ("harness")
URL_FORMS = "sqlite:///PATH or postgresql://user:password@host/db"
T = TypeVar("T")
STORAGE_ERRORS = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    optuna.exceptions.StorageInternalError,
)


def default_storage(out: Path, kind: str) -> str:
    return f"sqlite:///{(out / f'{kind}.db').resolve()}"


def sqlite_path(url: str) -> Path | None:
    """The file of an SQLite URL; None for a PostgreSQL one; one line for anything else."""
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise HarnessError(f"--storage {url}: not a database URL (expected {URL_FORMS})") from None
    if parsed.get_backend_name() == "postgresql":
        return None
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        return Path(parsed.database)
    raise HarnessError(f"--storage {url}: expected {URL_FORMS} (a database every worker can reach)")


def retrying(what: str, call: Callable[[], T], wait_s: float = STORAGE_WAIT_S) -> T:
    """``call()``, retried while the storage is unreachable; a HarnessError once ``wait_s`` has passed."""
    deadline, warned = time.monotonic() + wait_s, False
    while True:
        try:
            return call()
        except STORAGE_ERRORS as error:
            reason = str(error).strip().splitlines()[0][:200]
            if "database is locked" in reason:  # SQLite's write lock, waited for SQLITE_WAIT_S already
                raise HarnessError(
                    f"the SQLite storage stayed locked for {SQLITE_WAIT_S:.0f} s while {what}: more workers "
                    "than one SQLite file serves; give them a PostgreSQL --storage (postgresql://user@host/db)"
                ) from None
            if time.monotonic() > deadline:
                raise HarnessError(f"storage unreachable for {wait_s:.0f} s while {what} ({reason})") from None
            if not warned:
                print(f"warning: storage unreachable while {what} ({reason}); retrying", file=sys.stderr, flush=True)
                warned = True
            time.sleep(2.0)


@contextmanager
def exclusive(url: str) -> Iterator[None]:
    """One process at a time, on any machine, for what must happen once per storage."""
    path = sqlite_path(url)
    if path is not None:
        with atomic_io.locked(path.with_name(f"{path.name}.lock")):
            yield
        return
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with retrying(f"connecting to {url}", engine.connect, wait_s=10.0) as connection:
            connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": POSTGRES_LOCK})
            yield
            connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": POSTGRES_LOCK})
    finally:
        engine.dispose()


def share_sqlite(engine: sqlalchemy.engine.Engine) -> None:
    """Every transaction of ``engine`` (SQLite) starts with BEGIN IMMEDIATE (SQLAlchemy's recipe for
    taking over sqlite3's transaction control): the write lock is taken before the first read. And the
    file is in WAL mode with synchronous=NORMAL: a commit does not wait for the disk."""

    def no_implicit_begin(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # sqlite3 emits no BEGIN of its own; COMMIT still works
        dbapi_connection.execute("PRAGMA journal_mode=WAL")
        dbapi_connection.execute("PRAGMA synchronous=NORMAL")

    def immediate(connection: sqlalchemy.engine.Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    sqlalchemy.event.listen(engine, "connect", no_implicit_begin)
    sqlalchemy.event.listen(engine, "begin", immediate)
    engine.dispose()  # the connections Optuna opened before the listeners are closed; new ones have them


def report_full_sqlite_file(context: sqlalchemy.engine.ExceptionContext) -> None:
    """SQLite's "database or disk is full" as the one-line error naming the file, never retried:
    waiting frees no space."""
    url = context.engine.url if context.engine is not None else None
    reason = full_disk_reason(context.original_exception)
    if url is not None and url.get_backend_name() == "sqlite" and reason:
        raise DiskFullError(url.database, reason)


def open_storage(url: str, heartbeat: HeartbeatConfig) -> RDBStorage:
    """The storage, its tables created once (under ``exclusive``), with heartbeats; a stale trial is
    retried, its intermediate values kept."""
    # Heartbeats, their retry callback and fail_stale_trials are "experimental" in Optuna 5 (since 2.8);
    # and we ask and tell with our own heartbeat, since Study.optimize's thread dies at the first storage error.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
    sqlite = sqlite_path(url) is not None
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}  # reconnect after a database restart
    if not sqlalchemy.event.contains(sqlalchemy.engine.Engine, "handle_error", report_full_sqlite_file):
        sqlalchemy.event.listen(sqlalchemy.engine.Engine, "handle_error", report_full_sqlite_file)  # before any table
    if sqlite:
        engine_kwargs["connect_args"] = {"timeout": SQLITE_WAIT_S}

    def create() -> RDBStorage:
        with exclusive(url):
            return RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat.interval_s,
                grace_period=heartbeat.grace_s,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
                    max_retry=heartbeat.max_retry, inherit_intermediate_values=True
                ),
            )

    try:
        storage = retrying(f"opening {url}", create, wait_s=10.0)
    except (ValueError, ImportError, sqlalchemy.exc.ArgumentError, sqlalchemy.exc.NoSuchModuleError) as error:
        raise HarnessError(f"--storage {url}: cannot be opened ({str(error).splitlines()[0]})") from None
    if sqlite:
        share_sqlite(storage.engine)
    return storage


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
