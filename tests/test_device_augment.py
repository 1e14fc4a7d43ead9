"""data.augment_on=device follows the albumentations path's distributions."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from harness.core.errors import HarnessError
from harness.data.config import DataConfig
from harness.data.device_augment import DeviceAugment, plan_from_augment
from harness.data.transforms import build_train_transform

SAMPLES = 1500
# The default data.augment (the seed's recipe): pad 4 + crop 32, flip, Cutout 16x16.
PAD_CROP, FLIP, CUTOUT = DataConfig().augment[:2], DataConfig().augment[2:3], DataConfig().augment[3:]
# Normalizing with mean 0 and std 1/255 leaves pixel values as they are, so both paths can be read alike.
IDENTITY = {"mean": [0.0, 0.0, 0.0], "std": [1 / 255] * 3}


def coordinate_image() -> np.ndarray:
    """Channel 0 is the row + 1, channel 1 the column + 1, channel 2 is 1: padding and holes read 0."""
    rows, cols = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    return np.stack([rows + 1, cols + 1, np.ones_like(rows)], axis=-1).astype(np.uint8)


def albumentations_outputs(augment: list) -> torch.Tensor:
    transform = build_train_transform(DataConfig(augment=augment, **IDENTITY))
    image = coordinate_image()
    outs = []
    for seed in range(SAMPLES):
        transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
        outs.append(transform(image=image)["image"])
    return torch.stack(outs)


def device_outputs(augment: list) -> torch.Tensor:
    augmenter = DeviceAugment(
        plan_from_augment(augment), IDENTITY["mean"], IDENTITY["std"], seed=0, device=torch.device("cpu")
    )
    batch = torch.from_numpy(coordinate_image()).permute(2, 0, 1).float()[None].repeat(SAMPLES, 1, 1, 1)
    return augmenter(batch, iteration=7)


def frequencies(values: torch.Tensor, bins: int) -> np.ndarray:
    return np.bincount(values.numpy().astype(int), minlength=bins) / len(values)


def crop_offsets(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # Pixel (16, 16) is never padding: it holds source row dy - 4 + 16 and column dx - 4 + 16.
    return batch[:, 0, 16, 16] - 1 - 16 + 4, batch[:, 1, 16, 16] - 1 - 16 + 4


def test_pad_and_crop_offsets_match():
    for path in (albumentations_outputs(PAD_CROP), device_outputs(PAD_CROP)):
        assert path.shape[-2:] == (32, 32)
        dy, dx = crop_offsets(path)
        for offsets in (dy, dx):
            freq = frequencies(offsets, 9)
            assert len(freq) == 9 and np.all(np.abs(freq - 1 / 9) < 0.035), freq
        # padding shows as zeros exactly where the offset puts it
        zero_rows = (path[:, 2] == 0).all(dim=2).sum(dim=1)
        assert torch.equal(zero_rows, (4 - dy).abs())


def test_flip_rate_matches():
    for path in (albumentations_outputs(FLIP), device_outputs(FLIP)):
        flipped = (path[:, 1, 0, 0] > path[:, 1, 0, 31]).float().mean().item()
        assert abs(flipped - 0.5) < 0.05


def test_cutout_hole_size_and_position_match():
    corners = {}
    for name, path in (("albumentations", albumentations_outputs(CUTOUT)), ("device", device_outputs(CUTOUT))):
        hole = path[:, 2] == 0
        assert torch.all(hole.sum(dim=(1, 2)) == 256)
        rows, cols = hole.any(dim=2), hole.any(dim=1)
        assert torch.all(rows.sum(1) == 16) and torch.all(cols.sum(1) == 16)
        top, left = rows.float().argmax(1), cols.float().argmax(1)
        corners[name] = (frequencies(top, 17), frequencies(left, 17))
    for a, b in zip(corners["albumentations"], corners["device"], strict=True):
        assert np.all(a > 0) and np.all(b > 0), "every corner position in [0, 16] occurs"
        assert np.all(np.abs(a - b) < 0.04)


def test_device_augment_is_replayable_and_varies_by_iteration_and_rank():
    def augmenter(rank: int = 0, world_size: int = 1) -> DeviceAugment:
        return DeviceAugment(
            plan_from_augment(PAD_CROP + FLIP + CUTOUT),
            [0.5] * 3,
            [0.25] * 3,
            seed=3,
            device=torch.device("cpu"),
            rank=rank,
            world_size=world_size,
        )

    batch = torch.randn(8, 3, 32, 32)
    single = augmenter()
    assert torch.equal(single(batch, 5), augmenter()(batch, 5))
    assert not torch.equal(single(batch, 5), single(batch, 6))
    # Two processes draw differently from each other (the loader path does too) and from one process.
    first, second = augmenter(0, 2)(batch, 5), augmenter(1, 2)(batch, 5)
    assert not torch.equal(first, second)
    assert not torch.equal(first, single(batch, 5)) and not torch.equal(second, single(batch, 5))


@pytest.mark.parametrize(
    "augment, message",
    [
        ([{"name": "Rotate", "limit": 10}], "not available with data.augment_on=device"),
        ([{**CUTOUT[0], "hole_height_range": [8, 16]}], "one fixed size"),
        ([{**PAD_CROP[0], "border_mode": 4}], "border_mode: 0"),
    ],
)
def test_unsupported_augmentations_are_named(augment, message):
    with pytest.raises(HarnessError, match=message):
        plan_from_augment(augment)


def test_run_with_device_augmentation(write_config, tmp_path):
    from harness.run import main

    assert main([str(write_config({"data": {"augment_on": "device"}})), "--out", str(tmp_path / "run")]) == 0
