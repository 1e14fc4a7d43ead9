"""``python -m harness.analyze RUN_DIR [--set analysis.KEY=VALUE ...]``: (re)analyze a run's final
weights (``harness.analysis.pipeline``), with its config's analysis keys changed if asked."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NoReturn

from harness.core.errors import ArgumentParser, exit_on_harness_error
from harness.runner.existing_runs import analyze_run


@exit_on_harness_error
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(
        prog="python -m harness.analyze",
        description="Analyze a run's final weights (again): per-class metrics, Grad-CAM, trust measures.",
    )
    parser.add_argument("run_dir", type=Path)
    parser.add_overrides("analysis.misclassified=50 analysis.order=confident")
    args = parser.parse_args(argv)
    result = analyze_run(args.run_dir, args.overrides)
    print(f"analysis written to {args.run_dir / 'analysis'} (from {result['checkpoint']})")
    if result.get("report"):
        print(f"report: {result['report']}")
    return 0


def cli() -> NoReturn:
    """The console script ``harness-analyze``, and ``python -m harness.analyze``."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
