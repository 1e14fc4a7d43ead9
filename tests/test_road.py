"""ROAD: the noisy linear imputation against a system solved independently and against images whose
imputation is known, and the MoRF / LeRF curves on a model whose evidence is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.analysis.road import FRACTIONS, noisy_linear_imputation, road_curves
from tests.test_analysis import QuadrantModel
from tests.test_trust import evidence_images


def imputed_by_hand(image: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """The same imputation, written out pixel by pixel as a dense system: each removed pixel times the
    weights of its neighbours inside the image equals their weighted values (1/6 direct, 1/12 diagonal)."""
    height, width = removed.shape
    unknown = [(r, c) for r in range(height) for c in range(width) if removed[r, c]]
    index = {pixel: i for i, pixel in enumerate(unknown)}
    matrix = np.zeros((len(unknown), len(unknown)))
    right = np.zeros((len(unknown), image.shape[0]))
    for i, (r, c) in enumerate(unknown):
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                rr, cc = r + dr, c + dc
                if (dr, dc) == (0, 0) or not (0 <= rr < height and 0 <= cc < width):
                    continue
                weight = 1 / 12 if dr and dc else 1 / 6
                matrix[i, i] += weight
                if removed[rr, cc]:
                    matrix[i, index[rr, cc]] -= weight
                else:
                    right[i] += weight * image[:, rr, cc]
    result = image.copy()
    result[:, removed] = np.linalg.solve(matrix, right).T
    return result


def test_imputation_solves_the_neighbour_system():
    rng = np.random.default_rng(0)
    images = rng.normal(size=(3, 3, 8, 8))
    removed = rng.random((3, 8, 8)) < np.array([0.2, 0.6, 0.9])[:, None, None]  # borders and corners included
    found = noisy_linear_imputation(torch.from_numpy(images), torch.from_numpy(removed), noise_std=0.0)
    for image, mask, result in zip(images, removed, found.numpy(), strict=True):
        assert np.allclose(result, imputed_by_hand(image, mask), atol=1e-10)


def test_imputation_of_a_plane_inside_the_image_is_the_plane():
    # Symmetric weights average a linear function back to its centre: a hole away from the border is refilled.
    rows, cols = np.mgrid[0:10, 0:12]
    plane = torch.from_numpy(np.stack([0.3 * rows - 0.2 * cols + 1, 2 * cols, -rows]))[None].float()
    removed = torch.zeros(1, 10, 12, dtype=torch.bool)
    removed[0, 2:8, 3:9] = True
    assert torch.allclose(noisy_linear_imputation(plane, removed, noise_std=0.0), plane, atol=1e-5)


def test_noise_only_on_removed_pixels_and_seeded():
    images = torch.zeros(2, 3, 32, 32)
    removed = torch.zeros(2, 32, 32, dtype=torch.bool)
    removed[:, 4:28, 4:28] = True
    found = noisy_linear_imputation(images, removed, 0.5, torch.Generator().manual_seed(1))
    assert torch.equal(found[:, :, ~removed[0]], images[:, :, ~removed[0]])
    assert float(found[:, :, removed[0]].std()) == pytest.approx(0.5, rel=0.05)
    assert torch.equal(found, noisy_linear_imputation(images, removed, 0.5, torch.Generator().manual_seed(1)))
    with pytest.raises(ValueError, match="every pixel removed"):
        noisy_linear_imputation(images, torch.ones(2, 32, 32, dtype=torch.bool))


def test_curves_remove_the_highest_pixels_first_under_morf_and_the_lowest_under_lerf():
    torch.manual_seed(0)
    images, model = torch.rand(2, 3, 32, 32), QuadrantModel()
    targets = torch.zeros(2, dtype=torch.long)
    ramp = torch.arange(32.0).expand(2, 32, 32)  # higher to the right, one value per column
    morf, lerf = road_curves(model, images, targets, ramp, fractions=(0.25,), noise_std=0.0)
    right, left = torch.zeros(2, 32, 32, dtype=torch.bool), torch.zeros(2, 32, 32, dtype=torch.bool)
    right[:, :, 24:], left[:, :, :8] = True, True  # a quarter of the pixels: eight columns
    for curve, removed in ((morf, right), (lerf, left)):
        with torch.inference_mode():
            probability = torch.softmax(model(noisy_linear_imputation(images, removed, 0.0)), dim=1)[:, 0]
        assert curve[:, 0] == pytest.approx(probability.numpy(), abs=1e-6)


def test_a_map_of_the_evidence_is_faithful_under_both_orders():
    """QuadrantModel's class-0 evidence is the checkerboard square: removing it first (MoRF) drops the
    probability, removing it last (LeRF) keeps it; a map ranking the square lowest does the opposite."""
    images, mask = evidence_images(6)
    model, targets = QuadrantModel(), torch.zeros(6, dtype=torch.long)
    morf, lerf = road_curves(model, images, targets, mask, seed=0)
    reversed_morf, reversed_lerf = road_curves(model, images, targets, 1 - mask, seed=0)
    assert morf.shape == lerf.shape == (6, len(FRACTIONS))
    assert (morf.mean(axis=1) < reversed_morf.mean(axis=1) - 0.1).all()
    assert (lerf.mean(axis=1) > reversed_lerf.mean(axis=1) + 0.1).all()
    # The square is a sixteenth of the image: once 10% is removed most-relevant first, its evidence is gone.
    with torch.inference_mode():
        background = torch.softmax(model(images * 0.0 + images.mean()), dim=1)[:, 0].numpy()
    assert morf[:, 0] == pytest.approx(background, abs=0.05)
