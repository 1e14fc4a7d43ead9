"""Data sources: where the images come from, read whole into memory as uint8 arrays.

Each source is registered by the name that ``data.dataset`` takes (``harness.data.config``); adding
one is a function here and its line there. A user's own source, by import path, is read by
``harness.data.user_sources``.
"""

from __future__ import annotations

import hashlib
import os
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from harness.core import atomic_io
from harness.core.errors import HarnessError
from harness.core.registry import PluginError
from harness.data.arrays import ImageArrays, Splits
from harness.data.config import SOURCES, DataConfig
from harness.data.normalization import resize
from harness.data.user_sources import splits_from_user_function

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}


# ---------------------------------------------------------------- image_folder: <root>/{train,[val,]test}/<class>/*


# What a folder made on a laptop holds besides its images: never a class, never a training image.
SYSTEM_FOLDERS = {"__MACOSX", "@eaDir", "$RECYCLE.BIN", "System Volume Information", "lost+found"}
SYSTEM_FILES = {"thumbs.db", "ehthumbs.db", "desktop.ini", "icon\r", ".ds_store"}


class Skipped:
    """What an image folder held that is not a training image, by kind, for one warning line."""

    def __init__(self) -> None:
        self.found: dict[str, list[str]] = {}

    def add(self, kind: str, path: Path) -> None:
        self.found.setdefault(kind, []).append(path.name)

    def __bool__(self) -> bool:
        return bool(self.found)

    def describe(self) -> str:
        parts = []
        for kind, names in self.found.items():
            shown = ", ".join(repr(n) for n in sorted(set(names))[:3]) + (", ..." if len(set(names)) > 3 else "")
            parts.append(f"{len(names)} {kind} ({shown})")
        return "; ".join(parts)


def _system_or_hidden(path: Path) -> bool:
    return path.name.startswith(".") or path.name in SYSTEM_FOLDERS or path.name.lower() in SYSTEM_FILES


def _list_image_folder(
    split_dir: Path, classes: list[str] | None, skipped: Skipped
) -> tuple[list[str], list[tuple[Path, int]]]:
    """The class folders of ``split_dir`` and their images; hidden files and folders (``.DS_Store``,
    AppleDouble ``._*`` files, ``.ipynb_checkpoints``), system ones (``__MACOSX``, ``Thumbs.db``),
    files that are not images and folders inside class folders are left out and noted in ``skipped``."""
    if not split_dir.is_dir():
        raise HarnessError(
            f"data.root: folder {split_dir} not found (expected <root>/train/<class>/* and <root>/test/<class>/*)"
        )
    found = []
    for entry in sorted(split_dir.iterdir()):
        if entry.is_dir() and not _system_or_hidden(entry):
            found.append(entry.name)
        else:
            skipped.add("system or hidden folders" if entry.is_dir() else "files outside the class folders", entry)
    if classes is None:
        classes = found
        if not classes:
            raise HarnessError(f"{split_dir}: no class folders found (expected {split_dir}/<class>/<image>)")
    elif found != classes:
        raise HarnessError(f"{split_dir}: class folders {found} differ from the training classes {classes}")
    files = []
    for label, name in enumerate(classes):
        images = []
        for entry in sorted((split_dir / name).iterdir()):
            if entry.is_dir():
                skipped.add("folders inside class folders", entry)
            elif _system_or_hidden(entry):
                skipped.add("hidden or system files", entry)
            elif entry.suffix.lower() not in IMAGE_SUFFIXES:
                skipped.add("files that are not images", entry)
            else:
                images.append(entry)
        if not images:
            raise HarnessError(
                f"{split_dir / name}: empty class folder (no images with suffix {sorted(IMAGE_SUFFIXES)})"
            )
        files.extend((path, label) for path in images)
    return classes, files


GREY_MODES = ("1", "L", "LA", "I;16", "I;16L", "I;16B", "I", "F")


def _as_array(image: Image.Image) -> np.ndarray:
    """Any PIL mode as 8-bit (H, W, 1) grey or (H, W, 3) RGB: a phone photo upright (EXIF orientation),
    16-bit and float grey scaled to 0..255 rather than clipped, palette, RGBA and CMYK as RGB."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16L", "I;16B", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else (1.0 if values.max() <= 1 else 255.0)
        return np.clip(values / top * 255.0, 0, 255).round().astype(np.uint8)[..., None]
    if image.mode in GREY_MODES:
        return np.asarray(image.convert("L"), dtype=np.uint8)[..., None]
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _decode_image(path: Path, size: tuple[int, int] | None) -> np.ndarray:
    """The image as (H, W, C) uint8, resized to ``size`` (height, width) when given (antialiased bilinear)."""
    try:
        with Image.open(path) as image:
            array = _as_array(image)
    except Exception as error:  # PIL raises many types for a broken file
        raise HarnessError(f"{path}: unreadable image ({type(error).__name__}: {error})") from None
    if size is not None and array.shape[:2] != size:
        resized = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).resize(
            (size[1], size[0]), Image.Resampling.BILINEAR
        )
        array = np.asarray(resized, dtype=np.uint8).reshape(size[0], size[1], array.shape[-1])
    return array


def as_rgb(images: np.ndarray) -> np.ndarray:
    """(N, H, W, 1) grey images as (N, H, W, 3); colour ones as they are."""
    return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images


def _decode_split(files: list[tuple[Path, int]], classes: list[str], size: tuple[int, int] | None) -> ImageArrays:
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        decoded = list(pool.map(lambda path: _decode_image(path, size), (path for path, _ in files), chunksize=256))
    if len({image.shape[-1] for image in decoded}) > 1:  # grey and colour mixed: colour, the grey ones repeated
        decoded = [np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image for image in decoded]
    shape = decoded[0].shape
    for (path, _), image in zip(files, decoded, strict=True):
        if image.shape[:2] != shape[:2]:
            raise HarnessError(
                f"{path}: image size {image.shape[1]}x{image.shape[0]} differs from {shape[1]}x{shape[0]} of "
                f"{files[0][0].name}; set data.image_size to resize every image to one size"
            )
    return ImageArrays(np.stack(decoded), np.asarray([label for _, label in files], dtype=np.int64), classes)


def available_memory() -> int | None:
    """Bytes of memory the system can give without swapping (Linux's MemAvailable), or None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_memory(files: list[tuple[Path, int]], size: tuple[int, int] | None, root: Path) -> None:
    """Refuse, before decoding, a folder whose images as arrays would not fit in memory (half of what is
    available: training needs room for the model, batches and a copy of the split)."""
    if size is None:  # the headers of a sample of images give their size without decoding them
        sample = files[:: max(1, len(files) // 20)]
        sizes = []
        for path, _ in sample:
            try:
                with Image.open(path) as image:
                    sizes.append(image.size[0] * image.size[1])
            except Exception:  # an unreadable image is reported, with its name, when it is decoded
                continue
        pixels = max(sizes, default=0)
    else:
        pixels = size[0] * size[1]
    needed, available = len(files) * pixels * 3, available_memory()
    if available is not None and needed > available / 2:
        raise HarnessError(
            f"data.root = {str(root)!r}: {len(files):,} images of up to {pixels:,} pixels take about "
            f"{needed / 2**30:.1f} GiB as arrays, more than half of the {available / 2**30:.1f} GiB of memory "
            "available; set data.image_size smaller, or use a subset of the folder"
        )


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
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3) or len(images) != len(labels):
        raise ValueError(f"holds {images.shape} {images.dtype} images for {len(labels)} files")
    if not np.array_equal(cached_labels, labels):
        raise ValueError("its labels differ from the class folders'")
    return ImageArrays(images, labels, classes)


def _load_or_decode(split: str, files: list[tuple[Path, int]], classes: list[str], cfg: DataConfig) -> ImageArrays:
    """Decode a split once; later runs read the cached arrays (keyed by file names, sizes and times,
    and the size they were resized to)."""
    size = cfg.image_hw
    name = f"{split}-{_fingerprint(files)}{f'-{size[0]}x{size[1]}' if size else ''}.npz"
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
    check_memory(files, size, Path(cfg.root))
    arrays = _decode_split(files, classes, size)
    for folder in _cache_dirs(cfg):
        try:
            # uncompressed: reading 180 MB back is faster than inflating it
            atomic_io.write_npz(folder / name, compress=False, images=arrays.images, labels=arrays.labels)
            break
        except OSError:
            continue  # read-only data folder: try the next place; no cache is only slower
    return arrays


def load_image_folder(cfg: DataConfig, seed: int) -> Splits:
    root = Path(cfg.root)
    if not root.is_dir():
        raise HarnessError(f"data.root = {cfg.root!r}: folder not found")
    skipped = Skipped()
    classes, train_files = _list_image_folder(root / "train", None, skipped)
    _, test_files = _list_image_folder(root / "test", classes, skipped)
    val = None
    if (root / "val").is_dir():  # the folder's own validation images, e.g. ImageNet-style layouts
        _, val_files = _list_image_folder(root / "val", classes, skipped)
        val = _load_or_decode("val", val_files, classes, cfg)
    train, test = (
        _load_or_decode(split, files, classes, cfg) for split, files in (("train", train_files), ("test", test_files))
    )
    splits = [split for split in (train, val, test) if split is not None]
    if len({split.images.shape[-1] for split in splits}) > 1:  # a grey split beside a colour one: all colour
        train, test, val = (
            None if split is None else ImageArrays(as_rgb(split.images), split.labels, classes)
            for split in (train, test, val)
        )
    return Splits(
        train, test, val, f"{root}: left out what is not a training image: {skipped.describe()}" if skipped else None
    )


# ---------------------------------------------------------------- synthetic: learnable toy images, for tests


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

    return Splits(split(cfg.synthetic_train_size, seed * 2 + 1), split(cfg.synthetic_test_size, seed * 2 + 2))


# ---------------------------------------------------------------- validation split and subsets


def stratified_indices(labels: np.ndarray, num_classes: int, size: int, seed: int) -> np.ndarray:
    """A seeded, sorted choice of ``size`` indices whose class proportions follow ``labels``'
    (largest remainders decide the classes that get one more)."""
    rng = np.random.default_rng(seed)
    counts = np.bincount(labels, minlength=num_classes)
    exact = counts * size / max(counts.sum(), 1)
    quota = np.floor(exact).astype(int)
    for c in np.argsort(-(exact - quota), kind="stable")[: size - quota.sum()]:
        quota[c] += 1
    chosen = [rng.permutation(np.flatnonzero(labels == c))[: quota[c]] for c in range(len(counts))]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def stratified_subset(
    arrays: ImageArrays, size: int, seed: int, key: str, what: str = "images of the split"
) -> ImageArrays:
    """A seeded subset of ``size`` images whose class proportions follow the whole split's."""
    if size > len(arrays):
        raise HarnessError(f"{key} = {size}: expected at most the {len(arrays)} {what}")
    return arrays.subset(stratified_indices(arrays.labels, len(arrays.classes), size, seed))


def validation_count(val_size: int | float, train_images: int) -> int:
    """``data.val_size`` as an image count: a count as given, a fraction of the training images rounded."""
    count = round(val_size * train_images) if isinstance(val_size, float) else val_size
    if count >= train_images:
        raise HarnessError(
            f"data.val_size = {val_size}: expected fewer than the {train_images} training images (some must train)"
        )
    if val_size and count == 0:
        raise HarnessError(
            f"data.val_size = {val_size}: {val_size} of {train_images} training images rounds to none; "
            "expected a larger fraction, or 0 for no validation split"
        )
    return count


def hold_out_validation(train: ImageArrays, val_size: int | float, val_seed: int) -> tuple[ImageArrays, ImageArrays]:
    """Split ``train`` into (what trains, the validation split): stratified by class and seeded by
    ``val_seed`` alone, so every seed and config of a study holds out the same images."""
    count = validation_count(val_size, len(train))
    held = stratified_indices(train.labels, len(train.classes), count, val_seed)
    rest = np.setdiff1d(np.arange(len(train)), held, assume_unique=True)
    return train.subset(rest), train.subset(held)


@dataclass
class DataSplits:
    """The three splits of a run: ``train`` trains, ``val`` decides (best checkpoint, plateau,
    pruning, search; None when ``data.val_size`` is 0), ``test`` only reports."""

    train: ImageArrays
    val: ImageArrays | None
    test: ImageArrays
    val_source: str = "none"  # where the validation images came from, in words (summary.json, the report)
    skipped: str | None = None  # what the source left out, for one warning

    @property
    def classes(self) -> list[str]:
        return self.train.classes

    @property
    def channels(self) -> int:
        """1 for grey images, 3 for colour."""
        return self.train.images.shape[-1]

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of every image."""
        return tuple(self.train.images.shape[1:3])

    def as_rgb(self) -> DataSplits:
        """The splits with grey images repeated to three channels (for a model that takes colour only)."""

        def rgb(arrays: ImageArrays | None) -> ImageArrays | None:
            return None if arrays is None else ImageArrays(as_rgb(arrays.images), arrays.labels, arrays.classes)

        return DataSplits(rgb(self.train), rgb(self.val), rgb(self.test), self.val_source, self.skipped)


def read_source(data: DataConfig, seed: int) -> Splits:
    """The splits of the source ``data.dataset`` names: a built-in one, or a user's function."""
    try:
        found = SOURCES.resolve(data.dataset)
        if found.native:
            return found.obj(data, seed)
        return splits_from_user_function(found, data.kwargs)
    except PluginError as problem:
        raise HarnessError(f"data.dataset = {data.dataset!r}: {problem}") from None


def load_arrays(data: DataConfig, seed: int) -> DataSplits:
    """The training, validation and test splits named by ``data`` (``seed``: the run's, for the
    training subset and the synthetic source).

    The validation split comes first, from the whole training split (or the source's own), so it is
    the same whatever ``train_subset`` and ``seed`` are; ``train_subset`` is then drawn from the rest.
    ``test_subset`` is seeded by ``val_seed`` too: one test subset for every seed. With ``val_size: 0``
    a source's own validation images train too.
    """
    source = read_source(data, seed)
    if data.image_hw is not None:  # an image folder is resized as it is decoded; other sources here
        source = Splits(
            *(None if a is None else resize(a, data.image_hw) for a in (source.train, source.test, source.val)),
            source.skipped,
        )
    train, val = source.train, source.val
    val_source = "none: data.val_size is 0"
    if val is not None and data.val_size == 0:
        train = ImageArrays(
            np.concatenate([train.images, val.images]), np.concatenate([train.labels, val.labels]), train.classes
        )
        val, val_source = None, "none: data.val_size is 0 (the folder's val/ images train too)"
    elif val is not None:
        val_source = f"the data folder's own val/ ({len(val)} images)"
    elif data.val_size:
        val_size = data.val_size
        if isinstance(val_size, float) and data.train_subset is not None:
            # A fraction of the images the run uses (its subset and its validation split), not of the whole
            # split: 2,000 training images hold out 222, not 5,000 of CIFAR-10's 50,000.
            val_size = max(1, round(val_size / (1 - val_size) * data.train_subset))
        train, val = hold_out_validation(train, val_size, data.val_seed)
        val_source = (
            f"held out of the training images: {len(val)} (data.val_size {data.val_size}, "
            f"stratified, data.val_seed {data.val_seed})"
        )
    if data.train_subset is not None:
        what = "training images left after the validation split" if val is not None else "training images"
        train = stratified_subset(train, data.train_subset, seed, "data.train_subset", what)
    test = source.test
    if data.test_subset is not None:
        # Seeded like the validation split, not by the run: every seed of a study is measured on the
        # same test images, so that paired tests between runs (McNemar) compare like with like.
        test = stratified_subset(test, data.test_subset, data.val_seed + 1, "data.test_subset")
    return DataSplits(train, val, test, val_source, source.skipped)
