"""A data source of your own: a function that returns the training and test images and labels,
named in the YAML (custom_data.yaml) and called with data.kwargs:

    data:
      dataset: ./my_data.py:stripes
      kwargs: {train_per_class: 200, size: 32}

Return ``(train, test)`` or ``{"train": ..., "test": ..., "val": ..., "classes": [...]}``; each split
is ``(images, labels)`` (uint8 (N, H, W, 3) or (N, H, W) arrays, or floats in [0, 1]; integer labels
from 0) or a torch Dataset of (image, label) pairs, e.g. a torchvision dataset you built yourself.
"""

from __future__ import annotations

import numpy as np


def stripes(train_per_class: int = 200, test_per_class: int = 50, size: int = 32, seed: int = 0) -> dict:
    """Three classes of noisy stripes: horizontal, vertical and diagonal."""
    rng = np.random.default_rng(seed)

    def split(per_class: int) -> tuple[np.ndarray, np.ndarray]:
        y, x = np.mgrid[:size, :size]
        directions = [(1, 0), (0, 1), (1, 1)]  # horizontal, vertical, diagonal stripes
        labels = np.repeat(np.arange(3), per_class)
        images = np.stack(
            [np.sin((directions[k][0] * y + directions[k][1] * x) / 2.0 + rng.uniform(0, 2 * np.pi)) for k in labels]
        )
        images = (images + rng.normal(0, 0.5, images.shape)).clip(-1.5, 1.5) / 3.0 + 0.5  # floats in [0, 1]
        return np.repeat(images[..., None], 3, axis=-1).astype(np.float32), labels

    classes = ["horizontal", "vertical", "diagonal"]
    return {"train": split(train_per_class), "test": split(test_per_class), "classes": classes}
