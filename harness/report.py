"""``python -m harness.report RUN_DIR`` -> RUN_DIR/report.html;
``python -m harness.report RUN_DIR_1 RUN_DIR_2 ... --out compare.html`` -> a comparison of runs
(``harness.reporting``: the run report and the comparison)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NoReturn

from harness.core.errors import ArgumentParser, exit_on_harness_error
from harness.reporting.compare import DEFAULT_LAYER, SPLITS, render_comparison
from harness.reporting.records import find_run_dirs
from harness.reporting.run_report import render_run_report


@exit_on_harness_error
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m harness.report", description="Render a run's report, or compare runs.")
    parser.add_argument("run_dirs", nargs="+", type=Path)
    parser.add_argument(
        "--out", type=Path, help="output HTML (default: RUN_DIR/report.html, or results/compare.html for several runs)"
    )
    parser.add_argument(
        "--layer",
        default=DEFAULT_LAYER,
        help="comparison: the block whose weight-update ratios are overlaid (default: layer4)",
    )
    parser.add_argument(
        "--rank-on",
        choices=list(SPLITS),
        default="test",
        help="comparison: the final accuracy ranked and tested: test (what is reported, default) or validation "
        "(to choose between groups without reading the test set)",
    )
    args = parser.parse_args(argv)
    run_dirs = find_run_dirs(args.run_dirs)
    if len(run_dirs) == 1:
        path = render_run_report(run_dirs[0], args.out)
    else:
        out = args.out or Path("results") / "compare.html"
        path = render_comparison(run_dirs, out, args.layer, rank_on=args.rank_on)
    print(f"report: {path}")
    return 0


def cli() -> NoReturn:
    """The console script ``harness-report``, and ``python -m harness.report``."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
