"""The ``data`` section of a config, and the registry of data sources that ``data.dataset`` names
(lazy: validating a config imports no torch)."""

from __future__ import annotations

import math
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
    namespaces={
        "torchvision/": (
            "harness.data.torchvision_sources:torchvision_dataset",
            "CIFAR100, MNIST, FashionMNIST, SVHN or STL10 (labelled splits) in data.root, as torchvision lays "
            "them out; downloaded when data.download is true",
        )
    },
)
SOURCES.add(
    "cifar10",
    "harness.data.torchvision_sources:load_cifar10",
    "CIFAR-10 (Krizhevsky 2009): the python pickles in data.root, downloaded when data.download is true",
    native=True,
)
SOURCES.add(
    "image_folder",
    "harness.data.sources:load_image_folder",
    "a folder of data.root/{train,test}/<class>/<image> (and val/ when it has one), cached as arrays",
    native=True,
)
SOURCES.add(
    "synthetic",
    "harness.data.sources:make_synthetic",
    "learnable toy images (a bright square per class): for tests",
    native=True,
)


def _per_channel(values: Any) -> list[float] | str | None:
    """``auto``, null, or 1 or 3 numbers (grey or colour images)."""
    if values is None or values == "auto":
        return values
    if not (isinstance(values, list) and len(values) in (1, 3)) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values
    ):
        raise ValueError("expected auto, or 1 or 3 numbers (one per channel: grey or RGB)")
    return [float(v) for v in values]


def _positive_per_channel(values: Any) -> list[float] | str | None:
    values = _per_channel(values)
    if isinstance(values, list) and any(v <= 0 for v in values):
        raise ValueError("expected auto, or 1 or 3 positive numbers (one per channel: grey or RGB)")
    return values


def _image_size(value: Any) -> int | list[int] | None:
    """null (the images' own size), a side in pixels, or [height, width]."""
    sides = value if isinstance(value, list) else [value]
    if value is None:
        return None
    if not (1 <= len(sides) <= 2 and all(isinstance(v, int) and not isinstance(v, bool) and v >= 8 for v in sides)):
        raise ValueError("expected null (the images' own size), a side of at least 8 pixels, or [height, width]")
    return value


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
    # A random crop with an eighth of the side as padding (4 pixels on CIFAR's 32), a horizontal flip and
    # Cutout of half the side (16x16 on 32x32): the seed's recipe plus flips, for images of any size.
    # Sizes written as floats are fractions of the image's side (harness.data.transforms).
    return [
        {"name": "PadIfNeeded", "min_height": 1.25, "min_width": 1.25, "border_mode": 0, "fill": 0, "p": 1.0},
        {"name": "RandomCrop", "height": 1.0, "width": 1.0, "p": 1.0},
        {"name": "HorizontalFlip", "p": 0.5},
        {
            "name": "CoarseDropout",
            "num_holes_range": [1, 1],
            "hole_height_range": [0.5, 0.5],
            "hole_width_range": [0.5, 0.5],
            "fill": 0,
            "p": 1.0,
        },
    ]


# Arguments that give a size along one side: a float there is a fraction of that side of the image.
# (CoarseDropout's hole ranges take fractions natively in albumentations, and are left to it.)
_HEIGHTS, _WIDTHS = ("height", "min_height"), ("width", "min_width")


def pixel_sizes(spec: dict[str, Any], height: int, width: int) -> dict[str, Any]:
    """One transform's arguments with fractional sizes in pixels: ``min_height: 1.25`` on 32 is 40."""
    resolved = dict(spec)
    for key, value in spec.items():
        if isinstance(value, float) and (key in _HEIGHTS or key in _WIDTHS):
            resolved[key] = round(value * (height if key in _HEIGHTS else width))
        elif key == "size" and isinstance(value, list) and len(value) == 2 and all(isinstance(v, float) for v in value):
            resolved[key] = [round(value[0] * height), round(value[1] * width)]
    return resolved


NORMALIZATION = (
    "per-channel normalization on 0..1 pixel values: 1 (grey) or 3 numbers, `auto` (measured on the images "
    "that train), or null: CIFAR-10's published values for `cifar10`, `auto` for every other source; the "
    "numbers used are recorded in the run's `summary.json` (`normalization`), and measured again, the same, "
    "on resume and analysis"
)


class DataConfig(Section):
    """Where the images come from, how they are split, normalized, augmented and batched."""

    dataset: Annotated[str, registered(SOURCES)] = Field(
        "cifar10",
        description=(
            "`cifar10` (python pickles), `torchvision/CIFAR100`, `torchvision/MNIST`, "
            "`torchvision/FashionMNIST`, `torchvision/SVHN`, `torchvision/STL10` (torchvision's files "
            "in `data.root`), `image_folder` (`train/` and `test/` class folders, and `val/` if it has "
            "one), `synthetic` (generated, for tests); the registry in `harness/data/config.py`; or "
            "your own function by import path (see Bring your own model and data)"
        ),
    )
    root: str = Field("data/cifar10", description="where the data set lives (or is downloaded to)")
    download: bool = Field(
        True,
        description=(
            "`cifar10` and `torchvision/<name>`: download with torchvision when the files are missing "
            "(offline: one line naming the files and the folder)"
        ),
    )
    cache_dir: str | None = Field(
        None, description="`image_folder` cache; null: `<root>/.harness_cache`, else `~/.cache/harness`"
    )
    # The validation split decides (best checkpoint, plateau, pruning, search); the test set only reports.
    # Held out of the whole training split with its own seed, so every run of a study holds out the same images.
    val_size: Annotated[int | float, PlainValidator(_image_count_or_fraction)] = Field(
        0.1,
        description=(
            "the validation split: an image count or a fraction of the training split, held out before "
            "anything else (an image folder's own `val/` when it has one); `0`: none, every training "
            "image trains (see The protocol)"
        ),
    )
    val_seed: int = Field(
        0,
        ge=0,
        lt=2**32,
        description=(
            "seeds the validation split (and `data.test_subset`), so every seed and config holds out, "
            "and is tested on, the same images"
        ),
    )
    train_subset: int | None = Field(
        None,
        ge=1,
        description=(
            "null, or N: a seeded, class-stratified subset of N of the training images left after the validation split"
        ),
    )
    test_subset: int | None = Field(
        None,
        ge=1,
        description=(
            "the same for the test set, drawn with `data.val_seed` (not the run's seed): every seed is "
            "measured on the same test images"
        ),
    )
    synthetic_train_size: int = Field(512, ge=10, description="`synthetic` only: number of training images")
    synthetic_test_size: int = Field(256, ge=10, description="`synthetic` only: number of test images")
    batch_size: int = Field(512, ge=1, description="global training batch (split evenly across processes)")
    eval_batch_size: int = Field(1024, ge=1, description="global evaluation batch")
    num_workers: int | None = Field(
        None,
        ge=0,
        description=(
            "loader worker processes; null: 0 on CPU (the model needs every core), else min(8, cores per process - 1)"
        ),
    )
    # Every image resized to this size (pixels, or [height, width]) when read; null keeps the images'
    # own size, which must then be the same for all of them.
    image_size: Annotated[int | list[int] | None, PlainValidator(_image_size)] = Field(
        None,
        description=(
            "every image resized (antialiased bilinear) to this side in pixels, or `[height, width]`, "
            "as it is read; null keeps the images' size, which must then be the same for all"
        ),
    )
    # Per-channel normalization: numbers, auto (measured on the images that train), or null: CIFAR-10's
    # published values for cifar10, auto for every other source.
    mean: Annotated[list[float] | str | None, PlainValidator(_per_channel)] = Field(None, description=NORMALIZATION)
    std: Annotated[list[float] | str | None, PlainValidator(_positive_per_channel)] = Field(
        None, description=NORMALIZATION
    )
    augment: list[Annotated[dict[str, Any], AfterValidator(_named_transform)]] = Field(
        default_factory=_default_augment,
        description=(
            "ordered list of albumentations 2.x transforms, `{name: <class>, <arguments>}`, applied "
            "before Normalize + ToTensorV2; arguments are checked strictly; a size written as a float "
            "(`height`, `width`, `min_height`, `min_width`, `size`, and CoarseDropout's hole ranges) is"
            " a fraction of the images' side, so `PadIfNeeded: {min_height: 1.25}` + `RandomCrop: "
            "{height: 1.0}` is CIFAR's pad 4 + crop 32 on 32x32 and pad 8 + crop 64 on 64x64"
        ),
    )
    augment_on: Literal["loader", "device"] = Field(
        "loader",
        description=(
            "`loader`: albumentations per image in the loader workers; `device`: the same pad-crop, "
            "flip and single-hole Cutout as batched tensor operations on the device (for GPUs that "
            "outrun the workers; other transforms are refused)"
        ),
    )
    # Keyword arguments of a data source given by import path (a function returning the splits).
    kwargs: dict[str, Any] = Field(
        default_factory=dict, description="keyword arguments of a data source given by import path"
    )

    def augment_in_pixels(self, height: int, width: int) -> list[dict[str, Any]]:
        """``augment`` for images of ``height`` x ``width``: sizes written as floats (fractions of the
        side) in pixels, so one config fits images of any size."""
        return [pixel_sizes(spec, height, width) for spec in self.augment]

    @property
    def image_hw(self) -> tuple[int, int] | None:
        """``image_size`` as (height, width), or None."""
        if self.image_size is None:
            return None
        sides = self.image_size if isinstance(self.image_size, list) else [self.image_size]
        return (sides[0], sides[-1])
