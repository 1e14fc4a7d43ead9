"""``python -m harness.sweep FILES... [--seeds 0 1 2] [--set K=V ...] [--out SWEEP_DIR]``: every
experiment with every seed, then the comparison.

The sweep is one folder: its runs live inside it (``SWEEP_DIR/<config name>-seed<k>/``), and
``compare.html`` and ``leaderboard.csv`` are rewritten after each finished run, so a killed sweep
still shows what finished. Running the same command again skips the finished runs and resumes an
interrupted one. Each run is its own process (``python -m harness.run``): one failed run never
stops the others. ``--set`` applies to every run, e.g. narrow, short versions for a CPU:
``python -m harness.sweep experiments/resnet18_*.yaml --seeds 0 1 2 --set model.width=16 train.epochs=3``.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import NoReturn

from harness import atomic_io
from harness.compare import render_comparison
from harness.config import load_config
from harness.data import check_augment
from harness.errors import ArgumentParser, HarnessError, exit_on_harness_error


@dataclass
class PlannedRun:
    config: Path
    seed: int
    run_dir: Path

    def command(self, overrides: list[str]) -> list[str]:
        return [sys.executable, "-m", "harness.run", str(self.config), "--set", *overrides, f"seed={self.seed}",
                "--out", str(self.run_dir)]  # fmt: skip

    @property
    def status(self) -> str | None:
        """``completed`` once trained, analyzed and reported; another status, or None before it started."""
        summary = atomic_io.read_json(self.run_dir / "summary.json")
        if summary.get("status") == "completed" and not (self.run_dir / "report.html").is_file():
            return "unfinished"  # killed after training: --resume finishes the analysis and the report
        return summary.get("status") or ("started" if (self.run_dir / "config.yaml").is_file() else None)


def plan(configs: list[Path], seeds: list[int] | None, overrides: list[str], sweep_dir: Path) -> list[PlannedRun]:
    """Every (config, seed) pair, each validated before any run starts."""
    runs, folders = [], {}
    for path in configs:
        cfg = load_config(path, overrides)
        check_augment(cfg.data)
        for seed in seeds if seeds is not None else [cfg.seed]:
            load_config(path, [*overrides, f"seed={seed}"])
            folder = sweep_dir / f"{cfg.name}-seed{seed}"
            if folder in folders:
                raise HarnessError(f"{path}: name {cfg.name!r} is also the name of {folders[folder]}; "
                                   "give each experiment of a sweep its own name")  # fmt: skip
            folders[folder] = path
            runs.append(PlannedRun(path, seed, folder))
    return runs


def run_one(run: PlannedRun, overrides: list[str]) -> int:
    status = run.status
    if status == "completed":
        print(f"{run.run_dir}: finished earlier; skipped", flush=True)
        return 0
    command = [sys.executable, "-m", "harness.run", "--resume", str(run.run_dir)] if status else run.command(overrides)
    return subprocess.run(command).returncode


@exit_on_harness_error
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m harness.sweep", description="Run experiments x seeds and compare them.")
    parser.add_argument("configs", nargs="+", type=Path)
    parser.add_argument("--seeds", nargs="+", type=int, help="seeds for every config (default: each config's own)")
    parser.add_overrides()
    parser.add_argument("--out", type=Path, help="sweep folder (default: results/sweeps/<UTC timestamp>)")
    args = parser.parse_args(argv)
    sweep_dir = args.out or Path("results") / "sweeps" / datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    runs = plan(args.configs, args.seeds, args.overrides, sweep_dir)  # all fail fast, before any run
    failures = []
    for index, run in enumerate(runs, start=1):
        print(f"[{index}/{len(runs)}] {run.config} seed {run.seed} -> {run.run_dir}", flush=True)
        code = run_one(run, args.overrides)
        if code != 0:
            failures.append(f"{run.run_dir} (exit {code})")
        existing = [r.run_dir for r in runs if r.run_dir.is_dir()]
        if existing:
            render_comparison(existing, sweep_dir / "compare.html")
    print(f"comparison: {sweep_dir / 'compare.html'}, leaderboard: {sweep_dir / 'leaderboard.csv'}")
    if failures:
        print(f"failed runs: {', '.join(failures)}", file=sys.stderr)
        return 1
    return 0


def cli() -> NoReturn:
    """The console script ``harness-sweep``, and ``python -m harness.sweep``."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
