"""ROAD, RemOve And Debias (Rong, Leemann, Borisov, Kasneci & Kasneci, "A Consistent and Efficient
Evaluation Strategy for Attribution Methods", ICML 2022): do the maps rank the pixels the model uses?

Removing pixels leaves a trace: a blur or a fixed colour draws the removed region's shape, and that
shape alone can tell the model which class the map was about ("class information leakage"), so a
removal order can score well for where it removes, not for what. ROAD removes pixels so that they
cannot be told from their surroundings: noisy linear imputation sets every removed pixel to the
weighted mean of its eight neighbours, 1/6 for the four direct ones and 1/12 for the four diagonal
ones (those outside the image are left out and the rest renormalized), all removed pixels of an
image at once (a sparse linear system per colour channel, since neighbours may be removed too), and
adds Gaussian noise of standard deviation ``NOISE_STD`` = 0.01 to them (the authors' default, here
in the model's normalized input units, where the harness's maps are measured).

Two orders: MoRF (most relevant first) removes the fraction p of the pixels a map ranks highest,
LeRF (least relevant first) the fraction p it ranks lowest, for p = 10%, 20%, ..., 90% as in the
paper. A faithful map makes the target's probability fall fast under MoRF (a low curve) and hold
under LeRF (a high one). The paper follows a data set's accuracy; for comparing maps image by image
this follows each image's softmax probability of its target, as deletion and insertion do
(``faithfulness``), with ties in a map ordered at random as there. pytorch-grad-cam's ROADCombined
summarizes the two as (LeRF - MoRF) / 2, averaged over the fractions.

Each image's system is solved directly (a sparse LU factorization, SciPy's SuperLU, once for its
colour channels), as the authors' implementation does with a sparse solver: it has one solution
while any pixel is kept, since every connected group of removed pixels then borders a kept one. On
two CPU cores that is about 2 ms an image, several times faster than batched conjugate gradients.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import sparse
from scipy.sparse import linalg
from torch import nn

from harness.analysis.faithfulness import MAX_FORWARD_IMAGES, pixel_ranks
from harness.models.builders import unwrap

FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # removed, in either order
NOISE_STD = 0.01
NEIGHBOUR_WEIGHTS = ((1 / 12, 1 / 6, 1 / 12), (1 / 6, 0.0, 1 / 6), (1 / 12, 1 / 6, 1 / 12))


def imputed_values(image: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """The linear imputation of one image (C, H, W) where ``removed`` (H, W) is true, without noise:
    the values (removed pixels in raster order, C), from one sparse system for every colour channel.

    Removed pixel i: (sum of its neighbours' weights) x_i - (its removed neighbours' weighted values)
    = (its kept neighbours' weighted values); a neighbour outside the image is not in either sum.
    """
    channels, height, width = image.shape
    unknown = np.flatnonzero(removed.ravel())
    column = np.full(height * width, -1)
    column[unknown] = np.arange(len(unknown))
    row_of, col_of = np.divmod(unknown, width)
    pixels = image.reshape(channels, -1)
    rows, cols, entries = [np.arange(len(unknown))], [np.arange(len(unknown))], []
    weight_sums = np.zeros(len(unknown))
    right = np.zeros((len(unknown), channels))
    for d_row, offsets in zip((-1, 0, 1), NEIGHBOUR_WEIGHTS, strict=True):
        for d_col, weight in zip((-1, 0, 1), offsets, strict=True):
            if not weight:
                continue
            r, c = row_of + d_row, col_of + d_col
            inside = (r >= 0) & (r < height) & (c >= 0) & (c < width)
            weight_sums[inside] += weight
            equation, neighbour = np.flatnonzero(inside), (r * width + c)[inside]
            also_removed = column[neighbour] >= 0
            rows.append(equation[also_removed])
            cols.append(column[neighbour[also_removed]])
            entries.append(np.full(int(also_removed.sum()), -weight))
            right[equation[~also_removed]] += weight * pixels[:, neighbour[~also_removed]].T  # one per equation
    matrix = sparse.csc_matrix(
        (np.concatenate([weight_sums, *entries]), (np.concatenate(rows), np.concatenate(cols))),
        shape=(len(unknown), len(unknown)),
    )
    return linalg.splu(matrix).solve(right)


def noisy_linear_imputation(
    images: torch.Tensor, removed: torch.Tensor, noise_std: float = NOISE_STD, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``images`` (N, C, H, W) with the pixels where ``removed`` (N, H, W) is true replaced by the
    weighted mean of their neighbours, solved jointly per image, plus noise of ``noise_std`` drawn
    by ``generator``. At least one pixel of each image must be kept. Solved on the CPU (SuperLU)."""
    n, channels, height, width = images.shape
    if removed.shape != (n, height, width):
        raise ValueError(f"removed of shape {tuple(removed.shape)} does not fit images of shape {tuple(images.shape)}")
    masks = removed.detach().cpu().numpy().astype(bool)
    if masks.reshape(n, -1).all(axis=1).any():
        raise ValueError("an image with every pixel removed has no neighbours to impute from")
    values = images.detach().cpu().double().numpy()
    imputed = values.copy()
    for index in range(n):
        if masks[index].any():
            imputed[index][:, masks[index]] = imputed_values(values[index], masks[index]).T
    noise = torch.randn(images.shape, generator=generator, dtype=torch.float64) * noise_std
    result = torch.where(torch.from_numpy(masks)[:, None], torch.from_numpy(imputed) + noise, torch.from_numpy(values))
    return result.to(device=images.device, dtype=images.dtype)


def road_curves(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    maps: torch.Tensor,
    fractions: Sequence[float] = FRACTIONS,
    noise_std: float = NOISE_STD,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """MoRF and LeRF curves, each (N, len(fractions)): the softmax probability of ``targets`` once each
    fraction of the pixels that ``maps`` (N, H, W) rank highest (MoRF) or lowest (LeRF) is imputed.

    ``seed`` orders tied pixels and draws the imputation's noise. Each forward pass sees both curves
    of a chunk of images, at most ``MAX_FORWARD_IMAGES`` images in all.
    """
    if not all(0 <= fraction < 1 for fraction in fractions):
        raise ValueError(
            f"fractions must lie in [0, 1): with every pixel removed none is left to impute from ({fractions})"
        )
    model = unwrap(model).eval()
    device = next(model.parameters()).device
    n, _, height, width = images.shape
    if maps.shape != (n, height, width):
        raise ValueError(f"maps of shape {tuple(maps.shape)} do not fit images of shape {tuple(images.shape)}")
    pixels = height * width
    counts = torch.as_tensor(np.rint(np.asarray(fractions) * pixels).astype(np.int64))
    rank = pixel_ranks(maps, seed)
    generator = torch.Generator().manual_seed(seed)
    points = len(fractions)
    chunk = max(1, MAX_FORWARD_IMAGES // (2 * points))
    most, least = [], []
    with torch.inference_mode():
        for start in range(0, n, chunk):
            place = rank[start : start + chunk, None, :]  # (c, 1, H * W)
            removed = torch.stack([place < counts[:, None], place >= pixels - counts[:, None]])  # (2, c, points, H*W)
            originals = images[start : start + chunk].to(device).float()
            batch = originals[None, :, None].expand(2, -1, points, -1, -1, -1).flatten(0, 2)
            imputed = noisy_linear_imputation(batch, removed.view(-1, height, width).to(device), noise_std, generator)
            probability = torch.softmax(model(imputed).float(), dim=1)
            target = targets[start : start + chunk].to(device).repeat(2).repeat_interleave(points)
            curves = probability.gather(1, target[:, None]).view(2, -1, points).cpu()
            most.append(curves[0])
            least.append(curves[1])
    return torch.cat(most).numpy(), torch.cat(least).numpy()
