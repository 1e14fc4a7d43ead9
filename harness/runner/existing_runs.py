"""What the API does with run folders that exist: analyze one again, compare several."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from harness.config import load_config
from harness.core.errors import HarnessError
from harness.core.run_folder import RunFiles

# What a re-analysis may change: how the trained model is analyzed and reported, never what trained.
REANALYSIS_KEYS = ("analysis.", "report.")


def analyze_run(run_dir: str | Path, overrides: Iterable[str] = (), device: Any = None) -> dict[str, Any]:
    """(Re)analyze a finished run's final weights into ``RUN_DIR/analysis/``, with ``overrides``
    (``analysis.misclassified=50``) applied to its config.yaml's analysis keys, and render its report
    again to show it (unless ``report.enabled`` is false); returns the highlights, and the report's path
    as ``report``."""
    from harness.analysis.pipeline import analyze

    run_dir = Path(run_dir)
    overrides = list(overrides)
    if not RunFiles(run_dir).config.is_file():
        raise HarnessError(f"{run_dir}: not a run folder (no config.yaml there)")
    for text in overrides:
        if not text.strip().startswith(REANALYSIS_KEYS):
            raise HarnessError(
                f"--set {text!r}: a re-analysis changes analysis.* and report.* keys only (the model is trained)"
            )
    cfg = load_config(RunFiles(run_dir).config, overrides)
    highlights = analyze(cfg, run_dir, device)
    if cfg.report.enabled:
        from harness.reporting.run_report import render_run_report

        highlights["report"] = str(render_run_report(run_dir))
    return highlights


@dataclass
class Comparison:
    """A comparison of runs: the HTML page, and the leaderboard (one row per group of seeds)."""

    html: Path
    leaderboard: pd.DataFrame


def compare_runs(
    run_dirs: Iterable[str | Path],
    out: str | Path = "results/compare.html",
    layer: str = "layer4",
    rank_on: str = "test",
) -> Comparison:
    """Group runs that differ only in seed, rank them on the final accuracy on ``rank_on`` (``test``,
    what is reported, or ``validation``, to choose without reading the test set) with how sure each
    difference is, and write ``out`` (HTML) and ``leaderboard.csv`` beside it."""
    from harness.reporting.compare import render_comparison
    from harness.reporting.records import find_run_dirs

    out = Path(out)
    html = render_comparison(find_run_dirs([Path(d) for d in run_dirs]), out, layer, rank_on=rank_on)
    return Comparison(html, pd.read_csv(out.parent / "leaderboard.csv"))
