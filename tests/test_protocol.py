"""The protocol: a validation split decides, the test set only reports.

The decisive test scripts what each evaluator reports so that validation and test disagree, then
checks that every decision (best checkpoint, plateau, the summary's best epoch) followed validation.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ignite.engine import Events

import harness.runner.experiment
from harness.core.run_folder import read_csv_rows
from harness.reporting.records import load_run
from harness.run import main
from tests.conftest import REPO, run_cli

# Per epoch: validation improves at 2 and 4 (patience 0: one reduction, after epoch 3); the test set
# would pick epoch 3 and reduce after epochs 2 and 4.
VAL_SCRIPT = [0.30, 0.50, 0.40, 0.60]
TEST_SCRIPT = [0.90, 0.10, 0.95, 0.20]


def script_evaluations(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make each evaluator report its script's accuracy for the epoch, as if the model had scored it."""
    build = harness.runner.experiment.build_training

    def build_and_script(*args, **kwargs):
        run = build(*args, **kwargs)
        for evaluator, script in ((run.val_evaluator, VAL_SCRIPT), (run.test_evaluator, TEST_SCRIPT)):

            def overwrite(engine, script=script):  # after the metrics' own EPOCH_COMPLETED, before COMPLETED
                engine.state.metrics["accuracy"] = script[run.trainer.state.epoch - 1]

            evaluator.add_event_handler(Events.EPOCH_COMPLETED, overwrite)
        return run

    monkeypatch.setattr(harness.runner.experiment, "build_training", build_and_script)


def test_every_decision_follows_validation_when_test_disagrees(write_config, tmp_path, monkeypatch):
    script_evaluations(monkeypatch)
    config = write_config(
        {
            "scheduler": {"name": "plateau", "warmup_epochs": 0, "plateau_patience": 0, "gamma": 0.5},
            "optimizer": {"lr": 0.02},
            "train": {"epochs": 4},
        }
    )
    run_dir = tmp_path / "run"
    assert main([str(config), "--out", str(run_dir)]) == 0
    rows = read_csv_rows(run_dir / "metrics.csv")
    assert [float(r["val_acc"]) for r in rows] == VAL_SCRIPT
    assert [float(r["test_acc"]) for r in rows] == TEST_SCRIPT, "the test set is still measured every epoch"

    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["best_epoch"], summary["best_val_acc"]) == (4, 0.6), "the best epoch is validation's"
    assert summary["final_test_acc"] == 0.2 and summary["final_val_acc"] == 0.6
    [best] = (run_dir / "checkpoints").glob("best_*.pt")
    assert best.name == "best_model_4_val_acc=0.6000.pt", "the best checkpoint is validation's (test: epoch 3)"

    lr_by_epoch = {}
    for row in read_csv_rows(run_dir / "lr.csv"):
        lr_by_epoch.setdefault(int(row["epoch"]), set()).add(float(row["lr"]))
    # Watching validation: one halving, after epoch 3. Watching the test set, epoch 3 would run at 0.01.
    assert lr_by_epoch == {1: {0.02}, 2: {0.02}, 3: {0.02}, 4: {0.01}}


def test_without_a_validation_split_nothing_is_chosen(write_config, tmp_path):
    run_dir = tmp_path / "run"
    config = write_config({"data": {"val_size": 0, "synthetic_train_size": 256}, "report": {"enabled": True}})
    assert main([str(config), "--out", str(run_dir)]) == 0
    rows = read_csv_rows(run_dir / "metrics.csv")
    assert rows[0]["val_acc"] == "" and rows[0]["val_loss"] == "" and rows[0]["test_acc"] != ""
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["train_images"], summary["val_images"]) == (256, 0), "all training images train"
    assert summary["best_val_acc"] is None and summary["best_epoch"] is None
    assert summary["final_test_acc"] == float(rows[0]["test_acc"])
    assert not list((run_dir / "checkpoints").glob("best_*.pt")), "no 'best' without a validation split"
    html = (run_dir / "report.html").read_text()
    assert "No validation split was held out" in html


def test_plateau_without_a_validation_split_is_refused(write_config, tmp_path):
    config = write_config({"data": {"val_size": 0}, "scheduler": {"name": "plateau", "warmup_epochs": 0}})
    result = run_cli(str(config), "--out", str(tmp_path / "run"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0
    assert "scheduler.name = 'plateau': expected a validation split to watch (data.val_size > 0)" in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("run", sorted((REPO / "results" / "resnet18_cpu").glob("202611*")), ids=lambda p: p.name)
def test_the_committed_runs_from_before_the_protocol_read_as_test_figures(run):
    """Their val_* figures were measured on the test set: the folders carry them as test_* figures, and
    no validation figure."""
    record = load_run(run)
    assert record.summary["final_test_acc"] == pytest.approx(float(record.metrics["test_acc"].iloc[-1]))
    assert record.metrics["val_acc"].isna().all() and record.summary["val_images"] == 0
    assert "best_val_acc" not in record.summary and "before the validation split" in record.summary["validation"]


def test_temperature_fitted_on_validation_lands_in_summary(main_job_run):
    run_dir, result = main_job_run
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["val_images"] > 0 and summary["temperature"] > 0
    for key in ("ece", "nll", "ece_scaled", "nll_scaled"):
        assert isinstance(summary[key], float), key
    assert (run_dir / "analysis" / "reliability_scaled.png").is_file()
    html = (run_dir / "report.html").read_text()
    assert "temperature (fitted on validation)" in html


def test_without_a_validation_split_no_temperature_is_fitted(analyzed_run: Path):
    """The shipped CPU recipe trains on everything: calibration is measured, not fitted."""
    summary = json.loads((analyzed_run / "summary.json").read_text())
    assert summary["val_images"] == 0 and summary["temperature"] is None and isinstance(summary["ece"], float)
