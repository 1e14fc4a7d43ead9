"""Reading run folders: whatever a run folder holds, every piece possibly missing, with old runs
(from before the validation split) read by their old meaning."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from harness.core.errors import HarnessError
from harness.core.run_folder import RunFiles, read_csv_rows
from harness.core.yaml_io import read_yaml_or_empty


@dataclass
class RunRecord:
    """Whatever a run folder holds; every piece may be missing."""

    run_dir: Path
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    metrics: pd.DataFrame = field(default_factory=pd.DataFrame)
    lr: pd.DataFrame = field(default_factory=pd.DataFrame)
    weights: pd.DataFrame = field(default_factory=pd.DataFrame)  # weights.csv: per-block update diagnostics
    missing: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.config.get("name") or self.run_dir.name)

    @property
    def label(self) -> str:
        folder = self.run_dir.name
        return folder if self.name in folder else f"{self.name} ({folder})"

    @property
    def status(self) -> str:
        return str(self.summary.get("status", "unknown"))

    def analysis(self, name: str) -> Path:
        return RunFiles(self.run_dir).analysis / name


def load_run(run_dir: Path) -> RunRecord:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise HarnessError(f"{run_dir}: run folder not found")
    files = RunFiles(run_dir)
    record = RunRecord(run_dir)
    record.config = read_yaml_or_empty(files.config)
    record.summary = files.read_summary()
    for attr, path in (("metrics", files.metrics), ("lr", files.lr)):
        rows = read_csv_rows(path)
        if rows:
            setattr(record, attr, pd.DataFrame(rows).apply(pd.to_numeric, errors="coerce"))
    weights = read_csv_rows(files.weights)
    if weights:
        numeric = ["iteration", "epoch", "grad_norm", "weight_norm", "update_norm", "update_ratio"]
        record.weights = pd.DataFrame(weights).astype({column: float for column in numeric})
    present = {files.config: record.config, files.summary: record.summary, files.metrics: not record.metrics.empty,
               files.lr: not record.lr.empty, files.analysis: (files.analysis / "per_class.csv").is_file()}  # fmt: skip
    record.missing = [path.name for path, there in present.items() if not there]
    return record


def find_run_dirs(paths: list[Path]) -> list[Path]:
    """Run folders among the given paths (globs such as results/*/* may also name other files)."""
    found = [p for p in paths if RunFiles(p).config.is_file() or RunFiles(p).summary.is_file()]
    if not found:
        raise HarnessError(
            f"no run folders among {', '.join(map(str, paths)) or 'the arguments'} (a run folder holds config.yaml)"
        )
    return found
