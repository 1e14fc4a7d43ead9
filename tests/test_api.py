"""The Python API as a user calls it: the docs' example runs as written, and the functions return
what the docs promise."""

from __future__ import annotations

import re
import subprocess
import sys

import pandas as pd
import pytest

from harness import RunResult, analyze_run, compare_runs, load_config, run_experiment
from harness.core.errors import HarnessError
from harness.core.run_folder import RunFiles
from tests.conftest import REPO, subprocess_env

DOC = REPO / "docs" / "python-api.md"


def test_the_docs_example_runs_as_written(tmp_path):
    """Every python block of docs/python-api.md, in order, in a folder that has the shipped experiments."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)
    assert len(blocks) == 2
    (tmp_path / "experiments").symlink_to(REPO / "experiments")
    script = (
        "\n".join(blocks)
        + "\nfrom harness import load_config as _l\nassert _l('experiments/resnet18_cpu.yaml', ['model.name=tiny'])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "completed" in done.stdout and "mean_acc" in done.stdout
    compare = tmp_path / "results" / "api_example" / "compare.html"
    assert compare.is_file() and (compare.parent / "leaderboard.csv").is_file()
    summary = RunFiles(tmp_path / "results" / "api_example" / "sgd").read_summary()
    assert summary["analysis_completed_utc"]
    assert len(pd.read_csv(tmp_path / "results" / "api_example" / "sgd" / "analysis" / "misclassified.csv")) > 20


def test_run_experiment_returns_the_run_and_resumes_it(write_config, tmp_path):
    cfg = load_config(write_config({"train": {"epochs": 2}}))
    result = run_experiment(cfg, tmp_path / "run")
    assert isinstance(result, RunResult) and result.status == "completed" and result.exit_code == 0
    assert result.run_dir == tmp_path / "run"
    assert result.metrics["epoch"].tolist() == [1, 2]
    assert result.summary["final_test_acc"] == pytest.approx(result.metrics["test_acc"].iloc[-1])
    again = run_experiment(run_dir=tmp_path / "run", resume=True)  # nothing left: reads what is there
    assert again.summary == RunFiles(tmp_path / "run").read_summary()
    with pytest.raises(HarnessError, match="continues its own config.yaml"):
        run_experiment(load_config(write_config({"train": {"epochs": 3}})), tmp_path / "run", resume=True)
    with pytest.raises(HarnessError, match="analysis.\\* and report.\\* keys only"):
        analyze_run(tmp_path / "run", ["optimizer.lr=1"])
    with pytest.raises(HarnessError, match="no run folders"):
        compare_runs([tmp_path / "nothing"], tmp_path / "compare.html")
