"""Paired comparisons of explanation methods on the same images, against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from harness.analysis.paired_tests import compare_methods, friedman_p_value, wilcoxon_p_value


def test_two_methods_by_hand():
    # Five images, b below a on every one: the exact two-sided signed-rank p is 2 / 2^5. One comparison:
    # Holm leaves it as it is. Friedman needs three methods.
    table, friedman = compare_methods({"a": [5, 4, 3, 2, 1], "b": [4, 3, 2, 1, 0]}, higher_is_better=True)
    assert list(table["method"]) == ["a", "b"]
    assert list(table["mean"]) == [3.0, 2.0] and list(table["mean_rank"]) == [1.0, 2.0]
    assert math.isnan(table["p_vs_best"].iloc[0]) and table["p_vs_best"].iloc[1] == pytest.approx(2 / 32)
    assert math.isnan(friedman)


def test_lower_is_better_ranks_and_ties():
    # Two images. Lower first: image 1 ranks a, b, c; image 2 ranks a, then b and c tied (2.5 each).
    scores = {"c": [3.0, 2.0], "b": [2.0, 2.0], "a": [1.0, 1.0]}
    table, _ = compare_methods(scores, higher_is_better=False)
    assert list(table["method"]) == ["a", "b", "c"]
    assert list(table["mean_rank"]) == [1.0, 2.25, 2.75]


def test_a_clear_winner_is_found_and_holm_adjusts():
    rng = np.random.default_rng(0)
    base = rng.normal(size=12)
    scores = {"random": base, "good": base + 1 + 0.1 * rng.random(12), "also": base + 0.01 * rng.normal(size=12)}
    table, friedman = compare_methods(scores, higher_is_better=True)
    assert table["method"].iloc[0] == "good" and friedman < 0.01
    # Every one of 12 images favours "good": exact two-sided p = 2 / 2^12 for each, times 2 and 1 by Holm.
    assert sorted(table["p_vs_best"].iloc[1:]) == pytest.approx([2 * 2 / 4096, 2 * 2 / 4096])


def test_images_missing_a_score_are_left_out():
    table, _ = compare_methods({"a": [1.0, np.nan, 3.0], "b": [0.0, 5.0, 1.0]}, higher_is_better=True)
    assert set(table["n_images"]) == {2} and list(table["mean"]) == [2.0, 0.5]
    table, friedman = compare_methods({"a": [np.nan], "b": [1.0], "c": [2.0]}, higher_is_better=True)
    assert table["mean"].isna().all() and table["p_vs_best"].isna().all() and math.isnan(friedman)


def test_identical_methods_do_not_differ():
    same = [0.3, 0.1, 0.4, 0.1, 0.5]
    table, friedman = compare_methods({"a": same, "b": same, "c": same}, higher_is_better=True)
    assert friedman == 1.0 and list(table["p_vs_best"].iloc[1:]) == [1.0, 1.0]
    assert math.isnan(wilcoxon_p_value(np.array([]), np.array([])))
    assert math.isnan(friedman_p_value(np.ones((1, 3)))), "one image says nothing"
