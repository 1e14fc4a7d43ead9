"""The ranking of class activation map methods on constructed scores whose answer is known, and ROAD's
score of a map that marks the evidence against one that marks the rest."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from harness.analysis.cam_comparison import rank_methods, ranking_summary, road_scores, sanity_after

IMAGES = 30


def constructed_scores() -> tuple[dict, dict]:
    """At layer4, 'good' beats 'fair' on every image and measure, and 'fair' beats a random map by less;
    'noise' is a random map by another name. At layer1 the same methods, all random."""
    rng = np.random.default_rng(0)
    random = {"deletion": rng.uniform(0.5, 0.6, IMAGES), "insertion": rng.uniform(0.4, 0.5, IMAGES)}
    random["road"] = rng.uniform(-0.01, 0.01, IMAGES)
    sign = {"deletion": -1.0, "insertion": 1.0, "road": 1.0}  # the direction of "more faithful"
    scores: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    for measure, base in random.items():
        jitter = lambda: rng.normal(0, 0.001, IMAGES)  # noqa: E731 - ties would make the ranks arbitrary
        scores[measure] = {
            "layer4": {
                "fair": base + sign[measure] * 0.05 + jitter(),
                "good": base + sign[measure] * 0.2 + jitter(),
                "noise": base + rng.permutation(base - base.mean()),
            },
            "layer1": {name: base + rng.normal(0, 0.02, IMAGES) for name in ("fair", "good", "noise")},
        }
    return scores, random


def test_the_method_that_beats_the_others_on_every_image_ranks_first():
    scores, random = constructed_scores()
    ranking = rank_methods(scores, random, None, {"good": 1.0, "fair": 2.0, "noise": 0.5})
    layer4 = ranking[ranking["layer"] == "layer4"].set_index("method")
    assert list(layer4.index) == ["good", "fair", "noise"] and list(layer4["rank"]) == [1, 2, 3]
    assert layer4.loc["good", "mean_rank"] == 1.0 and (layer4["n_images"] == IMAGES).all()
    for measure in ("deletion", "insertion", "road"):
        assert np.isnan(layer4.loc["good", f"{measure}_p_best"]), "the best is not tested against itself"
        assert layer4.loc["fair", f"{measure}_p_best"] < 1e-4 and layer4.loc["noise", f"{measure}_p_best"] < 1e-4
        assert layer4.loc["good", f"{measure}_p_random"] < 1e-4 and layer4.loc["fair", f"{measure}_p_random"] < 1e-4
        assert layer4.loc["noise", f"{measure}_p_random"] > 0.05
        assert layer4.loc["good", f"{measure}_friedman_p"] < 1e-4
        assert layer4.loc["good", f"random_{measure}"] == pytest.approx(random[measure].mean())
    assert layer4.loc["good", "deletion"] == pytest.approx(scores["deletion"]["layer4"]["good"].mean())
    assert layer4.loc["fair", "seconds_per_100_images"] == 2.0
    layer1 = ranking[ranking["layer"] == "layer1"]
    assert (layer1[["deletion_p_random", "insertion_p_random", "road_p_random"]] > 0.05).all().all()


def test_the_holm_adjustment_covers_the_layers_methods():
    scores, random = constructed_scores()
    ranking = rank_methods(scores, random, None, {})
    # Holm multiplies the smallest of the three against-random p-values by 3: it cannot be below a third of
    # Wilcoxon's smallest exact one-sided p for 30 images.
    assert ranking["deletion_p_random"].min() >= 3 * 0.5**IMAGES


def test_the_sanity_columns_are_the_first_two_randomization_stages():
    rows = []
    for stage, rho in (("none", 1.0), ("head", 0.3), ("layer4", 0.1), ("layer3", 0.05)):
        for method in ("good", "fair"):
            rows.append({"randomized_from": stage, "method": method, "layer": "layer4", "spearman": rho})
    sanity = pd.DataFrame(rows)
    assert list(sanity_after(sanity).columns) == ["sanity_head", "sanity_layer4"]
    scores, random = constructed_scores()
    ranking = rank_methods(scores, random, sanity, {})
    good = ranking[(ranking["layer"] == "layer4") & (ranking["method"] == "good")].iloc[0]
    assert good["sanity_head"] == 0.3 and good["sanity_layer4"] == 0.1
    assert ranking.loc[ranking["layer"] == "layer1", "sanity_head"].isna().all(), "no sanity rows for layer1"
    summary = ranking_summary(ranking, "predicted")
    assert summary["best"] == {"layer4": "good", "layer1": summary["layers"]["layer1"][0]["method"]}
    assert summary["n_images"] == IMAGES and summary["target"] == "predicted"
    assert summary["layers"]["layer1"][0]["sanity_head"] is None, "NaN is null in JSON"


class BrightnessModel(nn.Module):
    """Class 0's logit is the mean brightness of the image's left half: its evidence is there."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(20.0))  # a weight: the measures find the device by it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        evidence = self.scale * x[:, :, :, :16].mean(dim=(1, 2, 3))
        return torch.stack([evidence, -evidence], dim=1)


def test_road_scores_a_map_of_the_evidence_above_its_reverse():
    torch.manual_seed(0)
    images = torch.rand(4, 3, 32, 32) * 0.2
    images[:, :, 4:28, 2:14] = 1.0  # bright evidence on the left, dark elsewhere: imputing it lowers class 0
    evidence = torch.zeros(4, 32, 32)
    evidence[:, 4:28, 2:14] = 1.0
    evidence += torch.rand(4, 32, 32) * 0.01  # an order within each region
    targets = torch.zeros(4, dtype=torch.long)
    marked = road_scores(BrightnessModel(), images, targets, evidence, seed=0)
    reverse = road_scores(BrightnessModel(), images, targets, 1 - evidence, seed=0)
    assert marked.shape == (4,)
    assert (marked > 0).all() and (reverse < 0).all()
