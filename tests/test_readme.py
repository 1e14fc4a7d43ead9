"""The README stays true: its two commands, and a reference line for every config key."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel

from harness.config import Config

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
CI = (Path(__file__).resolve().parent.parent / ".ci" / "run").read_text()


def config_keys(node: type[BaseModel] = Config, prefix: str = "") -> list[str]:
    keys = []
    for name, info in node.model_fields.items():
        section = isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel)
        keys += config_keys(info.annotation, f"{prefix}{name}.") if section else [prefix + name]
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
