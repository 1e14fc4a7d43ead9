"""What users run, as they run it: the shipped experiments at test size with analysis and report on,
under torchrun, killed with kill -9 at every stage and resumed, against a full disk and a second run
on the same folder."""

from __future__ import annotations

import errno
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from harness.core.run_folder import list_checkpoints
from harness.run import main
from harness.training.cpu_threads import available_cores
from tests.conftest import (
    REPO,
    TIMING_COLUMNS,
    comparable_summary,
    data_overrides,
    experiment_args,
    free_port,
    read_rows,
    run_cli,
    subprocess_env,
    tensorboard_scalars,
)


def assert_run_complete(run_dir: Path, test_images: int, val_images: int = 0) -> None:
    """Trained on the folder's 180 training images less ``val_images`` held out, analyzed over every test
    image once, and reported."""
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["analysis_completed_utc"], summary
    confusion = pd.read_csv(run_dir / "analysis" / "confusion.csv", index_col=0).to_numpy()
    assert confusion.sum() == test_images
    # The analysis is of the final weights, the ones final_test_acc was measured on (one image of slack
    # for a borderline logit: the analysis does not run the model in channels_last).
    assert abs(summary["analysis_accuracy"] - summary["final_test_acc"]) <= 1 / test_images + 1e-9
    assert (summary["train_images"], summary["val_images"]) == (180 - val_images, val_images)
    assert len(pd.read_csv(run_dir / "analysis" / "predictions.csv")) == test_images
    html = (run_dir / "report.html").read_text()
    assert 'id="gradcam"' in html and "not available" not in html and "status-completed" in html


def test_main_job_at_test_size(main_job_run):
    """`python -m harness.run experiments/resnet18.yaml`, the README's first command, smaller: 10% held out."""
    out, result = main_job_run
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"run folder: {out} (completed)" in result.stdout
    assert "this config is a GPU recipe" in result.stderr, "it ran on a CPU, and says so"
    assert_run_complete(out, test_images=50, val_images=18)
    assert list((out / "checkpoints").glob("best_*.pt")), "the best checkpoint, chosen on validation"


def test_cpu_experiment_in_process_is_complete(analyzed_run):
    """The CPU recipe trains on every training image (val_size 0); the report says nothing was chosen."""
    assert_run_complete(analyzed_run, test_images=50)
    assert not list((analyzed_run / "checkpoints").glob("best_*.pt"))
    assert "No validation split was held out" in (analyzed_run / "report.html").read_text()


def test_a_first_try_of_the_cpu_recipe_changes_only_epochs_and_a_subset(cifar_like, tmp_path):
    """What the README offers for a first try: the shipped CPU recipe (15 epochs, warm-up 2, 7 at low
    resolution) with only train.epochs=2 and a subset set, nothing else of its schedule."""
    out = tmp_path / "run"
    args = ["--set", *data_overrides(cifar_like), "train.epochs=2", "data.train_subset=150", "--out", str(out)]
    result = run_cli(str(REPO / "experiments" / "resnet18_cpu.yaml"), *args)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["train_images"] == 150 and summary["analysis_completed_utc"]
    assert len(read_rows(out / "metrics.csv")) == 2 and (out / "report.html").is_file()


def torchrun(*options: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *options, "-m", "harness.run"]


def without_omp_setting() -> dict[str, str]:
    return {k: v for k, v in subprocess_env().items() if k != "OMP_NUM_THREADS"}


def assert_threads_shared_between(out: Path, processes: int) -> None:
    """Each process took its share of the cores, whatever OMP_NUM_THREADS said (harness.training.cpu_threads)."""
    assert json.loads((out / "summary.json").read_text())["threads_per_process"] == max(
        1, available_cores() // processes
    )


def test_torchrun_two_processes_with_analysis_and_report(cifar_like, analyzed_run, tmp_path):
    """One node, two processes, with OMP_NUM_THREADS=2 on a 2-core machine: 4 threads on 2 cores, the
    setting reported to crash in the first step. The harness gives each process its share instead."""
    out = tmp_path / "run"
    command = [
        *torchrun("--nproc_per_node=2", f"--master_port={free_port()}"),
        *experiment_args("resnet18_cpu", cifar_like),
    ]
    env = dict(without_omp_setting(), OMP_NUM_THREADS="2")
    result = subprocess.run([*command, "--out", str(out)], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=400)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("(completed)") == 1, "rank 0 alone reports the outcome"
    assert json.loads((out / "summary.json").read_text())["world_size"] == 2
    assert_threads_shared_between(out, 2)
    assert_run_complete(out, test_images=50)
    # The same global batches and learning rates as the one-process run of the same config.
    assert read_rows(out / "lr.csv") == read_rows(analyzed_run / "lr.csv")


def test_two_torchrun_agents_on_loopback_like_two_machines(cifar_like, tmp_path):
    """The README's two-machine command, as two torchrun agents on this host (c10d rendezvous, 2 nodes x
    1 process), with the launcher's defaults: torchrun sets no OMP_NUM_THREADS for one process a node."""
    out, port = tmp_path / "run", free_port()
    options = ["--nnodes=2", "--nproc_per_node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}",
               f"--rdzv-id=loopback{port}"]  # fmt: skip
    command = [*torchrun(*options), *experiment_args("resnet18_cpu", cifar_like), "--out", str(out)]
    agents = [
        subprocess.Popen(
            command, cwd=tmp_path, env=without_omp_setting(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )  # fmt: skip
        for _ in range(2)
    ]
    outputs = [agent.communicate(timeout=400) for agent in agents]
    for agent, (_, stderr) in zip(agents, outputs, strict=True):
        assert agent.returncode == 0, stderr[-3000:]
    assert sum(stdout.count("(completed)") for stdout, _ in outputs) == 1, "global rank 0 alone reports"
    assert json.loads((out / "summary.json").read_text())["world_size"] == 2
    assert_threads_shared_between(out, 2)
    assert_run_complete(out, test_images=50)


# ---------------------------------------------------------------- kill -9 anywhere, then --resume

KILL_ARGS = ["train.epochs=3"]  # 162 images / batch 32 = 5 iterations an epoch, checkpoints at 5, 10, 15


@pytest.fixture(scope="module")
def uninterrupted(cifar_like, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("whole") / "run"
    result = run_cli(*experiment_args("resnet18_cpu", cifar_like, *KILL_ARGS), "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def tensors(state, prefix: str = ""):
    """Every tensor or number in a nested state dict, by its path: what 'bit for bit' compares."""
    if isinstance(state, dict):
        for key, value in state.items():
            yield from tensors(value, f"{prefix}.{key}")
    elif isinstance(state, (list, tuple)):
        for index, value in enumerate(state):
            yield from tensors(value, f"{prefix}[{index}]")
    elif isinstance(state, (torch.Tensor, int, float)):
        yield prefix, torch.as_tensor(state)


def assert_same_as_uninterrupted(run_dir: Path, reference: Path) -> None:
    assert read_rows(run_dir / "metrics.csv", TIMING_COLUMNS) == read_rows(reference / "metrics.csv", TIMING_COLUMNS)
    assert read_rows(run_dir / "lr.csv") == read_rows(reference / "lr.csv")
    assert read_rows(run_dir / "weights.csv") == read_rows(reference / "weights.csv")
    assert comparable_summary(run_dir) == comparable_summary(reference)
    assert tensorboard_scalars(run_dir) == tensorboard_scalars(reference), "each step once, as in one run"
    mine = torch.load(list_checkpoints(run_dir / "checkpoints")[0], map_location="cpu", weights_only=False)
    theirs = torch.load(list_checkpoints(reference / "checkpoints")[0], map_location="cpu", weights_only=False)
    for part in ("model", "optimizer", "lr_scheduler"):
        a, b = dict(tensors(mine[part])), dict(tensors(theirs[part]))
        assert a.keys() == b.keys() and a, part
        for key in a:
            assert torch.equal(a[key], b[key]), f"{part}{key}"
    assert_run_complete(run_dir, test_images=50)


def kill_at(point: str, *args: str) -> None:
    killed = subprocess.run(
        [sys.executable, "-m", "tests.kill_at", point, *args],
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, f"{point}: {killed.stderr[-3000:]}"


def resume_and_compare(out: Path, reference: Path) -> None:
    resumed = run_cli("--resume", str(out))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Traceback" not in resumed.stderr
    assert_same_as_uninterrupted(out, reference)


# Each point in the order a run reaches it, each kill inside the --resume of the kill before it.
KILL_POINTS = [
    "iteration:7",  # mid-epoch, default checkpoints: epoch 2 restarts, its averages afresh
    "evaluation:2",  # during the evaluation that ends epoch 2
    "checkpoint:10",  # halfway through writing epoch 2's checkpoint
    "summary",  # after the last checkpoint, before the final summary.json
    "analysis",
    "report",
]


def test_kill_9_at_every_stage_in_turn_then_resume_matches_an_uninterrupted_run(cifar_like, uninterrupted, tmp_path):
    out = tmp_path / "run"
    args = [*experiment_args("resnet18_cpu", cifar_like, *KILL_ARGS), "--out", str(out)]
    for point in KILL_POINTS:
        kill_at(point, *args)
        args = ["--resume", str(out)]
    resume_and_compare(out, uninterrupted)


def test_kill_9_mid_epoch_after_a_mid_epoch_checkpoint_then_resume_matches(cifar_like, uninterrupted, tmp_path):
    """Killed at iteration 8, resumed from the checkpoint of iteration 6 (checkpoint.every_iters=3)."""
    out = tmp_path / "run"
    extra = ["checkpoint.every_iters=3"]
    kill_at("iteration:8", *experiment_args("resnet18_cpu", cifar_like, *KILL_ARGS, *extra), "--out", str(out))
    resume_and_compare(out, uninterrupted)


def test_full_disk_while_saving_keeps_the_previous_checkpoint(cifar_like, uninterrupted, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    save = torch.save

    def disk_full_at_iteration_10(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("trainer", {}).get("iteration") == 10:
            f.write(b"\0" * 1000)
            raise OSError(errno.ENOSPC, "No space left on device")
        save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_full_at_iteration_10)
    assert main([*experiment_args("resnet18_cpu", cifar_like, *KILL_ARGS), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "No space left on device" in err and "--resume" in err, err
    [kept] = list_checkpoints(out / "checkpoints")
    assert kept.name == "checkpoint_5.pt" and torch.load(kept, weights_only=False)["trainer"]["iteration"] == 5
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["checkpoint_5.pt"], "no half-written file left"
    assert json.loads((out / "summary.json").read_text())["status"] == "failed"
    monkeypatch.undo()
    assert main(["--resume", str(out)]) == 0
    assert_same_as_uninterrupted(out, uninterrupted)


def test_a_second_run_on_a_busy_folder_is_refused(cifar_like, tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen(
        [sys.executable, "-m", "harness.run", *experiment_args("resnet18_cpu", cifar_like), "--out", str(out)],
        cwd=REPO,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while not (out / "config.yaml").exists():  # written under the lock
        assert first.poll() is None and time.time() < deadline, first.communicate()[1][-2000:]
        time.sleep(0.05)
    first.send_signal(signal.SIGSTOP)  # holds the folder for as long as the test needs
    try:
        for args in ([*experiment_args("resnet18_cpu", cifar_like), "--out", str(out)], ["--resume", str(out)]):
            second = run_cli(*args)
            assert second.returncode == 2 and "Traceback" not in second.stderr
            assert second.stderr.strip().splitlines() == [
                f"error: {out}: in use by another harness.run (pid {first.pid}); wait for it to finish or stop it first"
            ]
    finally:
        first.send_signal(signal.SIGCONT)
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-2000:]
    assert_run_complete(out, test_images=50)
