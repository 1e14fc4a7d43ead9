"""The sweep: experiments x seeds in one folder, a comparison after every run, re-runs skip what finished."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats as scipy_stats

from harness.sweep import main as sweep_main
from tests.conftest import EXPERIMENTS, REPO, SMALL, TINY, data_overrides, subprocess_env

LEADERBOARD_COLUMNS = ["group", "n_runs", "mean_acc", "std_acc", "min_acc", "max_acc", "ci95_low", "ci95_high",
                       "p_value_vs_best", "mean_time_s"]  # fmt: skip


def test_two_configs_times_two_seeds_on_two_workers(cifar_like, tmp_path, capsys):
    files = [str(EXPERIMENTS / "resnet18_adam.yaml"), str(EXPERIMENTS / "resnet18_adamw.yaml")]
    out = tmp_path / "sweep"
    command = [*files, "--seeds", "0", "1", "--set", *data_overrides(cifar_like), *SMALL, "--out", str(out)]
    assert sweep_main([*command, "--workers", "2"]) == 0
    printed = capsys.readouterr().out
    assert printed.count(f"log {out / 'logs'}/worker-") == 2, "the command points at each worker's log"
    assert re.search(r"^runs: [123] of 4 done, 0 failed, [12] running, ETA \d", printed, re.MULTILINE), printed
    assert printed.count("runs: 4 of 4 done, 0 failed, 0 running") == 1, printed
    runs = sorted(p.name for p in out.iterdir() if (p / "config.yaml").is_file())
    assert runs == ["resnet18_adam-seed0", "resnet18_adam-seed1", "resnet18_adamw-seed0", "resnet18_adamw-seed1"]
    logs = "".join(log.read_text() for log in sorted((out / "logs").glob("worker-*.log")))
    for run in runs:  # each pair ran exactly once, across both workers
        assert logs.count(f"run folder: {out / run} (completed)") == 1, logs[-3000:]
    assert all(log.read_text().count("(completed)") for log in (out / "logs").glob("worker-*.log")), "both worked"
    for run in runs:
        summary = json.loads((out / run / "summary.json").read_text())
        assert summary["status"] == "completed" and (out / run / "report.html").is_file()
        assert yaml.safe_load((out / run / "config.yaml").read_text())["seed"] == int(run[-1])
    board = pd.read_csv(out / "leaderboard.csv")
    assert set(LEADERBOARD_COLUMNS) <= set(board.columns)
    assert sorted(board["group"]) == ["resnet18_adam", "resnet18_adamw"] and list(board["n_runs"]) == [2, 2]
    assert board["test"].tolist()[1] == "Welch t"
    final = {run: json.loads((out / run / "summary.json").read_text())["final_test_acc"] for run in runs}
    by_group = {g: [final[f"{g}-seed{k}"] for k in (0, 1)] for g in ("resnet18_adam", "resnet18_adamw")}
    best, other = board["group"].tolist()
    expected = scipy_stats.ttest_ind(by_group[best], by_group[other], equal_var=False).pvalue
    if not np.isfinite(expected):  # no spread in either group (tiny data): the documented rule, equal or not
        expected = 1.0 if np.mean(by_group[best]) == np.mean(by_group[other]) else 0.0
    assert board["p_value_vs_best"].iloc[1] == pytest.approx(expected), "Welch's test on the final test accuracies"
    assert board["mean_acc"].iloc[0] == pytest.approx(np.mean(by_group[best]))
    html = (out / "compare.html").read_text()
    assert "optimizer.name" in html and "Welch" in html and html.count("data:image/png;base64,") >= 4

    # A run cut short (its report lost) is finished on the next call; the others are skipped.
    (out / "resnet18_adamw-seed1" / "report.html").unlink()
    capsys.readouterr()
    assert sweep_main(command) == 0
    printed = capsys.readouterr().out
    assert printed.count("finished earlier; skipped") == 3
    assert (out / "resnet18_adamw-seed1" / "report.html").is_file()
    assert pd.read_csv(out / "leaderboard.csv").equals(board)
    # The same folder swept again over fewer seeds: nothing to run, and no clash with the earlier queue.
    assert sweep_main([*files, "--seeds", "0", "--set", *data_overrides(cifar_like), *SMALL, "--out", str(out)]) == 0


def test_sweep_validates_every_config_before_running_any(tmp_path, capsys):
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(TINY))
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {epochs: zero}\n")
    assert sweep_main([str(good), str(bad), "--out", str(tmp_path / "sweep")]) == 2
    assert "train.epochs = 'zero'" in capsys.readouterr().err
    assert not (tmp_path / "sweep").exists()
    assert sweep_main([str(good), str(good), "--out", str(tmp_path / "sweep")]) == 2
    assert "give each experiment of a sweep its own name" in capsys.readouterr().err


def test_a_backgrounded_sweep_stops_on_sigint(tmp_path):
    """A script that starts harness.sweep on two workers in the background (bash ignores SIGINT in such
    jobs, and the workers inherit it): kill -INT of the command still stops it and its workers' runs."""
    config = tmp_path / "long.yaml"
    config.write_text(yaml.safe_dump({**TINY, "train": {**TINY["train"], "epochs": 30}}))
    out = tmp_path / "sweep"
    command = ["-m", "harness.sweep", str(config), "--seeds", "0", "1", "--workers", "2", "--out", str(out)]
    args = " ".join(map(shlex.quote, command))
    script = f"{shlex.quote(sys.executable)} {args} & echo $! > {tmp_path / 'pid'}; wait $!; echo rc=$?"
    shell = subprocess.Popen(["bash", "-c", script], cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    run_dir, deadline = out / "tiny-seed0", time.time() + 240
    while not list(run_dir.glob("checkpoints/checkpoint_*.pt")):
        assert shell.poll() is None and time.time() < deadline, shell.communicate()[1][-3000:]
        time.sleep(0.2)
    os.kill(int((tmp_path / "pid").read_text()), signal.SIGINT)
    stdout, stderr = shell.communicate(timeout=300)
    assert f"rc={128 + signal.SIGINT}" in stdout, stdout[-2000:] + stderr[-3000:]
    assert "Traceback" not in stderr + "".join(log.read_text() for log in (out / "logs").glob("*.log"))
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "interrupted"
