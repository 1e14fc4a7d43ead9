"""Shared test data and configs.

End-to-end tests start from the shipped ``experiments/*.yaml`` and change only their size (data
subset, model width, epochs, warm-up, batch) and where the data is: a small generated copy of the
real data's layout (``<root>/{train,test}/<class>/*.jpg``), since CI has no CIFAR-10.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from harness.core.yaml_io import read_yaml

REPO = Path(__file__).resolve().parent.parent
EXPERIMENTS = REPO / "experiments"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

# What a CPU test may change in a shipped experiment: its size, nothing it does.
SMALL = [
    "model.width=8",
    "train.epochs=2",
    "scheduler.warmup_epochs=0",
    "data.batch_size=32",
    "data.eval_batch_size=50",
    "analysis.misclassified=4",  # the images explained: each is a row of every Grad-CAM figure
]


def make_image_folder(
    root: Path,
    train_per_class: int = 3,
    test_per_class: int = 3,
    classes: tuple[str, ...] = ("cat", "dog"),
    suffix: str = ".png",
    size: int = 32,
    grey: bool = False,
) -> Path:
    """A learnable image folder: each class a bright square at its own place, on its own colour (or
    grey level), plus noise; ``size`` x ``size`` images."""
    rng = np.random.default_rng(1)
    palette = rng.integers(40, 200, size=(len(classes), 3))
    scale = size / 32
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for label, name in enumerate(classes):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.normal(0, 20, size=(size, size, 3)) + palette[label]
                top, left = round((4 + (label // 4) * 8) * scale), round((4 + (label % 4) * 7) * scale)
                pixels[top : top + round(8 * scale), left : left + round(8 * scale)] += 70
                image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
                image = image.convert("L") if grey else image
                image.save(root / split / name / f"{i:04d}{suffix}", **({"quality": 95} if suffix == ".jpg" else {}))
    return root


@pytest.fixture(scope="session")
def cifar_like(tmp_path_factory) -> Path:
    """A CIFAR-10-shaped JPEG folder: 10 classes, 18 training and 5 test images each (162 train and
    18 validation images under the default 10% validation split)."""
    return make_image_folder(tmp_path_factory.mktemp("cifar_like"), 18, 5, CIFAR10_CLASSES, ".jpg")


def data_overrides(root: Path) -> list[str]:
    return ["data.dataset=image_folder", f"data.root={root}", f"data.cache_dir={root / '.cache'}"]


def experiment_args(name: str, data_root: Path, *more: str) -> list[str]:
    """``harness.run`` arguments for a shipped experiment on the small folder, at test size."""
    return [str(EXPERIMENTS / f"{name}.yaml"), "--set", *data_overrides(data_root), *SMALL, *more]


# A config small enough for unit tests on a 2-core machine: the CPU experiment at test size on
# synthetic images. Analysis and report are left to the end-to-end tests (test_e2e.py).
TINY = read_yaml(EXPERIMENTS / "resnet18_cpu.yaml")
TINY.update(name="tiny", seed=0)
TINY["data"].update(
    dataset="synthetic",
    synthetic_train_size=288,  # 256 train after the 32 held out for validation
    val_size=32,
    synthetic_test_size=128,
    batch_size=32,
    eval_batch_size=64,
    num_workers=0,
)
TINY["model"]["width"] = 8
TINY["scheduler"]["warmup_epochs"] = 0.5
TINY["train"]["epochs"] = 1
TINY["analysis"] = {"enabled": False}
TINY["report"] = {"enabled": False}


def deep_update(base: dict, changes: dict) -> dict:
    out = dict(base)
    for key, value in changes.items():
        out[key] = deep_update(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


@pytest.fixture
def write_config(tmp_path):
    def write(changes: dict | None = None, name: str = "exp.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(deep_update(TINY, changes or {})))
        return path

    return write


TIMING_COLUMNS = {"epoch_time_s", "train_images_per_s"}
# What differs between any two runs of the same config, interrupted or not.
VOLATILE_SUMMARY = {"started_utc", "finished_utc", "total_time_s", "resumed_from", "analysis_completed_utc", "history"}


def read_rows(path: Path, drop: set[str] = frozenset()) -> list[dict]:
    with open(path, newline="") as handle:
        return [{k: v for k, v in row.items() if k not in drop} for row in csv.DictReader(handle)]


def comparable_summary(run_dir: Path) -> dict:
    """summary.json less what differs between two runs of one config, its folder written RUN_DIR."""
    text = (run_dir / "summary.json").read_text().replace(str(run_dir), "RUN_DIR")
    return {k: v for k, v in json.loads(text).items() if k not in VOLATILE_SUMMARY}


def subprocess_env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO))


def run_cli(
    *args: str, timeout: float = 300, module: str = "harness.run", cwd: Path = REPO, env: dict | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=env or subprocess_env(),
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tensorboard_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of a run's TensorBoard files as TensorBoard itself reads them: (step, value) per tag."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@pytest.fixture(scope="session")
def main_job_run(tmp_path_factory, cifar_like) -> tuple[Path, subprocess.CompletedProcess]:
    """`python -m harness.run experiments/resnet18.yaml`, the README's first command, at test size (one
    epoch) as a user runs it: with its validation split, analysis and report."""
    out = tmp_path_factory.mktemp("main_job") / "run"
    return out, run_cli(*experiment_args("resnet18", cifar_like, "train.epochs=1"), "--out", str(out))


@pytest.fixture(scope="session")
def analyzed_run(tmp_path_factory, cifar_like) -> Path:
    """The CPU experiment at test size (it trains on every training image: data.val_size 0), trained,
    analyzed and reported as a user runs it; shared by the report tests."""
    from harness.run import main as run_main

    out = tmp_path_factory.mktemp("report") / "run"
    assert run_main([*experiment_args("resnet18_cpu", cifar_like), "--out", str(out)]) == 0
    return out
