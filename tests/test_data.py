from __future__ import annotations

import pickle
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness.config import config_from_dict
from harness.core.errors import HarnessError
from harness.data.config import DataConfig
from harness.data.loaders import AugmentedArrayDataset, EpochBatchSampler, build_train_dataset
from harness.data.sources import load_arrays, stratified_subset
from harness.data.transforms import build_eval_transform, build_train_transform
from tests.conftest import make_image_folder
from tests.test_device_augment import CUTOUT


def _data_and_seed(cfg) -> tuple:
    return cfg.data, cfg.seed


def write_cifar_pickles(root: Path, per_batch: int = 20) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for n, name in enumerate(names):
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        data[:, 0] = n  # red channel of the top-left pixel records the file it came from
        entry = {"data": data, "labels": [i % 10 for i in range(per_batch)]}
        (folder / name).write_bytes(pickle.dumps(entry))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))


def test_cifar10_pickles_are_read_into_memory(tmp_path):
    write_cifar_pickles(tmp_path)
    cfg = config_from_dict({"data": {"dataset": "cifar10", "root": str(tmp_path), "download": False, "val_size": 0}})
    splits = load_arrays(cfg.data, cfg.seed)
    train, test = splits.train, splits.test
    assert splits.val is None
    assert train.images.shape == (100, 32, 32, 3) and train.images.dtype == np.uint8
    assert test.images.shape == (20, 32, 32, 3)
    assert train.classes == [f"c{i}" for i in range(10)]
    assert sorted(set(train.images[:, 0, 0, 0])) == [0, 1, 2, 3, 4]  # CHW rows became HWC pixels
    assert set(test.images[:, 0, 0, 0]) == {5}


def test_cifar10_missing_without_download_names_the_folder(tmp_path):
    cfg = config_from_dict({"data": {"dataset": "cifar10", "root": str(tmp_path), "download": False}})
    with pytest.raises(HarnessError, match="CIFAR-10 files not found"):
        load_arrays(cfg.data, cfg.seed)


def test_image_folder_decodes_and_caches(tmp_path):
    make_image_folder(tmp_path / "data")
    cfg = config_from_dict(
        {
            "data": {
                "dataset": "image_folder",
                "root": str(tmp_path / "data"),
                "cache_dir": str(tmp_path / "cache"),
                "val_size": 0,
            }
        }
    )
    train = load_arrays(cfg.data, cfg.seed).train
    assert train.classes == ["cat", "dog"]
    assert train.images.shape == (6, 32, 32, 3) and list(train.labels) == [0, 0, 0, 1, 1, 1]
    expected = np.asarray(Image.open(tmp_path / "data/train/dog/0002.png"))
    assert np.array_equal(train.images[5], expected)
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2
    again = load_arrays(cfg.data, cfg.seed).train  # from the cache
    assert np.array_equal(again.images, train.images)


def test_image_folder_corrupt_image_is_named(tmp_path):
    make_image_folder(tmp_path)
    (tmp_path / "train/dog/bad.jpg").write_bytes(b"not an image")
    cfg = config_from_dict(
        {"data": {"dataset": "image_folder", "root": str(tmp_path), "cache_dir": str(tmp_path / "c")}}
    )
    with pytest.raises(HarnessError, match=r"train/dog/bad.jpg: unreadable image"):
        load_arrays(cfg.data, cfg.seed)


def test_image_folder_empty_class_and_missing_root(tmp_path):
    make_image_folder(tmp_path)
    (tmp_path / "train/bird").mkdir()
    cfg = config_from_dict({"data": {"dataset": "image_folder", "root": str(tmp_path)}})
    with pytest.raises(HarnessError, match=r"train/bird: empty class folder"):
        load_arrays(cfg.data, cfg.seed)
    cfg = config_from_dict({"data": {"dataset": "image_folder", "root": str(tmp_path / "absent")}})
    with pytest.raises(HarnessError, match="folder not found"):
        load_arrays(cfg.data, cfg.seed)


def test_stratified_subset_keeps_class_proportions():
    cfg = config_from_dict({"data": {"dataset": "synthetic", "synthetic_train_size": 1000}})
    train = load_arrays(cfg.data, cfg.seed).train
    subset = stratified_subset(train, 105, seed=3, key="data.train_subset")
    counts = np.bincount(subset.labels, minlength=10)
    assert counts.sum() == 105 and counts.max() - counts.min() <= 1
    assert np.array_equal(stratified_subset(train, 105, seed=3, key="k").images, subset.images)
    with pytest.raises(HarnessError, match="expected at most"):
        stratified_subset(train, 5000, seed=3, key="data.train_subset")


def _pixels(arrays) -> set[bytes]:
    return {image.tobytes() for image in arrays.images}


def test_validation_split_is_stratified_disjoint_and_the_same_for_every_seed_and_subset(tmp_path):
    make_image_folder(tmp_path / "data", train_per_class=40, test_per_class=2, classes=("a", "b", "c", "d"))

    def splits(*overrides: str):
        data = ["data.dataset=image_folder", f"data.root={tmp_path / 'data'}", f"data.cache_dir={tmp_path / 'c'}"]
        return load_arrays(*_data_and_seed(config_from_dict({}, [*data, *overrides])))

    default = splits()  # 10% of 160 images
    assert len(default.val) == 16 and len(default.train) == 144
    assert np.bincount(default.val.labels).tolist() == [4, 4, 4, 4], "stratified by class"
    assert not _pixels(default.val) & _pixels(default.train), "disjoint from what trains"
    held = _pixels(default.val)
    for overrides in (["seed=7"], ["seed=3", "model.width=8"]):
        other = splits(*overrides)
        assert _pixels(other.val) == held, f"the same validation images with {overrides}"
    # With a subset, a fractional val_size is a fraction of the images the run uses (subset + validation):
    # 40 training images hold out 4, not 16; a smaller subset's split is part of a larger one's.
    small, larger = splits("data.train_subset=40"), splits("seed=3", "data.train_subset=100")
    assert (len(small.train), len(small.val), len(larger.val)) == (40, 4, 11)
    assert _pixels(small.val) <= _pixels(larger.val) <= held
    for other in (small, larger):
        assert not _pixels(other.val) & _pixels(other.train), "train_subset is drawn from the rest"
    assert len(splits("data.train_subset=40", "data.val_size=16").val) == 16, "a count is taken as given"
    assert _pixels(splits("data.val_seed=1").val) != held, "val_seed alone moves the split"
    assert len(splits("data.val_size=24").val) == 24 and len(splits("data.val_size=0.25").val) == 40
    whole = splits("data.val_size=0")
    assert whole.val is None and len(whole.train) == 160
    with pytest.raises(HarnessError, match=r"data.train_subset = 150: expected at most the 143 training images left"):
        splits("data.train_subset=150")
    with pytest.raises(HarnessError, match=r"data.val_size = 160: expected fewer than the 160 training images"):
        splits("data.val_size=160")
    with pytest.raises(HarnessError, match=r"data.val_size = 0.001: .* rounds to none"):
        splits("data.val_size=0.001")


def test_an_image_folder_with_its_own_val_folder_validates_on_it(tmp_path):
    root = make_image_folder(tmp_path / "data", train_per_class=6, test_per_class=2)
    (root / "val").mkdir()
    make_image_folder(tmp_path / "extra", train_per_class=3, test_per_class=1)
    for name in ("cat", "dog"):
        (tmp_path / "extra" / "train" / name).rename(root / "val" / name)
    cfg = {"data": {"dataset": "image_folder", "root": str(root), "cache_dir": str(tmp_path / "c")}}
    splits = load_arrays(*_data_and_seed(config_from_dict(cfg)))
    assert len(splits.train) == 12 and len(splits.val) == 6, "the folder's val/, not 10% of train/"
    assert "own val/" in splits.val_source
    merged = load_arrays(*_data_and_seed(config_from_dict(cfg, ["data.val_size=0"])))
    assert merged.val is None and len(merged.train) == 18, "val_size 0: the val/ images train too"


def test_padded_random_crop_stays_32x32_and_moves():
    transform = build_train_transform(DataConfig(mean=[0, 0, 0], std=[1 / 255] * 3))
    image = np.random.default_rng(0).integers(1, 256, size=(32, 32, 3), dtype=np.uint8)
    offsets = set()
    for seed in range(40):
        transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
        tensor = transform(image=image)["image"]
        assert tuple(tensor.shape) == (3, 32, 32)
        zero_rows = (tensor[0] == 0).all(1).numpy()
        offsets.add(int(zero_rows[:4].sum()) - int(zero_rows[-4:].sum()))
    assert len(offsets) > 3, "the 32x32 crop of the 40x40 padded image lands at several offsets"


def test_cutout_alone_cuts_one_16x16_square():
    cfg = DataConfig(augment=CUTOUT, mean=[0, 0, 0], std=[1 / 255] * 3)
    transform = build_train_transform(cfg)
    image = np.full((32, 32, 3), 200, dtype=np.uint8)
    for seed in range(20):
        transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
        zero = (transform(image=image)["image"][0] == 0).numpy()
        rows, cols = np.flatnonzero(zero.any(1)), np.flatnonzero(zero.any(0))
        assert zero.sum() == 256 and len(rows) == 16 and len(cols) == 16


def test_same_seed_same_augmentation_and_replayable_sampler():
    cfg = config_from_dict(
        {"data": {"dataset": "synthetic", "synthetic_train_size": 100, "val_size": 0, "mean": [0.5], "std": [0.25]}}
    )
    train = load_arrays(cfg.data, cfg.seed).train
    dataset = AugmentedArrayDataset(train, build_train_transform(cfg.data))
    sampler = EpochBatchSampler(len(train), 8, seed=0, shuffle=True)
    sampler.set_epoch(2)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 12
    sampler.set_epoch(2, skip_batches=5)
    assert list(sampler) == batches[5:]
    sampler.set_epoch(3)
    assert list(sampler) != batches
    key = batches[0][0]
    a, b = dataset[key][0], dataset[key][0]
    assert (a == b).all()


@pytest.mark.parametrize("augment_on", ["loader", "device"])
def test_training_loader_augments_only_with_augment_on_loader(augment_on):
    data = {"dataset": "synthetic", "synthetic_train_size": 20, "augment_on": augment_on, "mean": [0.5], "std": [0.25]}
    cfg = config_from_dict({"data": data})
    train = load_arrays(cfg.data, cfg.seed).train
    dataset = build_train_dataset(train, cfg.data)
    normalized = build_eval_transform(cfg.data)(image=train.images[3])["image"]
    views = [dataset[(3, seed)][0] for seed in range(4)]
    if augment_on == "device":  # the trainer augments whole batches; the loader only normalizes
        assert all((view == normalized).all() for view in views)
    else:
        assert sum(not (view == views[0]).all() for view in views[1:]) >= 2


def test_eval_sampler_shards_cover_every_image_once():
    shards = [EpochBatchSampler(103, 10, seed=0, shuffle=False, rank=r, world_size=3) for r in range(3)]
    seen = sorted(i for s in shards for batch in s for i in batch)
    assert seen == list(range(103))


@pytest.mark.parametrize("damage", ["truncated", "stale"])
def test_damaged_or_stale_cache_warns_and_decodes_again(damage, tmp_path, capsys):
    make_image_folder(tmp_path / "data")
    cfg = config_from_dict(
        {"data": {"dataset": "image_folder", "root": str(tmp_path / "data"), "cache_dir": str(tmp_path / "c")}}
    )
    decoded = load_arrays(cfg.data, cfg.seed).train
    cache = next((tmp_path / "c").glob("train-*.npz"))
    if damage == "truncated":
        cache.write_bytes(cache.read_bytes()[:500])
    else:  # another folder's arrays under this folder's key: fewer images than files
        np.savez(cache, images=decoded.images[:2], labels=decoded.labels[:2])
    again = load_arrays(cfg.data, cfg.seed).train
    assert np.array_equal(again.images, decoded.images) and np.array_equal(again.labels, decoded.labels)
    assert f"warning: image cache {cache} is damaged or stale" in capsys.readouterr().err
    assert np.array_equal(load_arrays(cfg.data, cfg.seed).train.images, decoded.images)  # the rewritten cache is good
    assert capsys.readouterr().err == ""


def test_a_folder_made_on_a_laptop_trains_on_its_images_alone(tmp_path, capsys):
    """macOS, Windows, NAS and Jupyter leave their files behind; images come in every mode."""
    root = make_image_folder(tmp_path / "pets", train_per_class=4, test_per_class=2)
    real = {split: sorted(p for p in (root / split).rglob("*.png")) for split in ("train", "test")}
    junk = {
        ".DS_Store": b"\0\0\0\1Bud1", "train/.DS_Store": b"x", "train/cat/.DS_Store": b"x",
        "train/cat/._0000.png": b"\0\5\x16\7AppleDouble", "train/dog/Thumbs.db": b"x",
        "test/dog/desktop.ini": b"[.ShellClassInfo]", "train/cat/notes.txt": b"cute",
        "train/__MACOSX/cat/._0001.png": b"x", "test/.ipynb_checkpoints/x.png": b"x",
        "train/@eaDir/SYNOINDEX": b"x", "train/dog/.hidden/0000.png": b"x", "train/dog/raw/0000.png": b"x",
    }  # fmt: skip
    for name, data in junk.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    rgb = np.asarray(Image.open(real["train"][0]).convert("RGB"))
    gray = rgb.mean(axis=2).astype(np.uint8)
    modes = {  # the same picture saved as a phone, a scanner or an editor would
        "train/cat/gray.png": Image.fromarray(gray, "L"),
        "train/cat/rgba.png": Image.fromarray(np.dstack([rgb, np.full(gray.shape, 200, np.uint8)]), "RGBA"),
        "train/cat/palette.png": Image.fromarray(rgb).convert("P"),
        "train/cat/deep.png": Image.fromarray(gray.astype(np.uint16) * 257),
        "train/cat/cmyk.jpg": Image.fromarray(rgb).convert("CMYK"),
    }
    for name, image in modes.items():
        image.save(root / name)
    cfg = config_from_dict({"data": {"dataset": "image_folder", "root": str(root), "cache_dir": str(tmp_path / "c")}})
    splits = load_arrays(cfg.data, cfg.seed)
    assert len(splits.train) + len(splits.val) == len(real["train"]) + len(modes)
    assert len(splits.test) == len(real["test"]) and splits.classes == ["cat", "dog"]
    assert splits.train.images.dtype == np.uint8 and splits.train.images.shape[1:] == (32, 32, 3)
    every = np.concatenate([splits.train.images, splits.val.images])
    deep = np.asarray(Image.open(root / "train/cat/deep.png"))
    assert any(np.array_equal(image[..., 0], (deep // 257).astype(np.uint8)) for image in every), "16-bit, scaled"
    note = splits.skipped
    assert note.startswith(str(root)) and "\n" not in note
    # One line, each kind with its count and first names: the hidden or system files in class folders
    # (.DS_Store, ._0000.png, Thumbs.db, desktop.ini: 4), 1 text file, 2 nested folders, 3 system folders.
    for kind in ("4 hidden or system files", "1 files that are not images", "2 folders inside class folders",
                 "3 system or hidden folders", "1 files outside the class folders"):  # fmt: skip
        assert kind in note, (kind, note)
    for shown in ("'._0000.png'", "'notes.txt'", "'__MACOSX'", "'raw'"):
        assert shown in note, (shown, note)
