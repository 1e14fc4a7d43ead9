"""Which explanation to trust: class activation map methods ranked, layer by layer, by how faithful
their maps are to the model, on the same images.

Every method explains the same images (the misclassified ones and the correctly classified sample,
for one target class each), so at a layer their scores pair up image by image, and each image is its
own control. Three measures of faithfulness, each a score per image:

- deletion and insertion areas (``faithfulness``: the target's probability as the pixels a map ranks
  highest are blurred away, or revealed; lower and higher is better);
- ROAD (``road``): the mean over the removed fractions of (LeRF - MoRF) / 2, as pytorch-grad-cam's
  ROADCombined summarizes it: high when imputing the pixels the map ranks highest costs the target's
  probability and imputing those it ranks lowest does not. ROAD solves a sparse system per image and
  fraction, its dearest step: it runs at ``ROAD_FRACTIONS``, five of the paper's nine (10% to 90%).

Per measure and layer: each method against a seeded random map, the same for every method (one-sided
Wilcoxon signed-rank test that it beats random), and against the method with the best mean (two-sided
Wilcoxon, ``paired_tests.compare_methods``); both Holm-adjusted over the layer's methods, so that the
chance of any false "differs" among them stays at alpha; and Friedman's test across all the methods.
Beside them, from the sanity check (``sanity``): the mean Spearman correlation with the trained
model's maps after its first two randomization stages (the head, then layer4 for the harness's
ResNet): near 1 there, a map does not depend on what the model learned. And the seconds a method's
maps cost.

The rank: the methods ordered by their mean rank within each image (1 the best), averaged over the
three measures. What this does not tell apart: a p against the best above 0.05 says the images do not
show a difference, not that the methods are equally faithful; the three measures remove pixels in
different ways and may disagree; and every number holds for this model and these images only.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from harness.analysis import figures
from harness.analysis.faithfulness import paired_p_value
from harness.analysis.paired_tests import compare_methods, holm_adjusted
from harness.analysis.road import road_curves

ROAD_FRACTIONS = (0.1, 0.3, 0.5, 0.7, 0.9)
# Each measure, and whether a higher score is the more faithful.
HIGHER_IS_BETTER = {"deletion": False, "insertion": True, "road": True}
SANITY_STAGES = 2  # randomization stages (after the trained model) whose correlations the ranking shows
FIGURE_IMAGES = 8  # rows of the side-by-side figure

Scores = Mapping[str, Mapping[str, np.ndarray]]  # layer -> method -> a score per image


def road_scores(
    model: nn.Module, images: torch.Tensor, targets: torch.Tensor, maps: torch.Tensor, seed: int
) -> np.ndarray:
    """Each image's ROAD score (N,): the mean over ``ROAD_FRACTIONS`` of (LeRF - MoRF) / 2, the target's
    probability with the lowest-ranked pixels imputed minus with the highest-ranked ones, halved."""
    most, least = road_curves(model, images, targets, maps, ROAD_FRACTIONS, seed=seed)
    return ((least - most) / 2).mean(axis=1)


def sanity_after(sanity: pd.DataFrame) -> pd.DataFrame:
    """Mean Spearman correlation per (method, layer) after each of the first ``SANITY_STAGES``
    randomization stages: a column ``sanity_<stage>`` each."""
    stages = list(dict.fromkeys(sanity["randomized_from"]))[1 : 1 + SANITY_STAGES]
    shown = sanity[sanity["randomized_from"].isin(stages)]
    wide = shown.pivot(index=["method", "layer"], columns="randomized_from", values="spearman")
    return wide.reindex(columns=stages).add_prefix("sanity_")


def rank_methods(
    scores: Mapping[str, Scores],
    random_scores: Mapping[str, np.ndarray],
    sanity: pd.DataFrame | None,
    seconds_per_100: Mapping[str, float],
) -> pd.DataFrame:
    """The ranking: a row per (layer, method), each layer's methods best first.

    ``scores``: measure (``HIGHER_IS_BETTER``'s keys) -> layer -> method -> a score per image, the same
    images in the same order for every method; ``random_scores``: measure -> the random map's scores
    of those images. Columns: ``layer, rank, method, n_images, mean_rank`` (the mean within-image rank
    averaged over the measures), per measure ``<measure>`` (the mean score), ``<measure>_p_random``,
    ``<measure>_p_best``, ``random_<measure>``, ``<measure>_friedman_p`` (the layer's, on every row);
    the ``sanity_<stage>`` columns of ``sanity_after`` (when ``sanity`` is given) and
    ``seconds_per_100_images``.
    """
    layers = list(scores["deletion"])
    frames = []
    for layer in layers:
        merged: pd.DataFrame | None = None
        for measure, higher in HIGHER_IS_BETTER.items():
            by_method = scores[measure][layer]
            table, friedman = compare_methods(by_method, higher)
            random = random_scores[measure]
            against_random = [
                paired_p_value(by_method[m], random) if higher else paired_p_value(random, by_method[m])
                for m in table["method"]
            ]
            table = table.assign(
                p_random=holm_adjusted(against_random), random=float(np.mean(random)), friedman_p=friedman
            )
            table = table.rename(
                columns={
                    "mean": measure,
                    "mean_rank": f"{measure}_mean_rank",
                    "p_vs_best": f"{measure}_p_best",
                    "p_random": f"{measure}_p_random",
                    "random": f"random_{measure}",
                    "friedman_p": f"{measure}_friedman_p",
                }
            )
            merged = table if merged is None else merged.merge(table.drop(columns="n_images"), on="method")
        rank_columns = [f"{measure}_mean_rank" for measure in HIGHER_IS_BETTER]
        merged["mean_rank"] = merged[rank_columns].mean(axis=1)
        merged = merged.drop(columns=rank_columns).sort_values("mean_rank", kind="stable")
        merged.insert(0, "layer", layer)
        merged.insert(1, "rank", np.arange(1, len(merged) + 1))
        frames.append(merged)
    ranking = pd.concat(frames, ignore_index=True)
    if sanity is not None:
        ranking = ranking.join(sanity_after(sanity), on=["method", "layer"])
    ranking["seconds_per_100_images"] = ranking["method"].map(seconds_per_100)
    order = ["layer", "rank", "method", "n_images", "mean_rank"]
    for measure in HIGHER_IS_BETTER:
        order += [measure, f"{measure}_p_random", f"{measure}_p_best", f"random_{measure}", f"{measure}_friedman_p"]
    return ranking[order + [c for c in ranking.columns if c not in order]]


def _plain(value: Any) -> Any:
    """A JSON value: rounded floats, null for NaN, Python ints."""
    if isinstance(value, float | np.floating):
        return None if np.isnan(value) else round(float(value), 6)
    return value.item() if isinstance(value, np.generic) else value


def ranking_summary(ranking: pd.DataFrame, target: str) -> dict[str, Any]:
    """What summary.json keeps of the ranking: the best method per layer, and each layer's rows."""
    layers = list(dict.fromkeys(ranking["layer"]))
    return {
        "target": target,
        "n_images": int(ranking["n_images"].iloc[0]),
        "methods": list(dict.fromkeys(ranking["method"])),
        "best": {layer: ranking.loc[ranking["layer"] == layer, "method"].iloc[0] for layer in layers},
        "layers": {
            layer: [
                {key: _plain(value) for key, value in row.items() if key != "layer"}
                for row in ranking[ranking["layer"] == layer].to_dict("records")
            ]
            for layer in layers
        },
    }


def methods_figure(
    images_display: np.ndarray,
    maps: Mapping[str, torch.Tensor | np.ndarray],
    titles: list[str],
    path: Path,
    footer: str | None = None,
) -> Path:
    """The same images under every method, side by side: a row per image (its title first), the image
    then each method's map (method -> (N, H, W) in [0, 1]) overlaid on it."""
    images_display = figures.as_display(images_display)
    rows = [
        [image] + [figures.overlay(image, np.asarray(by_method[index])) for by_method in maps.values()]
        for index, image in enumerate(images_display)
    ]
    row_titles = [[title] + (list(maps) if index == 0 else []) for index, title in enumerate(titles)]
    return figures.titled_mosaic(rows, row_titles, path, footer=footer)
