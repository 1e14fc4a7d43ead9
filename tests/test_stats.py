"""The statistics against values computed by hand."""

from __future__ import annotations

import math

import pytest
from scipy import stats as scipy_stats

from harness.reporting.stats import (
    detectable_difference,
    holm_adjusted,
    mcnemar_exact_p_value,
    one_sample_p_value,
    pooled_std,
    t_interval,
    welch_p_value,
    wilson_interval,
)


def test_t_interval_of_three_seeds():
    # mean 0.82, s = 0.02, sem = 0.02 / sqrt(3), t(0.975, 2) = 4.302653
    low, high = t_interval([0.80, 0.82, 0.84])
    half = 4.302653 * 0.02 / math.sqrt(3)
    assert low == pytest.approx(0.82 - half, abs=1e-6) and high == pytest.approx(0.82 + half, abs=1e-6)


def test_wilson_interval_of_80_in_100():
    # z = 1.959964: centre (0.8 + z^2/200) / (1 + z^2/100), half-width z sqrt(0.0016 + z^2/40000) / (1 + z^2/100)
    z2 = 1.959964**2
    centre = (0.8 + z2 / 200) / (1 + z2 / 100)
    half = math.sqrt(z2) * math.sqrt(0.8 * 0.2 / 100 + z2 / 40000) / (1 + z2 / 100)
    low, high = wilson_interval(80, 100)
    assert low == pytest.approx(centre - half, abs=1e-5) and high == pytest.approx(centre + half, abs=1e-5)
    assert (round(low, 4), round(high, 4)) == (0.7112, 0.8666)


def test_welch_uses_unequal_variances():
    # a = 1,2,3 (var 1), b = 4..7 (var 5/3): se^2 = 1/3 + 5/12 = 0.75, t = -3.5 / sqrt(0.75),
    # Welch-Satterthwaite df = 0.75^2 / ((1/3)^2 / 2 + (5/12)^2 / 3)
    t = -3.5 / math.sqrt(0.75)
    df = 0.75**2 / ((1 / 3) ** 2 / 2 + (5 / 12) ** 2 / 3)
    expected = 2 * scipy_stats.t.sf(abs(t), df)
    assert welch_p_value([1, 2, 3], [4, 5, 6, 7]) == pytest.approx(expected, rel=1e-9)
    assert welch_p_value([1, 2, 3], [4, 5, 6, 7]) == pytest.approx(0.0101, abs=5e-4)  # R: t.test(1:3, 4:7)
    assert welch_p_value([0.5, 0.5], [0.5, 0.5]) == 1.0


def test_mcnemar_exact_on_discordant_images():
    # 1 image only a gets right, 9 only b: p = 2 * P(X <= 1 | n = 10, 1/2) = 2 * 11 / 1024
    a = [True] * 50 + [True] + [False] * 9
    b = [True] * 50 + [False] + [True] * 9
    assert mcnemar_exact_p_value(a, b) == pytest.approx(22 / 1024)
    assert mcnemar_exact_p_value(a, a) == 1.0
    with pytest.raises(ValueError):
        mcnemar_exact_p_value(a, b[:-1])


def test_one_sample_against_a_single_run():
    # mean 0.82, sem = 0.02/sqrt(3); t = (0.82 - 0.79) / sem with 2 degrees of freedom
    t = 0.03 / (0.02 / math.sqrt(3))
    assert one_sample_p_value([0.80, 0.82, 0.84], 0.79) == pytest.approx(2 * scipy_stats.t.sf(t, 2), rel=1e-9)


def test_holm_adjusts_step_down_and_skips_missing():
    # sorted 0.005, 0.01, 0.03, 0.04 of m = 4: x4 = 0.02, x3 = 0.03, x2 = 0.06, x1 = 0.04 -> kept monotone at 0.06
    adjusted = holm_adjusted([0.01, 0.04, 0.03, math.nan, 0.005])
    assert adjusted[:3] == pytest.approx([0.03, 0.06, 0.06]) and adjusted[4] == pytest.approx(0.02)
    assert math.isnan(adjusted[3])
    assert holm_adjusted([0.6, 0.9]) == [1.0, 1.0], "capped at 1"
    # what the uncorrected 5% calls significant and Holm does not: three comparisons at 0.02 each
    assert all(p > 0.05 for p in holm_adjusted([0.02, 0.02, 0.02]))


def test_detectable_difference_matches_the_textbook_sample_size():
    # The textbook figure: 64 runs per group detect d = 0.5 standard deviations at 80% power (two-sided 5%)
    assert detectable_difference(1.0, 64, 64) == pytest.approx(0.5, abs=0.003)
    # It scales with the spread, and a stricter level needs a larger difference
    assert detectable_difference(2.0, 64, 64) == pytest.approx(2 * detectable_difference(1.0, 64, 64))
    assert detectable_difference(1.0, 3, 3, alpha=0.05 / 7) > detectable_difference(1.0, 3, 3) > 3.0
    # Power at the returned difference is 80%: checked with the noncentral t directly
    d, df = detectable_difference(1.0, 3, 3), 4
    critical, shift = scipy_stats.t.ppf(0.975, df), d / math.sqrt(2 / 3)
    assert scipy_stats.nct.sf(critical, df, shift) + scipy_stats.nct.cdf(-critical, df, shift) == pytest.approx(0.8)
    assert math.isnan(detectable_difference(1.0, 1, 1)) and math.isnan(detectable_difference(0.0, 3, 3))


def test_pooled_std_weights_groups_by_degrees_of_freedom():
    # (1,2,3): squares 2 over 2 df; (2,4): squares 2 over 1 df -> sqrt(4 / 3); a single value adds nothing
    assert pooled_std([[1, 2, 3], [2, 4], [5]]) == pytest.approx(math.sqrt(4 / 3))
    assert math.isnan(pooled_std([[1], [2]]))
