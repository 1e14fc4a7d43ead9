"""``python -m harness.run CONFIG [--set K=V ...] [--out RUN_DIR]`` or ``--resume RUN_DIR``.

One code path for one CPU process and for N processes under torchrun (``idist.Parallel``).
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NoReturn

import ignite
import ignite.distributed as idist
import torch
from ignite.utils import manual_seed

from harness import atomic_io
from harness.config import Config, dump_config, load_config
from harness.data import ImageArrays, check_augment, check_batch_size, load_arrays
from harness.errors import HarnessError, exit_on_harness_error
from harness.handlers import list_checkpoints
from harness.models import build_model
from harness.training import build_training

EXIT_DIVERGED = 3


def git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if commit.returncode != 0:
        return None
    return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def library_versions() -> dict[str, str]:
    import albumentations
    import captum
    import torchvision

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "ignite": ignite.__version__,
        "albumentations": albumentations.__version__,
        "captum": captum.__version__,
    }


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def default_run_dir(cfg: Config) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return Path("results") / cfg.name / stamp


def prepare_run_dir(run_dir: Path) -> None:
    """Create the run folder, refusing to overwrite another run's files."""
    if (run_dir / "summary.json").exists() or (run_dir / "config.yaml").exists():
        raise HarnessError(f"--out {run_dir}: already holds a run; continue it with --resume {run_dir} or choose another folder")
    try:
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise HarnessError(f"output folder {run_dir}: cannot be written ({error.strerror or error})") from None


def load_resume_checkpoint(run_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that loads; damaged ones are named, set aside and skipped."""
    for path in list_checkpoints(run_dir / "checkpoints"):
        try:
            return path, torch.load(path, map_location="cpu", weights_only=False)
        except Exception as error:  # a truncated file raises several types inside torch.load
            if idist.get_rank() == 0:  # every rank skips it; one sets it aside
                print(f"warning: checkpoint {path} is damaged ({type(error).__name__}); using the previous one", file=sys.stderr)
                path.replace(path.with_suffix(".pt.damaged"))
    return None


def training(cfg: Config, run_dir: Path, arrays: tuple[ImageArrays, ImageArrays], resume: bool, outcome: dict[str, Any]) -> None:
    rank, device = idist.get_rank(), idist.device()
    started = time.time()
    manual_seed(cfg.seed)
    train_arrays, test_arrays = arrays
    run = build_training(cfg, run_dir, train_arrays, test_arrays)

    resumed_from = None
    elapsed_before = 0.0
    if resume:
        found = load_resume_checkpoint(run_dir)
        if found is not None:
            resumed_from, state = found
            if state["trainer"]["iteration"] >= run.iters_per_epoch * cfg.train.epochs:
                outcome["already_done"] = True
                return
            run.load_state(state)
            elapsed_before = float(atomic_io.read_json(run_dir / "summary.json").get("total_time_s") or 0.0)
            if rank == 0:
                print(f"resuming from {resumed_from} (iteration {run.trainer.state.iteration})", flush=True)

    summary: dict[str, Any] = {
        "name": cfg.name,
        "status": "running",
        "device": describe_device(device),
        "world_size": idist.get_world_size(),
        "num_params": run.num_params,
        "num_workers": run.num_workers,
        "amp": str(run.amp_dtype).replace("torch.", "") if run.amp_dtype else "off",
        "compiled": run.compiled,
        "train_images": len(train_arrays),
        "test_images": len(test_arrays),
        "classes": train_arrays.classes,
        "iterations_per_epoch": run.iters_per_epoch,
        "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "resumed_from": str(resumed_from) if resumed_from else None,
        "git_commit": git_commit(),
        "versions": library_versions(),
    }
    if rank == 0:
        write_model_summary(cfg, run_dir / "model_summary.txt", len(train_arrays.classes))
        atomic_io.write_json(run_dir / "summary.json", summary)

    run.stop.install()
    try:
        run.trainer.run(run.train_loader, max_epochs=cfg.train.epochs)
    finally:
        run.stop.uninstall()

    state = run.trainer.state
    loss = state.output["loss"] if state.output else None
    if loss is not None and not math.isfinite(float(loss)):
        summary.update(status="diverged", diverged_at_iteration=state.iteration)
    elif run.stop.signum is not None:
        summary.update(status="interrupted", interrupted_at_iteration=state.iteration)
    else:
        summary["status"] = "completed"
    best_acc, best_epoch = run.log.best()
    summary.update(
        epochs_completed=len(run.log.metrics_rows),
        best_val_acc=best_acc,
        best_epoch=best_epoch,
        final_val_acc=float(run.log.metrics_rows[-1]["val_acc"]) if run.log.metrics_rows else None,
        total_time_s=round(elapsed_before + time.time() - started, 2),
        finished_utc=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    if rank == 0:
        atomic_io.write_json(run_dir / "summary.json", summary)
    outcome.update(status=summary["status"], signum=run.stop.signum)


def write_model_summary(cfg: Config, path: Path, num_classes: int) -> None:
    from torchinfo import summary

    text = str(summary(build_model(cfg.model, num_classes), input_size=(2, 3, 32, 32), verbose=0, mode="eval", device="cpu"))
    atomic_io.write_text(path, text + "\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m harness.run", description="Train ResNet18 from a YAML experiment.")
    parser.add_argument("config", nargs="?", help="experiment YAML, e.g. experiments/resnet18.yaml")
    parser.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override config keys, e.g. --set train.epochs=5 data.batch_size=256")
    parser.add_argument("--out", type=Path, help="run folder (default: results/<name>/<UTC timestamp>)")
    parser.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue an interrupted run from its newest checkpoint")
    args = parser.parse_args(argv)
    if args.resume is None and args.config is None:
        parser.error("give a CONFIG file, or --resume RUN_DIR")
    if args.resume is not None and (args.config or args.overrides or args.out):
        parser.error("--resume RUN_DIR takes the run's own config.yaml; give no CONFIG, --set or --out with it")
    return args


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def resolve_backend(cfg: Config) -> str | None:
    if not launched_by_torchrun():
        return None
    return cfg.train.backend or ("nccl" if torch.cuda.is_available() else "gloo")


def open_run_dir(cfg: Config, out: Path | None) -> Path:
    """Rank 0 creates the run folder and its locked config.yaml; every rank gets the same path."""
    message = ""
    run_dir = out or default_run_dir(cfg)
    if idist.get_rank() == 0:
        try:
            prepare_run_dir(run_dir)
            atomic_io.write_text(run_dir / "config.yaml", dump_config(cfg)).chmod(0o444)  # what this run used
        except HarnessError as error:
            message = f"error:{error}"
    shared = idist.broadcast(message or str(run_dir), src=0, safe_mode=True) if idist.get_world_size() > 1 else (message or str(run_dir))
    if shared.startswith("error:"):
        raise HarnessError(shared[len("error:"):])
    return Path(shared)


def run_in_process(local_rank: int, cfg: Config, args: argparse.Namespace, outcome: dict[str, Any]) -> None:
    resume = args.resume is not None
    # Data first: a missing folder or a corrupt image fails before the run folder exists.
    with idist.one_rank_first(local=True):  # the first rank decodes and caches; the others read the cache
        arrays = load_arrays(cfg)
    check_batch_size(cfg.data, len(arrays[0]), idist.get_world_size())
    run_dir = args.resume if resume else open_run_dir(cfg, args.out)
    if idist.get_rank() == 0:
        print(f"run folder: {run_dir}", flush=True)
    outcome["run_dir"] = run_dir
    training(cfg, run_dir, arrays, resume, outcome)
    if outcome.get("status") == "completed" and idist.get_rank() == 0 and cfg.analysis.enabled:
        from harness.analyze import analyze_run

        analyze_run(run_dir, idist.device())
        print(f"analysis: {run_dir / 'analysis'}", flush=True)
    if idist.get_rank() == 0 and cfg.report.enabled:
        from harness.report import render_run_report

        print(f"report: {render_run_report(run_dir)}", flush=True)  # renders whatever exists, whatever the status
    outcome["rank"] = idist.get_rank()


@exit_on_harness_error
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.resume is not None:
        if not (args.resume / "config.yaml").is_file():
            raise HarnessError(f"--resume {args.resume}: not a run folder (no config.yaml there)")
        if atomic_io.read_json(args.resume / "summary.json").get("status") == "completed":
            print(f"{args.resume}: this run already completed; nothing to resume")
            return 0
        cfg = load_config(args.resume / "config.yaml")
    else:
        cfg = load_config(args.config, args.overrides)
    check_augment(cfg.data)  # a bad transform fails here, before anything is written
    outcome: dict[str, Any] = {}
    parallel = idist.Parallel(backend=resolve_backend(cfg))
    # Its INFO lines ("Run ... in 1 processes") would precede any one-line error on stderr.
    logging.getLogger("ignite.distributed.launcher.Parallel").setLevel(logging.WARNING)
    with parallel:
        parallel.run(run_in_process, cfg, args, outcome)
    run_dir = outcome.get("run_dir")
    if outcome.get("already_done"):
        print(f"{run_dir}: training already finished; nothing to resume")
        return 0
    status = outcome.get("status")
    if outcome.get("rank", 0) == 0:  # the process group is gone by now: idist.get_rank() says 0 everywhere
        print(f"run folder: {run_dir} ({status})", flush=True)
    if status == "interrupted":
        return 128 + outcome["signum"]
    if status == "diverged":
        return EXIT_DIVERGED
    return 0


def exit_worker(code: int) -> NoReturn:
    """End a torchrun worker without interpreter finalization.

    A gloo worker thread may still be releasing the last collective's tensors (the metrics'
    all_gather of the final checkpoint) after the main thread has moved on; if the interpreter is
    finalizing by then, that thread's GIL request aborts the process ("terminate called without an
    active exception", pytorch/pytorch#179291) and torchrun fails a run that finished. Every result
    file is written and closed by now: only the standard streams and log handlers need flushing.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def cli() -> NoReturn:
    """``python -m harness.run`` and ``python -m harness``, alone or under torchrun."""
    exit_code = main()
    if launched_by_torchrun():
        exit_worker(exit_code)
    sys.exit(exit_code)


if __name__ == "__main__":
    cli()
