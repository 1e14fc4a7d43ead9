"""The ``analysis`` section of a config, and ``AnalysisSpec``: what the analysis reads of a whole
config (``harness.config.Config`` is one)."""

from __future__ import annotations

from typing import Literal, Protocol

from pydantic import Field

from harness.core.schema import Section
from harness.data.config import DataConfig
from harness.models.config import ModelConfig
from harness.training.config import TrainConfig


class AnalysisConfig(Section):
    enabled: bool = True
    # Each is a row of every Grad-CAM figure; past a few hundred rows a PNG outgrows what viewers open.
    misclassified: int = Field(20, ge=0, le=200)
    order: Literal["first", "confident"] = "first"
    gradcam_layers: list[str] = Field(default_factory=lambda: ["layer1", "layer2", "layer3", "layer4"])
    gradcam_targets: list[Literal["predicted", "true"]] = Field(default_factory=lambda: ["predicted", "true"])


class AnalysisSpec(Protocol):
    """What the analysis reads of a config."""

    name: str
    seed: int
    data: DataConfig
    model: ModelConfig
    train: TrainConfig
    analysis: AnalysisConfig

    def model_copy(self, *, update: dict | None = None, deep: bool = False) -> AnalysisSpec: ...
