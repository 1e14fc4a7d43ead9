from __future__ import annotations

import pytest

from harness.config import Config, ConfigError, config_from_dict, load_config, parse_override
from harness.run import main
from tests.conftest import run_cli


def test_experiment_files_are_valid():
    for name in ("resnet18", "resnet18_cpu"):
        cfg = load_config(f"experiments/{name}.yaml")
        assert cfg.name == name
    cfg = load_config("experiments/resnet18.yaml")
    assert cfg.train.epochs == 20 and cfg.model.width == 64


def test_defaults_and_overrides():
    cfg = config_from_dict({}, ["train.epochs=3", "data.mean=[0.5, 0.5, 0.5]", "train.grad_clip=null", "optimizer.lr=1e-3"])
    assert isinstance(cfg, Config)
    assert cfg.train.epochs == 3
    assert cfg.data.mean == [0.5, 0.5, 0.5]
    assert cfg.train.grad_clip is None
    assert cfg.optimizer.lr == pytest.approx(1e-3)


@pytest.mark.parametrize(
    "text, path, value",
    [("a.b=3", ["a", "b"], 3), ("x=true", ["x"], True), ("x=[1, 2]", ["x"], [1, 2]), ("x=abc", ["x"], "abc"), ("x=", ["x"], None)],
)
def test_parse_override(text, path, value):
    assert parse_override(text) == (path, value)


@pytest.mark.parametrize(
    "raw, overrides, expected",
    [
        ({"data": {"bacth_size": 4}}, [], "unknown key 'data.bacth_size'"),
        ({"data": {"batch_size": "many"}}, [], "data.batch_size = 'many': expected an integer"),
        ({"data": {"batch_size": 0}}, [], "data.batch_size = 0: expected a value >= 1"),
        ({"train": {"amp": "fp8"}}, [], "train.amp = 'fp8': expected one of 'auto', 'bf16', 'fp16', 'off'"),
        ({"train": {"channels_last": "yes"}}, [], "train.channels_last = 'yes': expected true or false"),
        ({"optimizer": {"lr": -1}}, [], "optimizer.lr = -1: expected a value > 0.0"),
        ({"analysis": {"misclassified": 500}}, [], "analysis.misclassified = 500: expected a value >= 0 and <= 200"),
        ({"data": {"mean": [0.5]}}, [], "data.mean = [0.5]: expected 3 numbers"),
        ({"scheduler": {"name": "plateau", "warmup_epochs": 1}}, [], "expected 0 with the plateau scheduler"),
        ({"scheduler": {"name": "multistep", "milestones": [2], "warmup_epochs": 2}}, [], "expected the warm-up to end before"),
        ({}, ["train"], "expected KEY.PATH=VALUE"),
        ({"seed": 1}, ["seed.x=1"], "'seed' is not a section"),
        ({"data": {"augment": [{"p": 1.0}]}}, [], "data.augment[0]"),
    ],
)
def test_invalid_configs_name_key_value_and_expectation(raw, overrides, expected):
    with pytest.raises(ConfigError) as error:
        config_from_dict(raw, overrides, source="exp.yaml")
    assert expected in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "content, expected",
    [
        ("data: {batch_size: [1, 2\n", "malformed YAML at line"),
        ("- just\n- a list\n", "expected a mapping of config keys"),
        ("model:\n  width: wide\n", "model.width = 'wide': expected an integer"),
        ("data:\n  augment:\n    - {name: NoSuchTransform}\n", "data.augment[0]: unknown albumentations transform 'NoSuchTransform'"),
        ("data:\n  augment:\n    - {name: CoarseDropout, max_holes: 1}\n", "data.augment[0] (CoarseDropout): invalid arguments"),
    ],
)
def test_cli_reports_bad_config_in_one_line(tmp_path, capsys, content, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    out_dir = tmp_path / "run"
    assert main([str(path), "--out", str(out_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err
    assert len(err.splitlines()) == 1
    assert not out_dir.exists(), "nothing is written for a config that fails validation"


def test_cli_subprocess_exit_code_and_no_traceback(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  epochs: 0\n")
    result = run_cli(str(path), "--out", str(tmp_path / "run"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"error: {path}: train.epochs = 0: expected a value >= 1"


def test_missing_config_file(tmp_path, capsys):
    assert main([str(tmp_path / "nope.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
