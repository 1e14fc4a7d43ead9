"""The data as the model takes it: the splits read (``harness.data``), grey images repeated to three
channels for a model that takes colour only, and the normalization resolved (numbers for ``auto``).
What every stage that builds a model from a config reads: training, analysis, the LR finder, benches."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness.data.config import DataConfig
from harness.data.normalization import resolve_normalization
from harness.data.sources import DataSplits, load_arrays
from harness.models.builders import takes_grey
from harness.models.config import ModelConfig


@dataclass
class ModelInputs:
    """The splits, the ``data`` section with numbers for its mean and std, and what was decided, in
    words (summary.json, the report)."""

    splits: DataSplits
    data: DataConfig
    notes: dict[str, Any]

    @property
    def in_channels(self) -> int:
        return self.splits.channels


def prepare_inputs(data: DataConfig, model: ModelConfig, seed: int) -> ModelInputs:
    splits = load_arrays(data, seed)
    source_channels = splits.channels
    if source_channels == 1 and not takes_grey(model):
        splits = splits.as_rgb()
    mean, std, normalization = resolve_normalization(data, splits.train)
    height, width = splits.image_size
    notes = {
        "image_size": [height, width],
        "resized": data.image_hw is not None,
        "channels": splits.channels,
        "source_channels": source_channels,
        "channels_note": (
            "grey images repeated to three channels: the model takes colour only"
            if splits.channels != source_channels
            else ("grey images, one channel" if source_channels == 1 else "colour images")
        ),
        "normalization": {"mean": mean, "std": std, "from": normalization},
    }
    return ModelInputs(splits, data.model_copy(update={"mean": mean, "std": std}), notes)
