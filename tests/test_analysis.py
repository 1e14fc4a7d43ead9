from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from harness.analyze import main as analyze_main
from harness.analyze import per_class_accuracy, select_misclassified
from harness.gradcam import gradcam_maps, normalize_per_image
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
    config = write_config({"analysis": {"enabled": False, "misclassified": 6, "order": "confident",
                                        "gradcam_layers": ["layer3", "layer4"]}})
    assert run_main([str(config), "--out", str(run_dir)]) == 0
    assert not (run_dir / "analysis").exists()
    assert analyze_main([str(run_dir)]) == 0
    out = run_dir / "analysis"
    for name in ("per_class.csv", "confusion.csv", "misclassified.csv", "misclassified.png", "gradcam_predicted.png",
                 "gradcam_true.png", "gradcam.npz", "per_class_accuracy.png", "confusion_matrix.png",
                 "train_samples.png", "augmentation_preview.png"):
        assert (out / name).is_file(), name
    summary = json.loads((run_dir / "summary.json").read_text())
    assert len(summary["per_class_acc"]) == 10
    confusion = np.loadtxt(out / "confusion.csv", delimiter=",", skiprows=1, usecols=range(1, 11))
    assert confusion.sum() == 128
    expected = np.diag(confusion) / confusion.sum(axis=1)
    assert np.allclose(list(summary["per_class_acc"].values()), expected, atol=1e-6)
    with np.load(out / "gradcam.npz") as saved:
        assert set(saved.files) == {"indices", "predicted/layer3", "predicted/layer4", "true/layer3", "true/layer4"}
        assert saved["predicted/layer4"].shape == (len(saved["indices"]), 32, 32)


def test_analyze_rejects_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert analyze_main([str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err
