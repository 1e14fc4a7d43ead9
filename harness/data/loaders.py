"""From arrays in memory (``harness.data.sources``) to batches: a dataset through the transforms of
``harness.data.transforms``, a batch sampler that can replay any epoch exactly, and the loaders."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator

import albumentations as A
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from harness.core.errors import HarnessError
from harness.data.arrays import ImageArrays
from harness.data.config import DataConfig
from harness.data.transforms import build_eval_transform, build_train_transform


class AugmentedArrayDataset(Dataset):
    """Images from an ``ImageArrays`` through an albumentations pipeline.

    An item key is an index, or ``(index, seed)``: with a seed the augmentation of that sample is
    fixed, whichever process or worker draws it, which makes training replayable.
    """

    def __init__(self, arrays: ImageArrays, transform: A.Compose, random_transform: bool = True) -> None:
        self.arrays = arrays
        self.transform = transform
        # Seeding costs about as much as normalizing an image: skip it when the transform draws nothing.
        self.random_transform = random_transform

    def __len__(self) -> int:
        return len(self.arrays)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        if seed is not None and self.random_transform:
            self.transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
        image = self.transform(image=self.arrays.images[index])["image"]
        return image, int(self.arrays.labels[index])


def build_train_dataset(arrays: ImageArrays, cfg: DataConfig) -> AugmentedArrayDataset:
    """What the training loader serves: augmented images, or with augment_on=device normalized
    ones (the trainer then augments whole batches on the device)."""
    if cfg.augment_on == "device":
        return AugmentedArrayDataset(arrays, build_eval_transform(cfg), random_transform=False)
    return AugmentedArrayDataset(arrays, build_train_transform(cfg, arrays.images.shape[1:3]))


class EpochBatchSampler(Sampler):
    """Batches for one rank whose order and augmentation seeds depend only on (seed, epoch).

    Training (``shuffle=True``): a fresh permutation each epoch, padded so every rank gets the same
    number of full batches. Evaluation: each rank takes every world_size-th image, no padding, so
    metrics summed over ranks count every test image exactly once. ``set_epoch(epoch, skip)`` lets a
    resumed run pick up an interrupted epoch at the batch where it stopped.
    """

    def __init__(
        self, num_samples: int, batch_size: int, seed: int, shuffle: bool, rank: int = 0, world_size: int = 1
    ) -> None:
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.epoch = 1
        self.skip_batches = 0

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch = epoch
        self.skip_batches = skip_batches

    def _rank_keys(self) -> list:
        if not self.shuffle:
            return list(range(self.rank, self.num_samples, self.world_size))
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(self.num_samples)
        seeds = rng.integers(0, 2**62, size=self.num_samples)
        padded = -(-self.num_samples // self.world_size) * self.world_size
        order = np.resize(order, padded)[self.rank :: self.world_size]
        return [(int(i), int(seeds[i])) for i in order]

    def __iter__(self) -> Iterator[list]:
        keys = self._rank_keys()
        batches = [keys[i : i + self.batch_size] for i in range(0, len(keys), self.batch_size)]
        if self.shuffle and len(batches[-1]) < self.batch_size:
            batches.pop()  # a tiny last batch would make BatchNorm statistics noisy
        yield from batches[self.skip_batches :]
        self.skip_batches = 0

    def __len__(self) -> int:
        if self.shuffle:
            return -(-self.num_samples // self.world_size) // self.batch_size
        return -(-len(range(self.rank, self.num_samples, self.world_size)) // self.batch_size)


def resolve_num_workers(cfg: DataConfig, device: torch.device, nproc_per_node: int) -> int:
    if cfg.num_workers is not None:
        return cfg.num_workers
    if device.type == "cuda":
        # Keep one core per process for the training loop itself.
        return max(1, min(8, (os.cpu_count() or 2) // nproc_per_node - 1))
    return 0  # on a CPU, the model needs every core; workers would only compete with it


def build_loader(
    dataset: Dataset,
    sampler: EpochBatchSampler,
    num_workers: int,
    device: torch.device,
) -> DataLoader:
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=num_workers > 0,
        prefetch_factor=4 if num_workers > 0 else None,
    )


def per_rank_batch(batch_size: int, world_size: int, key: str) -> int:
    if batch_size % world_size:
        raise HarnessError(f"{key} = {batch_size}: expected a multiple of the number of processes ({world_size})")
    return batch_size // world_size


def check_batch_size(cfg: DataConfig, train_images: int, world_size: int) -> None:
    """Fail on a batch the data or the processes cannot make, before anything is written."""
    per_rank_batch(cfg.batch_size, world_size, "data.batch_size")
    if train_images < cfg.batch_size:
        raise HarnessError(f"data.batch_size = {cfg.batch_size}: expected at most the {train_images} training images")
