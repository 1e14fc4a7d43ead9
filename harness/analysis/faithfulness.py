"""Do the Grad-CAM maps point at what the model uses? Deletion and insertion curves (Petsiuk et al.
2018, RISE), against maps of random noise.

Deletion takes away the pixels a map ranks highest first and follows the probability of the target
class as more go: a faithful map makes it fall fast (a low area under the curve). Insertion starts
from an image with every pixel taken away and puts them back in the map's order: a faithful map
makes the probability rise fast (a high area). A random map is the baseline either way.

A pixel is taken away by replacing it with the same pixel of a blurred copy of the image, not with
the dataset mean: a patch of mean grey has sharp edges and lies outside the training distribution,
so the fall in probability would partly measure the artefact, and the network may even read the
patch as evidence; a blur removes the detail a map points at while keeping the image's colours and
statistics. The blur is Gaussian, of the normalized image, with a kernel about a third of the image
size (11 pixels on 32x32, sigma 2).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torchvision.transforms.functional as TF
from scipy import integrate, stats
from torch import nn

from harness.analysis.figures import plt, save_figure
from harness.models.builders import unwrap

RANDOM = "random"  # the name of the random-map baseline in the curves and figures
MAX_FORWARD_IMAGES = 1024  # perturbed images in one forward pass: bounds memory on any device


def blur(images: torch.Tensor) -> torch.Tensor:
    """A Gaussian blur of (N, C, H, W) images: an odd kernel of about a third of the shorter side,
    sigma a fifth of the kernel (so the kernel spans +-2.5 sigma); reflected at the borders."""
    kernel = (min(images.shape[-2:]) // 3) | 1
    return TF.gaussian_blur(images, [kernel, kernel], [(kernel - 1) / 5] * 2)


def random_maps(n: int, height: int, width: int, seed: int) -> torch.Tensor:
    """Uniform noise (n, height, width): maps that rank the pixels in a random order, the same for a given seed."""
    return torch.rand(n, height, width, generator=torch.Generator().manual_seed(seed))


def pixel_fractions(height: int, width: int, steps: int) -> np.ndarray:
    """The fractions of the pixels taken away (or put back) at each of the steps + 1 points: whole pixels,
    so they are k / steps rounded to the nearest pixel."""
    return pixel_counts(height * width, steps) / (height * width)


def pixel_counts(pixels: int, steps: int) -> np.ndarray:
    return np.rint(np.linspace(0, pixels, steps + 1)).astype(np.int64)


def pixel_ranks(maps: torch.Tensor, tie_seed: int) -> torch.Tensor:
    """Each pixel's place (N, H * W) when the pixels of each map (N, H, W) are ordered highest value first,
    0 for the highest; equal values in a random order fixed by ``tie_seed``, the same for every map."""
    n, pixels = len(maps), maps[0].numel()
    shuffle = torch.randperm(pixels, generator=torch.Generator().manual_seed(tie_seed))
    order = shuffle[torch.argsort(-maps.detach().cpu().flatten(1)[:, shuffle].float(), dim=1, stable=True)]
    return torch.empty_like(order).scatter_(1, order, torch.arange(pixels).expand(n, -1))


def perturbation_curves(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    maps: torch.Tensor,
    steps: int = 10,
    tie_seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Deletion and insertion curves, each (N, steps + 1): the softmax probability of ``targets`` as a
    fraction 0, 1/steps, ..., 1 of the pixels ranked highest by ``maps`` (N, H, W) is blurred away
    (deletion, from the image) or revealed (insertion, from the blurred image).

    Equal map values (Grad-CAM's ReLU leaves many zeros) are ordered randomly by ``tie_seed``, not in
    raster order, which would favour the image's top rows. Each forward pass sees every step of both
    curves for a chunk of images, at most ``MAX_FORWARD_IMAGES`` images in all.
    """
    model = unwrap(model).eval()
    device = next(model.parameters()).device
    n, _, height, width = images.shape
    if maps.shape != (n, height, width):
        raise ValueError(f"maps of shape {tuple(maps.shape)} do not fit images of shape {tuple(images.shape)}")
    counts = torch.as_tensor(pixel_counts(height * width, steps))
    rank = pixel_ranks(maps, tie_seed)
    points = steps + 1
    chunk = max(1, MAX_FORWARD_IMAGES // (2 * points))
    deletion, insertion = [], []
    with torch.inference_mode():
        for start in range(0, n, chunk):
            original = images[start : start + chunk].to(device).float()
            blurred = blur(original)
            # (images, points, 1, H, W): True where a pixel is among the first `counts[k]` in the map's order.
            taken = (rank[start : start + chunk, None, :] < counts[None, :, None]).view(-1, points, 1, height, width)
            taken = taken.to(device)
            deleted = torch.where(taken, blurred[:, None], original[:, None])
            inserted = torch.where(taken, original[:, None], blurred[:, None])
            batch = torch.cat([deleted, inserted]).flatten(0, 1)
            probability = torch.softmax(model(batch).float(), dim=1)
            target = targets[start : start + chunk].to(device).repeat(2).repeat_interleave(points)
            curves = probability.gather(1, target[:, None]).view(2, -1, points).cpu()
            deletion.append(curves[0])
            insertion.append(curves[1])
    return torch.cat(deletion).numpy(), torch.cat(insertion).numpy()


def area_under(curves: np.ndarray, fractions: np.ndarray) -> np.ndarray:
    """Per curve, the trapezoid-rule area over the fraction axis [0, 1]."""
    return integrate.trapezoid(curves, fractions, axis=-1)


def paired_p_value(better: np.ndarray, baseline: np.ndarray) -> float:
    """One-sided Wilcoxon signed-rank test that ``better`` exceeds ``baseline`` image by image (1.0 when no
    image differs, NaN for no images)."""
    differences = np.asarray(better) - np.asarray(baseline)
    if len(differences) == 0:
        return float("nan")
    if not np.any(differences):
        return 1.0
    return float(stats.wilcoxon(differences, alternative="greater").pvalue)


def faithfulness(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    maps_by_layer: dict[str, torch.Tensor],
    seed: int,
    steps: int = 10,
) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Deletion and insertion of each layer's maps, against one random-map baseline for these images.

    Returns a table with a row per layer: ``layer, n_images``, the mean areas ``deletion_auc,
    insertion_auc, random_deletion_auc, random_insertion_auc``, and ``deletion_p, insertion_p``, the
    one-sided paired Wilcoxon tests that the layer's maps beat the random ones (lower deletion, higher
    insertion area). And the mean curves, for ``faithfulness_figure`` and to save with ``np.savez``:
    ``"fraction"`` (steps + 1,) and ``"deletion/<layer>"``, ``"insertion/<layer>"``, with
    ``RANDOM`` as the layer of the baseline; with them each image's areas, (N,), to pair the same
    images between maps (``harness.analysis.paired_tests``): ``"deletion_auc/<layer>"`` and
    ``"insertion_auc/<layer>"``. ``seed`` draws the random maps and orders tied pixels.

    Any maps of these images may be measured, whatever made them: the keys of ``maps_by_layer`` name
    them in the table and curves (a layer, or e.g. ``"scorecam/layer4"``).
    """
    if RANDOM in maps_by_layer:
        raise ValueError(f"{RANDOM!r} names the random baseline; it cannot be a layer name")
    n, _, height, width = images.shape
    fractions = pixel_fractions(height, width, steps)
    curves: dict[str, np.ndarray] = {"fraction": fractions}
    # The baseline depends on the images and targets, not on the layer: one for every layer.
    random_deletion, random_insertion = perturbation_curves(
        model, images, targets, random_maps(n, height, width, seed), steps, tie_seed=seed
    )
    random_deletion_auc = area_under(random_deletion, fractions)
    random_insertion_auc = area_under(random_insertion, fractions)
    rows = []
    for layer, maps in maps_by_layer.items():
        deletion, insertion = perturbation_curves(model, images, targets, maps, steps, tie_seed=seed)
        deletion_auc, insertion_auc = area_under(deletion, fractions), area_under(insertion, fractions)
        rows.append(
            {
                "layer": layer,
                "n_images": n,
                "deletion_auc": deletion_auc.mean(),
                "insertion_auc": insertion_auc.mean(),
                "random_deletion_auc": random_deletion_auc.mean(),
                "random_insertion_auc": random_insertion_auc.mean(),
                "deletion_p": paired_p_value(random_deletion_auc, deletion_auc),
                "insertion_p": paired_p_value(insertion_auc, random_insertion_auc),
            }
        )
        curves[f"deletion/{layer}"] = deletion.mean(axis=0)
        curves[f"insertion/{layer}"] = insertion.mean(axis=0)
        curves[f"deletion_auc/{layer}"] = deletion_auc
        curves[f"insertion_auc/{layer}"] = insertion_auc
    curves[f"deletion/{RANDOM}"] = random_deletion.mean(axis=0)
    curves[f"insertion/{RANDOM}"] = random_insertion.mean(axis=0)
    curves[f"deletion_auc/{RANDOM}"] = random_deletion_auc
    curves[f"insertion_auc/{RANDOM}"] = random_insertion_auc
    return pd.DataFrame(rows), curves


def faithfulness_figure(
    curves: dict[str, np.ndarray], path: Path, footer: str | None = None, title: str | None = None
) -> Path:
    """Two panels, deletion and insertion: the mean target-class probability against the fraction of
    pixels blurred away or revealed, a line per layer (area under it in the legend), random maps dashed."""
    fractions = curves["fraction"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    for ax, kind, verb in zip(axes, ("deletion", "insertion"), ("blurred away", "revealed"), strict=True):
        for key, curve in curves.items():
            if not key.startswith(f"{kind}/"):
                continue
            layer = key.split("/", 1)[1]
            baseline = layer == RANDOM
            ax.plot(
                fractions,
                curve,
                label=f"{'random map' if baseline else layer} (AUC {float(area_under(curve, fractions)):.3f})",
                linestyle="--" if baseline else "-",
                color="#555555" if baseline else None,
                marker=None if baseline else "o",
                markersize=3,
                linewidth=1.5,
            )
        ax.set_title(f"{kind} ({'lower' if kind == 'deletion' else 'higher'} is more faithful)", fontsize=10)
        ax.set_xlabel(f"fraction of pixels {verb}, highest-ranked first")
        ax.set_xlim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("target-class probability")
    axes[0].set_ylim(bottom=0)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, footer)
