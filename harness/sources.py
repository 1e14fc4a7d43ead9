"""Data sources: where the images come from, read whole into memory as uint8 arrays.

Each source is registered by the name that ``data.dataset`` takes; adding one is a function here
(and a line in the README's config reference).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import sys
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from harness import atomic_io
from harness.errors import HarnessError
from harness.registry import Registry

if TYPE_CHECKING:
    from harness.config import Config, DataConfig

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

    def subset(self, indices: np.ndarray) -> ImageArrays:
        return ImageArrays(self.images[indices], self.labels[indices], self.classes)


Splits = tuple[ImageArrays, ImageArrays]
SOURCES: Registry[Callable[[DataConfig, int], Splits]] = Registry("data.dataset")


# ---------------------------------------------------------------- cifar10: the python pickles


def _read_cifar10_pickles(folder: Path) -> Splits:
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


@SOURCES.register("cifar10")
def load_cifar10(cfg: DataConfig, seed: int) -> Splits:
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
                f"data.root = {str(root)!r}: CIFAR-10 download failed ({type(error).__name__}); put "
                f"{CIFAR10_FOLDER}/ there by hand, or use data.dataset=image_folder "
                "with data.root=<folder with train/ and test/>"
            ) from None
    try:
        return _read_cifar10_pickles(folder)
    except (OSError, pickle.UnpicklingError, KeyError, ValueError, EOFError) as error:
        raise HarnessError(f"{folder}: unreadable CIFAR-10 pickle files ({error})") from None


# ---------------------------------------------------------------- image_folder: <root>/{train,test}/<class>/*


def _list_image_folder(split_dir: Path, classes: list[str] | None) -> tuple[list[str], list[tuple[Path, int]]]:
    if not split_dir.is_dir():
        raise HarnessError(
            f"data.root: folder {split_dir} not found (expected <root>/train/<class>/* and <root>/test/<class>/*)"
        )
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
            raise HarnessError(
                f"{split_dir / name}: empty class folder (no images with suffix {sorted(IMAGE_SUFFIXES)})"
            )
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
    for (path, _), image in zip(files, decoded, strict=True):
        if image.shape != shape:
            raise HarnessError(
                f"{path}: image size {image.shape[1]}x{image.shape[0]} differs from {shape[1]}x{shape[0]} of the others"
            )
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


def _read_cache(path: Path, labels: np.ndarray, classes: list[str]) -> ImageArrays:
    """The cached split, or ValueError saying why it cannot be trusted."""
    try:
        with np.load(path) as cached:
            images, cached_labels = cached["images"], cached["labels"]
    except (OSError, EOFError, KeyError, zipfile.BadZipFile) as error:
        raise ValueError(f"unreadable: {type(error).__name__}") from None
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or len(images) != len(labels):
        raise ValueError(f"holds {images.shape} {images.dtype} images for {len(labels)} files")
    if not np.array_equal(cached_labels, labels):
        raise ValueError("its labels differ from the class folders'")
    return ImageArrays(images, labels, classes)


def _load_or_decode(split: str, files: list[tuple[Path, int]], classes: list[str], cfg: DataConfig) -> ImageArrays:
    """Decode a split once; later runs read the cached arrays (keyed by file names, sizes and times)."""
    name = f"{split}-{_fingerprint(files)}.npz"
    labels = np.asarray([label for _, label in files], dtype=np.int64)
    for folder in _cache_dirs(cfg):
        if (folder / name).is_file():
            try:
                return _read_cache(folder / name, labels, classes)
            except ValueError as problem:
                print(
                    f"warning: image cache {folder / name} is damaged or stale ({problem}); decoding the images again",
                    file=sys.stderr,
                )
    arrays = _decode_split(files, classes)
    for folder in _cache_dirs(cfg):
        try:
            # uncompressed: reading 180 MB back is faster than inflating it
            atomic_io.write_npz(folder / name, compress=False, images=arrays.images, labels=arrays.labels)
            break
        except OSError:
            continue  # read-only data folder: try the next place; no cache is only slower
    return arrays


@SOURCES.register("image_folder")
def load_image_folder(cfg: DataConfig, seed: int) -> Splits:
    root = Path(cfg.root)
    if not root.is_dir():
        raise HarnessError(f"data.root = {cfg.root!r}: folder not found")
    classes, train_files = _list_image_folder(root / "train", None)
    _, test_files = _list_image_folder(root / "test", classes)
    return _load_or_decode("train", train_files, classes, cfg), _load_or_decode("test", test_files, classes, cfg)


# ---------------------------------------------------------------- synthetic: learnable toy images, for tests


@SOURCES.register("synthetic")
def make_synthetic(cfg: DataConfig, seed: int, num_classes: int = 10) -> Splits:
    """Each class is a bright square at its own place on its own colour, plus noise."""

    def split(size: int, split_seed: int) -> ImageArrays:
        rng = np.random.default_rng(split_seed)
        labels = np.arange(size) % num_classes
        rng.shuffle(labels)
        palette = np.random.default_rng(seed).integers(40, 200, size=(num_classes, 3))
        images = rng.normal(0, 15, size=(size, 32, 32, 3)) + palette[labels][:, None, None, :]
        for i, label in enumerate(labels):
            top, left = 4 + (label // 4) * 8, 4 + (label % 4) * 7
            images[i, top : top + 8, left : left + 8] += 80
        return ImageArrays(
            np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.int64), [f"class{c}" for c in range(num_classes)]
        )

    return split(cfg.synthetic_train_size, seed * 2 + 1), split(cfg.synthetic_test_size, seed * 2 + 2)


# ---------------------------------------------------------------- subsets


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


def load_arrays(cfg: Config) -> Splits:
    """The training and test splits named by ``cfg.data``, subset as configured."""
    data = cfg.data
    train, test = SOURCES[data.dataset](data, cfg.seed)
    if data.train_subset is not None:
        train = stratified_subset(train, data.train_subset, cfg.seed, "data.train_subset")
    if data.test_subset is not None:
        test = stratified_subset(test, data.test_subset, cfg.seed + 1, "data.test_subset")
    return train, test
