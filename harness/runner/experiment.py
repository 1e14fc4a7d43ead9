"""``run_experiment``: one experiment from its config to its report, the function behind
``python -m harness.run``, the searches' and sweeps' trials, and the Python API.

One code path for one CPU process and for N processes under torchrun (``idist.Parallel``). The
stages of a run: checks (before anything is written), training (every process), then analysis and
the report (one process, after the process group is gone). ``resume=True`` continues whichever
stage a crash interrupted.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import pandas as pd
import torch
from ignite.utils import manual_seed

from harness.config import Config, dump_config, load_config
from harness.core import atomic_io
from harness.core.errors import HarnessError
from harness.core.full_disk import DiskFullError
from harness.core.provenance import describe_device, git_commit, library_versions
from harness.core.run_folder import (
    RunFiles,
    RunLock,
    create_run_dir,
    default_run_dir,
    list_checkpoints,
    utc_now,
)
from harness.data.loaders import EpochBatchSampler, check_batch_size, per_rank_batch
from harness.data.sources import DataSplits
from harness.data.transforms import check_augment
from harness.models.builders import build_model, check_model_output, find_layer
from harness.models.config import describe_model
from harness.models.inputs import ModelInputs, prepare_inputs
from harness.runner.plugins import check_plugins_unchanged, imported_plugins
from harness.training.cpu_threads import limit_cpu_threads
from harness.training.optim import build_optimizer
from harness.training.progress import gpu_recipe_warning
from harness.training.pruning import TrialReporter
from harness.training.schedules import check_schedule
from harness.training.tracking import MlflowRun, check_tracking, env_parent, finish_run, reopen_run, start_run
from harness.training.wiring import Training, build_training

EXIT_DIVERGED = 3


@dataclass
class Outcome:
    """What one process learned; rank 0's decides what is printed and returned."""

    run_dir: Path | None = None
    rank: int = 0
    status: str | None = None
    signum: int | None = None
    lock: RunLock | None = field(default=None, repr=False)


@dataclass
class RunResult:
    """What a run left: its folder, its status (``completed``, ``pruned``, ``diverged``,
    ``interrupted``), its summary.json and its metrics.csv (a row per epoch)."""

    run_dir: Path
    status: str | None
    summary: dict[str, Any]
    metrics: pd.DataFrame
    signum: int | None = None

    @property
    def exit_code(self) -> int:
        """``harness.run``'s exit code for this outcome: 0, 3 diverged, 128 + signal when interrupted."""
        if self.status == "interrupted":
            return 128 + (self.signum or 0)
        if self.status == "diverged":
            return EXIT_DIVERGED
        return 0

    @classmethod
    def read(cls, run_dir: Path, status: str | None = None, signum: int | None = None) -> RunResult:
        """The result as its folder holds it (what a process that did not write it can read: none)."""
        files = RunFiles(run_dir)
        summary = files.read_summary()
        metrics = pd.read_csv(files.metrics) if files.metrics.is_file() else pd.DataFrame()
        return cls(run_dir, status or summary.get("status"), summary, metrics, signum)


# ---------------------------------------------------------------- before anything is written


def check_before_run(cfg: Config, splits: DataSplits, world_size: int) -> None:
    """Every check that needs the data: a batch, a transform, a model, an optimizer, a schedule, a
    layer or an MLflow store that cannot work fails here, in one line, before the run folder exists."""
    train = splits.train
    check_batch_size(cfg.data, len(train), world_size)
    check_augment(cfg.data, train.images[0])
    _, height, width, channels = train.images.shape
    model = build_model(cfg.model, len(splits.classes), channels)
    check_model_output(model, cfg.model, (channels, height, width), len(splits.classes))
    build_optimizer(cfg.optimizer, model)
    batches = EpochBatchSampler(
        len(train),
        per_rank_batch(cfg.data.batch_size, world_size, "data.batch_size"),
        cfg.seed,
        shuffle=True,
        world_size=world_size,
    )
    check_schedule(cfg.scheduler, len(batches), cfg.train.epochs)
    warmup = cfg.scheduler.warmup_epochs_used(cfg.train.epochs)
    if warmup < cfg.scheduler.warmup_epochs and idist.get_rank() == 0:
        print(
            f"note: scheduler.warmup_epochs = {cfg.scheduler.warmup_epochs} is more than half of the "
            f"{cfg.train.epochs}-epoch run: warming up for {warmup:g} epochs",
            flush=True,
        )
    if cfg.analysis.enabled:
        from harness.analysis.cam.base import build_methods  # as the analysis itself: imported when used

        build_methods(cfg.analysis.cam_method_names())
        for name in cfg.analysis.gradcam_layers:
            try:
                find_layer(model, name)
            except ValueError as problem:
                model_said = describe_model(cfg.model.model_dump())
                raise HarnessError(
                    f"analysis.gradcam_layers = {cfg.analysis.gradcam_layers}: {model_said} {problem}"
                ) from None
    if cfg.logging.mlflow is not None:  # last: a new store takes some seconds to create
        check_tracking(cfg.logging.mlflow, cfg.name, env_parent())


def open_run_dir(cfg: Config, out: Path | None) -> tuple[Path, RunLock | None]:
    """Rank 0 creates and locks the run folder and writes its read-only config.yaml; every rank gets the same path."""
    message, lock = "", None
    run_dir = out or default_run_dir(cfg.name)
    if idist.get_rank() == 0:
        try:
            lock = create_run_dir(run_dir)
            atomic_io.write_text(RunFiles(run_dir).config, dump_config(cfg)).chmod(0o444)  # what this run used
        except HarnessError as error:
            message = f"error:{error}"
            if lock is not None:
                lock.release()
    shared = (
        idist.broadcast(message or str(run_dir), src=0, safe_mode=True)
        if idist.get_world_size() > 1
        else (message or str(run_dir))
    )
    if shared.startswith("error:"):
        raise HarnessError(shared[len("error:") :])
    return Path(shared), lock


# ---------------------------------------------------------------- training (every process)


def load_resume_checkpoint(run_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that loads; damaged ones are named, set aside and skipped; what a crash
    while saving left (a temporary file) is removed."""
    if idist.get_rank() == 0:
        atomic_io.remove_partial_files(RunFiles(run_dir).checkpoints)
    for path in list_checkpoints(RunFiles(run_dir).checkpoints):
        try:
            return path, torch.load(path, map_location="cpu", weights_only=False)
        except Exception as error:  # a truncated file raises several types inside torch.load
            if idist.get_rank() == 0:  # every rank skips it; one sets it aside
                print(
                    f"warning: checkpoint {path} is damaged ({type(error).__name__}); using the previous one",
                    file=sys.stderr,
                )
                path.replace(path.with_suffix(".pt.damaged"))
    return None


def write_model_summary(cfg: Config, path: Path, num_classes: int, image_shape: tuple[int, int, int]) -> None:
    """torchinfo's summary of the model for images of ``image_shape`` (height, width, channels)."""
    from torchinfo import summary

    height, width, channels = image_shape
    model = build_model(cfg.model, num_classes, channels)
    text = str(summary(model, input_size=(2, channels, height, width), verbose=0, mode="eval", device="cpu"))
    atomic_io.write_text(path, text + "\n")


def start_summary(
    cfg: Config, run: Training, inputs: ModelInputs, run_dir: Path, resumed_from: Path | None
) -> dict[str, Any]:
    earlier = RunFiles(run_dir).read_summary() if resumed_from else {}
    splits = inputs.splits
    return {
        "name": cfg.name,
        "status": "running",
        "device": describe_device(idist.device()),
        "world_size": idist.get_world_size(),
        "threads_per_process": torch.get_num_threads(),
        "num_params": run.num_params,
        "num_workers": run.num_workers,
        "amp": str(run.amp_dtype).replace("torch.", "") if run.amp_dtype else "off",
        "compiled": run.compiled,
        "channels_last": run.channels_last,
        "train_images": len(splits.train),
        "val_images": len(splits.val) if splits.val is not None else 0,
        "test_images": len(splits.test),
        "validation": splits.val_source,
        "classes": splits.classes,
        **inputs.notes,  # image size, channels, normalization: what the data became for the model
        "iterations_per_epoch": run.iters_per_epoch,
        "started_utc": earlier.get("started_utc") or utc_now(),
        "resumed_from": str(resumed_from) if resumed_from else None,
        # Every start and end of this run's training, so the report can say what happened to it.
        "history": [
            *earlier.get("history", []),
            {
                "event": "resumed" if resumed_from else "started",
                "utc": utc_now(),
                "iteration": run.trainer.state.iteration,
                **({"checkpoint": resumed_from.name} if resumed_from else {}),
            },
        ],
        "plugins": imported_plugins(cfg),  # what was imported by path or from a package: --resume checks it
        "git_commit": git_commit(),
        "versions": library_versions(),
    }


def track(cfg: Config, run: Training, run_dir: Path, summary: dict[str, Any], resume: bool) -> MlflowRun | None:
    """Start (or, resumed, continue) the run's MLflow run, its id kept in ``summary``, and log each
    epoch's metrics to it once the epoch's row is written."""
    earlier = RunFiles(run_dir).read_summary().get("mlflow_run_id") if resume else None
    tags = {"commit": summary["git_commit"], "device": summary["device"], "world_size": summary["world_size"]}
    tracking = start_run(cfg.logging.mlflow, cfg.name, run_dir, earlier, env_parent(), cfg.to_dict(), tags)
    if tracking is not None:
        summary["mlflow_run_id"] = tracking.run_id
        tracking.attach_to(run.trainer, lambda: run.log.metrics_rows)  # after the evaluation, which writes the row
    return tracking


def training_status(run: Training) -> dict[str, Any]:
    state = run.trainer.state
    loss = state.output["loss"] if state.output else None
    if loss is not None and not math.isfinite(float(loss)):
        return {"status": "diverged", "diverged_at_iteration": state.iteration}
    if getattr(state, "pruned_at_epoch", None):
        return {"status": "pruned", "pruned_at_epoch": state.pruned_at_epoch}
    if run.stop.signum is not None:
        return {"status": "interrupted", "interrupted_at_iteration": state.iteration}
    return {"status": "completed"}


def final_metric(rows: list[dict[str, Any]], column: str) -> float | None:
    value = rows[-1].get(column) if rows else None
    return float(value) if value not in (None, "") else None


def training(
    cfg: Config, run_dir: Path, inputs: ModelInputs, resume: bool, outcome: Outcome, trial: TrialReporter | None
) -> None:
    rank = idist.get_rank()
    splits = inputs.splits
    warning = gpu_recipe_warning(cfg.train, idist.device())
    if warning and rank == 0:
        print(warning, file=sys.stderr, flush=True)
    manual_seed(cfg.seed)
    found = load_resume_checkpoint(run_dir) if resume else None
    resumed_from, state = found or (None, None)
    start = state["trainer"]["iteration"] if state else 0
    run = build_training(cfg, run_dir, splits, start_iteration=start, trial=trial if rank == 0 else None)
    if state is not None:
        run.load_state(state)
        if rank == 0:
            print(f"resuming from {resumed_from} (iteration {run.trainer.state.iteration})", flush=True)
    summary = start_summary(cfg, run, inputs, run_dir, resumed_from)
    tracking = track(cfg, run, run_dir, summary, resume) if rank == 0 and cfg.logging.mlflow is not None else None
    if rank == 0:
        write_model_summary(cfg, RunFiles(run_dir).model_summary, len(splits.classes), splits.train.images.shape[1:])
        atomic_io.write_json(RunFiles(run_dir).summary, summary)

    # A kill after the last checkpoint but before the final summary leaves nothing to train:
    # running the engine again would start it over (ignite restarts a finished state from epoch 0).
    run.stop.install()
    try:
        if run.trainer.state.iteration < run.iters_per_epoch * cfg.train.epochs:
            run.trainer.run(run.loaders.train, max_epochs=cfg.train.epochs)
    except BaseException as error:
        if rank == 0 and isinstance(error, HarnessError):
            record_failure(run_dir, summary, str(error))
        if tracking is not None:
            tracking.set_status("interrupted" if isinstance(error, KeyboardInterrupt) else "failed")
        try:
            run.close()
        except DiskFullError:
            pass  # the same full disk, met again by TensorBoard's writer: the error raised is the one to report
        raise
    finally:
        run.stop.uninstall()
    run.close()

    summary.update(training_status(run))
    if tracking is not None:
        tracking.set_tags({"status": summary["status"]})  # the run ends once analyzed and reported (finish_tracking)
    summary["history"].append({"event": summary["status"], "utc": utc_now(), "iteration": run.trainer.state.iteration})
    best_acc, best_epoch = run.log.best()
    rows = run.log.metrics_rows
    summary.update(
        epochs_completed=len(rows),
        best_val_acc=best_acc,  # chosen on the validation split, as the best checkpoint is
        best_epoch=best_epoch,
        final_val_acc=final_metric(rows, "val_acc"),
        final_val_loss=final_metric(rows, "val_loss"),
        final_test_acc=final_metric(rows, "test_acc"),  # what a run reports
        final_test_loss=final_metric(rows, "test_loss"),
        total_time_s=round(run.stopwatch.elapsed(), 2),
        finished_utc=utc_now(),
    )
    if rank == 0:
        atomic_io.write_json(RunFiles(run_dir).summary, summary)
    outcome.status, outcome.signum = summary["status"], run.stop.signum


def record_failure(run_dir: Path, summary: dict[str, Any], message: str) -> None:
    """Mark the run failed in summary.json if the disk still takes it; ``--resume`` continues it."""
    try:
        atomic_io.write_json(RunFiles(run_dir).summary, {**summary, "status": "failed", "error": message})
    except (OSError, DiskFullError):
        pass


def run_in_process(
    local_rank: int,
    cfg: Config,
    run_dir: Path | None,
    resume: bool,
    outcome: Outcome,
    trial: TrialReporter | None,
) -> None:
    world_size = idist.get_world_size()
    limit_cpu_threads(idist.device())  # before any work: summary.json records threads_per_process
    # Data first: a missing folder or a corrupt image fails before the run folder exists.
    with idist.one_rank_first(local=True):  # the first rank decodes and caches; the others read the cache
        inputs = prepare_inputs(cfg.data, cfg.model, cfg.seed)
    splits = inputs.splits
    if splits.skipped and idist.get_rank() == 0:
        print(f"warning: {splits.skipped}", file=sys.stderr, flush=True)
    # config.yaml keeps what was asked (data.mean: auto); training uses the numbers, which summary.json
    # records, and which a resumed run or the analysis measure again on the same images.
    measured = cfg.model_copy(update={"data": inputs.data})
    check_before_run(measured, splits, world_size)
    if not resume:
        run_dir, outcome.lock = open_run_dir(cfg, run_dir)
    outcome.run_dir, outcome.rank = run_dir, idist.get_rank()
    if outcome.rank == 0:
        print(f"run folder: {run_dir}", flush=True)
    training(measured, run_dir, inputs, resume, outcome, trial)


# ---------------------------------------------------------------- after training (one process)


def finish(run_dir: Path, cfg: Config) -> None:
    """Analysis (unless done already or switched off) and the report, for a run whose training completed.

    The process group is gone by now: the analysis is one process's job, and Ignite's metrics in it
    must not wait for ranks that have left.
    """
    summary = RunFiles(run_dir).read_summary()
    if cfg.analysis.enabled and not summary.get("analysis_completed_utc"):
        from harness.analysis.pipeline import analyze

        analyze(cfg, run_dir, idist.device())
        print(f"analysis: {run_dir / 'analysis'}", flush=True)
    render_report(run_dir, cfg)


def render_report(run_dir: Path, cfg: Config) -> None:
    if cfg.report.enabled:
        from harness.reporting.run_report import render_run_report

        print(f"report: {render_run_report(run_dir)}", flush=True)  # shows whatever exists, whatever the status


def finish_tracking(run_dir: Path, cfg: Config) -> None:
    """The MLflow run's last figures, its files and its end, once the run has its analysis and report."""
    run_id = RunFiles(run_dir).read_summary().get("mlflow_run_id")
    if cfg.logging.mlflow is not None and run_id and (tracking := reopen_run(cfg.logging.mlflow, run_id)):
        finish_run(tracking, run_dir)


# ---------------------------------------------------------------- the function


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def launch_rank() -> int:
    """This process's rank as torchrun set it, readable before (and after) the process group exists."""
    return int(os.environ.get("RANK", "0"))


def resolve_backend(cfg: Config) -> str | None:
    if not launched_by_torchrun():
        return None
    return cfg.train.backend or ("nccl" if torch.cuda.is_available() else "gloo")


def open_for_resume(run_dir: Path) -> tuple[Config, RunLock | None, bool]:
    """The run's own config, its lock (held by rank 0), and whether its training already completed."""
    if not RunFiles(run_dir).config.is_file():
        raise HarnessError(f"--resume {run_dir}: not a run folder (no config.yaml there)")
    cfg = load_config(RunFiles(run_dir).config)
    check_plugins_unchanged(run_dir, cfg)
    lock = None
    if launch_rank() == 0:
        lock = RunLock(run_dir)
        lock.acquire()
    return cfg, lock, RunFiles(run_dir).read_summary().get("status") == "completed"


def run_experiment(
    cfg: Config | None = None,
    run_dir: str | Path | None = None,
    resume: bool = False,
    *,
    trial: TrialReporter | None = None,
) -> RunResult:
    """Train ``cfg`` into ``run_dir`` (default ``results/<name>/<UTC timestamp>``), then analyze it
    and render its report, as ``python -m harness.run`` does; with ``resume=True``, continue the run
    in ``run_dir`` (its own config.yaml; ``cfg``, when given, must equal it) from its newest
    checkpoint, or finish its analysis and report.

    Under torchrun every process calls it; rank 0 writes the folder. Bad input raises ``HarnessError``
    (one line; nothing written). ``trial`` is given when a search runs this run as one of its trials,
    to report each epoch's validation metrics to.
    """
    lock, outcome = None, Outcome()
    run_dir = Path(run_dir) if run_dir is not None else None
    try:
        if resume:
            if run_dir is None:
                raise HarnessError("resume=True: expected the run folder to continue (run_dir)")
            stored, lock, trained = open_for_resume(run_dir)
            if cfg is not None and cfg.to_dict() != stored.to_dict():
                raise HarnessError(f"{run_dir}: a resumed run continues its own config.yaml; the config given differs")
            cfg = stored
            if trained:
                if launch_rank() == 0:
                    print(f"{run_dir}: training already completed; finishing the analysis and the report", flush=True)
                    finish(run_dir, cfg)
                    finish_tracking(run_dir, cfg)
                return RunResult.read(run_dir)
        elif cfg is None:
            raise HarnessError("expected a config to run (load_config), or resume=True with a run folder")
        check_augment(cfg.data)  # a bad transform fails here, before the data is read
        parallel = idist.Parallel(backend=resolve_backend(cfg))
        # Their log lines ("Run ... in 1 processes", "Engine run is terminating due to exception")
        # would surround the one line that reports an error.
        logging.getLogger("ignite.distributed.launcher.Parallel").setLevel(logging.WARNING)
        logging.getLogger("ignite.engine.engine.Engine").setLevel(logging.CRITICAL)
        with parallel:
            parallel.run(run_in_process, cfg, run_dir, resume, outcome, trial)
        if outcome.rank == 0:  # the process group is gone by now: idist.get_rank() says 0 everywhere
            if outcome.status == "completed":
                finish(outcome.run_dir, cfg)
            else:
                render_report(outcome.run_dir, cfg)
            finish_tracking(outcome.run_dir, cfg)
            print(f"run folder: {outcome.run_dir} ({outcome.status})", flush=True)
            return RunResult.read(outcome.run_dir, outcome.status, outcome.signum)
        return RunResult(outcome.run_dir, outcome.status, {}, pd.DataFrame(), outcome.signum)
    except DiskFullError as full:
        folder = outcome.run_dir or run_dir
        if folder is not None and RunFiles(folder).config.is_file():  # a run folder to continue
            raise full.then(f"--resume {folder}") from None
        raise
    finally:
        for held in (lock, outcome.lock):
            if held is not None:
                held.release()
