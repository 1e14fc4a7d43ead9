"""Data of any size, channel count and class count: the shipped experiments on other folders with
only data and size keys changed, torchvision's dataset formats read from generated files, the
normalization measured and recorded, and the memory a folder needs checked before decoding it."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from harness.analysis import figures
from harness.config import config_from_dict
from harness.core.errors import HarnessError
from harness.core.run_folder import RunFiles
from harness.data import sources
from harness.data.normalization import channel_stats
from harness.data.sources import load_arrays
from harness.models.inputs import prepare_inputs
from harness.run import main
from tests.conftest import EXPERIMENTS, SMALL, experiment_args, make_image_folder

RNG = np.random.default_rng(0)


@pytest.fixture(scope="module")
def grey_64(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("grey64"), 12, 4, ("circle", "square", "star"), size=64, grey=True)


@pytest.fixture(scope="module")
def colour_96(tmp_path_factory) -> Path:
    classes = tuple(f"kind{k:02d}" for k in range(12))
    return make_image_folder(tmp_path_factory.mktemp("colour96"), 4, 2, classes, size=96)


CASES = [("resnet18", "grey_64", 64, 3), ("resnet18_cpu", "grey_64", 64, 3), ("resnet18", "colour_96", 96, 12),
         ("resnet18_cpu", "colour_96", 96, 12)]  # fmt: skip


@pytest.mark.parametrize("experiment, folder, side, classes", CASES, ids=[f"{e}-{f}" for e, f, _, _ in CASES])
def test_the_shipped_experiments_take_any_image_folder(experiment, folder, side, classes, request, tmp_path):
    """Only the data keys and the test's size keys change: the augmentation, the progressive resizing,
    the model's first layer and head, every figure and the report follow the data."""
    root, out = request.getfixturevalue(folder), tmp_path / "run"
    args = experiment_args(experiment, root, "train.epochs=1", "data.batch_size=12", "analysis.misclassified=4")
    assert main([*args, "--out", str(out)]) == 0
    summary = RunFiles(out).read_summary()
    assert summary["status"] == "completed" and summary["analysis_completed_utc"]
    assert summary["image_size"] == [side, side] and summary["classes"] == sorted(summary["classes"])
    assert summary["channels"] == (1 if folder == "grey_64" else 3)
    assert summary["normalization"]["from"].startswith("measured on the")
    written = yaml.safe_load(RunFiles(out).config.read_text())
    assert written["data"]["mean"] is None  # what was asked; summary.json has the numbers used
    assert len(summary["normalization"]["mean"]) == summary["channels"]
    assert len(pd.read_csv(out / "analysis" / "per_class.csv")) == classes
    with np.load(out / "analysis" / "gradcam.npz") as maps:
        heat = maps["gradcam/layer4/predicted"]
        assert heat.shape[1:] == (side, side)
    with Image.open(out / "analysis" / "augmentation_preview.png") as preview:
        assert preview.size[0] > 0
    assert "per-class" in RunFiles(out).report.read_text(encoding="utf-8")


def test_the_image_folder_example_at_another_size(colour_96, tmp_path):
    """experiments/examples/image_folder_96.yaml as its header says to run it, at test size."""
    example = Path(__file__).resolve().parent.parent / "experiments" / "examples" / "image_folder_96.yaml"
    out = tmp_path / "run"
    args = [str(example), "--set", f"data.root={colour_96}", f"data.cache_dir={colour_96 / '.cache'}", *SMALL,
            "analysis.misclassified=4"]  # fmt: skip
    assert main([*args, "--out", str(out)]) == 0
    summary = RunFiles(out).read_summary()
    assert summary["status"] == "completed" and summary["image_size"] == [96, 96] and summary["val_images"] > 0
    assert len(pd.read_csv(out / "analysis" / "per_class.csv")) == 12 and RunFiles(out).report.is_file()


EXTREMES = [(224, 2, 8, 4), (28, 1000, 1000, 1000)]  # side, classes, training and test images


@pytest.mark.parametrize("side, classes, train, test", EXTREMES, ids=["224px-2-classes", "28px-1000-classes"])
def test_the_cpu_recipe_at_the_extremes_of_size_and_class_count(side, classes, train, test, tmp_path):
    """The issue's range: 2 classes of 224x224 images, and 1,000 classes of 28x28 ones (a data plug-in
    that makes them), through the shipped CPU recipe with only data and size keys changed."""
    (tmp_path / "extreme.py").write_text(
        "import numpy as np\n"
        "def load(side, classes, train, test):\n"
        "    rng = np.random.default_rng(0)\n"
        "    def split(n):\n"
        "        labels = np.arange(n) % classes\n"
        "        images = rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8)\n"
        "        images[:, :4, :4, 0] = (labels * 255 // max(classes - 1, 1))[:, None, None]\n"
        "        return images, labels\n"
        "    return split(train), split(test)\n"
    )
    kwargs = f"{{side: {side}, classes: {classes}, train: {train}, test: {test}}}"
    args = [str(EXPERIMENTS / "resnet18_cpu.yaml"), "--set", f"data.dataset={tmp_path / 'extreme.py'}:load",
            f"data.kwargs={kwargs}", "model.width=4", "train.epochs=1", "data.batch_size=4" if side > 32 else
            "data.batch_size=100", "data.eval_batch_size=100", "analysis.misclassified=4"]  # fmt: skip
    out = tmp_path / "run"
    assert main([*args, "--out", str(out)]) == 0
    summary = RunFiles(out).read_summary()
    assert summary["status"] == "completed" and summary["image_size"] == [side, side]
    assert len(summary["classes"]) == classes and len(pd.read_csv(out / "analysis" / "per_class.csv")) == classes
    with np.load(out / "analysis" / "gradcam.npz") as maps:
        assert maps["gradcam/layer4/predicted"].shape[1:] == (side, side)
    assert RunFiles(out).report.is_file()


def test_mixed_sizes_need_an_image_size_and_are_resized_to_it(tmp_path, capsys):
    root = make_image_folder(tmp_path / "mixed", 6, 2, ("a", "b"), size=40)
    Image.new("RGB", (50, 30), (90, 20, 200)).save(root / "train" / "a" / "wide.png")
    cfg = config_from_dict({"data": {"dataset": "image_folder", "root": str(root), "cache_dir": str(tmp_path / "c")}})
    with pytest.raises(HarnessError, match="differs from 40x40 of .*; set data.image_size"):
        load_arrays(cfg.data, 0)
    resized = config_from_dict({"data": {**cfg.data.model_dump(), "image_size": [24, 32]}})
    splits = load_arrays(resized.data, 0)
    assert splits.train.images.shape[1:] == (24, 32, 3) and splits.test.images.shape[1:] == (24, 32, 3)


def test_grey_images_are_repeated_for_a_model_that_takes_colour_only(grey_64):
    data = {"dataset": "image_folder", "root": str(grey_64), "cache_dir": str(grey_64 / ".cache"), "mean": [0.5]}
    own = prepare_inputs(config_from_dict({"data": data}).data, config_from_dict({}).model, 0)
    assert own.in_channels == 1 and own.data.mean == [0.5] and own.notes["channels_note"] == "grey images, one channel"
    cfg = config_from_dict({"data": data, "model": {"name": "torchvision/resnet18"}})
    repeated = prepare_inputs(cfg.data, cfg.model, 0)
    assert repeated.in_channels == 3 and repeated.data.mean == [0.5, 0.5, 0.5]
    assert "repeated to three channels" in repeated.notes["channels_note"]
    assert np.array_equal(repeated.splits.train.images[..., 0], repeated.splits.train.images[..., 2])


def test_measured_normalization_is_each_channels_mean_and_std():
    images = RNG.integers(0, 256, size=(50, 8, 8, 3), dtype=np.uint8)
    mean, std = channel_stats(images)
    flat = images.reshape(-1, 3) / 255.0
    assert mean == pytest.approx(flat.mean(axis=0), abs=1e-4) and std == pytest.approx(flat.std(axis=0), abs=1e-4)


def test_a_folder_too_large_for_memory_is_refused_before_decoding(tmp_path, monkeypatch):
    root = make_image_folder(tmp_path / "big", 3, 1, ("a", "b"), size=64)
    monkeypatch.setattr(sources, "available_memory", lambda: 10_000)
    monkeypatch.setattr(sources, "_decode_split", lambda *_: pytest.fail("decoded"))
    cfg = config_from_dict({"data": {"dataset": "image_folder", "root": str(root), "cache_dir": str(tmp_path / "c")}})
    with pytest.raises(HarnessError, match="6 images of up to 4,096 pixels take about 0.0 GiB as arrays, more than"):
        load_arrays(cfg.data, 0)


# ---------------------------------------------------------------- torchvision's formats, generated


def write_cifar100(root: Path, train: int = 300, test: int = 100) -> None:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, count in (("train", train), ("test", test)):
        labels = np.arange(count) % 100
        data = RNG.integers(0, 256, size=(count, 3 * 32 * 32), dtype=np.uint8)
        data[:, :1024] = (labels * 2)[:, None]  # the red channel tells the class: learnable
        with open(folder / name, "wb") as handle:
            pickle.dump({"data": data, "fine_labels": labels.tolist(), "coarse_labels": [0] * count}, handle)
    with open(folder / "meta", "wb") as handle:
        pickle.dump({"fine_label_names": [f"fine{k}" for k in range(100)]}, handle)


def write_idx(path: Path, array: np.ndarray, zipped: bool) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if zipped:
        with gzip.open(f"{path}.gz", "wb") as handle:
            handle.write(payload)
    else:
        path.write_bytes(payload)


def write_mnist(root: Path, folder: str, zipped: bool) -> None:
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    for prefix, count in (("train", 40), ("t10k", 20)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", RNG.integers(0, 256, (count, 28, 28)), zipped)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(count) % 10, zipped)


def write_svhn(root: Path) -> None:
    from scipy.io import savemat

    root.mkdir(parents=True, exist_ok=True)
    for name, count in (("train", 30), ("test", 10)):
        labels = (np.arange(count) % 10) + 1  # SVHN's labels: 1..10, 10 for the digit 0
        savemat(
            root / f"{name}_32x32.mat",
            {"X": RNG.integers(0, 256, (32, 32, 3, count), dtype=np.uint8), "y": labels[:, None]},
        )


def write_stl10(root: Path) -> None:
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    (folder / "class_names.txt").write_text("\n".join(["airplane", "bird", "car", "cat", "deer", "dog", "horse",
                                                       "monkey", "ship", "truck"]) + "\n")  # fmt: skip
    for name, count in (("train", 20), ("test", 10)):
        RNG.integers(0, 256, (count, 3, 96, 96), dtype=np.uint8).tofile(folder / f"{name}_X.bin")
        ((np.arange(count) % 10) + 1).astype(np.uint8).tofile(folder / f"{name}_y.bin")


FORMATS = [
    ("CIFAR100", write_cifar100, (32, 32, 3), 100, 300),
    ("MNIST", lambda root: write_mnist(root, "MNIST", zipped=False), (28, 28, 1), 10, 40),
    ("FashionMNIST", lambda root: write_mnist(root, "FashionMNIST", zipped=True), (28, 28, 1), 10, 40),
    ("SVHN", write_svhn, (32, 32, 3), 10, 30),
    ("STL10", write_stl10, (96, 96, 3), 10, 20),
]


@pytest.mark.parametrize("name, write, shape, classes, train", FORMATS, ids=[f[0] for f in FORMATS])
def test_torchvision_datasets_are_read_from_their_files(name, write, shape, classes, train, tmp_path):
    write(tmp_path)
    cfg = config_from_dict(
        {"data": {"dataset": f"torchvision/{name}", "root": str(tmp_path), "download": False, "val_size": 0}}
    )
    splits = load_arrays(cfg.data, 0)
    assert splits.train.images.shape == (train, *shape) and splits.train.images.dtype == np.uint8
    assert len(splits.classes) == classes and splits.train.labels.max() == min(classes, train) - 1
    assert splits.train.labels.min() == 0


def test_a_missing_dataset_offline_names_the_files_and_the_folder(tmp_path, capsys):
    out = tmp_path / "run"
    args = experiment_args(
        "resnet18_cpu", tmp_path, "data.dataset=torchvision/SVHN", f"data.root={tmp_path}", "data.download=false"
    )
    assert main([*args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        len(err.splitlines()) == 1
        and f"SVHN files not found and data.download is false: put train_32x32.mat, test_32x32.mat in {tmp_path}" in err
    )
    assert main([*args[:-1], "data.dataset=torchvision/ImageNet", "--out", str(out)]) == 2
    assert "expected one of torchvision/CIFAR10, torchvision/CIFAR100" in capsys.readouterr().err


def test_cifar100_trains_from_its_files(tmp_path, monkeypatch):
    """The shipped example experiments/examples/cifar100.yaml at test size, on generated CIFAR-100 files:
    100 classes, the confusion figure as the most frequent pairs, the normalization measured (auto)."""
    drawn = []
    pairs_view = figures._top_confusions
    monkeypatch.setattr(
        figures, "_top_confusions", lambda classes, *a, **k: drawn.append(len(classes)) or pairs_view(classes, *a, **k)
    )
    write_cifar100(tmp_path / "data")
    out = tmp_path / "run"
    example = Path(__file__).resolve().parent.parent / "experiments" / "examples" / "cifar100.yaml"
    args = [str(example), "--set", f"data.root={tmp_path / 'data'}", "data.download=false", *SMALL,
            "data.batch_size=50", "analysis.misclassified=4"]  # fmt: skip
    assert main([*args, "--out", str(out)]) == 0
    summary = RunFiles(out).read_summary()
    assert len(summary["classes"]) == 100 and summary["status"] == "completed"
    assert len(pd.read_csv(out / "analysis" / "per_class.csv")) == 100
    assert drawn == [100], "above 25 classes the confusion figure shows the most frequent pairs, not a matrix"
    assert (out / "analysis" / "confused_pairs.csv").is_file()
    assert summary["normalization"]["from"] == f"measured on the {summary['train_images']:,} training images"
    assert yaml.safe_load(RunFiles(out).config.read_text())["data"]["mean"] == "auto", "recorded as asked"
