"""Paired tests: several explanation methods scored on the same images, compared image by image.

Every method explains the same images, so a score (a deletion area, a ROAD curve's mean) pairs up
across methods: each image is its own control, and the tests need no assumption on how the scores
are spread. All methods at once: Friedman's test on the methods' ranks within each image. Each one
against the best (by mean score): the two-sided Wilcoxon signed-rank test of their differences,
Holm-adjusted over the comparisons, so that the chance of any false "differs" stays at alpha.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats


def holm_adjusted(p_values: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (step-down, monotone, at most 1), in the order given; NaN
    entries stay NaN and do not count as comparisons. Reject where the adjusted p is below alpha:
    the chance of any false "yes" among the comparisons is then at most alpha."""
    values = np.asarray(p_values, dtype=float)
    adjusted = np.full(len(values), math.nan)
    present = np.flatnonzero(~np.isnan(values))
    m = len(present)
    running = 0.0
    for rank, index in enumerate(present[np.argsort(values[present], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * values[index]))
        adjusted[index] = running
    return adjusted.tolist()


def wilcoxon_p_value(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank test that ``a`` and ``b`` differ image by image (1.0 when no image
    differs, NaN for no images)."""
    differences = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if len(differences) == 0:
        return math.nan
    if not np.any(differences):
        return 1.0
    return float(stats.wilcoxon(differences).pvalue)


def friedman_p_value(scores: np.ndarray) -> float:
    """Friedman's test that methods (columns of ``scores``, images x methods) differ: NaN for fewer than
    three methods or two images, 1.0 when every image scores every method the same."""
    images, methods = scores.shape
    if methods < 3 or images < 2:
        return math.nan
    if np.all(scores == scores[:, :1]):
        return 1.0
    return float(stats.friedmanchisquare(*scores.T).pvalue)


def compare_methods(scores: Mapping[str, Sequence[float]], higher_is_better: bool) -> tuple[pd.DataFrame, float]:
    """Methods scored on the same images (``scores``: method -> one score per image, in the same order),
    compared with each other.

    Images where any method's score is NaN are left out of everything. Returns a table with a row per
    method, best first: ``method, n_images, mean, mean_rank`` (the method's rank within each image
    averaged over the images, 1 the best, ties sharing), ``p_vs_best`` (the Wilcoxon test against the
    method of the best mean, Holm-adjusted over the others; NaN for that method itself); and the
    Friedman test's p-value across all the methods (NaN for fewer than three).
    """
    names = list(scores)
    table = np.column_stack([np.asarray(scores[name], dtype=float) for name in names])
    table = table[~np.isnan(table).any(axis=1)]
    if len(table):
        means = table.mean(axis=0)
        mean_ranks = stats.rankdata(-table if higher_is_better else table, axis=1).mean(axis=0)
    else:  # no image has every score
        means = mean_ranks = np.full(len(names), math.nan)
    order = np.argsort(-means if higher_is_better else means, kind="stable")
    best = order[0]
    raw = [math.nan if column == best else wilcoxon_p_value(table[:, column], table[:, best]) for column in order]
    frame = pd.DataFrame(
        {
            "method": [names[column] for column in order],
            "n_images": len(table),
            "mean": means[order],
            "mean_rank": mean_ranks[order],
            "p_vs_best": holm_adjusted(raw),
        }
    )
    return frame, friedman_p_value(table)
