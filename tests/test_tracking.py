"""MLflow tracking (``logging.mlflow``) with the real client on real SQLite stores: every run,
parameter, metric and artifact read back through ``MlflowClient``, for a run killed and resumed, a
sweep and a 2-worker search; bad stores and experiments refused in one line before training; MLflow
failing mid-run costs a warning, never the run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import Run

from harness.config import config_from_dict
from harness.core.run_folder import read_csv_rows
from harness.core.yaml_io import read_yaml
from harness.run import main as run_main
from harness.training.tracking import EPOCH_METRICS, flatten, open_store
from harness.tune import main as tune_main
from tests.conftest import TINY, free_port, run_cli
from tests.test_tune import search_data, small_tune  # noqa: F401  (search_data: the fixture)


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory) -> Path:
    """An SQLite store with MLflow's tables: creating them takes some seconds, copying the file none."""
    path = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    open_store(f"sqlite:///{path}")
    return path


@pytest.fixture
def store(empty_store, tmp_path) -> str:
    """A store of this test's own: its URI."""
    path = tmp_path / "tracking" / "mlflow.db"
    path.parent.mkdir()
    shutil.copy(empty_store, path)
    return f"sqlite:///{path}"


def runs_in(store: str) -> dict[str, Run]:
    """Every run of every experiment in the store, by name."""
    client = MlflowClient(store)
    experiments = [e.experiment_id for e in client.search_experiments()]
    return {run.info.run_name: run for run in client.search_runs(experiments)}


def curve(store: str, run: Run, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in MlflowClient(store).get_metric_history(run.info.run_id, key))


def artifacts(store: str, run: Run) -> set[str]:
    return {a.path for a in MlflowClient(store).list_artifacts(run.info.run_id)}


def assert_tracks_its_folder(store: str, run: Run, run_dir: Path) -> None:
    """The MLflow run holds the folder's config as parameters, each epoch's metrics once at its
    iteration, the summary's figures and its status."""
    summary = json.loads((run_dir / "summary.json").read_text())
    assert run.info.run_id == summary["mlflow_run_id"]
    assert run.data.tags["status"] == summary["status"] and run.data.tags["run_dir"] == str(run_dir.resolve())
    assert {"commit", "device", "world_size"} <= run.data.tags.keys()
    config = flatten(read_yaml(run_dir / "config.yaml"))
    assert run.data.params.keys() == config.keys()
    assert {key: run.data.params[key] for key in ("name", "seed", "optimizer.lr", "train.epochs")} == {
        key: config[key] for key in ("name", "seed", "optimizer.lr", "train.epochs")
    }
    rows = read_csv_rows(run_dir / "metrics.csv")
    for key in EPOCH_METRICS:
        expected = [(int(row["iteration"]), pytest.approx(float(row[key]))) for row in rows if row[key]]
        assert curve(store, run, key) == expected, key
    assert run.data.metrics["final_val_acc"] == pytest.approx(summary["final_val_acc"])


def test_a_killed_and_resumed_run_is_one_mlflow_run(write_config, tmp_path, store):
    """kill -9 in epoch 2, then --resume: one MLflow run, each epoch once, its files beside the store."""
    config = write_config(
        {"train": {"epochs": 2}, "report": {"enabled": True}, "logging": {"mlflow": {"tracking_uri": store}}}
    )
    run_dir = tmp_path / "run"
    killed = run_cli(
        "iteration:12", str(config), "--out", str(run_dir), module="tests.kill_at"
    )  # 8 iterations an epoch
    assert killed.returncode == -9, killed.stderr[-2000:]
    [running] = runs_in(store).values()
    assert running.info.status == "RUNNING" and curve(store, running, "val_acc")[0][0] == 8
    resumed = run_cli("--resume", str(run_dir))
    assert resumed.returncode == 0 and "warning" not in resumed.stderr, resumed.stderr[-2000:]

    [run] = runs_in(store).values()
    assert run.info.run_id == running.info.run_id and run.info.status == "FINISHED"
    assert run.info.run_name == f"{tmp_path.name}/run"
    assert_tracks_its_folder(store, run, run_dir)
    assert artifacts(store, run) == {"config.yaml", "summary.json", "metrics.csv", "report.html"}
    stored = Path(store.removeprefix("sqlite:///")).parent / "mlflow-artifacts" / "tiny" / run.info.run_id
    assert (stored / "artifacts" / "summary.json").read_text() == (run_dir / "summary.json").read_text()


def test_mlflow_failing_mid_run_is_a_warning_and_the_end_logs_what_it_missed(
    write_config, tmp_path, store, monkeypatch, capsys
):
    config = write_config({"train": {"epochs": 2}, "logging": {"mlflow": {"tracking_uri": store}}})
    log_batch, failures = MlflowClient.log_batch, []

    def fail_at_the_first_epoch(self, run_id, metrics=(), **kwargs):
        if metrics and not failures:
            failures.append(run_id)
            raise OSError(28, "No space left on device")
        return log_batch(self, run_id, metrics=metrics, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_batch", fail_at_the_first_epoch)
    assert run_main([str(config), "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning: MLflow")]
    assert len(warnings) == 1 and "No space left on device" in warnings[0] and "the run goes on" in warnings[0], err
    [run] = runs_in(store).values()
    assert run.info.status == "FINISHED"
    assert_tracks_its_folder(store, run, tmp_path / "run")


def test_a_sweep_is_a_parent_with_a_child_per_run(write_config, tmp_path, store):
    config = write_config()
    sweep_dir = tmp_path / "sweep"
    args = [str(config), "--seeds", "0", "1", "--out", str(sweep_dir), "--set", f"logging.mlflow.tracking_uri={store}"]
    result = run_cli(*args, module="harness.sweep")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]

    runs = runs_in(store)
    parent = runs.pop(f"{tmp_path.name}/sweep")
    assert set(runs) == {"sweep/tiny-seed0", "sweep/tiny-seed1"}
    assert parent.data.tags["kind"] == "sweep" and parent.info.status == "FINISHED"
    assert parent.data.params["seeds"] == "[0, 1]"
    assert artifacts(store, parent) == {"compare.html", "leaderboard.csv"}
    for name, run in runs.items():
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.info.experiment_id == parent.info.experiment_id
        assert_tracks_its_folder(store, run, sweep_dir / name.split("/")[1])
        assert run.data.params["seed"] == name[-1]
        assert artifacts(store, run) == {"config.yaml", "summary.json", "metrics.csv"}


def test_a_two_worker_search_is_a_parent_with_a_child_per_trial(search_data, tmp_path):  # noqa: F811
    """``logging.mlflow=true`` in a folder with no store yet: the command creates results/mlflow.db
    before its two workers start (their first use would race on MLflow's schema migration); then the
    confirmation is a parent of its own."""
    out = tmp_path / "study"
    store = f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}"
    args = [*small_tune(search_data, out, 3), "logging.mlflow=true", "--workers", "2"]
    result = run_cli(*args, module="harness.tune", timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]

    runs = runs_in(store)
    parent = runs.pop(f"{tmp_path.name}/study")
    assert parent.data.tags["kind"] == "search" and parent.info.status == "FINISHED"
    assert parent.data.params["trials"] == "3" and "space.optimizer.lr.low" in parent.data.params
    assert artifacts(store, parent) == {"trials.csv", "study.html", "best.yaml"}
    trials = {row["run_dir"]: row for row in read_csv_rows(out / "trials.csv")}
    assert sorted(runs) == sorted(f"study/{Path(folder).name}" for folder in trials) and len(runs) == 3
    assert parent.data.metrics["final_val_acc"] == pytest.approx(max(float(row["value"]) for row in trials.values()))
    for name, run in runs.items():
        trial = trials[str(out / name.split("/")[1])]
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.info.experiment_id == parent.info.experiment_id
        assert run.data.tags["status"] == {"complete": "completed", "pruned": "pruned"}[trial["state"]]
        assert float(run.data.params["optimizer.lr"]) == pytest.approx(float(trial["optimizer.lr"]))
        assert_tracks_its_folder(store, run, Path(trial["run_dir"]))
        assert artifacts(store, run) == {"config.yaml", "summary.json", "metrics.csv"}  # a trial writes no report
    logs = "".join(log.read_text() for log in (out / "logs").glob("worker-*.log"))
    assert "warning: MLflow" not in logs, logs[-3000:]

    confirmed = run_cli(*args, "--confirm", "1", "--seeds", "0", module="harness.tune", timeout=600, cwd=tmp_path)
    assert confirmed.returncode == 0, confirmed.stdout[-2000:] + confirmed.stderr[-3000:]
    after = runs_in(store)
    [confirmation] = [run for name, run in after.items() if name == "study/confirm"]
    assert confirmation.data.tags["kind"] == "sweep" and confirmation.info.status == "FINISHED"
    assert artifacts(store, confirmation) == {"compare.html", "leaderboard.csv"}
    children = [run for run in after.values() if run.data.tags.get("mlflow.parentRunId") == confirmation.info.run_id]
    assert len(children) == len(read_csv_rows(out / "confirm" / "leaderboard.csv")) >= 1
    for child in children:
        assert {"config.yaml", "summary.json", "metrics.csv", "report.html"} <= artifacts(store, child)


def test_bad_stores_and_experiments_are_one_line_before_training(write_config, tmp_path, store, capsys):
    MlflowClient(store).delete_experiment(MlflowClient(store).create_experiment("gone"))
    blocked = tmp_path / "file"
    blocked.write_text("")
    cases = {
        f"http://127.0.0.1:{free_port()}": (None, "cannot be opened ([Errno 111] Connection refused)"),
        f"sqlite:///{blocked}/mlflow.db": (None, "cannot be opened"),
        store: ("gone", "logging.mlflow.experiment = 'gone': deleted in"),
    }
    for uri, (experiment, expected) in cases.items():
        config = write_config({"logging": {"mlflow": {"tracking_uri": uri, "experiment": experiment}}})
        assert run_main([str(config), "--out", str(tmp_path / "run")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("error: ") and expected in err, err
        assert not (tmp_path / "run").exists()


def test_a_search_with_an_unusable_store_is_one_line_before_its_folder(search_data, tmp_path, capsys):  # noqa: F811
    out, shared = tmp_path / "study", f"sqlite:///{tmp_path / 'shared.db'}"
    cases = {
        (f"http://127.0.0.1:{free_port()}",): "cannot be opened ([Errno 111] Connection refused)",
        (shared, "--storage", shared): "expected a database of its own, not the search's --storage",
    }
    for (uri, *more), expected in cases.items():
        assert tune_main([*small_tune(search_data, out, 1), f"logging.mlflow.tracking_uri={uri}", *more]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "logging.mlflow.tracking_uri" in err and expected in err, err
        assert not out.exists() and not (tmp_path / "shared.db").exists()


@pytest.mark.parametrize(
    "setting, expected",
    [
        ("logging.mlflow=yes", "logging.mlflow = 'yes': expected true, false or a mapping"),
        ("logging.mlflow.tracking_uri=file:///tmp/x", "expected sqlite:///PATH, postgresql://"),
        ("logging.mlflow.experiment=a/b", "logging.mlflow.experiment = 'a/b': expected a name of letters"),
    ],
)
def test_bad_settings_are_one_line(setting, expected, write_config, tmp_path, capsys):
    assert run_main([str(write_config()), "--set", setting, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err


def test_the_default_store_is_results_mlflow_db_of_the_working_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = config_from_dict(TINY, ["logging.mlflow=true"])
    assert cfg.logging.mlflow.tracking_uri == f"sqlite:///{tmp_path.resolve() / 'results' / 'mlflow.db'}"
    assert cfg.logging.mlflow.experiment is None  # the config's name, or the parent run's experiment
