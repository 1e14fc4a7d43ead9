from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent

# A config small enough for a 2-core CI machine: synthetic 32x32 images, an 8-channel ResNet18.
TINY = {
    "name": "tiny",
    "seed": 0,
    "data": {"dataset": "synthetic", "synthetic_train_size": 256, "synthetic_test_size": 128,
             "batch_size": 32, "eval_batch_size": 64, "num_workers": 0},
    "model": {"width": 8},
    "optimizer": {"lr": 0.05},
    "scheduler": {"name": "onecycle", "warmup_epochs": 0.5},
    "train": {"epochs": 1, "channels_last": False, "amp": "off"},
    "analysis": {"enabled": False},
    "report": {"enabled": False},
}


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


def run_cli(*args: str, timeout: float = 300, module: str = "harness.run") -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)


@pytest.fixture(scope="session")
def analyzed_run(tmp_path_factory) -> Path:
    """One tiny run, analyzed and reported, shared by the report tests."""
    from harness.run import main as run_main

    root = tmp_path_factory.mktemp("report")
    config = root / "exp.yaml"
    config.write_text(yaml.safe_dump(deep_update(TINY, {"analysis": {"enabled": True, "misclassified": 4},
                                                        "report": {"enabled": True}})))
    assert run_main([str(config), "--out", str(root / "run")]) == 0
    return root / "run"
