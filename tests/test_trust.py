"""Can the model's confidences and Grad-CAM maps be trusted? Calibration, deletion/insertion
faithfulness and the model-randomization sanity check, on constructed cases whose answer is known."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from harness.analysis.calibration import (
    calibration_bins,
    expected_calibration_error,
    negative_log_likelihood,
    reliability_diagram,
)
from harness.analysis.faithfulness import (
    RANDOM,
    blur,
    faithfulness,
    faithfulness_figure,
    perturbation_curves,
    random_maps,
)
from harness.analysis.gradcam import gradcam_maps
from harness.analysis.sanity import (
    cascading_randomization,
    rank_correlation,
    sanity_examples_figure,
    sanity_figure,
)
from harness.models.builders import build_model
from harness.models.config import ModelConfig
from tests.test_analysis import QuadrantModel

STAGES = ["none", "head", "layer4", "layer3", "layer2", "layer1", "stem"]


def test_ece_of_a_calibrated_predictor_is_near_zero():
    rng = np.random.default_rng(0)
    confidence = rng.uniform(0.1, 1.0, size=200_000)
    correct = rng.random(200_000) < confidence
    # Ten classes, so that a confidence as low as 0.1 can still be the top one: class 0 gets it.
    probabilities = np.repeat(((1 - confidence) / 9)[:, None], 10, axis=1)
    probabilities[:, 0] = confidence
    labels = np.where(correct, 0, 1)
    bins = calibration_bins(probabilities, labels)
    assert list(bins.columns) == ["bin_low", "bin_high", "count", "accuracy", "confidence"]
    assert len(bins) == 15 and bins["count"].sum() == 200_000
    assert expected_calibration_error(bins) < 0.01


def test_ece_of_a_certain_coin_flip_is_one_half_and_empty_bins_are_nan():
    probabilities = np.tile([1.0, 0.0], (1000, 1))
    labels = np.arange(1000) % 2
    bins = calibration_bins(probabilities, labels)
    assert bins["count"].tolist() == [0] * 14 + [1000]  # the top bin includes 1.0
    assert bins["accuracy"].iloc[-1] == 0.5 and bins["confidence"].iloc[-1] == 1.0
    assert bins["accuracy"].iloc[:-1].isna().all() and bins["confidence"].iloc[:-1].isna().all()
    assert expected_calibration_error(bins) == pytest.approx(0.5)


def test_negative_log_likelihood_by_hand():
    probabilities = np.array([[0.5, 0.5], [0.25, 0.75], [1.0, 0.0]])
    assert negative_log_likelihood(probabilities, np.array([0, 1, 0])) == pytest.approx(
        (math.log(2) + math.log(4 / 3)) / 3
    )
    # A probability of exactly 0 for the true class is floored, not infinite.
    assert negative_log_likelihood(probabilities[2:], np.array([1])) == pytest.approx(-math.log(1e-12))


def evidence_images(count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images for QuadrantModel whose class-0 evidence is a fine checkerboard in one 8x8 square, on a faint
    background; a blur averages the checkerboard to nothing, so deleting the square deletes the evidence.
    Returns the images and the square's mask (count, 32, 32), the map that marks the true evidence."""
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(count, 3, 32, 32, generator=generator) * 0.05
    mask = torch.zeros(count, 32, 32)
    checker = (torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2 * 16.0 - 8.0
    for index in range(count):
        top, left = (int(v) for v in torch.randint(0, 24, (2,), generator=generator))
        images[index, :, top : top + 8, left : left + 8] = checker
        mask[index, top : top + 8, left : left + 8] = 1.0
    return images, mask


def test_a_map_of_the_true_evidence_beats_a_random_map():
    images, mask = evidence_images(8)
    model, targets = QuadrantModel(), torch.zeros(8, dtype=torch.long)
    cam = gradcam_maps(model, images, targets, ["layer1"])["layer1"]
    table, curves = faithfulness(model, images, targets, {"evidence": mask, "gradcam": cam}, seed=0)
    assert list(table["layer"]) == ["evidence", "gradcam"]
    assert {"n_images", "deletion_auc", "insertion_auc", "random_deletion_auc", "random_insertion_auc"} <= set(
        table.columns
    )
    for row in table.itertuples():
        assert row.n_images == 8
        assert row.deletion_auc < row.random_deletion_auc - 0.1
        assert row.insertion_auc > row.random_insertion_auc + 0.1
        assert row.deletion_p < 0.01 and row.insertion_p < 0.01  # every one of the 8 images agrees
    assert set(curves) == {"fraction"} | {
        f"{k}/{m}"
        for k in ("deletion", "insertion", "deletion_auc", "insertion_auc")
        for m in ("evidence", "gradcam", RANDOM)
    }
    # Each image's areas, for paired comparisons of maps: the table's means are theirs.
    assert curves["deletion_auc/gradcam"].shape == (8,)
    assert np.isclose(curves["insertion_auc/evidence"].mean(), table["insertion_auc"].iloc[0])
    assert np.isclose(curves[f"deletion_auc/{RANDOM}"].mean(), table["random_deletion_auc"].iloc[0])
    assert np.allclose(curves["fraction"], np.rint(np.linspace(0, 1024, 11)) / 1024)


def test_curves_start_and_end_at_the_image_and_its_blur():
    torch.manual_seed(0)
    model = build_model(ModelConfig(width=8), 10).eval()
    images, targets = torch.randn(5, 3, 32, 32), torch.tensor([0, 3, 3, 7, 9])
    deletion, insertion = perturbation_curves(model, images, targets, random_maps(5, 32, 32, seed=1), steps=10)
    assert deletion.shape == insertion.shape == (5, 11)
    with torch.inference_mode():
        whole = torch.softmax(model(images), dim=1)[torch.arange(5), targets].numpy()
        blurred = torch.softmax(model(blur(images)), dim=1)[torch.arange(5), targets].numpy()
    assert np.allclose(deletion[:, 0], whole, atol=1e-5) and np.allclose(insertion[:, -1], whole, atol=1e-5)
    assert np.allclose(deletion[:, -1], blurred, atol=1e-5) and np.allclose(insertion[:, 0], blurred, atol=1e-5)
    assert not np.allclose(whole, blurred, atol=1e-3)  # the blur changes what the model sees


def test_rank_correlation_of_identical_reversed_and_constant_maps():
    maps = torch.rand(3, 8, 8)
    assert np.allclose(rank_correlation(maps, maps), 1.0)
    assert np.allclose(rank_correlation(maps, -maps), -1.0)
    constant = maps.clone()
    constant[1] = 0.0
    rho = rank_correlation(maps, constant)
    assert np.isnan(rho[1]) and np.allclose(rho[[0, 2]], 1.0)


@pytest.fixture(scope="module")
def randomization():
    torch.manual_seed(0)
    model = build_model(ModelConfig(width=8), 10).eval()
    images, targets = torch.randn(3, 3, 32, 32), torch.tensor([1, 4, 8])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    table, maps = cascading_randomization(model, images, targets, ["layer2", "layer4"], seed=0)
    return model, images, targets, before, table, maps


def test_cascading_randomization_goes_top_down_and_leaves_the_model_alone(randomization):
    model, _, _, before, table, maps = randomization
    assert list(table["randomized_from"]) == [stage for stage in STAGES for _ in range(2)]
    assert list(table["layer"]) == ["layer2", "layer4"] * len(STAGES)
    assert table.loc[table["randomized_from"] == "stem", "randomized"].iloc[0] == (
        "linear+layer4+layer3+layer2+layer1+conv1+bn1"
    )
    assert (table["n_images"] == 3).all()
    trained = table[table["randomized_from"] == "none"]
    assert np.allclose(trained["spearman"], 1.0)
    assert list(maps) == STAGES and maps["stem"]["gradcam"]["layer4"].shape == (3, 32, 32)
    assert (table["method"] == "gradcam").all()
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # Randomized layers change the maps: after the head, layer4's map of a random net is not the trained one.
    assert not torch.allclose(maps["none"]["gradcam"]["layer4"], maps["head"]["gradcam"]["layer4"])


def test_cascading_randomization_is_reproducible(randomization):
    model, images, targets, _, table, maps = randomization
    rng_state = torch.get_rng_state()
    again, again_maps = cascading_randomization(model, images, targets, ["layer4"], seed=0)
    assert torch.equal(torch.get_rng_state(), rng_state)  # the global RNG is not consumed
    pd.testing.assert_frame_equal(
        again.reset_index(drop=True), table[table["layer"] == "layer4"].reset_index(drop=True)
    )
    assert all(
        torch.equal(again_maps[stage]["gradcam"]["layer4"], maps[stage]["gradcam"]["layer4"]) for stage in STAGES
    )


def test_cascading_randomization_of_several_methods_from_shared_passes(randomization):
    model, images, targets, _, table, _ = randomization
    both, maps = cascading_randomization(model, images, targets, ["layer4"], seed=0, methods=["gradcam", "eigencam"])
    gradcam = both[both["method"] == "gradcam"].reset_index(drop=True)
    pd.testing.assert_frame_equal(gradcam, table[table["layer"] == "layer4"].reset_index(drop=True))
    eigencam = both[both["method"] == "eigencam"].set_index("randomized_from")["spearman"]
    # Eigen-CAM reads the activations alone: a random head leaves its maps as they were, a random layer4 does not.
    assert eigencam["head"] == pytest.approx(1.0) and eigencam["layer4"] < 0.99
    assert torch.equal(maps["head"]["eigencam"]["layer4"], maps["none"]["eigencam"]["layer4"])
    shallow, _ = cascading_randomization(model, images, targets, ["layer4"], seed=0, methods=["eigencam"], max_stages=2)
    assert list(shallow["randomized_from"]) == ["none", "head", "layer4"]
    assert np.allclose(shallow["spearman"], eigencam.iloc[:3]), "a stage's random weights do not depend on the depth"


def test_figures_are_written(tmp_path, randomization):
    def is_png(path) -> bool:
        with Image.open(path) as image:
            return image.format == "PNG" and image.size[0] > 100

    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.ones(10), size=500)
    assert is_png(
        reliability_diagram(calibration_bins(probabilities, rng.integers(0, 10, 500)), tmp_path / "r.png", "f")
    )

    fractions = np.linspace(0, 1, 11)
    curves = {"fraction": fractions}
    for layer, slope in (("layer4", 0.3), (RANDOM, 0.6)):
        curves[f"deletion/{layer}"] = 0.9 - 0.8 * fractions**slope
        curves[f"insertion/{layer}"] = 0.1 + 0.8 * fractions**slope
    assert is_png(faithfulness_figure(curves, tmp_path / "f.png", footer="f", title="predicted class"))

    _, images, _, _, table, maps = randomization
    assert is_png(sanity_figure(table, tmp_path / "s.png", footer="f"))
    shown = (images.permute(0, 2, 3, 1).numpy() * 0.2 + 0.5).clip(0, 1)
    by_stage = {stage: by_method["gradcam"] for stage, by_method in maps.items()}
    assert is_png(sanity_examples_figure(shown, by_stage, "layer4", tmp_path / "e.png", footer="f"))
