"""The model-randomization sanity check of Adebayo et al. (2018), cascading: do the class activation
maps (Grad-CAM, or any of ``harness.analysis.cam``'s methods) depend on what the model learned?

The weights are re-initialized from the top down, one more block per stage, and the maps are
recomputed after each (every method from one shared pass per layer, ``cam_maps``): a map that still
looks like the trained model's once the layers above it are random shows the image's edges, not the
model's reasoning. Similarity is Spearman's rank
correlation between a trained and a randomized map of the same image.

The stages come from the model's top-level children that hold weights: first the head (the last
of them), then each block above the stem from the top, and last the stem (the leading children
without submodules). For this harness's ResNet that is ``linear``, ``layer4``, ``layer3``,
``layer2``, ``layer1``, then ``conv1`` + ``bn1``. Each block is re-initialized by its modules' own
``reset_parameters()`` (BatchNorm's also resets the running statistics), under a fixed seed.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import stats
from torch import nn

from harness.analysis.cam.base import CAMMethod, cam_maps
from harness.analysis.figures import overlay, plt, save_figure, titled_mosaic
from harness.models.builders import unwrap

TRAINED = "none"  # the stage where nothing is randomized yet


def randomization_stages(model: nn.Module) -> list[tuple[str, list[str]]]:
    """Top-down stages, each (name, the top-level children it re-initializes): ``("head", [last child])``,
    one stage per child in between named after it, and ``("stem", [leading children without submodules])``."""
    holders = [name for name, child in unwrap(model).named_children() if child.state_dict()]
    if not holders:
        raise ValueError("the model has no top-level module with weights to randomize")
    *body, head = holders
    children = dict(unwrap(model).named_children())
    stem: list[str] = []
    for name in body:
        if next(children[name].children(), None) is not None:
            break
        stem.append(name)
    stages = [("head", [head])] + [(name, [name]) for name in reversed(body[len(stem) :])]
    return stages + ([("stem", stem)] if stem else [])


def reinitialize(module: nn.Module) -> None:
    """Every submodule's own ``reset_parameters()``; a submodule with weights but no such method is an error,
    since it would stay trained without anyone noticing."""
    for name, sub in module.named_modules():
        if hasattr(sub, "reset_parameters"):
            sub.reset_parameters()
        elif any(True for _ in sub.parameters(recurse=False)):
            raise ValueError(f"{type(sub).__name__} {name!r} has weights but no reset_parameters() to randomize them")


def rank_correlation(maps_a: torch.Tensor | np.ndarray, maps_b: torch.Tensor | np.ndarray) -> np.ndarray:
    """Spearman's rank correlation between ``maps_a[i]`` and ``maps_b[i]``, flattened, per image (N,); NaN
    where either map is constant (an all-zero Grad-CAM), since a constant has no ranking.

    Spearman's rho is Pearson's r of the ranks, ties at their average rank, as scipy.stats.spearmanr does;
    this form runs all images in one vectorized call.
    """
    a = stats.rankdata(np.asarray(maps_a, dtype=np.float64).reshape(len(maps_a), -1), axis=1)
    b = stats.rankdata(np.asarray(maps_b, dtype=np.float64).reshape(len(maps_b), -1), axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)  # expected: the NaN is counted by the caller
        return np.atleast_1d(stats.pearsonr(a, b, axis=1).statistic)


def cascading_randomization(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    layers: list[str],
    seed: int,
    methods: Sequence[str] | Mapping[str, CAMMethod] = ("gradcam",),
    max_stages: int | None = None,
) -> tuple[pd.DataFrame, dict[str, dict[str, dict[str, torch.Tensor]]]]:
    """The maps of every one of ``methods`` (names, or instances by name, as ``cam_maps`` takes them) at
    ``layers`` for ``targets``, on the trained model and after each randomization stage.

    Returns a table, a row per (stage, method, layer) in top-down order starting with ``"none"`` (the
    trained model against itself: 1, or NaN where its map is constant): ``randomized_from`` (the stage),
    ``randomized`` (the top-level children random at that stage, cumulative), ``method``, ``layer``,
    ``n_images``, ``n_undefined`` (images whose Spearman correlation is NaN because a map is constant)
    and ``spearman`` (the mean over the others). And the maps, stage -> method -> layer -> (N, H, W).
    ``max_stages`` stops the cascade after that many stages (None: every one); a stage's random weights
    are the same however far the cascade goes.

    The caller's model is left as it is: the randomization works on a copy, re-initialized on the CPU
    under ``seed`` (the same random weights on any device) and without touching the global RNG.
    """
    source = unwrap(model)
    device = next(source.parameters()).device
    randomized = copy.deepcopy(source).cpu()
    explained = {"target": targets}
    maps = {TRAINED: cam_maps(source, images, explained, layers, methods)["target"]}
    randomized_children = {TRAINED: ""}
    random_so_far: list[str] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        stages = randomization_stages(randomized)[:max_stages]
        for stage, children in stages:
            for child in children:
                reinitialize(getattr(randomized, child))
            random_so_far += children
            randomized_children[stage] = "+".join(random_so_far)
            maps[stage] = cam_maps(randomized.to(device), images, explained, layers, methods)["target"]
            randomized.cpu()  # re-initialized on the CPU, whatever the device, for the same weights everywhere
    rows = []
    for stage, children in randomized_children.items():
        for method, by_layer in maps[stage].items():
            for layer in layers:
                rho = rank_correlation(maps[TRAINED][method][layer], by_layer[layer])
                undefined = int(np.isnan(rho).sum())
                rows.append(
                    {
                        "randomized_from": stage,
                        "randomized": children,
                        "method": method,
                        "layer": layer,
                        "n_images": len(rho),
                        "n_undefined": undefined,
                        "spearman": float(np.nanmean(rho)) if undefined < len(rho) else float("nan"),
                    }
                )
    return pd.DataFrame(rows), maps


def sanity_figure(table: pd.DataFrame, path: Path, footer: str | None = None, method: str = "Grad-CAM") -> Path:
    """Mean Spearman correlation with the trained model's maps against how far down the weights are random,
    a line per layer of one method's rows of ``table``: a map that depends on the model falls towards 0 as
    soon as its layers are random."""
    stages = list(dict.fromkeys(table["randomized_from"]))
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for layer, rows in table.groupby("layer", sort=False):
        rho = rows.set_index("randomized_from")["spearman"].reindex(stages)
        ax.plot(range(len(stages)), rho.to_numpy(), marker="o", markersize=4, linewidth=1.6, label=layer)
    ax.axhline(0, color="#333333", linewidth=0.8)
    ax.set_xticks(range(len(stages)), [f"{stage}\n(trained)" if stage == TRAINED else stage for stage in stages])
    ax.set_xlabel("randomized from the top down to")
    ax.set_ylabel("Spearman rank correlation\nwith the trained maps")
    ax.set_ylim(min(-0.1, float(np.nanmin(table["spearman"], initial=0.0)) - 0.05), 1.05)
    ax.set_title("Cascading model randomization (Adebayo et al. 2018)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(title=f"{method} layer", fontsize=8, title_fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, footer)


def sanity_examples_figure(
    images_display: np.ndarray,
    maps_by_stage: dict[str, dict[str, torch.Tensor]],
    layer: str,
    path: Path,
    footer: str | None = None,
    method: str = "Grad-CAM",
) -> Path:
    """A row per image (N, H, W, 3) in [0, 1]: the image, then ``layer``'s map (stage -> layer -> maps)
    overlaid on it for the trained model and after each randomization stage, in the style of
    ``figures.gradcam_grid``."""
    images_display = np.asarray(images_display, dtype=np.float64)
    rows = [
        [image] + [overlay(image, stage_maps[layer][index]) for stage_maps in maps_by_stage.values()]
        for index, image in enumerate(images_display)
    ]
    headers = ["image"] + ["trained" if stage == TRAINED else f"random to {stage}" for stage in maps_by_stage]
    titles = [headers] + [[""] * len(headers)] * (len(rows) - 1)
    caption = f"{method} of {layer} under cascading randomization"
    return titled_mosaic(rows, titles, path, footer=f"{caption} | {footer}" if footer else caption)
