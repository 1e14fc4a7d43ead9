"""albumentations transforms (``data.augment``, strict arguments): built for the images' size (a size
written as a float is a fraction of the side: ``RandomCrop: {height: 1.0, width: 1.0}`` crops back to
any size), and tried on a training image before anything is written."""

from __future__ import annotations

import random
from typing import Any

import albumentations as A
import numpy as np
from albumentations.pytorch import ToTensorV2

from harness.core.errors import HarnessError
from harness.data.config import DataConfig
from harness.data.device_augment import plan_from_augment


def _build_augmentation(index: int, spec: dict[str, Any]) -> A.BasicTransform:
    spec = dict(spec)
    name = spec.pop("name")
    cls = getattr(A, name, None)
    where = f"data.augment[{index}]"
    if not (isinstance(cls, type) and issubclass(cls, A.BasicTransform)):
        raise HarnessError(f"{where}: unknown albumentations transform {name!r}")
    try:
        # strict: albumentations 2.x otherwise ignores misspelled or 1.x-only arguments in silence
        return cls(**spec, strict=True)
    except Exception as error:  # pydantic and albumentations raise several types
        message = " ".join(str(error).split())
        raise HarnessError(f"{where} ({name}): invalid arguments {spec}: {message}") from None


# The size the transforms are checked at before any image is read (fractions need a size).
NOMINAL_SIZE = (32, 32)


def _normalize(cfg: DataConfig) -> A.Normalize:
    if not (isinstance(cfg.mean, list) and isinstance(cfg.std, list)):
        raise ValueError("data.mean and data.std are resolved to numbers first (harness.models.inputs.prepare_inputs)")
    return A.Normalize(mean=cfg.mean, std=cfg.std, max_pixel_value=255.0)


def build_eval_transform(cfg: DataConfig) -> A.Compose:
    return A.Compose([_normalize(cfg), ToTensorV2()])


def build_train_transform(cfg: DataConfig, image_size: tuple[int, int] = NOMINAL_SIZE) -> A.Compose:
    """The training transform for images of ``image_size`` (height, width)."""
    specs = cfg.augment_in_pixels(*image_size)
    augmentations = [_build_augmentation(i, spec) for i, spec in enumerate(specs)]
    return A.Compose([*augmentations, _normalize(cfg), ToTensorV2()])


def check_augment(cfg: DataConfig, sample: np.ndarray | None = None) -> None:
    """Fail on a bad ``data.augment`` before anything is written: build it and, given one training
    image, run it there (a crop larger than the images fails here, not in a loader worker)."""
    size = sample.shape[:2] if sample is not None else NOMINAL_SIZE
    # The transforms are checked, not used: any normalization does, before the data is measured.
    channels = sample.shape[-1] if sample is not None and sample.ndim == 3 else 3
    checked = cfg.model_copy(update={"mean": [0.5] * channels, "std": [0.25] * channels})
    transform = build_train_transform(checked, size)
    if sample is None:
        if cfg.augment_on == "device":
            plan_from_augment(cfg.augment, size)
        return
    height, width = size
    shapes = set()
    for seed in range(4):
        transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
        try:
            shapes.add(tuple(transform(image=sample)["image"].shape))
        except Exception as error:  # albumentations raises several types for a transform that does not fit
            message = " ".join(str(error).split())[:300]
            raise HarnessError(
                f"data.augment: fails on the {width}x{height} training images ({type(error).__name__}: {message})"
            ) from None
    if len(shapes) > 1:
        sizes = sorted(f"{s[2]}x{s[1]}" for s in shapes)
        raise HarnessError(
            f"data.augment: gives images of different sizes ({', '.join(sizes)}); "
            "end with a fixed-size crop or resize so that a batch can be stacked"
        )
    if cfg.augment_on == "device":
        plan_from_augment(cfg.augment, (height, width))
