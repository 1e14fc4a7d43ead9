"""How sure a comparison is: intervals for an accuracy and tests of a difference (scipy.stats).

Over seeds (two or more runs of a config): Student's t-interval of the mean accuracy and Welch's
t-test between groups. For a single run: the Wilson interval of the test-set proportion, and
McNemar's exact test on per-image correctness between two single runs on the same test set (a
paired test: it looks only at the images one run got right and the other wrong).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import optimize, stats

# Holm's correction lives with the paired tests of explanation methods (analysis, the lower stage); the
# comparison of runs uses it from here.
from harness.analysis.paired_tests import holm_adjusted as holm_adjusted


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Student's t-interval of the mean of ``values`` (at least two)."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        raise ValueError("a t-interval needs at least two values")
    sem = stats.sem(values)
    if sem == 0:
        return float(values.mean()), float(values.mean())
    low, high = stats.t.interval(confidence, len(values) - 1, loc=values.mean(), scale=sem)
    return float(low), float(high)


def wilson_interval(correct: int, total: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of the proportion ``correct / total``."""
    interval = stats.binomtest(int(correct), int(total)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(interval.low), float(interval.high)


def welch_p_value(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided Welch's t-test of equal means (unequal variances); 1.0 when neither varies and the means agree."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.std() == 0 and b.std() == 0:
        return 1.0 if a.mean() == b.mean() else 0.0
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def one_sample_p_value(values: Sequence[float], single: float) -> float:
    """Two-sided one-sample t-test of ``values``' mean against one run's accuracy (a group of seeds
    against a single run, where Welch's test has no variance for the single side)."""
    values = np.asarray(values, dtype=float)
    if values.std() == 0:
        return 1.0 if values.mean() == single else 0.0
    return float(stats.ttest_1samp(values, single).pvalue)


def mcnemar_exact_p_value(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> float:
    """McNemar's exact test: two-sided binomial test on the discordant images (a right and b wrong,
    against a wrong and b right) of two classifiers on the same test images."""
    correct_a, correct_b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if correct_a.shape != correct_b.shape:
        raise ValueError("McNemar's test compares predictions on the same test images")
    only_a = int(np.sum(correct_a & ~correct_b))
    only_b = int(np.sum(~correct_a & correct_b))
    if only_a + only_b == 0:
        return 1.0
    return float(stats.binomtest(only_a, only_a + only_b, 0.5).pvalue)


def sample_std(values: Sequence[float]) -> float:
    """Standard deviation with n - 1 (NaN for a single value: one run says nothing about the spread)."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else math.nan


def detectable_difference(std: float, n_a: int, n_b: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest true difference of means that a two-sided two-sample t-test at ``alpha`` detects
    with probability ``power``, for groups of ``n_a`` and ``n_b`` runs with a common standard
    deviation ``std`` (Welch's test, which the comparison uses, has about this power with equal
    spreads). NaN when there are too few runs (n_a + n_b < 3) or no spread to scale by."""
    df = n_a + n_b - 2
    if df < 1 or not std > 0:
        return math.nan
    scale = std * math.sqrt(1 / n_a + 1 / n_b)
    critical = stats.t.ppf(1 - alpha / 2, df)

    def shortfall(difference: float) -> float:
        shift = difference / scale
        # The far tail underflows to NaN for large shifts in scipy's nct; it is 0 there.
        far_tail = np.nan_to_num(stats.nct.cdf(-critical, df, shift))
        return float(stats.nct.sf(critical, df, shift) + far_tail) - power

    high = scale
    while shortfall(high) < 0:  # power rises with the difference: widen until it is reached
        high *= 2
        if high > 1e4 * scale:
            return math.inf
    return float(optimize.brentq(shortfall, 1e-6 * scale, high))


def runs_to_detect(
    difference: float, std: float, alpha: float = 0.05, power: float = 0.8, most: int = 200
) -> int | None:
    """The fewest runs per group with which a two-sample t-test at ``alpha`` detects a true
    ``difference`` with probability ``power``, given a seed-to-seed ``std``; None beyond ``most``."""
    if not (difference > 0 and std > 0):
        return None
    for n in range(2, most + 1):
        if detectable_difference(std, n, n, alpha, power) <= difference:
            return n
    return None


def pooled_std(groups: Sequence[Sequence[float]]) -> float:
    """The within-group standard deviation pooled over groups of two or more values (NaN if none)."""
    usable = [np.asarray(g, dtype=float) for g in groups if len(g) >= 2]
    df = sum(len(g) - 1 for g in usable)
    if not df:
        return math.nan
    return float(math.sqrt(sum(((g - g.mean()) ** 2).sum() for g in usable) / df))
