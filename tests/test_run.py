"""End-to-end runs on tiny synthetic data: the run folder, resume after kill -9 and SIGTERM,
divergence, damaged checkpoints and bad output folders."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from harness.analysis.blow_up import first_blow_up
from harness.config import config_from_dict
from harness.core.run_folder import METRICS_COLUMNS, checkpoint_iteration, list_checkpoints
from harness.models.builders import build_model
from harness.models.inputs import prepare_inputs
from harness.reporting.run_report import render_run_report
from harness.run import main
from harness.training.steps import create_evaluator
from harness.training.wiring import build_loaders
from tests.conftest import REPO, make_image_folder, tensorboard_scalars

TIMING_COLUMNS = {"epoch_time_s", "train_images_per_s"}


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def without_timing(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in rows]


def final_weights(run_dir: Path, key: str = "model") -> dict:
    return torch.load(list_checkpoints(run_dir / "checkpoints")[0], map_location="cpu", weights_only=False)[key]


def start_run(*args: str, threads: int | None = None) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO), **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    return subprocess.Popen(
        [sys.executable, "-m", "harness.run", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_checkpoint(run_dir: Path, iteration: int, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    target = run_dir / "checkpoints" / f"checkpoint_{iteration}.pt"
    while not target.exists():
        assert process.poll() is None, f"run ended before iteration {iteration}: {process.communicate()[1][-2000:]}"
        assert time.time() < deadline, "timed out waiting for a checkpoint"
        time.sleep(0.02)


def test_one_epoch_run_writes_the_run_folder(write_config, tmp_path):
    run_dir = tmp_path / "run"
    assert main([str(write_config()), "--out", str(run_dir)]) == 0
    for name in ("config.yaml", "metrics.csv", "lr.csv", "summary.json", "model_summary.txt"):
        assert (run_dir / name).is_file(), name
    rows = read_rows(run_dir / "metrics.csv")
    assert list(rows[0]) == METRICS_COLUMNS and len(rows) == 1
    lr_rows = read_rows(run_dir / "lr.csv")
    assert [int(r["iteration"]) for r in lr_rows] == list(range(1, 9))  # 256 images / batch 32
    summary = json.loads((run_dir / "summary.json").read_text())
    for key in (
        "status",
        "best_val_acc",
        "best_epoch",
        "final_val_acc",
        "final_val_loss",
        "final_test_acc",
        "train_images",
        "val_images",
        "test_images",
        "total_time_s",
        "device",
        "world_size",
        "num_params",
        "versions",
        "git_commit",
    ):
        assert key in summary, key
    assert summary["status"] == "completed" and summary["world_size"] == 1
    assert summary["final_val_acc"] == float(rows[0]["val_acc"])
    assert summary["final_test_acc"] == float(rows[0]["test_acc"])
    assert summary["final_val_loss"] == float(rows[0]["val_loss"]), "what a search minimizing it reads"
    assert (summary["train_images"], summary["val_images"], summary["test_images"]) == (256, 32, 128)
    assert list_checkpoints(run_dir / "checkpoints")
    assert list((run_dir / "checkpoints").glob("best_model_*.pt"))
    assert "Total params: 176,402" in (run_dir / "model_summary.txt").read_text()
    scalars = tensorboard_scalars(run_dir)  # `tensorboard --logdir results` shows the same numbers
    assert scalars["train/lr/group_0"] == [(int(r["iteration"]), pytest.approx(float(r["lr"]))) for r in lr_rows]
    assert scalars["test/accuracy"] == [(8, pytest.approx(float(rows[0]["test_acc"]), abs=1e-6))]  # CSV: 6 decimals
    assert scalars["val/accuracy"] == [(8, pytest.approx(float(rows[0]["val_acc"]), abs=1e-6))]
    assert scalars["train/train_loss"] == [(8, pytest.approx(float(rows[0]["train_loss"]), rel=1e-5))]
    assert "width: 8" in (run_dir / "config.yaml").read_text()


def test_training_learns_the_synthetic_classes(write_config, tmp_path):
    config = write_config({"data": {"synthetic_train_size": 768}, "train": {"epochs": 3}})
    assert main([str(config), "--out", str(tmp_path / "run")]) == 0
    rows = read_rows(tmp_path / "run" / "metrics.csv")
    assert float(rows[-1]["test_acc"]) > 0.5 and float(rows[-1]["val_acc"]) > 0.5, rows  # chance is 0.1


def test_weight_average_is_what_gets_evaluated_and_kept(write_config, tmp_path):
    config = write_config({"train": {"epochs": 2, "ema_decay": 0.9}})
    run_dir = tmp_path / "run"
    assert main([str(config), "--out", str(run_dir)]) == 0
    by_epoch = {
        checkpoint_iteration(p) // 8: torch.load(p, map_location="cpu", weights_only=False)
        for p in list_checkpoints(run_dir / "checkpoints")
    }  # 256 images / batch 32
    assert sorted(by_epoch) == [1, 2]
    live, average = by_epoch[2]["model"], by_epoch[2]["ema_model"]
    assert not torch.equal(live["conv1.weight"], average["conv1.weight"])
    [best] = (run_dir / "checkpoints").glob("best_model_*.pt")
    kept = torch.load(best, map_location="cpu", weights_only=False)
    best_epoch = json.loads((run_dir / "summary.json").read_text())["best_epoch"]
    assert torch.equal(kept["conv1.weight"], by_epoch[best_epoch]["ema_model"]["conv1.weight"]), "the average is kept"
    rows = read_rows(run_dir / "metrics.csv")
    cfg = config_from_dict(yaml.safe_load(config.read_text()))
    inputs = prepare_inputs(cfg.data, cfg.model, cfg.seed)
    cfg = cfg.model_copy(update={"data": inputs.data})
    model = build_model(cfg.model, 10)
    model.load_state_dict(average)
    evaluator = create_evaluator(model, torch.device("cpu"), cfg.train)
    evaluator.run(build_loaders(cfg, inputs.splits, torch.device("cpu")).test)
    # The loss tells the two models apart where 128 images' accuracy might not.
    assert evaluator.state.metrics["loss"] == pytest.approx(float(rows[-1]["test_loss"]), rel=1e-5)
    assert evaluator.state.metrics["accuracy"] == pytest.approx(float(rows[-1]["test_acc"]), abs=1e-6)


def test_resume_after_kill_9_mid_epoch_matches_an_uninterrupted_run(write_config, tmp_path):
    # With an average of the weights: the most state a run carries, all of it restored.
    config = write_config(
        {
            "data": {"synthetic_train_size": 512},
            "train": {"epochs": 3, "ema_decay": 0.9},
            "checkpoint": {"every_iters": 4, "n_saved": 3},
        }
    )
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    # Two runs at once, one thread each as a sweep's two workers have (2 x 2 threads on 2 cores thrash).
    reference = start_run(str(config), "--out", str(whole), threads=1)
    interrupted = start_run(str(config), "--out", str(broken), threads=1)
    wait_for_checkpoint(broken, 20, interrupted)  # 480 images / 32: epoch 2 runs iterations 16..30
    interrupted.kill()
    interrupted.wait()
    assert reference.wait(timeout=300) == 0
    newest = max((broken / "checkpoints").glob("checkpoint_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
    before_kill = torch.load(newest, weights_only=False)["stopwatch"]["elapsed_s"]
    resuming = time.monotonic()
    resumed = subprocess.run(
        [sys.executable, "-m", "harness.run", "--resume", str(broken)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1"),  # the threads it was killed with
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stdout
    assert without_timing(read_rows(broken / "metrics.csv")) == without_timing(read_rows(whole / "metrics.csv"))
    assert read_rows(broken / "lr.csv") == read_rows(whole / "lr.csv")
    assert read_rows(broken / "weights.csv") == read_rows(whole / "weights.csv")
    for weights in ("model", "ema_model"):
        a, b = final_weights(whole, weights), final_weights(broken, weights)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{weights}.{key}"
    summary = json.loads((broken / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["resumed_from"]
    # The run's time is the killed process's up to its checkpoint, and the resumed process's.
    first_epoch = float(read_rows(broken / "metrics.csv")[0]["epoch_time_s"])
    assert first_epoch < before_kill < summary["total_time_s"] < before_kill + time.monotonic() - resuming
    # The resumed epoch trained from the checkpoint (iteration 20) to its end in this process: those
    # batches over its time, not the whole epoch's.
    epoch2 = read_rows(broken / "metrics.csv")[1]
    trained = float(epoch2["train_images_per_s"]) * float(epoch2["epoch_time_s"])
    assert trained == pytest.approx((int(epoch2["iteration"]) - 20) * 32, rel=0.01), epoch2
    assert int(epoch2["iteration"]) - 20 < int(epoch2["iteration"]) // 2, "fewer than a whole epoch's batches"


def test_sigterm_saves_then_resume_skips_damaged_checkpoint(write_config, tmp_path):
    config = write_config({"train": {"epochs": 2}, "checkpoint": {"every_iters": 2, "n_saved": 2}})
    run_dir = tmp_path / "run"
    process = start_run(str(config), "--out", str(run_dir))
    wait_for_checkpoint(run_dir, 4, process)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, err[-2000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    stopped_at = summary["interrupted_at_iteration"]
    saved = list_checkpoints(run_dir / "checkpoints")
    assert len(saved) <= 2, "checkpoint.n_saved bounds the files kept"
    assert int(saved[0].stem.split("_")[-1]) == stopped_at, "the stop saved the iteration it finished"

    newest = saved[0]
    newest.write_bytes(newest.read_bytes()[:1000])  # a checkpoint cut short, as by a full disk
    assert main(["--resume", str(run_dir)]) == 0
    rows = read_rows(run_dir / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert [int(r["iteration"]) for r in read_rows(run_dir / "lr.csv")] == list(range(1, 17))
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    assert main(["--resume", str(run_dir)]) == 0  # a finished run says so and changes nothing


def test_resume_reports_damaged_checkpoint_by_name(write_config, tmp_path, capsys):
    run_dir = tmp_path / "run"
    config = write_config({"train": {"epochs": 2}, "checkpoint": {"every_iters": 3, "n_saved": 3}})
    assert main([str(config), "--out", str(run_dir)]) == 0
    summary_path = run_dir / "summary.json"
    summary_path.write_text(summary_path.read_text().replace('"completed"', '"interrupted"'))
    newest = list_checkpoints(run_dir / "checkpoints")[0]
    newest.write_bytes(b"")
    assert main(["--resume", str(run_dir)]) in (0,)
    assert f"checkpoint {newest} is damaged" in capsys.readouterr().err


def test_divergence_stops_and_keeps_last_good_checkpoint(write_config, tmp_path):
    run_dir = tmp_path / "run"
    config = write_config(
        {"optimizer": {"lr": 1.0e12}, "train": {"epochs": 2}, "checkpoint": {"every_iters": 1, "n_saved": 1}}
    )
    assert main([str(config), "--out", str(run_dir)]) == 3
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "diverged"
    # Iteration 1's loss is computed before its (huge) step, so it is finite and iteration 1 is saved.
    [kept] = list_checkpoints(run_dir / "checkpoints")
    assert checkpoint_iteration(kept) < summary["diverged_at_iteration"]
    weights = torch.load(kept, map_location="cpu", weights_only=False)["model"]
    assert all(torch.isfinite(v.float()).all() for v in weights.values())
    # The report points at the block whose update blew up first among the sampled steps.
    blow_up = first_blow_up(pd.read_csv(run_dir / "weights.csv"))
    assert blow_up is not None and blow_up["iteration"] <= summary["diverged_at_iteration"]
    html = render_run_report(run_dir).read_text()
    assert f"The first block to blow up among the samples: <b>{blow_up['layer']}</b>" in html


def test_bad_output_folders_and_resume_targets(write_config, tmp_path, capsys):
    config = write_config()
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert main([str(config), "--out", str(blocker / "run")]) == 2
    assert "cannot be written" in capsys.readouterr().err
    assert main(["--resume", str(tmp_path / "nothing")]) == 2
    assert "not a run folder" in capsys.readouterr().err
    run_dir = tmp_path / "run"
    assert main([str(config), "--out", str(run_dir)]) == 0
    before = (run_dir / "metrics.csv").read_bytes()
    assert main([str(config), "--out", str(run_dir)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (run_dir / "metrics.csv").read_bytes() == before


def test_bad_data_fails_in_one_line_before_anything_is_written(write_config, tmp_path, capsys):
    data = tmp_path / "data"
    make_image_folder(data)
    (data / "test/dog/broken.jpg").write_bytes(b"\xff\xd8 truncated")
    cases = {
        "missing": ({"data": {"dataset": "image_folder", "root": str(tmp_path / "nowhere")}}, "folder not found"),
        "corrupt": (
            {"data": {"dataset": "image_folder", "root": str(data), "batch_size": 2}},
            "broken.jpg: unreadable image",
        ),
        "batch": ({"data": {"batch_size": 1000}}, "data.batch_size = 1000: expected at most the 256 training images"),
    }
    for name, (changes, expected) in cases.items():
        out = tmp_path / f"run-{name}"
        assert main([str(write_config(changes, name=f"{name}.yaml")), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert expected in err and len(err.splitlines()) == 1, err
        assert not out.exists()
    (data / "test/dog/broken.jpg").unlink()
    (data / "train/bird").mkdir()
    out = tmp_path / "run-empty"
    config = write_config({"data": {"dataset": "image_folder", "root": str(data), "batch_size": 2}}, name="empty.yaml")
    assert main([str(config), "--out", str(out)]) == 2
    assert "train/bird: empty class folder" in capsys.readouterr().err
    assert not out.exists()
