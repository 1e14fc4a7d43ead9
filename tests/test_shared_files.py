"""The files several workers rewrite as their runs finish (a sweep's compare.html and leaderboard.csv, a
search's trials.csv, study.html and best.yaml): a kill -9 at any moment leaves the previous complete
version, and two workers finishing at once take turns, the last showing every run."""

from __future__ import annotations

import multiprocessing
import os
import random
import shutil
import signal
import time
from pathlib import Path

import pandas as pd
import yaml

import harness.sweep
from harness.bench.engine import engine_search, stand_in_run
from harness.core import atomic_io
from harness.search.engine import work
from harness.search.plans import SearchPlan, SweepRun
from harness.search.storage import default_storage, open_storage, open_study
from harness.search.study_report import write_outputs
from harness.sweep import comparison

FORK = multiprocessing.get_context("fork")


def sweep_runs(analyzed_run: Path, sweep_dir: Path, copies: int) -> list[SweepRun]:
    """``copies`` seeds of one experiment, each folder a copy of the analyzed run."""
    runs = [SweepRun(analyzed_run / "config.yaml", seed, sweep_dir / f"cpu-seed{seed}") for seed in range(copies)]
    for run in runs:
        shutil.copytree(analyzed_run, run.run_dir)
    return runs


def test_two_workers_finishing_at_once_leave_the_comparison_of_every_run(analyzed_run, tmp_path):
    """Worker A starts its comparison with one run finished, and renders slowly; meanwhile worker B's
    run finishes and B writes its comparison of both. A's older comparison must not land over B's."""
    sweep_dir = tmp_path / "sweep"
    first, second = sweep_runs(analyzed_run, sweep_dir, 2)
    shutil.rmtree(second.run_dir)  # B's run, not finished yet
    rendering = FORK.Event()

    def worker_a() -> None:
        render = harness.sweep.render_comparison

        def slow_render(run_dirs: list[Path], out: Path, **options) -> Path:
            rendering.set()
            time.sleep(2.0)
            return render(run_dirs, out, **options)

        harness.sweep.render_comparison = slow_render
        comparison([first, second], sweep_dir)

    a = FORK.Process(target=worker_a)
    a.start()
    assert rendering.wait(60)
    shutil.copytree(analyzed_run, second.run_dir)
    comparison([first, second], sweep_dir)  # worker B
    a.join()
    assert a.exitcode == 0
    assert pd.read_csv(sweep_dir / "leaderboard.csv")["n_runs"].tolist() == [2], "the last comparison has both runs"
    html = (sweep_dir / "compare.html").read_text()
    assert "cpu-seed0" in html and "cpu-seed1" in html


def complete(path: Path) -> bool:
    """Whether the file is one whole version of itself."""
    text = path.read_text()
    if path.suffix == ".html":
        return text.rstrip().endswith("</html>")
    if path.suffix == ".csv":
        return text.endswith("\n") and len(pd.read_csv(path)) > 0
    return "name" in yaml.safe_load(text)


def test_a_kill_at_any_moment_leaves_the_previous_complete_files(analyzed_run, tmp_path):
    """A process rewrites the five files over and over and is killed with kill -9 at random moments:
    each file is always whole, and the killed writer's lock does not block the next one."""
    sweep_dir, study_dir = tmp_path / "sweep", tmp_path / "study"
    runs = sweep_runs(analyzed_run, sweep_dir, 2)
    study_dir.mkdir()
    search = engine_search(study_dir, 3)
    url = default_storage(study_dir, "study")
    study = open_study(open_storage(url, search.spec.heartbeat), search.name, SearchPlan.kind, "maximize")
    assert work(study, SearchPlan(search, study_dir, []), 1, run=stand_in_run(0.0)) == 0
    files = [sweep_dir / "compare.html", sweep_dir / "leaderboard.csv"]
    files += [study_dir / name for name in ("trials.csv", "study.html", "best.yaml")]

    def rewrite() -> None:
        comparison(runs, sweep_dir)
        with atomic_io.one_writer(study_dir):
            write_outputs(study, search, study_dir, url, [])

    def rewrite_forever() -> None:
        while True:
            rewrite()

    rewrite()
    assert all(complete(path) for path in files)
    study._storage._backend.engine.dispose()  # no connection of this process is carried into the writers
    moments = random.Random(0)
    for _ in range(8):
        writer = FORK.Process(target=rewrite_forever)
        writer.start()
        time.sleep(moments.uniform(0.1, 3.0))
        os.kill(writer.pid, signal.SIGKILL)
        writer.join()
        for path in files:
            assert complete(path), f"{path} is cut short"
