"""One code path for 1 and N processes: gloo on CPU, two processes."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import ignite.distributed as idist
import pytest
import torch
from ignite.engine import Events

from harness.config import config_from_dict
from harness.data import make_synthetic
from harness.models import build_model
from harness.trainers import create_evaluator
from harness.training import build_loaders
from tests.conftest import REPO, TINY


def _accuracy_with_fixed_weights(local_rank: int, result_file: str) -> None:
    torch.manual_seed(0)
    cfg = config_from_dict(TINY, ["data.synthetic_test_size=103", "data.eval_batch_size=10"])
    train, test = make_synthetic(cfg.data, cfg.seed)
    _, eval_loader, _, _ = build_loaders(cfg, train, test, idist.device())
    model = build_model(cfg.model, 10)  # identical weights on every rank: same seed, no training
    evaluator = create_evaluator(model, idist.device(), cfg.train)
    counted = []
    evaluator.add_event_handler(Events.ITERATION_COMPLETED, lambda e: counted.append(len(e.state.output[1])))
    evaluator.run(eval_loader)
    total = idist.all_reduce(torch.tensor(float(sum(counted)))).item()
    if idist.get_rank() == 0:
        Path(result_file).write_text(json.dumps({"accuracy": evaluator.state.metrics["accuracy"], "images": total}))


def test_test_accuracy_counts_every_image_once_across_processes(tmp_path):
    accuracy = {}
    for nproc in (1, 2):
        out = tmp_path / f"acc{nproc}.json"
        with idist.Parallel(backend="gloo" if nproc > 1 else None, nproc_per_node=nproc if nproc > 1 else None) as parallel:
            parallel.run(_accuracy_with_fixed_weights, str(out))
        result = json.loads(out.read_text())
        assert result["images"] == 103, "no test image dropped, nor padded in twice"
        accuracy[nproc] = result["accuracy"]
    assert accuracy[1] == accuracy[2]


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_torchrun_two_gloo_processes_write_one_consistent_run(write_config, tmp_path):
    config = write_config({"train": {"epochs": 2}})
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
               "-m", "harness.run", str(config)]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("(completed)") == 1, "rank 0 alone reports the outcome"
    runs = list((tmp_path / "results" / "tiny").iterdir())
    assert len(runs) == 1, "rank 0 alone writes, and every rank uses its folder"
    run_dir = runs[0]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["world_size"] == 2
    rows = read_rows(run_dir / "metrics.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert [int(r["iteration"]) for r in read_rows(run_dir / "lr.csv")] == list(range(1, 17))

    single = tmp_path / "single"
    assert subprocess.run([sys.executable, "-m", "harness.run", str(config), "--out", str(single)], cwd=tmp_path,
                          env=env, capture_output=True, timeout=300).returncode == 0
    single_rows = read_rows(single / "metrics.csv")
    # The same global batches and learning rates; only BatchNorm sees 16 images per process instead of 32.
    assert read_rows(single / "lr.csv") == read_rows(run_dir / "lr.csv")
    for a, b in zip(rows, single_rows):
        assert float(a["train_loss"]) == pytest.approx(float(b["train_loss"]), rel=0.15)
