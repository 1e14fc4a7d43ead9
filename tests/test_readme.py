"""The README stays true: its two commands, and a reference line for every config key."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from harness.config import Config

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
CI = (Path(__file__).resolve().parent.parent / ".ci" / "run").read_text()


def config_keys(node: object = None, prefix: str = "") -> list[str]:
    node = Config() if node is None else node
    keys = []
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        keys += config_keys(value, f"{prefix}{f.name}.") if dataclasses.is_dataclass(value) else [prefix + f.name]
    return keys


def test_every_config_key_is_in_the_reference():
    documented = set(re.findall(r"^\| `([a-z_.]+)`", README, flags=re.M))
    documented |= {k for pair in re.findall(r"^\| `([a-z_.]+)`, `([a-z_.]+)`", README, flags=re.M) for k in pair}
    missing = [key for key in config_keys() if key not in documented]
    assert not missing, f"README config reference lacks: {missing}"


def test_first_screen_commands_and_ci_agree():
    first_screen = README[:1500]
    assert "pip install -r requirements.txt && python -m harness.run experiments/resnet18.yaml" in first_screen
    test_command = "pip install -r requirements.txt && python -m pytest -q tests"
    assert test_command in first_screen
    assert test_command in CI
