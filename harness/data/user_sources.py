"""A researcher's own data source, named by import path in ``data.dataset`` (``my_data:load`` or
``./my_data.py:load``) and called with ``data.kwargs``.

The function returns its splits in either form::

    return train, test                                         # each a split
    return {"train": train, "test": test, "val": val, "classes": ["cat", "dog"]}   # val, classes optional

and each split is ``(images, labels)`` (arrays: images (N, H, W, C), (N, C, H, W) or (N, H, W), uint8
or floats in [0, 1]; labels (N,) integers from 0) or a torch ``Dataset`` of ``(image, label)`` items
(PIL images, arrays or tensors). Class names come from ``classes``, else a dataset's ``classes``
attribute, else the label numbers. Everything becomes uint8 (N, H, W, 3) arrays, as the built-in
sources give; a grey image is repeated to three channels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from harness.core.registry import PluginError, Resolved, call_plain
from harness.data.arrays import ImageArrays, Splits

SPLIT_FORM = "(images, labels) arrays or a torch Dataset of (image, label)"


def _as_hwc_uint8(images: Any, what: str) -> np.ndarray:
    """(N, H, W, 3) uint8 from (N, H, W[, C]) or (N, C, H, W) arrays or tensors, uint8 or floats in [0, 1]."""
    if hasattr(images, "detach"):  # a torch tensor
        images = images.detach().cpu().numpy()
    array = np.asarray(images)
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4:
        raise PluginError(f"{what}: expected images of shape (N, H, W, C) or (N, C, H, W), found {array.shape}")
    if array.shape[-1] not in (1, 3) and array.shape[1] in (1, 3):
        array = array.transpose(0, 2, 3, 1)
    if array.shape[-1] not in (1, 3):
        raise PluginError(f"{what}: expected 1 or 3 channels, found images of shape {array.shape}")
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.floating) or array.size and (array.min() < 0 or array.max() > 1):
            raise PluginError(f"{what}: expected uint8 images or floats in [0, 1], found {array.dtype}")
        array = np.rint(array * 255.0).astype(np.uint8)
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return np.ascontiguousarray(array)


def _as_labels(labels: Any, count: int, what: str) -> np.ndarray:
    if hasattr(labels, "detach"):
        labels = labels.detach().cpu().numpy()
    array = np.asarray(labels)
    if array.ndim != 1 or len(array) != count or not np.issubdtype(array.dtype, np.integer) or array.min() < 0:
        raise PluginError(f"{what}: expected {count} integer labels from 0, found shape {array.shape} {array.dtype}")
    return array.astype(np.int64)


def _read_dataset(dataset: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Every (image, label) item of a map-style dataset, as arrays."""
    images, labels = [], []
    for index in range(len(dataset)):
        item = dataset[index]
        if not (isinstance(item, Sequence) or hasattr(item, "__getitem__")) or len(item) < 2:
            raise PluginError(f"{what}[{index}]: expected an (image, label) pair, found {type(item).__name__}")
        image, label = item[0], item[1]
        if hasattr(image, "mode") and hasattr(image, "convert"):  # a PIL image
            image = np.asarray(image.convert("RGB"))
        images.append(image if not hasattr(image, "detach") else image.detach().cpu().numpy())
        labels.append(int(label))
    if not images:
        raise PluginError(f"{what}: the dataset is empty")
    first = np.asarray(images[0])
    if first.ndim == 3 and first.shape[0] in (1, 3) and first.shape[-1] not in (1, 3):  # CHW tensors
        images = [np.asarray(i).transpose(1, 2, 0) for i in images]
    return np.stack([np.asarray(i) for i in images]), np.asarray(labels, dtype=np.int64)


def _read_split(split: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(split, tuple | list) and len(split) == 2:
        images = _as_hwc_uint8(split[0], f"{what} images")
        return images, _as_labels(split[1], len(images), f"{what} labels")
    if hasattr(split, "__len__") and hasattr(split, "__getitem__"):
        images, labels = _read_dataset(split, what)
        return _as_hwc_uint8(images, what), labels
    raise PluginError(f"{what}: expected {SPLIT_FORM}, found {type(split).__name__}")


def _class_names(given: Any, splits: dict[str, Any], labels: np.ndarray) -> list[str]:
    if given is None:
        given = next((getattr(s, "classes", None) for s in splits.values() if hasattr(s, "classes")), None)
    count = int(labels.max()) + 1
    names = [str(c) for c in given] if given is not None else [str(c) for c in range(count)]
    if len(names) < count:
        raise PluginError(f"classes: {len(names)} names for labels up to {count - 1}")
    return names


def splits_from_user_function(found: Resolved, kwargs: dict[str, Any]) -> Splits:
    """Call the user's function with ``kwargs`` (``data.kwargs``) and read what it returns."""
    returned = call_plain(found, "data.kwargs", kwargs)
    if isinstance(returned, Mapping):
        unknown = set(returned) - {"train", "test", "val", "classes"}
        if unknown or not {"train", "test"} <= set(returned):
            raise PluginError(f"returned keys {sorted(returned)}: expected train, test and optionally val, classes")
        splits = {k: returned[k] for k in ("train", "val", "test") if returned.get(k) is not None}
        given = returned.get("classes")
    elif isinstance(returned, tuple | list) and len(returned) == 2:
        splits, given = {"train": returned[0], "test": returned[1]}, None
    else:
        raise PluginError(
            f"returned {type(returned).__name__}: expected (train, test) or a mapping with train and test, "
            f"each {SPLIT_FORM}"
        )
    read = {name: _read_split(split, f"its {name} split") for name, split in splits.items()}
    classes = _class_names(given, splits, np.concatenate([labels for _, labels in read.values()]))
    shapes = {name: images.shape[1:] for name, (images, _) in read.items()}
    if len(set(shapes.values())) > 1:
        raise PluginError(f"its splits hold images of different sizes: {shapes}")
    arrays = {name: ImageArrays(images, labels, classes) for name, (images, labels) in read.items()}
    return Splits(arrays["train"], arrays["test"], arrays.get("val"))
