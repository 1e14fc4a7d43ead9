"""What a user sees while a run trains, on rank 0: a bar per epoch and per evaluation on a terminal,
``tqdm.auto`` bars in a notebook, a progress line now and then in a log; one estimate of the whole
run's training time after its first measured iterations; a word when a GPU recipe starts on a CPU.

tqdm is driven directly rather than through Ignite's ``ProgressBar``, for two reasons. The bar shows
this module's own clock (images/s, the time left in the epoch and in the run), the one measurement
that the log lines and the estimate show too, not tqdm's separately smoothed rate. And a terminal
that reports no size (a pseudo-terminal whose size was never set says 0 x 0, and tqdm then draws
nothing at all) gets a size of its own.

Cost: the handler runs only on the iterations where the NaN guard has already read the loss back
(``every``: each one on a CPU, every 10th on a GPU), so it never stalls a device's queue; it reads
the clock there, and draws at most twice a second on a terminal, or once per ``LINE_INTERVAL_S``
(at least) in a log.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TextIO

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events, State

from harness.core.durations import format_duration
from harness.training.config import TrainConfig
from harness.training.handlers import every_or_epoch_end

BAR_REFRESH_S = 0.5
# In a log, a line at most every 30 s, and at most 10 an epoch (every 10% of it) when epochs are long.
LINE_INTERVAL_S = 30.0
LINE_EPOCH_FRACTION = 0.1
# The estimate comes once this many iterations, or seconds, are measured (or at the first epoch's end).
ESTIMATE_AFTER_ITERATIONS = 10
ESTIMATE_AFTER_S = 20.0
UNSIZED_TERMINAL = (100, 24)  # columns, lines
EPOCH_BAR_FORMAT = "{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt}{postfix}"
EVALUATION_BAR_FORMAT = "{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt}"


def in_notebook() -> bool:
    """Whether this process runs under a Jupyter kernel with widgets, as ``tqdm.auto`` decides it."""
    import tqdm.auto  # noqa: F401  (imports tqdm.autonotebook without its warning; that module decides)
    from tqdm.autonotebook import tqdm as chosen
    from tqdm.std import tqdm as console

    return chosen is not console


def resolve_mode(setting: str, stream: TextIO) -> str:
    """The display for ``logging.progress``: ``auto`` is ``notebook`` under a Jupyter kernel, ``bar``
    when ``stream`` (the bars' stream, stderr) is a terminal, ``lines`` otherwise."""
    if setting != "auto":
        return setting
    if in_notebook():
        return "notebook"
    return "bar" if stream.isatty() else "lines"


def relative_epoch_cost(train: TrainConfig, image_size: tuple[int, int]) -> Callable[[int], float]:
    """An epoch's compute relative to a full-size one: the share of the pixels for the low-resolution
    epochs of progressive resizing (a convolution's cost grows with the pixels), 1 for the others."""
    small = train.low_res_pixels(*image_size)
    low_res = small[0] * small[1] / (image_size[0] * image_size[1]) if small else 1.0
    return lambda epoch: low_res if epoch <= train.low_res_epochs_used else 1.0


def gpu_recipe_warning(train: TrainConfig, device: torch.device) -> str | None:
    """The one line for a GPU recipe started on a CPU: the config marks its intent itself
    (``train.cpu_recipe`` names the recipe to run without a GPU), since nothing else in a config
    (its precision, its batch, where it augments) says what hardware its author meant."""
    if train.cpu_recipe is None or device.type != "cpu":
        return None
    return (
        "warning: this config is a GPU recipe and this machine trains on its CPU, many times slower (the estimate "
        f"follows the first iterations); the recipe for a CPU is {train.cpu_recipe}. Going on."
    )


class ProgressClock:
    """The one clock behind every figure shown: seconds per unit of work, measured on this run's own
    iterations. An iteration's work is its epoch's relative cost (``relative_epoch_cost``), so that
    low-resolution epochs measured first do not make the full-size ones look cheap.

    Not measured: the first ``warmup`` iterations of this process (allocator, cuDNN autotuning,
    compilation) and the time between an epoch's last iteration and the next epoch's start
    (evaluation, logs, checkpoints), which is measured apart, as ``epoch_end_s``, from the first
    epoch's end on."""

    def __init__(self, warmup: int, epoch_cost: Callable[[int], float]) -> None:
        self.warmup = warmup
        self.epoch_cost = epoch_cost
        self.start_iteration: int | None = None
        self.seconds = 0.0
        self.work = 0.0
        self.iterations = 0
        self.first_measured: int | None = None
        self.epoch_end_s: float | None = None
        self._last: tuple[int, float] = (0, 0.0)
        self._training_ended_at: float | None = None

    def start_epoch(self, state: State, now: float) -> None:
        if self.start_iteration is None:
            self.start_iteration = state.iteration  # past the checkpoint when resumed
        if self._training_ended_at is not None:
            self.epoch_end_s = now - self._training_ended_at
        self._last = (state.iteration, now)  # the loader's start counts: it is part of every epoch

    def tick(self, state: State, now: float) -> None:
        last_iteration, last_time = self._last
        if last_iteration >= self.start_iteration + self.warmup and state.iteration > last_iteration:
            self.seconds += now - last_time
            self.work += (state.iteration - last_iteration) * self.epoch_cost(state.epoch)
            self.iterations += state.iteration - last_iteration
            self.first_measured = self.first_measured or last_iteration + 1
        self._last = (state.iteration, now)

    def end_training(self, now: float) -> None:
        self._training_ended_at = now

    @property
    def seconds_per_work(self) -> float | None:
        return self.seconds / self.work if self.work else None

    def work_left(self, state: State, from_iteration: int | None = None) -> float:
        """The work of the iterations after ``from_iteration`` (default: the current one) to the run's end."""
        iteration = state.iteration if from_iteration is None else from_iteration
        length = state.epoch_length
        work, epoch = 0.0, iteration // length + 1
        if iteration % length:
            work += (length - iteration % length) * self.epoch_cost(epoch)
            epoch += 1
        return work + length * sum(self.epoch_cost(e) for e in range(epoch, state.max_epochs + 1))

    def images_per_s(self, state: State, batch_size: int) -> float:
        return batch_size / (self.epoch_cost(state.epoch) * self.seconds_per_work)

    def epoch_s(self, state: State) -> float | None:
        """How long the current epoch's training takes in all, at the measured pace."""
        per_work = self.seconds_per_work
        return None if per_work is None else state.epoch_length * self.epoch_cost(state.epoch) * per_work

    def epoch_left_s(self, state: State) -> float:
        left = state.epoch * state.epoch_length - state.iteration
        return left * self.epoch_cost(state.epoch) * self.seconds_per_work

    def run_left_s(self, state: State) -> float:
        """Training left at the measured pace, plus every epoch end still to come at the last one's measured time."""
        epoch_ends = (state.max_epochs - state.epoch + 1) * (self.epoch_end_s or 0.0)
        return self.work_left(state) * self.seconds_per_work + epoch_ends


@dataclass
class Snapshot:
    """Where the epoch stands; the rate and the times left are None until the clock has measured."""

    epoch: int
    epochs: int
    done: int
    total: int
    images_done: int
    images_total: int
    loss: float | None
    lr: float
    images_per_s: float | None = None
    epoch_left_s: float | None = None
    run_left_s: float | None = None

    def pace(self) -> str:
        if self.images_per_s is None:
            return "measuring speed"
        return (
            f"{self.images_per_s:,.0f} img/s, ETA {format_duration(self.epoch_left_s)} "
            f"(run {format_duration(self.run_left_s)})"
        )


class Display(Protocol):
    shows_evaluation: bool

    def start_epoch(self, epoch: int, epochs: int, done: int, total: int) -> None: ...

    def next_update(self, now: float, epoch_s: float | None, first: bool) -> float: ...

    def update(self, snapshot: Snapshot) -> None: ...

    def end_epoch(self) -> None: ...

    def start_evaluation(self, split: str, total: int) -> None: ...

    def evaluation_step(self) -> None: ...

    def end_evaluation(self) -> None: ...

    def write(self, line: str) -> None: ...

    def close(self) -> None: ...


def terminal_shape(stream: TextIO) -> dict[str, int]:
    """tqdm's ``ncols`` and ``nrows`` for ``stream``: a terminal that reports 0 (a pseudo-terminal whose
    size was never set) would get no bar at all from tqdm, which then hides every bar below row -1."""
    try:
        size = os.get_terminal_size(stream.fileno())
    except (AttributeError, OSError, ValueError):  # not a terminal (a forced bar into a file or a pipe)
        size = os.terminal_size((0, 0))
    return {"ncols": size.columns or UNSIZED_TERMINAL[0], "nrows": size.lines or UNSIZED_TERMINAL[1]}


class Bars:
    """A tqdm bar for each epoch's training and for each evaluation, erased when it ends (the epoch's
    line stays). ``notebook``: ``tqdm.auto``'s widgets, which size themselves."""

    shows_evaluation = True

    def __init__(self, stream: TextIO, notebook: bool) -> None:
        if notebook:
            from tqdm.auto import tqdm as bar_class

            self._options: dict[str, Any] = {}
        else:
            from tqdm.std import tqdm as bar_class

            self._options = {"file": stream, **terminal_shape(stream)}
        self._bar_class = bar_class
        self._epoch_bar: Any = None
        self._evaluation_bar: Any = None

    def start_epoch(self, epoch: int, epochs: int, done: int, total: int) -> None:
        self._epoch_bar = self._bar_class(
            total=total, initial=done, desc=f"epoch {epoch}/{epochs}", leave=False,
            bar_format=EPOCH_BAR_FORMAT, **self._options,
        )  # fmt: skip

    def next_update(self, now: float, epoch_s: float | None, first: bool) -> float:
        return now if first else now + BAR_REFRESH_S

    def update(self, snapshot: Snapshot) -> None:
        loss = "" if snapshot.loss is None else f"loss {snapshot.loss:.4f}, "
        self._epoch_bar.n = snapshot.done
        self._epoch_bar.set_postfix_str(f"{loss}lr {snapshot.lr:.3g}, {snapshot.pace()}")  # and draws it

    def end_epoch(self) -> None:
        self._epoch_bar = self._closed(self._epoch_bar)

    def start_evaluation(self, split: str, total: int) -> None:
        self._evaluation_bar = self._bar_class(
            total=total, desc=f"{split} evaluation", leave=False, bar_format=EVALUATION_BAR_FORMAT,
            mininterval=BAR_REFRESH_S, **self._options,
        )  # fmt: skip

    def evaluation_step(self) -> None:
        self._evaluation_bar.update()  # draws only when BAR_REFRESH_S has passed

    def end_evaluation(self) -> None:
        self._evaluation_bar = self._closed(self._evaluation_bar)

    def write(self, line: str) -> None:
        self._bar_class.write(line, file=sys.stdout)  # above the bar, which is drawn again below it

    def close(self) -> None:
        self.end_evaluation()
        self.end_epoch()

    @staticmethod
    def _closed(bar: Any) -> None:
        if bar is not None:
            bar.close()


class Lines:
    """A line on stdout, with the epoch lines, every ``LINE_INTERVAL_S`` or every tenth of the
    epoch, whichever is longer; an epoch shorter than that keeps its one line."""

    shows_evaluation = False

    def start_epoch(self, epoch: int, epochs: int, done: int, total: int) -> None:
        pass

    def next_update(self, now: float, epoch_s: float | None, first: bool) -> float:
        return now + max(LINE_INTERVAL_S, LINE_EPOCH_FRACTION * (epoch_s or 0.0))

    def update(self, snapshot: Snapshot) -> None:
        share = 100 * snapshot.done / snapshot.total
        print(
            f"epoch {snapshot.epoch}/{snapshot.epochs} {share:.0f}% "
            f"{snapshot.images_done:,}/{snapshot.images_total:,} images, {snapshot.pace()}",
            flush=True,
        )

    def end_epoch(self) -> None:
        pass

    def start_evaluation(self, split: str, total: int) -> None:
        pass

    def evaluation_step(self) -> None:
        pass

    def end_evaluation(self) -> None:
        pass

    def write(self, line: str) -> None:
        print(line, flush=True)

    def close(self) -> None:
        pass


class RunProgress:
    """The trainer's and the evaluators' handlers that feed the clock and the display."""

    def __init__(
        self,
        display: Display,
        clock: ProgressClock,
        batch_size: int,
        lr: Callable[[], float],
        device_name: str,
        now: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.display, self.clock = display, clock
        self.batch_size, self.lr, self.device_name, self.now = batch_size, lr, device_name, now
        self.estimated = False
        self._next_update = 0.0

    def attach(self, trainer: Engine, evaluators: dict[str, Engine], every: int) -> None:
        """``every``: the iterations whose loss has been read back already (``wiring.sync_every``)."""
        trainer.add_event_handler(Events.EPOCH_STARTED, self.start_epoch)
        trainer.add_event_handler(Events.ITERATION_COMPLETED(event_filter=every_or_epoch_end(every)), self.iteration)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self.end_epoch)  # before the evaluation's handler
        if not self.display.shows_evaluation:
            return
        for split, evaluator in evaluators.items():
            evaluator.add_event_handler(Events.STARTED, self.start_evaluation, split)
            evaluator.add_event_handler(Events.ITERATION_COMPLETED, lambda _: self.display.evaluation_step())
            evaluator.add_event_handler(Events.COMPLETED, lambda _: self.display.end_evaluation())

    def start_evaluation(self, evaluator: Engine, split: str) -> None:
        self.display.start_evaluation(split, evaluator.state.epoch_length)

    def start_epoch(self, engine: Engine) -> None:
        now, state = self.now(), engine.state
        self.clock.start_epoch(state, now)
        done = state.iteration - (state.epoch - 1) * state.epoch_length
        self.display.start_epoch(state.epoch, state.max_epochs, done, state.epoch_length)
        self._next_update = self.display.next_update(now, self.clock.epoch_s(state), first=True)

    def iteration(self, engine: Engine) -> None:
        now, state = self.now(), engine.state
        self.clock.tick(state, now)
        if not self.estimated and (
            self.clock.iterations >= ESTIMATE_AFTER_ITERATIONS or self.clock.seconds >= ESTIMATE_AFTER_S
        ):
            self.estimate(state)
        if now >= self._next_update:
            self.display.update(self.snapshot(state))
            self._next_update = self.display.next_update(now, self.clock.epoch_s(state), first=False)

    def end_epoch(self, engine: Engine) -> None:
        self.clock.end_training(self.now())
        self.display.end_epoch()
        state = engine.state
        if not self.estimated and self.clock.iterations and state.epoch < state.max_epochs:
            self.estimate(state)

    def snapshot(self, state: State) -> Snapshot:
        done = state.iteration - (state.epoch - 1) * state.epoch_length
        output = state.output
        snapshot = Snapshot(
            state.epoch,
            state.max_epochs,
            done,
            state.epoch_length,
            done * self.batch_size,
            state.epoch_length * self.batch_size,
            float(output["loss"]) if output else None,
            self.lr(),
        )
        if self.clock.seconds_per_work is not None:
            snapshot.images_per_s = self.clock.images_per_s(state, self.batch_size)
            snapshot.epoch_left_s = self.clock.epoch_left_s(state)
            snapshot.run_left_s = self.clock.run_left_s(state)
        return snapshot

    def estimate(self, state: State) -> None:
        """The whole run's training time (from where this process started) at the pace measured so far."""
        self.estimated = True
        clock = self.clock
        total_s = clock.work_left(state, from_iteration=clock.start_iteration) * clock.seconds_per_work
        first_epoch = clock.start_iteration // state.epoch_length + 1
        measured = (
            f"iterations {clock.first_measured}-{state.iteration}"
            if state.iteration > clock.first_measured
            else f"iteration {state.iteration}"
        )
        self.display.write(
            f"estimate: training epochs {first_epoch}-{state.max_epochs} takes about {format_duration(total_s)} "
            f"on this {self.device_name} ({clock.images_per_s(state, self.batch_size):,.0f} img/s over "
            f"{measured}); each epoch's evaluation comes on top"
        )

    def close(self) -> None:
        self.display.close()


def attach_progress(
    trainer: Engine,
    evaluators: dict[str, Engine],
    setting: str,
    batch_size: int,
    lr: Callable[[], float],
    every: int,
    epoch_cost: Callable[[int], float],
    device: torch.device,
) -> RunProgress | None:
    """Progress on rank 0 as ``logging.progress`` (``setting``) asks; None where nothing is shown.
    ``batch_size`` is the global batch; the first max(3, ``every``) iterations are the clock's warm-up."""
    mode = resolve_mode(setting, sys.stderr)
    if idist.get_rank() != 0 or mode == "off":
        return None
    display: Display = Lines() if mode == "lines" else Bars(sys.stderr, notebook=mode == "notebook")
    device_name = "GPU" if device.type == "cuda" else device.type.upper()
    progress = RunProgress(display, ProgressClock(max(3, every), epoch_cost), batch_size, lr, device_name)
    progress.attach(trainer, evaluators, every)
    return progress
