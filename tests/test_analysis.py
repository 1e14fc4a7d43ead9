from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from harness.analysis.artifacts import A_MISTAKE, ARTIFACTS, MEASURED, SHOWN
from harness.analysis.gradcam import gradcam_maps, normalize_per_image
from harness.analysis.pipeline import per_class_accuracy, select_misclassified
from harness.analyze import main as analyze_main
from harness.run import main as run_main


def test_per_class_accuracy_is_diagonal_over_row_sums():
    confusion = np.array([[8, 2, 0], [1, 3, 0], [0, 0, 0]])
    assert per_class_accuracy(confusion).tolist() == [0.8, 0.75, 0.0]


def test_misclassified_are_exactly_the_argmax_disagreements_in_order():
    probabilities = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.7, 0.3], [0.45, 0.55]])
    labels = np.array([0, 0, 1, 1, 0])
    assert select_misclassified(probabilities, labels, 10, "first").tolist() == [1, 3, 4]
    assert select_misclassified(probabilities, labels, 10, "confident").tolist() == [3, 1, 4]
    assert select_misclassified(probabilities, labels, 2, "first").tolist() == [1, 3]


class QuadrantModel(nn.Module):
    """Class 0's evidence is the brightness the 1x1 'detector' sees; class 1 is its opposite."""

    def __init__(self) -> None:
        super().__init__()
        self.layer1 = nn.Conv2d(3, 1, 1, bias=False)
        nn.init.constant_(self.layer1.weight, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        evidence = torch.relu(self.layer1(x)).mean(dim=(1, 2, 3))
        return torch.stack([evidence, -evidence], dim=1)


@pytest.mark.parametrize("quadrant", [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_gradcam_points_at_the_quadrant_holding_the_evidence(quadrant):
    images = torch.rand(3, 3, 32, 32) * 0.05
    top, left = quadrant[0] * 16, quadrant[1] * 16
    images[:, :, top + 4 : top + 12, left + 4 : left + 12] = 1.0
    maps = gradcam_maps(QuadrantModel(), images, torch.zeros(3, dtype=torch.long), ["layer1"])["layer1"]
    assert maps.shape == (3, 32, 32)
    assert float(maps.min()) >= 0.0 and float(maps.max()) <= 1.0
    for heat in maps:
        row, col = divmod(int(heat.argmax()), 32)
        assert (row // 16, col // 16) == quadrant


def test_all_zero_attribution_does_not_crash():
    images = torch.rand(2, 3, 32, 32)
    # Class 1 has only negative evidence: ReLU'd Grad-CAM is all zeros there.
    maps = gradcam_maps(QuadrantModel(), images, torch.ones(2, dtype=torch.long), ["layer1"])["layer1"]
    assert torch.count_nonzero(maps) == 0
    assert torch.equal(normalize_per_image(torch.zeros(1, 4, 4)), torch.zeros(1, 4, 4))


def test_analyze_an_existing_run_folder(write_config, tmp_path):
    run_dir = tmp_path / "run"
    config = write_config(
        {
            "analysis": {
                "enabled": False,
                "misclassified": 6,
                "order": "confident",
                "gradcam_layers": ["layer3", "layer4.1"],  # a nested module too: any module path
            }
        }
    )
    assert run_main([str(config), "--out", str(run_dir)]) == 0
    assert not (run_dir / "analysis").exists()
    assert analyze_main([str(run_dir)]) == 0
    out = run_dir / "analysis"
    # Every artifact but those the config leaves out (gradcam_targets are both classes by default; an
    # untrained model misclassifies).
    expected = [name for name, artifact in ARTIFACTS.items() if artifact.when in (None, MEASURED, A_MISTAKE, SHOWN)]
    for name in [*expected, "gradcam_predicted.png", "gradcam_true.png"]:
        assert (out / name).is_file(), name
    summary = json.loads((run_dir / "summary.json").read_text())
    assert len(summary["per_class_acc"]) == 10
    confusion = np.loadtxt(out / "confusion.csv", delimiter=",", skiprows=1, usecols=range(1, 11))
    assert confusion.sum() == 128
    expected = np.diag(confusion) / confusion.sum(axis=1)
    assert np.allclose(list(summary["per_class_acc"].values()), expected, atol=1e-6)
    per_class = pd.read_csv(out / "per_class.csv")
    precision = np.diag(confusion) / np.maximum(confusion.sum(axis=0), 1)
    assert np.allclose(per_class["precision"], precision, atol=1e-6)
    assert np.allclose(per_class["recall"], expected, atol=1e-6)
    harmonic = np.where(precision + expected > 0, 2 * precision * expected / np.maximum(precision + expected, 1e-12), 0)
    assert np.allclose(per_class["f1"], harmonic, atol=1e-6)
    predictions = pd.read_csv(out / "predictions.csv")
    assert len(predictions) == 128 and (predictions["label"] == predictions["predicted"]).mean() == pytest.approx(
        summary["analysis_accuracy"], abs=1e-6
    )
    # The trust measures: what the issue asks each CSV to hold, with values in range.
    faithful = pd.read_csv(out / "faithfulness.csv")
    assert {"layer", "target", "deletion_auc", "insertion_auc", "random_deletion_auc", "random_insertion_auc"} <= set(
        faithful.columns
    )
    assert set(faithful["subset"]) == {"misclassified", "correct"} and set(faithful["layer"]) == {"layer3", "layer4.1"}
    wrong_count = len(pd.read_csv(out / "misclassified.csv"))
    assert set(faithful.groupby("subset")["n_images"].unique().explode()) == {wrong_count}, "as many correct as wrong"
    sanity = pd.read_csv(out / "sanity.csv")
    assert list(dict.fromkeys(sanity["randomized_from"])) == [
        "none",
        "head",
        "layer4",
        "layer3",
        "layer2",
        "layer1",
        "stem",
    ]
    calibration = pd.read_csv(out / "calibration.csv")
    assert list(calibration.columns) == ["bin_low", "bin_high", "count", "accuracy", "confidence"]
    assert calibration["count"].sum() == 128 and len(calibration) == 15
    gaps = (calibration["accuracy"] - calibration["confidence"]).abs().fillna(0)
    assert summary["ece"] == pytest.approx(float((calibration["count"] / 128 * gaps).sum()), abs=1e-5), (
        "ECE of the bins"
    )
    wrong = pd.read_csv(out / "misclassified.csv")
    assert (wrong["true"] != wrong["predicted"]).all()
    with np.load(out / "gradcam.npz") as saved:
        assert set(saved.files) == {
            "indices",
            "gradcam/layer3/predicted",
            "gradcam/layer4.1/predicted",
            "gradcam/layer3/true",
            "gradcam/layer4.1/true",
        }
        assert saved["gradcam/layer4.1/predicted"].shape == (len(saved["indices"]), 32, 32)


def test_analyze_rejects_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert analyze_main([str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_grid_figures_place_every_cell_in_order(tmp_path):
    from PIL import Image

    from harness.analysis.figures import gradcam_grid, image_grid

    solid = np.zeros((3, 32, 32, 3), dtype=np.uint8)
    for index in range(3):
        solid[index, ..., index] = 255  # red, green, blue
    pixels = np.asarray(
        Image.open(image_grid(solid, ["r", "g", "b"], tmp_path / "grid.png", columns=2, footer="footer")).convert("RGB")
    )

    def centre_of(colour: tuple[int, int, int]) -> np.ndarray:
        rows, cols = np.nonzero(np.all(np.abs(pixels.astype(int) - colour) < 30, axis=-1))
        assert len(rows) > 1000, f"no {colour} cell"
        return np.array([rows.mean(), cols.mean()])

    red, green, blue = centre_of((255, 0, 0)), centre_of((0, 255, 0)), centre_of((0, 0, 255))
    assert abs(red[0] - green[0]) < 2 and green[1] > red[1] + 50  # one row, side by side
    assert blue[0] > red[0] + 50 and abs(blue[1] - red[1]) < 2  # the third starts the second row
    # Grad-CAM: a black image under a full-strength heatmap is the colormap's red at the overlay's share.
    black = np.zeros((1, 32, 32, 3))
    path = gradcam_grid(black, {"layer4": np.ones((1, 32, 32))}, ["P=a A=b"], tmp_path / "cam.png", footer="footer")
    cam = np.asarray(Image.open(path).convert("RGB")).astype(int)
    dark_red = np.all(np.abs(cam - (0.45 * 0.5 * 255, 0, 0)) < 12, axis=-1)
    assert dark_red.sum() > 1000
