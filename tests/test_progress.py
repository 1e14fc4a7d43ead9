"""What a user sees while a run trains: a bar on a terminal (a real pseudo-terminal, as a shell
gives), progress lines with an ETA in a log, the estimate of the whole run, the word on a GPU recipe
started on a CPU. The clock is driven by hand where only the arithmetic is under test."""

from __future__ import annotations

import io
import os
import pty
import re
import select
import subprocess
import sys
import time

import pytest
import torch
from ignite.engine import Engine

from harness.config import load_config
from harness.training.progress import Lines, ProgressClock, RunProgress, gpu_recipe_warning, resolve_mode
from tests.conftest import EXPERIMENTS, REPO, subprocess_env


def read_until_exit(process: subprocess.Popen, terminal: int, timeout: float) -> str:
    """Everything the process writes to the terminal, in order, until it exits."""
    chunks, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not select.select([terminal], [], [], 1.0)[0]:
            continue
        try:
            chunk = os.read(terminal, 65536)
        except OSError:  # the last writer closed its end: the process is gone
            break
        if not chunk:
            break
        chunks.append(chunk)
    process.wait(timeout=max(1.0, deadline - time.monotonic()))
    return b"".join(chunks).decode(errors="replace")


def test_a_bar_shows_during_the_first_epoch_on_a_terminal(write_config, tmp_path):
    # A pseudo-terminal whose size nobody set reports 0 x 0, as under many terminal multiplexers and
    # test harnesses; tqdm then drew nothing before the harness gave it a size.
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "harness.run", str(write_config()), "--out", str(tmp_path / "run")],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        cwd=REPO,
        env=subprocess_env(),
    )
    os.close(terminal)
    try:
        shown = read_until_exit(process, controller, timeout=300)
    finally:
        os.close(controller)
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, shown[-3000:]
    during_epoch = shown[: shown.index("epoch 1/1: train_loss")]
    assert re.search(r"epoch 1/1 +\d+%\|.*\| \d/8, loss \d\.\d{4}, lr [\d.e-]+, ", during_epoch), during_epoch[-2000:]
    assert "test evaluation" in during_epoch


class Stream(io.StringIO):
    def __init__(self, terminal: bool) -> None:
        super().__init__()
        self.terminal = terminal

    def isatty(self) -> bool:
        return self.terminal


def test_auto_progress_is_a_bar_on_a_terminal_and_lines_elsewhere():
    assert resolve_mode("auto", Stream(terminal=True)) == "bar"
    assert resolve_mode("auto", Stream(terminal=False)) == "lines", "a log, a pipe, CI"
    assert resolve_mode("lines", Stream(terminal=True)) == "lines" and resolve_mode("off", Stream(True)) == "off"


class ManualTime:
    """A clock that moves only when told to: each training step takes ``step_s``."""

    def __init__(self, step_s: float) -> None:
        self.now, self.step_s = 0.0, step_s

    def __call__(self) -> float:
        return self.now

    def step(self, engine: Engine, batch: int) -> dict[str, torch.Tensor]:
        self.now += self.step_s
        return {"loss": torch.tensor(1.0)}


def run_with_lines(epoch_length: int, epochs: int, capsys) -> list[str]:
    time_now = ManualTime(step_s=1.0)
    trainer = Engine(time_now.step)
    progress = RunProgress(Lines(), ProgressClock(3, lambda epoch: 1.0), 64, lambda: 0.1, "CPU", now=time_now)
    progress.attach(trainer, {}, every=1)
    trainer.run(range(epoch_length), max_epochs=epochs)
    return capsys.readouterr().out.splitlines()


def test_a_log_gets_a_progress_line_every_30_s_of_a_long_epoch(capsys):
    lines = run_with_lines(epoch_length=100, epochs=2, capsys=capsys)  # one step a second: 100 s epochs
    assert lines == [
        "estimate: training epochs 1-2 takes about 3 min on this CPU (64 img/s over iterations 4-13); "
        "each epoch's evaluation comes on top",
        "epoch 1/2 30% 1,920/6,400 images, 64 img/s, ETA 1 min (run 3 min)",
        "epoch 1/2 60% 3,840/6,400 images, 64 img/s, ETA 40 s (run 2 min)",
        "epoch 1/2 90% 5,760/6,400 images, 64 img/s, ETA 10 s (run 2 min)",
        "epoch 2/2 30% 1,920/6,400 images, 64 img/s, ETA 1 min (run 1 min)",
        "epoch 2/2 60% 3,840/6,400 images, 64 img/s, ETA 40 s (run 40 s)",
        "epoch 2/2 90% 5,760/6,400 images, 64 img/s, ETA 10 s (run 10 s)",
    ]


def test_a_short_epoch_keeps_its_one_line(capsys):
    lines = run_with_lines(epoch_length=20, epochs=2, capsys=capsys)
    assert [line for line in lines if not line.startswith("estimate: ")] == []


def test_the_clock_skips_the_warm_up_weighs_small_epochs_and_adds_the_epoch_ends():
    """Epoch 1 at a quarter of the pixels (progressive resizing) measures 2 s an iteration after a slow
    warm-up; epoch 2, at full size, is then expected at 8 s an iteration, plus the 5 s its end took."""
    clock = ProgressClock(warmup=2, epoch_cost=lambda epoch: 0.25 if epoch == 1 else 1.0)
    state = Engine(lambda *_: None).state
    state.epoch_length, state.max_epochs = 10, 2
    state.epoch, state.iteration = 1, 0
    clock.start_epoch(state, now=0.0)
    for iteration, now in [(1, 30.0), (2, 40.0), *((i, 40.0 + 2 * (i - 2)) for i in range(3, 11))]:
        state.iteration = iteration
        clock.tick(state, now)
    assert (clock.first_measured, clock.iterations, clock.seconds_per_work) == (3, 8, 8.0)
    clock.end_training(now=56.0)
    state.epoch = 2
    clock.start_epoch(state, now=61.0)
    assert clock.epoch_end_s == 5.0
    assert clock.run_left_s(state) == 10 * 8.0 + 5.0
    assert clock.images_per_s(state, batch_size=64) == 8.0


@pytest.mark.parametrize(
    ("experiment", "device", "warns"),
    [("resnet18", "cpu", True), ("resnet18", "cuda", False), ("resnet18_cpu", "cpu", False)],
)
def test_a_gpu_recipe_on_a_cpu_says_so_and_names_the_cpu_recipe(experiment, device, warns):
    warning = gpu_recipe_warning(load_config(EXPERIMENTS / f"{experiment}.yaml").train, torch.device(device))
    assert (warning is not None) == warns
    if warns:
        assert warning.startswith("warning: this config is a GPU recipe") and "\n" not in warning
        assert "experiments/resnet18_cpu.yaml" in warning and warning.endswith("Going on.")


def test_a_low_resolution_epoch_costs_its_share_of_the_pixels():
    """Progressive resizing given in pixels or as a fraction of the side: the estimate weighs the small
    epochs by their pixels (24x24 of 32x32 is 0.5625 of a full epoch)."""
    from harness.training.config import TrainConfig
    from harness.training.progress import relative_epoch_cost

    for size, shape in ((24, (32, 32)), (0.75, (32, 32)), (0.75, (64, 64))):
        cost = relative_epoch_cost(TrainConfig(epochs=4, low_res_size=size, low_res_epochs=2), shape)
        assert [cost(e) for e in (1, 2, 3, 4)] == pytest.approx([0.5625, 0.5625, 1, 1]), (size, shape)
