"""Data: CIFAR-10 pickles, image folders or synthetic images, held in memory as uint8 arrays,
augmented per sample with albumentations, batched by a sampler that can replay any epoch exactly."""
from __future__ import annotations

import hashlib
import os
import pickle
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import albumentations as A
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from harness import atomic_io
from harness.config import Config, DataConfig
from harness.errors import HarnessError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}
CIFAR10_FOLDER = "cifar-10-batches-py"


@dataclass
class ImageArrays:
    """A whole split in memory: images (N, H, W, 3) uint8, labels (N,) int64, class names."""

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: np.ndarray) -> "ImageArrays":
        return ImageArrays(self.images[indices], self.labels[indices], self.classes)


# ---------------------------------------------------------------- sources


def _read_cifar10_pickles(folder: Path) -> tuple[ImageArrays, ImageArrays]:
    def read_batches(names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        images, labels = [], []
        for name in names:
            with open(folder / name, "rb") as handle:
                entry = pickle.load(handle, encoding="latin1")
            images.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels.extend(entry["labels"] if "labels" in entry else entry["fine_labels"])
        return np.ascontiguousarray(np.concatenate(images)), np.asarray(labels, dtype=np.int64)

    with open(folder / "batches.meta", "rb") as handle:
        classes = list(pickle.load(handle, encoding="latin1")["label_names"])
    train = read_batches([f"data_batch_{i}" for i in range(1, 6)])
    test = read_batches(["test_batch"])
    return ImageArrays(*train, classes), ImageArrays(*test, classes)


def load_cifar10(cfg: DataConfig) -> tuple[ImageArrays, ImageArrays]:
    root = Path(cfg.root)
    folder = root / CIFAR10_FOLDER
    needed = ["batches.meta", "test_batch"] + [f"data_batch_{i}" for i in range(1, 6)]
    if not all((folder / name).is_file() for name in needed):
        if not cfg.download:
            raise HarnessError(
                f"data.root = {str(root)!r}: CIFAR-10 files not found in {folder} and data.download is false; "
                f"put the python-version pickles ({CIFAR10_FOLDER}/) there"
            )
        try:
            import torchvision

            torchvision.datasets.CIFAR10(str(root), train=True, download=True)
        except Exception as error:  # network errors come in many types; all mean the same to the user
            raise HarnessError(
                f"data.root = {str(root)!r}: CIFAR-10 download failed ({type(error).__name__}); "
                f"put {CIFAR10_FOLDER}/ there by hand, or use data.dataset=image_folder with data.root=<folder with train/ and test/>"
            ) from None
    try:
        return _read_cifar10_pickles(folder)
    except (OSError, pickle.UnpicklingError, KeyError, ValueError, EOFError) as error:
        raise HarnessError(f"{folder}: unreadable CIFAR-10 pickle files ({error})") from None


def _list_image_folder(split_dir: Path, classes: list[str] | None) -> tuple[list[str], list[tuple[Path, int]]]:
    if not split_dir.is_dir():
        raise HarnessError(f"data.root: folder {split_dir} not found (expected <root>/train/<class>/* and <root>/test/<class>/*)")
    found = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if classes is None:
        classes = found
        if not classes:
            raise HarnessError(f"{split_dir}: no class folders found (expected {split_dir}/<class>/<image>)")
    elif found != classes:
        raise HarnessError(f"{split_dir}: class folders {found} differ from the training classes {classes}")
    files = []
    for label, name in enumerate(classes):
        images = sorted(p for p in (split_dir / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise HarnessError(f"{split_dir / name}: empty class folder (no images with suffix {sorted(IMAGE_SUFFIXES)})")
        files.extend((path, label) for path in images)
    return classes, files


def _decode_image(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except Exception as error:  # PIL raises many types for a broken file
        raise HarnessError(f"{path}: unreadable image ({type(error).__name__}: {error})") from None


def _decode_split(files: list[tuple[Path, int]], classes: list[str]) -> ImageArrays:
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        decoded = list(pool.map(_decode_image, (path for path, _ in files), chunksize=256))
    shape = decoded[0].shape
    for (path, _), image in zip(files, decoded):
        if image.shape != shape:
            raise HarnessError(f"{path}: image size {image.shape[1]}x{image.shape[0]} differs from {shape[1]}x{shape[0]} of the others")
    return ImageArrays(np.stack(decoded), np.asarray([label for _, label in files], dtype=np.int64), classes)


def _fingerprint(files: list[tuple[Path, int]]) -> str:
    digest = hashlib.sha1()
    for path, label in files:
        stat = path.stat()
        digest.update(f"{path}|{label}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _cache_dirs(cfg: DataConfig) -> list[Path]:
    if cfg.cache_dir:
        return [Path(cfg.cache_dir)]
    return [Path(cfg.root) / ".harness_cache", Path.home() / ".cache" / "harness"]


def _load_or_decode(split: str, files: list[tuple[Path, int]], classes: list[str], cfg: DataConfig) -> ImageArrays:
    """Decode a split once; later runs read the cached arrays (keyed by file names, sizes and times)."""
    name = f"{split}-{_fingerprint(files)}.npz"
    for folder in _cache_dirs(cfg):
        if (folder / name).is_file():
            try:
                with np.load(folder / name) as cached:
                    return ImageArrays(cached["images"], cached["labels"], classes)
            except (OSError, ValueError, KeyError):
                pass  # a damaged cache is rebuilt below
    arrays = _decode_split(files, classes)
    for folder in _cache_dirs(cfg):
        try:
            # uncompressed: reading 180 MB back is faster than inflating it
            atomic_io.write_npz(folder / name, compress=False, images=arrays.images, labels=arrays.labels)
            break
        except OSError:
            continue  # read-only data folder: try the next place; no cache is only slower
    return arrays


def load_image_folder(cfg: DataConfig) -> tuple[ImageArrays, ImageArrays]:
    root = Path(cfg.root)
    if not root.is_dir():
        raise HarnessError(f"data.root = {cfg.root!r}: folder not found")
    classes, train_files = _list_image_folder(root / "train", None)
    _, test_files = _list_image_folder(root / "test", classes)
    return _load_or_decode("train", train_files, classes, cfg), _load_or_decode("test", test_files, classes, cfg)


def make_synthetic(cfg: DataConfig, seed: int, num_classes: int = 10) -> tuple[ImageArrays, ImageArrays]:
    """Learnable toy images: each class is a bright square at its own place on its own colour, plus noise."""

    def split(size: int, split_seed: int) -> ImageArrays:
        rng = np.random.default_rng(split_seed)
        labels = np.arange(size) % num_classes
        rng.shuffle(labels)
        palette = np.random.default_rng(seed).integers(40, 200, size=(num_classes, 3))
        images = rng.normal(0, 15, size=(size, 32, 32, 3)) + palette[labels][:, None, None, :]
        for i, label in enumerate(labels):
            top, left = 4 + (label // 4) * 8, 4 + (label % 4) * 7
            images[i, top : top + 8, left : left + 8] += 80
        return ImageArrays(np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.int64), [f"class{c}" for c in range(num_classes)])

    return split(cfg.synthetic_train_size, seed * 2 + 1), split(cfg.synthetic_test_size, seed * 2 + 2)


def stratified_subset(arrays: ImageArrays, size: int, seed: int, key: str) -> ImageArrays:
    """A seeded subset of ``size`` images whose class proportions follow the whole split's."""
    if size > len(arrays):
        raise HarnessError(f"{key} = {size}: expected at most the split's {len(arrays)} images")
    rng = np.random.default_rng(seed)
    counts = np.bincount(arrays.labels, minlength=len(arrays.classes))
    exact = counts * size / counts.sum()
    quota = np.floor(exact).astype(int)
    for c in np.argsort(-(exact - quota), kind="stable")[: size - quota.sum()]:
        quota[c] += 1
    chosen = [rng.permutation(np.flatnonzero(arrays.labels == c))[: quota[c]] for c in range(len(counts))]
    return arrays.subset(np.sort(np.concatenate(chosen)))


def load_arrays(cfg: Config) -> tuple[ImageArrays, ImageArrays]:
    """The training and test splits named by ``cfg.data``, subset as configured."""
    data = cfg.data
    loaders = {"cifar10": load_cifar10, "image_folder": load_image_folder}
    train, test = make_synthetic(data, cfg.seed) if data.dataset == "synthetic" else loaders[data.dataset](data)
    if data.train_subset is not None:
        train = stratified_subset(train, data.train_subset, cfg.seed, "data.train_subset")
    if data.test_subset is not None:
        test = stratified_subset(test, data.test_subset, cfg.seed + 1, "data.test_subset")
    return train, test


# ---------------------------------------------------------------- transforms


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


def build_eval_transform(cfg: DataConfig) -> A.Compose:
    return A.Compose([A.Normalize(mean=cfg.mean, std=cfg.std, max_pixel_value=255.0), ToTensorV2()])


def build_train_transform(cfg: DataConfig) -> A.Compose:
    augmentations = [_build_augmentation(i, spec) for i, spec in enumerate(cfg.augment)]
    return A.Compose([*augmentations, A.Normalize(mean=cfg.mean, std=cfg.std, max_pixel_value=255.0), ToTensorV2()])


def check_augment(cfg: DataConfig) -> None:
    """Fail on a bad ``data.augment`` before anything is written."""
    build_train_transform(cfg)
    if cfg.augment_on == "device":
        from harness.device_augment import plan_from_augment

        plan_from_augment(cfg.augment)


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
    return AugmentedArrayDataset(arrays, build_train_transform(cfg))


class EpochBatchSampler(Sampler):
    """Batches for one rank whose order and augmentation seeds depend only on (seed, epoch).

    Training (``shuffle=True``): a fresh permutation each epoch, padded so every rank gets the same
    number of full batches. Evaluation: each rank takes every world_size-th image, no padding, so
    metrics summed over ranks count every test image exactly once. ``set_epoch(epoch, skip)`` lets a
    resumed run pick up an interrupted epoch at the batch where it stopped.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int, shuffle: bool, rank: int = 0, world_size: int = 1) -> None:
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
