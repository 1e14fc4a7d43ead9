"""Everything attached to the engines besides the training step and the progress display
(``harness.training.progress``): evaluation, logs, checkpoints, NaN and signal handling. Side
effects on disk happen on rank 0 only."""

from __future__ import annotations

import random
import signal
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.handlers import (
    Checkpoint,
    DiskSaver,
    EMAHandler,
    TensorboardLogger,
    TerminateOnNan,
    Timer,
    global_step_from_engine,
)
from ignite.handlers.tensorboard_logger import OptimizerParamsHandler

from harness.core import atomic_io
from harness.core.errors import HarnessError
from harness.core.run_folder import BEST_PREFIX, RunLog
from harness.training.diagnostics import UpdateDiagnostics
from harness.training.event_files import open_event_file


class RNGState:
    """Python, NumPy and torch random states as a checkpointable object."""

    def state_dict(self) -> dict[str, Any]:
        state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        random.setstate(state["python"])
        np.random.set_state(state["numpy"])
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


class StopRequest:
    """Turns SIGINT/SIGTERM into a clean stop after the current iteration."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._on_signal)

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.signum = signum


def every_or_epoch_end(every: int) -> Callable[[Engine, int], bool]:
    """An event filter: every ``every``-th iteration, and each epoch's last."""

    def due(engine: Engine, iteration: int) -> bool:
        return iteration % every == 0 or iteration % engine.state.epoch_length == 0

    return due


def attach_nan_guard(trainer: Engine, check_every: int) -> None:
    """TerminateOnNan on the loss; checked every ``check_every`` iterations (and at each epoch end)
    since each check reads the loss back from the device."""
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED(event_filter=every_or_epoch_end(check_every)),
        TerminateOnNan(output_transform=lambda out: out["loss"]),
    )


def attach_weight_average(trainer: Engine, model: torch.nn.Module, decay: float) -> torch.nn.Module:
    """Keep an exponential moving average of the weights (and BatchNorm statistics), updated after
    every step; returns the averaged model, the one to evaluate and keep.

    The decay ramps up as min(decay, (1 + t) / (10 + t)) at iteration t (TensorFlow's
    ExponentialMovingAverage with num_updates): with a fixed 0.999, the random initial weights would
    still weigh about 14% in the average after 2,000 steps. The ramp depends on the iteration alone,
    so a resumed run needs no extra state beyond the averaged model itself.
    """
    ema = EMAHandler(model, momentum=1.0 - decay, handle_buffers="update")

    @trainer.on(Events.ITERATION_COMPLETED)
    def ramp_up(engine: Engine) -> None:  # registered first: it sets the momentum this step uses
        step = engine.state.iteration
        engine.state.ema_momentum = 1.0 - min(decay, (1 + step) / (10 + step))

    ema.attach(trainer, name="ema_momentum")
    return ema.ema_model


def attach_epoch_timer(trainer: Engine) -> Timer:
    """Wall time of each epoch's training, data loading included, evaluation excluded."""
    timer = Timer(average=False)
    timer.attach(trainer, start=Events.EPOCH_STARTED, pause=Events.EPOCH_COMPLETED)
    return timer


def attach_lr_logging(trainer: Engine, optimizer: torch.optim.Optimizer, log: RunLog) -> None:
    @trainer.on(Events.ITERATION_COMPLETED)
    def record_lr(engine: Engine) -> None:
        log.add_lr(engine.state.iteration, engine.state.epoch, optimizer.param_groups[0]["lr"])


def attach_evaluation(
    trainer: Engine,
    evaluations: dict[str, tuple[Engine, Any]],
    log: RunLog,
    timer: Timer,
    optimizer: torch.optim.Optimizer,
    batch_size: int,
) -> None:
    """After every epoch, evaluate on each split of ``evaluations`` (``val``, when there is one, then
    ``test``: an engine and its loader) and write the epoch's metrics row; a missing split's columns stay
    empty. ``train_images_per_s`` counts the images this process trained in the epoch (``batch_size``
    is the global batch): a resumed epoch's part, not the whole epoch, over the time it took."""
    started_at: dict[str, int] = {}

    @trainer.on(Events.EPOCH_STARTED)
    def note_start(engine: Engine) -> None:
        started_at["iteration"] = engine.state.iteration  # past the checkpoint when resumed mid-epoch

    @trainer.on(Events.EPOCH_COMPLETED)
    def evaluate_and_log(engine: Engine) -> None:
        epoch_time = timer.value()
        images = (engine.state.iteration - started_at["iteration"]) * batch_size
        train = engine.state.metrics
        measured, shown = (
            {},
            [f"train_loss {float(train['train_loss']):.4f}", f"train_acc {float(train['train_acc']):.4f}"],
        )
        for split, (evaluator, loader) in evaluations.items():
            evaluator.run(loader)
            loss, accuracy = float(evaluator.state.metrics["loss"]), float(evaluator.state.metrics["accuracy"])
            measured.update({f"{split}_loss": f"{loss:.6f}", f"{split}_acc": f"{accuracy:.6f}"})
            shown += [f"{split}_loss {loss:.4f}", f"{split}_acc {accuracy:.4f}"]
        log.add_epoch(
            {
                "epoch": engine.state.epoch,
                "iteration": engine.state.iteration,
                "lr": f"{optimizer.param_groups[0]['lr']:.8g}",  # after a plateau schedule has reacted
                "train_loss": f"{float(train['train_loss']):.6f}",
                "train_acc": f"{float(train['train_acc']):.6f}",
                **measured,
                "epoch_time_s": f"{epoch_time:.3f}",
                "train_images_per_s": f"{images / max(epoch_time, 1e-9):.1f}",
            }
        )
        log.flush()
        if idist.get_rank() == 0:
            print(
                f"epoch {engine.state.epoch}/{engine.state.max_epochs}: {' '.join(shown)} ({epoch_time:.1f}s)",
                flush=True,
            )


class AtomicDiskSaver(DiskSaver):
    """Ignite's DiskSaver, written through ``atomic_io``, that keeps the files it replaces until the new
    one is saved.

    Ignite's Checkpoint asks to remove the oldest file before it saves the new one: with ``n_saved: 1``
    a save that fails (a full disk) would leave no checkpoint at all. Here the removal waits for the
    save, which either lands whole or leaves nothing (a full disk: one line naming the file). An old
    file already missing is no error: after a resume from an older checkpoint, the handler's list can
    name a file that a later, lost save replaced."""

    def __init__(self, dirname: Path) -> None:
        super().__init__(dirname, require_empty=False)
        self.superseded: list[str] = []

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        superseded, self.superseded = self.superseded, []
        if idist.get_rank() != self.save_on_rank:
            return
        atomic_io.atomic_write(self.dirname / filename, lambda tmp: save_through_python(checkpoint, tmp))
        for old in superseded:
            if old != filename:  # Checkpoint "removes" a file it is about to write again
                (self.dirname / old).unlink(missing_ok=True)

    def remove(self, filename: str) -> None:
        self.superseded.append(filename)


def save_through_python(checkpoint: Mapping, path: Path) -> None:
    """torch.save through a Python file: torch's own file writer reports a full disk without its errno."""
    with open(path, "wb") as handle:
        torch.save(checkpoint, handle)


def build_best_checkpoint(
    model: torch.nn.Module, val_evaluator: Engine, trainer: Engine, checkpoint_dir: Path
) -> Checkpoint:
    """Keeps the weights of the epoch with the best validation accuracy (never the test set's)."""
    return Checkpoint(
        {"model": model},
        AtomicDiskSaver(checkpoint_dir),
        filename_prefix=BEST_PREFIX,
        score_function=lambda _: float(val_evaluator.state.metrics["accuracy"]),
        score_name="val_acc",
        n_saved=1,
        global_step_transform=lambda *_: trainer.state.epoch,
    )


def attach_checkpoints(
    trainer: Engine,
    to_save: dict[str, Any],
    checkpoint_dir: Path,
    every_epochs: int,
    every_iters: int | None,
    n_saved: int,
    best: Checkpoint | None,
    flush_logs: Callable[[], None],
) -> Callable[[Engine], None]:
    """Save everything needed to resume: after each epoch's evaluation, and every ``every_iters``
    iterations inside an epoch. A terminating (diverged) trainer is never saved. Returns the save
    function, for a stop on a signal."""
    checkpoint = Checkpoint(
        to_save,
        AtomicDiskSaver(checkpoint_dir),
        n_saved=n_saved,
        include_self=True,
    )

    def save(engine: Engine) -> None:
        if engine.should_terminate:
            return
        try:
            flush_logs()  # logs first: a kill between the two leaves rows that resume drops, never a gap
            checkpoint(engine)
        except OSError as error:  # a folder gone, a permission (a full disk is a DiskFullError already)
            raise HarnessError(
                f"{checkpoint_dir}: could not save the checkpoint of iteration {engine.state.iteration} "
                f"({error.strerror or error}); the previous one is intact: once the folder takes files, "
                f"--resume {checkpoint_dir.parent}"
            ) from None

    def epoch_due(engine: Engine, epoch: int) -> bool:
        return epoch % every_epochs == 0 or epoch == engine.state.max_epochs or every_iters is not None

    if best is not None:
        trainer.add_event_handler(Events.EPOCH_COMPLETED, best)
    trainer.add_event_handler(Events.EPOCH_COMPLETED(event_filter=epoch_due), save)
    if every_iters is not None:

        def mid_epoch_due(engine: Engine, iteration: int) -> bool:
            return iteration % every_iters == 0 and iteration % engine.state.epoch_length != 0

        trainer.add_event_handler(Events.ITERATION_COMPLETED(event_filter=mid_epoch_due), save)
    return save


def attach_tensorboard(
    trainer: Engine,
    evaluators: dict[str, Engine],
    optimizer: torch.optim.Optimizer,
    log_dir: Path,
    start_iteration: int,
) -> TensorboardLogger:
    """TensorBoard event files: the learning rate every iteration, train loss and accuracy and each
    evaluated split's (``val/``, ``test/``) every epoch, all against the iteration. A resumed run
    purges what the crashed one logged past its checkpoint (all of it, resumed from none), so
    TensorBoard shows each step once."""
    logger = open_event_file(log_dir, purge_step=start_iteration + 1)
    at_iteration = global_step_from_engine(trainer, Events.ITERATION_COMPLETED)
    logger.attach(trainer, OptimizerParamsHandler(optimizer, "lr", tag="train"), Events.ITERATION_COMPLETED)
    logger.attach_output_handler(
        trainer,
        Events.EPOCH_COMPLETED,
        tag="train",
        metric_names=["train_loss", "train_acc"],
        global_step_transform=at_iteration,
    )
    for split, evaluator in evaluators.items():
        logger.attach_output_handler(
            evaluator,
            Events.COMPLETED,
            tag=split,
            metric_names=["loss", "accuracy"],
            global_step_transform=at_iteration,
        )
    return logger


def attach_update_diagnostics(
    trainer: Engine, diagnostics: UpdateDiagnostics, log: RunLog, tensorboard: TensorboardLogger | None
) -> Callable[[], None]:
    """Move the sampled weight-update diagnostics into weights.csv (and TensorBoard's
    ``updates/<block>``, the update/weight ratio) at each epoch's end, before its log is written, and
    when training stops early (a diverged run's last samples show where it blew up). Returns the
    collect function, which each checkpoint also calls: its rows are on disk with it."""

    def collect() -> None:
        rows = diagnostics.take_rows()  # one device-to-host transfer for the epoch's samples
        log.add_weights(rows)
        if tensorboard is not None:
            for row in rows:
                tensorboard.writer.add_scalar(f"updates/{row['layer']}", float(row["update_ratio"]), row["iteration"])

    def collect_and_flush() -> None:
        collect()
        log.flush()

    trainer.add_event_handler(Events.EPOCH_COMPLETED, collect)
    trainer.add_event_handler(Events.TERMINATE, collect_and_flush)
    return collect


def attach_stop_on_signal(trainer: Engine, stop: StopRequest, save: Callable[[Engine], None]) -> None:
    """Stop after the iteration in flight, with a checkpoint. At an epoch's last iteration the stop
    waits for the epoch's evaluation, so that no metrics row goes missing."""

    def stop_if_requested(engine: Engine) -> None:
        if stop.signum is not None and not engine.should_terminate:
            save(engine)
            engine.terminate()

    mid_epoch = Events.ITERATION_COMPLETED(event_filter=lambda engine, i: i % engine.state.epoch_length != 0)
    trainer.add_event_handler(mid_epoch, stop_if_requested)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, stop_if_requested)
