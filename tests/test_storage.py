"""The study's storage under many workers: every PostgreSQL URL spelling users write, a queued trial
taken by exactly one of the workers that ask for it at the same instant (SQLite and PostgreSQL), and
8 worker processes on one SQLite study (the engine with a stand-in for the runs, so a trial takes
well under a second)."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy.exc
from optuna.trial import TrialState

from harness.bench.engine import engine_search, run_workers, stand_in_run
from harness.core.errors import HarnessError
from harness.search.engine import OptunaReporter, work
from harness.search.plans import SearchPlan
from harness.search.space import HeartbeatConfig
from harness.search.storage import default_storage, exclusive, open_storage, open_study, retrying
from harness.tune import main as tune_main
from tests.postgres import PostgresServer

FORK = multiprocessing.get_context("fork")  # the askers share this process's imports: no start-up each


@pytest.fixture(scope="module")
def postgres():
    server = PostgresServer().start()
    yield server
    server.stop()


def test_every_postgresql_url_spelling_opens_the_study(postgres, tmp_path):
    """``postgresql://`` (what Optuna's and SQLAlchemy's docs show: SQLAlchemy 2.1 maps it to psycopg 3),
    ``postgresql+psycopg://`` and ``postgresql+psycopg2://``, each with a worker running trials."""
    assert postgres.url.startswith("postgresql://")
    for driver in ("", "+psycopg", "+psycopg2"):
        url = postgres.url.replace("postgresql://", f"postgresql{driver}://")
        storage = open_storage(url, HeartbeatConfig())
        assert storage.engine.dialect.driver == (driver.lstrip("+") or "psycopg")
        out = tmp_path / f"spelling{driver}"
        out.mkdir()
        search = engine_search(out, 2)
        study = open_study(storage, f"spelling{driver}", SearchPlan.kind, "maximize")
        assert work(study, SearchPlan(search, out, []), 1, run=stand_in_run(0.0)) == 0
        assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE] * 2


@pytest.mark.parametrize(
    "url, expected",
    [
        ("mysql://user@host/db", "expected sqlite:///PATH or postgresql://user:password@host/db"),
        ("sqlite://", "expected sqlite:///PATH or postgresql://"),
        ("not a url", "not a database URL"),
    ],
)
def test_a_storage_url_that_no_worker_could_share_is_one_line(url, expected, tmp_path, capsys):
    search = engine_search(tmp_path, 1)
    assert tune_main([str(search.path), "--storage", url, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err


def test_sqlite_that_stays_locked_says_to_use_postgresql():
    def locked() -> None:
        raise sqlalchemy.exc.OperationalError("UPDATE trials", {}, Exception("database is locked"))

    with pytest.raises(HarnessError, match="give them a PostgreSQL --storage"):
        retrying("telling trial 3", locked)


# ---------------------------------------------------------------- one queued trial, many askers


def _ask(url: str, rounds: int, ready, results) -> None:
    storage = open_storage(url, HeartbeatConfig())
    for round_ in range(rounds):
        study = optuna.load_study(study_name=f"round{round_}", storage=storage)
        ready.wait()
        trial = study.ask()
        results.put((round_, bool(study._storage.get_trial(trial._trial_id).user_attrs.get("baseline"))))


def askers_taking_the_baseline(url: str, askers: int, rounds: int) -> list[int]:
    """``rounds`` studies, each with its baseline queued; ``askers`` processes ask each study at the same
    instant. How many askers were given the baseline, per round."""
    storage = open_storage(url, HeartbeatConfig())
    for round_ in range(rounds):
        study = optuna.create_study(study_name=f"round{round_}", storage=storage)
        study.enqueue_trial({"x": 1.0}, user_attrs={"baseline": True})
    storage.engine.dispose()  # no connection of this process is carried into the askers
    ready, results = FORK.Barrier(askers), FORK.Queue()
    processes = [FORK.Process(target=_ask, args=(url, rounds, ready, results)) for _ in range(askers)]
    for process in processes:
        process.start()
    taken = [0] * rounds
    for _ in range(askers * rounds):
        round_, baseline = results.get(timeout=60)
        taken[round_] += baseline
    for process in processes:
        process.join()
        assert process.exitcode == 0
    return taken


def test_a_queued_trial_is_taken_by_one_of_two_workers_on_sqlite(tmp_path):
    """Two workers ask for the queued baseline at the same instant, 100 times: each time exactly one of
    them gets it (with sqlite3's own transactions, both did in about half the rounds)."""
    assert askers_taking_the_baseline(default_storage(tmp_path, "study"), 2, 100) == [1] * 100


def test_a_queued_trial_is_taken_by_one_of_four_workers_on_postgresql(postgres):
    assert askers_taking_the_baseline(postgres.url, 4, 20) == [1] * 20


# ---------------------------------------------------------------- many workers on one SQLite study


def assert_each_trial_ran_once(url: str, search, out: Path, result: dict) -> list[optuna.trial.FrozenTrial]:
    """Every worker ended well and said nothing of a locked database; ``search.trials`` complete trials,
    each in its own run folder (the stand-in refuses a folder made twice), the baseline one of them."""
    logs = "".join(result["logs"])
    assert result["exit_codes"] == [0] * len(result["exit_codes"]), logs[-3000:]
    assert "database is locked" not in logs and "Traceback" not in logs and "warning" not in logs, logs[-3000:]
    study = optuna.load_study(study_name=search.name, storage=url)
    trials = study.get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == search.trials
    assert all(t.user_attrs.get("surplus") for t in trials if t.state != TrialState.COMPLETE), "nothing else"
    folders = [t.user_attrs["run_dir"] for t in complete]
    assert len(set(folders)) == len(folders) and all(Path(f).is_dir() for f in folders)
    assert sorted(p.name for p in out.glob("trial-*")) == sorted(Path(f).name for f in folders)
    assert [t.number for t in trials if t.user_attrs.get("baseline")] == [0]
    return complete


def test_eight_workers_on_one_sqlite_study(tmp_path):
    """8 worker processes, trials of 0.1 s: no "database is locked", no trial run twice or lost (16 and 32:
    ``python -m harness.bench engine --engine-workers 32``)."""
    search = engine_search(tmp_path, 48)
    url = default_storage(tmp_path, "study")
    result = run_workers(search, tmp_path, url, 8, run_s=0.1)
    complete = assert_each_trial_ran_once(url, search, tmp_path, result)
    assert len({t.user_attrs["pid"] for t in complete}) >= 4, "the workers shared the trials"


@pytest.mark.parametrize("where", ["sqlite", "postgresql"])
def test_the_storage_lock_is_held_by_one_process_at_a_time(where, tmp_path, request):
    """What happens once per study (the tables, the baseline, a sweep's queue) happens under this lock."""
    url = default_storage(tmp_path, "study") if where == "sqlite" else request.getfixturevalue("postgres").url
    held, released_at = FORK.Event(), FORK.Value("d", 0.0)

    def hold() -> None:
        with exclusive(url):
            held.set()
            time.sleep(0.5)
            released_at.value = time.time()

    holder = FORK.Process(target=hold)
    holder.start()
    assert held.wait(30)
    with exclusive(url):
        acquired_at = time.time()
    holder.join()
    assert acquired_at >= released_at.value > 0


# ---------------------------------------------------------------- a trial another worker finished


@pytest.mark.parametrize("then", ["reports an epoch", "tells its result"])
def test_a_worker_whose_trial_another_finished_moves_on(then, tmp_path, capsys):
    """Another worker fails this worker's trial mid-run (as it does to a trial whose heartbeat it took
    for dead): the next report or the told result finds the trial finished. The worker says so and
    runs the rest of the study; before, it died of UpdateFinishedTrialError."""
    search = engine_search(tmp_path, 3)
    url = default_storage(tmp_path, "study")
    study = open_study(open_storage(url, search.spec.heartbeat), search.name, SearchPlan.kind, "maximize")
    elsewhere = open_storage(url, search.spec.heartbeat)
    runs = []

    def run(job, trial, metric: str) -> dict:
        runs.append(trial.number)
        if len(runs) == 1:
            elsewhere.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            if then == "reports an epoch":
                OptunaReporter(trial, metric).report({"accuracy": 0.5}, 1)
        return {"status": "completed", "final_val_acc": 0.5, "epochs_completed": 1}

    assert work(study, SearchPlan(search, tmp_path, []), 1, run=run) == 0
    assert f"warning: trial {runs[0]} was finished by another worker; moving on" in capsys.readouterr().err
    states = [t.state for t in study.get_trials()]
    assert states == [TrialState.FAIL] + [TrialState.COMPLETE] * 3, "the failed trial's budget went to a new one"
