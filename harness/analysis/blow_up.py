"""Where a diverged run blew up first, read from its weight-update samples (weights.csv)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

BLOW_UP_FACTOR = 10.0  # a step ten times the block's usual size relative to its weights
BLOW_UP_HISTORY = 3


def first_blow_up(weights: pd.DataFrame) -> dict[str, Any] | None:
    """Where a diverging run went wrong first: the earliest sampled (iteration, block) whose
    update/weight ratio is non-finite, or ``BLOW_UP_FACTOR`` times the median of that block's earlier
    samples (at least ``BLOW_UP_HISTORY`` of them). Relative to the block's own history, since a
    healthy run's first steps can reach 0.1 in a small head. ``weights`` has weights.csv's columns;
    among blocks at the same iteration, the largest jump (a non-finite ratio first) is named."""
    frame = weights.assign(ratio=pd.to_numeric(weights["update_ratio"], errors="coerce")).sort_values("iteration")
    earlier = frame.groupby("layer", sort=False)["ratio"].transform(
        lambda ratios: ratios.expanding().median().shift(1).where(np.arange(len(ratios)) >= BLOW_UP_HISTORY)
    )
    jump = np.where(np.isfinite(frame["ratio"]), frame["ratio"] / earlier, np.inf)
    bad = frame.assign(jump=jump)[(jump > BLOW_UP_FACTOR) | ~np.isfinite(frame["ratio"])]
    if bad.empty:
        return None
    row = bad.sort_values(["iteration", "jump"], ascending=[True, False]).iloc[0]
    return {"layer": str(row["layer"]), "iteration": int(row["iteration"]), "update_ratio": float(row["ratio"])}
