"""``python -m harness.run CONFIG [--set K=V ...] [--out RUN_DIR]``, ``--resume RUN_DIR`` or ``--list``:
the command line of ``harness.runner.experiment.run_experiment``, alone or under torchrun."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

from harness.config import load_config
from harness.core.errors import ArgumentParser, exit_on_harness_error
from harness.runner.experiment import launched_by_torchrun, run_experiment
from harness.runner.plugins import registered_names


def parse_args(argv: list[str] | None) -> Any:
    parser = ArgumentParser(
        prog="python -m harness.run",
        description="Train a YAML experiment's model (built in, torchvision's or your own), analyze it, report.",
    )
    parser.add_argument("config", nargs="?", help="experiment YAML, e.g. experiments/resnet18.yaml")
    parser.add_overrides()
    parser.add_argument("--out", type=Path, help="run folder (default: results/<name>/<UTC timestamp>)")
    parser.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="continue an interrupted run: training from its newest checkpoint, then whatever stage is missing",
    )
    parser.add_argument(
        "--list", action="store_true", help="list every registered model, optimizer, schedule and data source"
    )
    args = parser.parse_args(argv)
    if args.list:
        return args
    if args.resume is None and args.config is None:
        parser.error("give a CONFIG file, or --resume RUN_DIR")
    if args.resume is not None and (args.config or args.overrides or args.out):
        parser.error("--resume RUN_DIR takes the run's own config.yaml; give no CONFIG, --set or --out with it")
    return args


@exit_on_harness_error
def main(argv: list[str] | None = None) -> int:
    """The command; bad input is one line on stderr and exit code 2."""
    args = parse_args(argv)
    if args.list:
        print(registered_names())
        return 0
    if args.resume is not None:
        return run_experiment(run_dir=args.resume, resume=True).exit_code
    return run_experiment(load_config(args.config, args.overrides), args.out).exit_code


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
    code = main()
    if launched_by_torchrun():
        exit_worker(code)
    sys.exit(code)


if __name__ == "__main__":
    cli()
