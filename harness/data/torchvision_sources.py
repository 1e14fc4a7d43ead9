"""torchvision's classification datasets by name (``data.dataset: torchvision/CIFAR100``), and
``cifar10``: their files in ``data.root`` as torchvision lays them out, downloaded by torchvision when
missing (``data.download``), read here into uint8 arrays.

The files are read by this module, not by torchvision's dataset classes: those check each file's MD5
before reading it, and the harness reads the same formats from files it did not download (a copy put
there by hand, or a test's generated files). Offline, a missing file is one line naming what to put
where.
"""

from __future__ import annotations

import gzip
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.core.errors import HarnessError
from harness.data.arrays import ImageArrays, Splits
from harness.data.config import DataConfig

MNIST_DIGITS = ["0 - zero", "1 - one", "2 - two", "3 - three", "4 - four", "5 - five", "6 - six", "7 - seven",
                "8 - eight", "9 - nine"]  # fmt: skip
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]  # fmt: skip


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as handle:
        return pickle.load(handle, encoding="latin1")


def _cifar_batches(folder: Path, names: list[str], label_key: str) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for name in names:
        entry = _unpickle(folder / name)
        images.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.extend(entry[label_key])
    return np.ascontiguousarray(np.concatenate(images)), np.asarray(labels, dtype=np.int64)


def read_cifar10(folder: Path) -> Splits:
    classes = list(_unpickle(folder / "batches.meta")["label_names"])
    train = _cifar_batches(folder, [f"data_batch_{i}" for i in range(1, 6)], "labels")
    test = _cifar_batches(folder, ["test_batch"], "labels")
    return Splits(ImageArrays(*train, classes), ImageArrays(*test, classes))


def read_cifar100(folder: Path) -> Splits:
    """The 100 fine classes."""
    classes = list(_unpickle(folder / "meta")["fine_label_names"])
    train, test = (_cifar_batches(folder, [name], "fine_labels") for name in ("train", "test"))
    return Splits(ImageArrays(*train, classes), ImageArrays(*test, classes))


def _idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST's format: a magic number, the dimensions, then the bytes), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def _idx_file(folder: Path, stem: str) -> Path:
    plain = folder / stem
    return plain if plain.is_file() else folder / f"{stem}.gz"


def _read_mnist_like(folder: Path, classes: list[str]) -> Splits:
    def split(prefix: str) -> ImageArrays:
        images = _idx(_idx_file(folder, f"{prefix}-images-idx3-ubyte"))
        labels = _idx(_idx_file(folder, f"{prefix}-labels-idx1-ubyte")).astype(np.int64)
        return ImageArrays(np.ascontiguousarray(images[..., None]), labels, classes)  # grey: one channel

    return Splits(split("train"), split("t10k"))


def read_mnist(folder: Path) -> Splits:
    return _read_mnist_like(folder, MNIST_DIGITS)


def read_fashion_mnist(folder: Path) -> Splits:
    return _read_mnist_like(folder, FASHION_CLASSES)


def read_svhn(folder: Path) -> Splits:
    """The train and test .mat files (the extra split is left out); label 10 is the digit 0."""
    from scipy.io import loadmat

    def split(name: str) -> ImageArrays:
        mat = loadmat(folder / f"{name}_32x32.mat")
        images = np.ascontiguousarray(mat["X"].transpose(3, 0, 1, 2))
        labels = mat["y"].astype(np.int64).ravel() % 10
        return ImageArrays(images, labels, [str(d) for d in range(10)])

    return Splits(split("train"), split("test"))


def read_stl10(folder: Path) -> Splits:
    """The labelled train and test splits (96x96; the unlabelled images are left out)."""
    classes = (folder / "class_names.txt").read_text().split()

    def split(name: str) -> ImageArrays:
        raw = np.fromfile(folder / f"{name}_X.bin", dtype=np.uint8).reshape(-1, 3, 96, 96)
        images = np.ascontiguousarray(raw.transpose(0, 3, 2, 1))  # stored column-major
        labels = np.fromfile(folder / f"{name}_y.bin", dtype=np.uint8).astype(np.int64) - 1
        return ImageArrays(images, labels, classes)

    return Splits(split("train"), split("test"))


@dataclass(frozen=True)
class Format:
    """A dataset's name as people write it, where torchvision puts its files under the root, which
    files, and how to read and download them."""

    title: str
    folder: str
    files: tuple[str, ...]
    read: Callable[[Path], Splits]
    download: Callable[[str], None]


def _download(name: str, **splits: object) -> Callable[[str], None]:
    def fetch(root: str) -> None:
        import torchvision

        dataset = getattr(torchvision.datasets, name)
        for kwargs in splits.values():
            dataset(root, download=True, **kwargs)

    return fetch


IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
FORMATS = {
    "CIFAR10": Format(
        "CIFAR-10",
        "cifar-10-batches-py",
        ("batches.meta", "test_batch", *(f"data_batch_{i}" for i in range(1, 6))),
        read_cifar10,
        _download("CIFAR10", train={"train": True}),
    ),
    "CIFAR100": Format(
        "CIFAR-100",
        "cifar-100-python",
        ("meta", "train", "test"),
        read_cifar100,
        _download("CIFAR100", train={"train": True}),
    ),
    "MNIST": Format(
        "MNIST",
        "MNIST/raw",
        IDX_FILES,
        read_mnist,
        _download("MNIST", train={"train": True}, test={"train": False}),
    ),
    "FashionMNIST": Format(
        "Fashion-MNIST",
        "FashionMNIST/raw",
        IDX_FILES,
        read_fashion_mnist,
        _download("FashionMNIST", train={"train": True}, test={"train": False}),
    ),
    "SVHN": Format(
        "SVHN",
        "",
        ("train_32x32.mat", "test_32x32.mat"),
        read_svhn,
        _download("SVHN", train={"split": "train"}, test={"split": "test"}),
    ),
    "STL10": Format(
        "STL-10",
        "stl10_binary",
        ("class_names.txt", "train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin"),
        read_stl10,
        _download("STL10", train={"split": "train"}),
    ),
}


def _missing(folder: Path, files: tuple[str, ...]) -> list[str]:
    return [f for f in files if not (folder / f).is_file() and not (folder / f"{f}.gz").is_file()]


def load(name: str, cfg: DataConfig) -> Splits:
    """The dataset ``name`` (a key of FORMATS) from ``cfg.root``: read, downloaded first if need be."""
    spec, root = FORMATS[name], Path(cfg.root)
    folder = root / spec.folder
    if _missing(folder, spec.files):
        where = f"put {', '.join(_missing(folder, spec.files))} in {folder}"
        if not cfg.download:
            raise HarnessError(
                f"data.root = {str(root)!r}: {spec.title} files not found and data.download is false: {where}"
            )
        try:
            spec.download(str(root))
        except Exception as error:  # network errors come in many types; all mean the same to the user
            raise HarnessError(
                f"data.root = {str(root)!r}: {spec.title} download failed ({type(error).__name__}); offline, {where} "
                "(as torchvision's download leaves them), or use data.dataset=image_folder"
            ) from None
    try:
        return spec.read(folder)
    except (OSError, pickle.UnpicklingError, KeyError, ValueError, EOFError, IndexError) as error:
        raise HarnessError(f"{folder}: unreadable {spec.title} files ({type(error).__name__}: {error})") from None


def load_cifar10(cfg: DataConfig, seed: int) -> Splits:
    return load("CIFAR10", cfg)


def torchvision_dataset(name: str) -> Callable[[DataConfig, int], Splits]:
    """The source of ``torchvision/<name>``; ValueError for a dataset this module does not read."""
    if name not in FORMATS:
        raise ValueError(f"torchvision/{name}: expected one of {', '.join(f'torchvision/{n}' for n in FORMATS)}")
    return lambda cfg, seed: load(name, cfg)
