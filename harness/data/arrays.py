"""Images in memory: a split as uint8 arrays, and the splits a data source holds."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class ImageArrays:
    """A whole split in memory: images (N, H, W, 3) uint8, labels (N,) int64, class names."""

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: np.ndarray) -> ImageArrays:
        return ImageArrays(self.images[indices], self.labels[indices], self.classes)


@dataclass
class Splits:
    """What a source holds: its training and test images, and its own validation images when it has
    them (an image folder's ``val/``); otherwise ``load_arrays`` holds a validation split out of ``train``."""

    train: ImageArrays
    test: ImageArrays
    val: ImageArrays | None = None
    skipped: str | None = None  # what the source left out (an image folder's system files), in one line
