"""``python -m harness.sweep FILES... [--set K=V ...] [--out SWEEP_DIR]``: run several experiments one
after another, then write the comparison report.

Each run is its own process (``python -m harness.run``), so one failed run never stops the others;
``--set`` applies to every run, e.g. narrow, short versions for a CPU:
``python -m harness.sweep experiments/resnet18_*.yaml --set model.width=16 train.epochs=3``.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import NoReturn

from harness.config import load_config
from harness.errors import ArgumentParser, exit_on_harness_error
from harness.report import render_comparison


@exit_on_harness_error
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m harness.sweep", description="Run experiments in turn and compare them.")
    parser.add_argument("configs", nargs="+", type=Path)
    parser.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", type=Path, help="sweep folder (default: results/sweep/<UTC timestamp>)")
    args = parser.parse_args(argv)
    configs = {path: load_config(path, args.overrides) for path in args.configs}  # all fail fast, before any run
    sweep_dir = args.out or Path("results") / "sweep" / datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    run_dirs, failures = [], []
    for index, (path, cfg) in enumerate(configs.items(), start=1):
        run_dir = sweep_dir / f"{index:02d}-{cfg.name}"
        print(f"[{index}/{len(configs)}] {path} -> {run_dir}", flush=True)
        overrides = ["--set", *args.overrides] if args.overrides else []
        result = subprocess.run([sys.executable, "-m", "harness.run", str(path), *overrides, "--out", str(run_dir)])
        run_dirs.append(run_dir)
        if result.returncode != 0:
            failures.append(f"{path} (exit {result.returncode})")
    existing = [d for d in run_dirs if d.is_dir()]
    if existing:
        print(f"comparison: {render_comparison(existing, sweep_dir / 'compare.html')}")
    if failures:
        print(f"failed runs: {', '.join(failures)}", file=sys.stderr)
        return 1
    return 0


def cli() -> NoReturn:
    """The console script ``harness-sweep``, and ``python -m harness.sweep``."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
