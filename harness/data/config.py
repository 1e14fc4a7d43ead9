"""The ``data`` section of a config, and the registry of data sources that ``data.dataset`` names
(lazy: validating a config imports no torch)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, PlainValidator

from harness.core.registry import Registry
from harness.core.schema import Section, registered

CIFAR10_MEAN = [0.4914, 0.4822, 0.4465]
CIFAR10_STD = [0.2470, 0.2435, 0.2616]
SOURCES = Registry(
    "data.dataset",
    "dataset",
    "a function called with data.kwargs, returning (train, test) as (images, labels) arrays or torch datasets: "
    "./my_data.py:load",
)
_SOURCE_FUNCTIONS = {"cifar10": "load_cifar10", "image_folder": "load_image_folder", "synthetic": "make_synthetic"}
for _name, _description in {
    "cifar10": "CIFAR-10 (Krizhevsky 2009): torchvision's copy in data.root, downloaded when data.download is true",
    "image_folder": "a folder of data.root/{train,test}/<class>/<image> (and val/ when it has one), cached as arrays",
    "synthetic": "learnable toy images (a bright square per class): for tests",
}.items():
    SOURCES.add(_name, f"harness.data.sources:{_SOURCE_FUNCTIONS[_name]}", _description, native=True)


def _rgb(values: list[float]) -> list[float]:
    if len(values) != 3:
        raise ValueError("expected 3 numbers (one per RGB channel)")
    return values


def _positive_rgb(values: list[float]) -> list[float]:
    if any(v <= 0 for v in _rgb(values)):
        raise ValueError("expected 3 positive numbers (one per RGB channel)")
    return values


def _image_count_or_fraction(value: Any) -> int | float:
    """An integer >= 0 (images) or a float in [0, 1) (a fraction); one check, so one message for both."""
    is_count = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    is_fraction = isinstance(value, float) and 0.0 <= value < 1.0  # NaN fails both comparisons
    if not (is_count or is_fraction):
        raise ValueError("expected an image count (an integer >= 0) or a fraction of the training images in [0, 1)")
    return value


def _named_transform(item: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(item.get("name"), str):
        raise ValueError("expected a 'name' key with an albumentations transform name")
    return item


def _default_augment() -> list[dict[str, Any]]:
    # RandomCrop(32, padding=4) + horizontal flip + Cutout 16x16: the seed's recipe plus flips.
    return [
        {"name": "PadIfNeeded", "min_height": 40, "min_width": 40, "border_mode": 0, "fill": 0, "p": 1.0},
        {"name": "RandomCrop", "height": 32, "width": 32, "p": 1.0},
        {"name": "HorizontalFlip", "p": 0.5},
        {
            "name": "CoarseDropout",
            "num_holes_range": [1, 1],
            "hole_height_range": [16, 16],
            "hole_width_range": [16, 16],
            "fill": 0,
            "p": 1.0,
        },
    ]


class DataConfig(Section):
    dataset: Annotated[str, registered(SOURCES)] = "cifar10"
    root: str = "data/cifar10"
    download: bool = True
    cache_dir: str | None = None
    # The validation split decides (best checkpoint, plateau, pruning, search); the test set only reports.
    # Held out of the whole training split with its own seed, so every run of a study holds out the same images.
    val_size: Annotated[int | float, PlainValidator(_image_count_or_fraction)] = 0.1
    val_seed: int = Field(0, ge=0, lt=2**32)
    train_subset: int | None = Field(None, ge=1)
    test_subset: int | None = Field(None, ge=1)
    synthetic_train_size: int = Field(512, ge=10)
    synthetic_test_size: int = Field(256, ge=10)
    batch_size: int = Field(512, ge=1)
    eval_batch_size: int = Field(1024, ge=1)
    num_workers: int | None = Field(None, ge=0)
    mean: Annotated[list[float], AfterValidator(_rgb)] = Field(default_factory=lambda: list(CIFAR10_MEAN))
    std: Annotated[list[float], AfterValidator(_positive_rgb)] = Field(default_factory=lambda: list(CIFAR10_STD))
    augment: list[Annotated[dict[str, Any], AfterValidator(_named_transform)]] = Field(default_factory=_default_augment)
    augment_on: Literal["loader", "device"] = "loader"
    # Keyword arguments of a data source given by import path (a function returning the splits).
    kwargs: dict[str, Any] = Field(default_factory=dict)
