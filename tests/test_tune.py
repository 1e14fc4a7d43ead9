"""Searches as users run them: the shipped search file at test size, on 2 worker processes sharing a
real storage (SQLite; PostgreSQL in tests/test_tune_postgres.py), with a worker killed mid-trial,
SIGTERM, pruning, the study's outputs and the confirmation on the test set."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import ignite.distributed as idist
import pandas as pd
import pytest
import torch
import yaml
from ignite.engine import Engine

from harness.core.run_folder import RunLock
from harness.search.space import load_search
from harness.training.pruning import attach_pruning
from harness.tune import main as tune_main
from tests.conftest import (
    CIFAR10_CLASSES,
    EXPERIMENTS,
    REPO,
    data_overrides,
    free_port,
    make_image_folder,
    run_cli,
    subprocess_env,
)
from tests.postgres import PostgresServer

SEARCH = EXPERIMENTS / "search" / "resnet18_cpu.yaml"
# The shipped search's size, changed: a narrow model, 3 epochs (the first successive-halving rung), and
# 4 misclassified images explained by each confirmation run's analysis.
SEARCH_SMALL = ["model.width=8", "train.epochs=3", "data.eval_batch_size=50", "analysis.misclassified=4"]


@pytest.fixture(scope="session")
def search_data(tmp_path_factory) -> Path:
    """30 training images a class (270 train, 30 validation): enough for the searched batch of 256."""
    return make_image_folder(tmp_path_factory.mktemp("search_data"), 30, 5, CIFAR10_CLASSES, ".jpg")


def tune_args(data: Path, out: Path, *more: str, search: Path | None = None) -> list[str]:
    search = search or sized_search(out.parent)
    return [str(search), "--out", str(out), *more, "--set", *data_overrides(data), *SEARCH_SMALL]


def sized_search(folder: Path, fast_heartbeat: bool = False, **changes) -> Path:
    """The shipped search at the tests' size: its pruning rung after epoch 1 of 3 (shipped: 9 of 15);
    with ``fast_heartbeat`` a 1 s heartbeat and 4 s grace, so a killed worker's trial is retried soon."""
    raw = yaml.safe_load(SEARCH.read_text())
    raw["pruner"] = {**raw["pruner"], "min_epochs": 1}
    raw.update(changes)
    raw["base"] = str((SEARCH.parent / raw["base"]).resolve())
    if fast_heartbeat:
        raw["heartbeat"] = {"interval_s": 1, "grace_s": 4}
    raw["name"] = "resnet18_cpu"  # the shipped file's study name (its file name)
    path = folder / "search.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def faults_search(folder: Path) -> Path:
    """For the fault tests: pruning only at the last epoch, so a trial runs long enough to be killed."""
    return sized_search(folder, fast_heartbeat=True, pruner={"name": "successive_halving", "min_epochs": 3})


def start_tune(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "harness.tune", *args],
        cwd=REPO,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def study_trials(out: Path, storage: str | None = None) -> list[dict]:
    """The trials in the study's storage (the SQLite file in ``out`` by default), read as another process would."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        study = optuna.load_study(study_name="resnet18_cpu", storage=storage or f"sqlite:///{out / 'study.db'}")
    except KeyError:  # not created yet
        return []
    return [{"number": t.number, "state": t.state.name, "user_attrs": t.user_attrs} for t in study.get_trials()]


def wait_for_running_trial_with_checkpoint(
    out: Path, process: subprocess.Popen, storage: str | None = None, timeout: float = 240
) -> dict:
    """A running trial whose run folder holds its first epoch's checkpoint: a kill there loses work."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert process.poll() is None, process.communicate()[1][-3000:]
        if storage or (out / "trials.csv").exists():
            for trial in study_trials(out, storage):
                run_dir = trial["user_attrs"].get("run_dir")
                if trial["state"] == "RUNNING" and run_dir and list(Path(run_dir).glob("checkpoints/checkpoint_*.pt")):
                    return trial
        time.sleep(0.2)
    raise AssertionError("no trial reached a checkpoint in time")


def assert_finished_once_each(out: Path, trials: int) -> pd.DataFrame:
    """trials.csv: ``trials`` complete or pruned rows, each in its own run folder, each folder's summary agreeing."""
    table = pd.read_csv(out / "trials.csv")
    done = table[table["state"].isin(["complete", "pruned"])]
    assert len(done) == trials, table
    assert done["run_dir"].is_unique, "no run folder finished twice"
    for row in done.itertuples():
        summary = json.loads((Path(row.run_dir) / "summary.json").read_text())
        assert summary["status"] == {"complete": "completed", "pruned": "pruned"}[row.state]
        if row.state == "complete":
            assert row.value == pytest.approx(summary["final_val_acc"]), "the objective is validation accuracy"
        epochs = [int(r) for r in pd.read_csv(Path(row.run_dir) / "metrics.csv")["epoch"]]
        assert epochs == list(range(1, len(epochs) + 1)), "each epoch logged once"
    return table


@pytest.fixture(scope="module")
def study_dir(search_data, tmp_path_factory) -> Path:
    """The done-when search: the shipped search file, 2 workers, 6 trials, on tiny settings."""
    out = tmp_path_factory.mktemp("tune") / "study"
    result = run_cli(
        *tune_args(search_data, out, "--trials", "6", "--workers", "2"), module="harness.tune", timeout=600
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    return out


def test_two_workers_six_trials_write_the_outputs(study_dir, search_data, tmp_path):
    table = assert_finished_once_each(study_dir, 6)
    assert len(table) == 6 and set(table["state"]) <= {"complete", "pruned"}
    assert list(table.columns[:6]) == ["number", "state", "value", "epochs", "time_s", "run_dir"]
    assert {"optimizer.lr", "data.batch_size", "scheduler.warmup_epochs"} <= set(table.columns), (
        "a column per parameter"
    )
    base = yaml.safe_load(SEARCH.parent.joinpath("../resnet18_cpu.yaml").read_text())
    first = table.set_index("number").loc[0]
    assert (first["optimizer.lr"], first["data.batch_size"]) == (base["optimizer"]["lr"], base["data"]["batch_size"])
    assert first["train.label_smoothing"] == base["train"]["label_smoothing"], "trial 0 is the recipe itself"
    pids = {t["user_attrs"]["pid"] for t in study_trials(study_dir)}
    assert len(pids) == 2, "both workers ran trials"
    for _, row in table.iterrows():  # a trial is a run: config, metrics, summary, checkpoints
        for name in ("config.yaml", "metrics.csv", "summary.json"):
            assert (Path(row["run_dir"]) / name).is_file()
        config = yaml.safe_load((Path(row["run_dir"]) / "config.yaml").read_text())
        assert config["optimizer"]["lr"] == pytest.approx(row["optimizer.lr"]), "the run used the trial's parameters"
        assert config["data"]["batch_size"] == row["data.batch_size"]
        assert config["analysis"]["enabled"] is False and config["report"]["enabled"] is False
    html = (study_dir / "study.html").read_text()
    for section in ("history", "importance", "slice", "curves", "trials"):
        assert f'id="{section}"' in html
    assert html.count("data:image/png;base64,") >= 3

    best = yaml.safe_load((study_dir / "best.yaml").read_text())
    top = table[table["state"] == "complete"].sort_values("value", ascending=False).iloc[0]
    assert best["optimizer"]["lr"] == pytest.approx(top["optimizer.lr"])
    assert best["analysis"]["enabled"] is True, "the best trial as an experiment: its analysis and report on"
    run = run_cli(str(study_dir / "best.yaml"), "--out", str(tmp_path / "best"), timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]


def test_study_html_renders_in_chromium(study_dir, tmp_path):
    from tests.test_report_browser import CHROMIUM, open_in_chromium

    assert CHROMIUM is not None, "Debian's chromium is not installed (.ci/run installs it)"
    widths, headings, errors = open_in_chromium(study_dir / "study.html", tmp_path / "study.png")
    assert len(widths) >= 3 and all(w > 0 for w in widths), widths
    assert headings == ["summary", "history", "importance", "slice", "curves", "trials"]
    assert errors == []


def test_rerunning_continues_the_study_then_confirms_the_best_on_the_test_set(study_dir, search_data):
    args = tune_args(search_data, study_dir, "--trials", "7", "--confirm", "1", "--seeds", "0", "1")
    result = run_cli(*args, module="harness.tune", timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    table = assert_finished_once_each(study_dir, 7)
    assert sorted(table["number"]) == list(range(7)), "one more trial, the six before untouched"

    confirm = study_dir / "confirm"
    board = pd.read_csv(confirm / "leaderboard.csv")
    best = table[table["state"] == "complete"].sort_values("value", ascending=False).iloc[0]
    baseline = table.set_index("number").loc[0]  # the recipe: re-run beside the best, unless it is the best
    with_baseline = baseline["state"] == "complete" and best["number"] != 0
    assert len(board) == 1 + with_baseline and set(board["n_runs"]) == {2}
    if with_baseline:
        assert (
            "resnet18_cpu-baseline" in set(board["group"]) and "resnet18_cpu-baseline (the reference)" in result.stdout
        )
    assert "confirmation: " in result.stdout
    runs = sorted(p for p in confirm.iterdir() if (p / "summary.json").is_file() and "baseline" not in p.name)
    assert [r.name[-6:] for r in runs] == ["-seed0", "-seed1"]
    summaries = [json.loads((r / "summary.json").read_text()) for r in runs]
    mine = board.set_index("group").loc[runs[0].name[: -len("-seed0")]]
    assert mine["mean_acc"] == pytest.approx(sum(s["final_test_acc"] for s in summaries) / 2), "on test"
    for run in runs:
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert config["optimizer"]["lr"] == pytest.approx(best["optimizer.lr"]), "the best trial's config"
        assert (run / "report.html").is_file() and (run / "analysis" / "per_class.csv").is_file()


def test_a_worker_killed_mid_trial_is_retried_from_its_checkpoint(search_data, tmp_path):
    out = tmp_path / "study"
    tune = start_tune(tune_args(search_data, out, "--trials", "4", "--workers", "2", search=faults_search(tmp_path)))
    victim = wait_for_running_trial_with_checkpoint(out, tune)
    os.kill(victim["user_attrs"]["pid"], signal.SIGKILL)
    stdout, stderr = tune.communicate(timeout=600)
    assert tune.returncode == 0, stdout[-2000:] + stderr[-3000:]
    table = assert_finished_once_each(out, 4)
    retried = table[table["state"] == "retried"]
    assert retried["number"].tolist() == [victim["number"]], table
    [retry] = table[table["retry_of"] == victim["number"]].itertuples()
    assert retry.state in ("complete", "pruned") and retry.run_dir == victim["user_attrs"]["run_dir"]
    summary = json.loads((Path(retry.run_dir) / "summary.json").read_text())
    assert summary["resumed_from"], "the retry resumed the folder from its checkpoint"
    said = f"trial {victim['number']}: stopped, continued by trial {retry.number} from its run folder"
    assert said in stdout and f"trial {victim['number']}: failed" not in stdout, stdout
    last_status = [line for line in stdout.splitlines() if re.match(r"trials: \d+ of \d+ done", line)][-1]
    assert ", 0 failed," in last_status, "the killed worker's trial is not a failure"


def test_postgres_two_workers_one_killed_and_the_database_restarted(search_data, tmp_path):
    """Many machines share a study through PostgreSQL: here two workers, one killed with kill -9 mid-trial,
    then the database restarted under the study. Every trial is accounted for once."""
    server = PostgresServer().start()
    try:
        out = tmp_path / "study"
        args = tune_args(search_data, out, "--trials", "4", "--workers", "2", "--storage", server.url,
                         search=faults_search(tmp_path))  # fmt: skip
        tune = start_tune(args)
        victim = wait_for_running_trial_with_checkpoint(out, tune, server.url)
        os.kill(victim["user_attrs"]["pid"], signal.SIGKILL)
        server.restart()
        stdout, stderr = tune.communicate(timeout=600)
        assert tune.returncode == 0, stdout[-2000:] + stderr[-3000:]
        assert "Traceback" not in stderr
        table = assert_finished_once_each(out, 4)
        assert table[table["state"] == "retried"]["number"].tolist() == [victim["number"]], table
        assert not (out / "study.db").exists(), "the study lives in PostgreSQL"
        assert len([t for t in study_trials(out, server.url) if not t["user_attrs"].get("surplus")]) == len(table)
    finally:
        server.stop()


def test_sigterm_interrupts_and_a_rerun_resumes(search_data, tmp_path):
    """On a grid (its two batch sizes): Optuna's grid sampler stops a study when its grid is used up,
    which outside ``optimize()`` would raise from ``tell``, and an interrupted trial must still be queued."""
    out = tmp_path / "study"
    grid = {
        "space": {"data.batch_size": {"type": "categorical", "choices": [128, 256]}},
        "sampler": {"name": "grid"},
        "baseline_first": False,
    }
    args = tune_args(search_data, out, search=sized_search(tmp_path, True, trials=None, **grid))
    tune = start_tune(args)
    victim = wait_for_running_trial_with_checkpoint(out, tune)
    tune.send_signal(signal.SIGTERM)
    _, stderr = tune.communicate(timeout=300)
    assert tune.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert "Traceback" not in stderr
    table = pd.read_csv(out / "trials.csv")
    assert table.set_index("number").loc[victim["number"], "state"] == "interrupted"
    assert json.loads((Path(victim["user_attrs"]["run_dir"]) / "summary.json").read_text())["status"] == "interrupted"
    again = run_cli(*args, module="harness.tune", timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    table = assert_finished_once_each(out, 2)
    resumed = table[table["run_dir"] == victim["user_attrs"]["run_dir"]]
    assert set(resumed["state"]) == {"interrupted", "complete"} or set(resumed["state"]) == {"interrupted", "pruned"}
    assert json.loads((Path(victim["user_attrs"]["run_dir"]) / "summary.json").read_text())["resumed_from"]


SMALL_SPACE = {
    "optimizer.lr": {"type": "float", "low": 0.05, "high": 0.3, "log": True},
    "data.batch_size": {"type": "categorical", "choices": [128, 256]},
}


def small_tune(data: Path, out: Path, trials: int) -> list[str]:
    """The shipped search over the learning rate and batch only, its trials of one epoch without warm-up
    or pruning (a few seconds each), a waiting worker looking again every second."""
    search = sized_search(out.parent, True, space=SMALL_SPACE, pruner={"name": "none"})
    return [str(search), "--out", str(out), "--trials", str(trials), "--set", *data_overrides(data), "model.width=8",
            "train.epochs=1", "scheduler.warmup_epochs=0", "data.eval_batch_size=50",
            "analysis.misclassified=4"]  # fmt: skip


def test_two_commands_started_together_on_a_new_study_share_it(search_data, tmp_path):
    """Two ``harness.tune`` commands reach the same new SQLite study at the same instant (each with a
    worker): one baseline is queued, every trial runs once in its own folder, neither command fails."""
    out = tmp_path / "study"
    args = small_tune(search_data, out, 2)
    at = time.time() + 10  # after both have imported the harness
    commands = [
        subprocess.Popen([sys.executable, "-m", "tests.start_at", str(at), "harness.tune", *args], cwd=REPO,
                         env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]  # fmt: skip
    for command in commands:
        stdout, stderr = command.communicate(timeout=600)
        assert command.returncode == 0, stdout[-2000:] + stderr[-3000:]
        assert "Traceback" not in stderr and "warning" not in stderr, stderr[-3000:]
    table = assert_finished_once_each(out, 2)
    base = yaml.safe_load(SEARCH.parent.joinpath("../resnet18_cpu.yaml").read_text())
    lr, batch = base["optimizer"]["lr"], base["data"]["batch_size"]
    recipe = table[(table["optimizer.lr"] == lr) & (table["data.batch_size"] == batch)]
    assert recipe["number"].tolist() == [0], "one baseline, trial 0"
    logs = "".join(log.read_text() for log in (out / "logs").glob("worker-*.log"))
    assert "database is locked" not in logs and "in use by another" not in logs, logs[-3000:]


def test_confirm_without_trials_confirms_what_exists_beside_the_baseline(search_data, tmp_path):
    """A 2-trial study confirmed without --trials: no trial added (the file asks for 10), the best and
    the baseline re-run over a seed on the test set, and the first sentence says which leads."""
    out = tmp_path / "study"
    assert run_cli(*small_tune(search_data, out, 2), module="harness.tune").returncode == 0
    args = [a for a in small_tune(search_data, out, 2) if a not in ("--trials", "2")]
    result = run_cli(*args, "--confirm", "1", "--seeds", "0", module="harness.tune")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "note: --confirm without --trials confirms the 2 finished trials; the file asks for 10" in result.stdout
    assert len(assert_finished_once_each(out, 2)) == 2, "no trial added"
    board = pd.read_csv(out / "confirm" / "leaderboard.csv")
    table = pd.read_csv(out / "trials.csv").sort_values("value", ascending=False)
    assert len(board) == (1 if table["number"].iloc[0] == 0 else 2)
    said = result.stdout.split("confirmation: ")[1].splitlines()[0]
    assert board["group"].iloc[0] in said.split(" leads ")[0] and ("(the reference)" in said or len(board) == 1)
    html = (out / "study.html").read_text()
    assert "0 (baseline)" in html and "baseline (the recipe), trial 0" in html
    assert not re.search(r"\d\.\d{5,}", html.split('id="trials"')[1]), "numbers at 3 significant figures"


def test_a_pruner_that_can_never_fire_is_named(tmp_path):
    search = load_search(
        sized_search(tmp_path, pruner={"name": "successive_halving", "min_epochs": 3}), extra=SEARCH_SMALL
    )
    said = search.pruner_warning(SEARCH_SMALL)
    assert "never stops a trial: its first decision comes after epoch 3 (pruner.min_epochs)" in said
    assert load_search(sized_search(tmp_path), extra=SEARCH_SMALL).pruner_warning(SEARCH_SMALL) is None


def test_a_backgrounded_command_stops_on_sigint(search_data, tmp_path):
    """A script that starts harness.tune in the background (bash ignores SIGINT in such jobs, and the
    workers inherit it): kill -INT still stops the command and its workers, and a rerun resumes."""
    out = tmp_path / "study"
    args = " ".join(map(shlex.quote, tune_args(search_data, out, search=faults_search(tmp_path))))
    script = f"{shlex.quote(sys.executable)} -m harness.tune {args} & echo $! > {tmp_path / 'pid'}; wait $!; echo rc=$?"
    shell = subprocess.Popen(["bash", "-c", script], cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    wait_for_running_trial_with_checkpoint(out, shell)
    os.kill(int((tmp_path / "pid").read_text()), signal.SIGINT)
    stdout, stderr = shell.communicate(timeout=300)
    assert f"rc={128 + signal.SIGINT}" in stdout, stdout[-2000:] + stderr[-3000:]
    assert "Traceback" not in stderr
    assert "interrupted" in set(pd.read_csv(out / "trials.csv")["state"])


def test_a_study_that_lost_its_baseline_says_so(search_data, tmp_path):
    """The baseline's run fails (here its folder is held by another harness.run): the search goes on,
    then the command says the study has no baseline, exits 1, and study.html says it too."""
    out = tmp_path / "study"
    held = RunLock(out / "trial-0000")
    (out / "trial-0000").mkdir(parents=True)
    held.acquire()
    try:
        result = run_cli(*small_tune(search_data, out, 1), module="harness.tune")
    finally:
        held.release()
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the baseline (trial 0, the base's own values) failed:") and "in use by" in last
    assert "The baseline (trial 0, the base's own values) failed" in (out / "study.html").read_text()
    assert assert_finished_once_each(out, 1)["number"].tolist() == [0, 1]


BAD_SEARCHES = [
    ({"space": {"optimizer.lrr": {"type": "float", "low": 0.1, "high": 0.2}}}, "unknown key 'optimizer.lrr'"),
    ({"space": {"optimizer.lr": {"type": "float", "low": 0.2, "high": 0.1}}}, "expected low < high"),
    ({"space": {"optimizer.lr": {"type": "float", "low": 0.0, "high": 0.1, "log": True}}}, "expected low > 0"),
    ({"space": {"optimizer.lr": {"type": "gauss", "low": 0.0}}}, "expected a mapping with type: float, int or"),
    ({"space": {"optimizer.lr": {"type": "float", "low": "a", "high": 1}}}, "space.optimizer.lr.low = 'a'"),
    ({"space": {"optimizer.lr": {"type": "float", "low": 0.1, "high": 5.0, "lo": 1}}}, "unknown key"),
    ({"space": {"train.epochs": {"type": "int", "low": 0, "high": 3}}}, "space.train.epochs = 0:"),
    ({"space": {"data.batch_size": {"type": "categorical", "choices": []}}}, "space.data.batch_size.choices"),
    ({"objective": {"metric": "final_test_acc"}}, "objective.metric = 'final_test_acc': expected one of"),
    ({"sampler": {"name": "grid"}}, "the grid sampler needs type: categorical"),
    ({"pruner": {"name": "hyperband"}}, "pruner.name = 'hyperband'"),
    ({"trials": 0}, "trials = 0: expected a value >= 1"),
    ({"trial_overrides": {"data.val_size": 0}}, "data.val_size = 0: a search reads the validation split"),
    ({"base": "missing.yaml"}, "base = 'missing.yaml': expected an experiment file"),
    ({"spaces": {}}, "unknown key 'spaces'"),
    (
        {"space": {"optimizer.lr": {"type": "float", "low": 0.2, "high": 0.3}}},
        "baseline_first: the base's optimizer.lr = 0.1 lies outside space.optimizer.lr",
    ),
    (
        {"sampler": {"name": "grid"}, "space": {"data.batch_size": {"type": "categorical", "choices": [128, 256]}}},
        "baseline_first = true: the grid sampler runs every point already",
    ),
]


@pytest.mark.parametrize("change, expected", BAD_SEARCHES, ids=[b[1][:40] for b in BAD_SEARCHES])
def test_a_bad_search_file_is_one_line_before_any_trial(change, expected, tmp_path, capsys):
    raw = yaml.safe_load(SEARCH.read_text())
    raw["base"] = str((SEARCH.parent / raw["base"]).resolve())
    raw.update(change)
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert tune_main([str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"error: {path}") and expected in err, err
    assert not (tmp_path / "out").exists()


def test_bad_command_lines_are_one_line(tmp_path, capsys):
    cases = [
        ([str(SEARCH), "--set", "optimizer.lr=0.1"], "optimizer.lr is searched"),
        ([str(SEARCH), "--workers", "0"], "--workers 0: expected at least 1"),
        ([str(tmp_path / "none.yaml")], "config file not found"),
    ]
    for argv, expected in cases:
        assert tune_main([*argv, "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expected in err, err
    assert not (tmp_path / "out").exists()


def test_an_unreachable_storage_is_one_line(search_data, tmp_path):
    url = f"postgresql://nobody@127.0.0.1:{free_port()}/none"
    result = run_cli(*tune_args(search_data, tmp_path / "out", "--storage", url), module="harness.tune", timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: storage unreachable")


# ---------------------------------------------------------------- pruning under several processes


class PruneAt:
    def __init__(self, epoch: int) -> None:
        self.epoch, self.seen = epoch, []

    def report(self, val_metrics: dict, epoch: int) -> bool:
        self.seen.append((epoch, val_metrics["accuracy"]))
        return epoch >= self.epoch


def _prune_in_process(local_rank: int, result_file: str) -> None:
    trainer = Engine(lambda engine, batch: None)
    evaluator = Engine(lambda engine, batch: None)
    evaluator.state.metrics = {"accuracy": 0.5}
    reporter = PruneAt(2) if idist.get_rank() == 0 else None  # rank 0 alone talks to the study
    attach_pruning(trainer, evaluator, reporter)
    trainer.run([0, 1, 2], max_epochs=5)
    epochs = idist.all_gather(torch.tensor([trainer.state.epoch]))
    if idist.get_rank() == 0:
        Path(result_file).write_text(json.dumps({"epochs": epochs.tolist(), "seen": reporter.seen}))


def test_rank_0_decides_and_every_rank_stops_together(tmp_path):
    out = tmp_path / "result.json"
    with idist.Parallel(backend="gloo", nproc_per_node=2, master_port=free_port()) as parallel:
        parallel.run(_prune_in_process, str(out))
    result = json.loads(out.read_text())
    assert result["epochs"] == [2, 2], "both ranks stopped after epoch 2"
    assert result["seen"] == [[1, 0.5], [2, 0.5]]


def test_a_pruned_run_says_so_and_keeps_its_metrics(write_config, tmp_path):
    from harness import load_config, run_experiment

    config = write_config({"train": {"epochs": 4}})
    reporter = PruneAt(2)
    result = run_experiment(load_config(config), tmp_path / "run", trial=reporter)
    assert result.status == "pruned" and result.exit_code == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "pruned" and summary["pruned_at_epoch"] == 2
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert metrics["epoch"].tolist() == [1, 2]
    assert [accuracy for _, accuracy in reporter.seen] == pytest.approx(metrics["val_acc"].tolist(), abs=1e-6)


def test_each_worker_and_each_start_of_the_command_draws_its_own_trials():
    import optuna

    from harness.search.space import load_search
    from harness.tune import build_sampler

    search = load_search(SEARCH)

    def first_draw(worker: int, trials_so_far: int) -> float:
        study = optuna.create_study(sampler=build_sampler(search, worker, trials_so_far), direction="maximize")
        return search.suggest(study.ask())["optimizer.lr"]

    draws = {first_draw(w, n) for w in (0, 1) for n in (0, 6)}
    assert len(draws) == 4, "a second worker, or a re-run of the command, must not repeat the first trials"
    assert first_draw(1, 6) == first_draw(1, 6), "and each is reproducible"


def test_the_status_line_counts_the_trials_names_the_best_and_spreads_the_eta_over_the_workers():
    from datetime import datetime, timedelta

    from optuna.trial import FrozenTrial, TrialState

    from harness.search.progress import StudyStatus, counted

    now = datetime(2026, 1, 1, 12)

    def trial(number: int, state: TrialState, seconds: float, value: float | None = None, **attrs) -> FrozenTrial:
        start = now - timedelta(seconds=seconds)
        end = now if state != TrialState.RUNNING else None
        return FrozenTrial(number, state, value, start, end, {}, {}, attrs, {}, {}, number)

    trials = [
        trial(0, TrialState.COMPLETE, 600, 0.80),
        trial(1, TrialState.PRUNED, 300),
        trial(2, TrialState.COMPLETE, 600, 0.8123),
        trial(3, TrialState.FAIL, 10),
        trial(4, TrialState.FAIL, 10, interrupted=True),  # queued again as trial 5
        trial(5, TrialState.RUNNING, 100),
        trial(6, TrialState.RUNNING, 900),  # past the mean of 500 s: about to end
    ]
    status = StudyStatus("trials", 10, [t for t in trials if counted(t)], metric="final_val_acc")
    # 5 trials still to start at 500 s and 400 s left of trial 5, on 2 workers: (2,500 + 400) / 2 s.
    assert status.line(workers=2, now=now) == (
        "trials: 3 of 10 done (1 pruned), 1 failed, 2 running, best final_val_acc 0.8123 (trial 2), ETA 24 min"
    )
