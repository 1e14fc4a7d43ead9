"""The statistics against values computed by hand."""

from __future__ import annotations

import math

import pytest
from scipy import stats as scipy_stats

from harness.stats import mcnemar_exact_p_value, one_sample_p_value, t_interval, welch_p_value, wilson_interval


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
    assert expected == pytest.approx(0.0101, abs=5e-4)
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
