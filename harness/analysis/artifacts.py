"""The files an analysis writes into ``RUN_DIR/analysis/``, listed once: the pipeline writes only what
is listed here (and removes what an earlier analysis of the run wrote that this one does not), the
report shows each figure in the section it names, and the tests check the list.
A new artifact is a line here (and, shown in the report, its place in the template)."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple


class Artifact(NamedTuple):
    section: str  # the id of the report section that shows it
    when: str | None = None  # the condition it is written under, in words; None: every analysis writes it


MEASURED = "analysis.gradcam_layers and analysis.gradcam_targets not empty"
A_MISTAKE = "a misclassified test image"
SHOWN = "analysis.misclassified above 0 and a misclassified test image"
ARTIFACTS: dict[str, Artifact] = {  # by file name
    "train_samples.png": Artifact("data"),
    "augmentation_preview.png": Artifact("data"),
    "per_class.csv": Artifact("per-class"),
    "confusion.csv": Artifact("per-class"),
    "per_class_accuracy.png": Artifact("per-class"),
    "confusion_matrix.png": Artifact("per-class"),
    "predictions.csv": Artifact("per-class"),
    "confused_pairs.csv": Artifact("per-class"),
    "confused_pairs.png": Artifact("per-class", A_MISTAKE),
    "misclassified.csv": Artifact("misclassified"),
    "misclassified.png": Artifact("misclassified", SHOWN),
    "gradcam.npz": Artifact("gradcam"),
    "gradcam_predicted.png": Artifact("gradcam", f"`predicted` in analysis.gradcam_targets, a layer, {SHOWN}"),
    "gradcam_true.png": Artifact("gradcam", f"`true` in analysis.gradcam_targets, a layer, {SHOWN}"),
    "faithfulness.csv": Artifact("faithfulness", MEASURED),
    "faithfulness_misclassified.png": Artifact("faithfulness", MEASURED),
    "faithfulness_correct.png": Artifact("faithfulness", MEASURED),
    "sanity.csv": Artifact("sanity", MEASURED),
    "sanity.png": Artifact("sanity", MEASURED),
    "sanity_examples.png": Artifact("sanity", MEASURED),
    "cam_ranking.csv": Artifact("cam-methods", "two or more analysis.cam_methods"),
    "cam_methods.png": Artifact("cam-methods", "two or more analysis.cam_methods"),
    "calibration.csv": Artifact("calibration"),
    "reliability.png": Artifact("calibration"),
    "calibration_scaled.csv": Artifact("calibration", "a validation split"),
    "reliability_scaled.png": Artifact("calibration", "a validation split"),
}


def artifact_path(analysis_dir: Path, name: str) -> Path:
    """Where the artifact ``name`` lies in an analysis folder; a name missing from ``ARTIFACTS`` is a
    KeyError, so that nothing is written that the manifest does not list."""
    if name not in ARTIFACTS:
        raise KeyError(f"{name} is not in harness.analysis.artifacts.ARTIFACTS")
    return analysis_dir / name


FIGURES = [name for name in ARTIFACTS if name.endswith(".png")]
