"""Every bad input gives one line naming the file, key or value and what was expected, exit code 2,
no traceback, and no run folder. Each case starts from a shipped experiment file, as a user would."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from harness.config import load_config
from harness.run import main
from tests.conftest import EXPERIMENTS, SMALL, data_overrides, experiment_args, run_cli

CPU = str(EXPERIMENTS / "resnet18_cpu.yaml")

# (extra --set values, what the one line must say)
BAD_SETTINGS = [
    (["optimizer.lr=.nan"], "optimizer.lr = nan: expected a finite number"),
    (["optimizer.lr=.inf"], "optimizer.lr = inf: expected a finite number"),
    (["optimizer.lr=-0.1"], "optimizer.lr = -0.1: expected a value > 0.0"),
    (
        ["scheduler.name=multistep", "scheduler.milestones=[5,5]"],
        "scheduler.milestones = [5, 5]: expected strictly increasing epochs >= 1",
    ),
    (
        ["scheduler.name=multistep", "scheduler.milestones=[0,3]"],
        "scheduler.milestones = [0, 3]: expected strictly increasing",
    ),
    (["train.low_res_size=null"], "train.low_res_epochs = 7: expected train.low_res_size as well"),
    (["train.low_res_size=4"], "train.low_res_size = 4: expected null, a side of at least 8 pixels, or a fraction"),
    (["diagnostics.samples_per_epoch=-1"], "diagnostics.samples_per_epoch = -1: expected a value >= 0"),
    (
        ["scheduler.name=cyclic"],
        "scheduler.name = 'cyclic': expected one of onecycle, constant, step, multistep, cosine, plateau",
    ),
    (["optimizer.name=lion"], "optimizer.name = 'lion': expected one of sgd, adam, adamw"),
    (["model.name=resnet19"], "model.name = 'resnet19': expected one of resnet18, torchvision/"),
    (["data.dataset=cifar100"], "data.dataset = 'cifar100': expected one of cifar10, image_folder, synthetic"),
    (["name=../../etc"], "name = '../../etc': expected a name of letters, digits"),
    (["seed=-1"], "seed = -1: expected a value >= 0 and < 4294967296"),
    (["train.epochs=2.5"], "train.epochs = 2.5: expected an integer"),
    (["train.epochs="], "train.epochs = None: expected an integer"),
    (["data.batch_size=true"], "data.batch_size = True: expected an integer"),
    (["train.amp=fp8"], "train.amp = 'fp8': expected one of 'auto', 'bf16', 'fp16', 'off'"),
    (["train.channels_last=yes"], "train.channels_last = 'yes': expected true or false"),
    (["data.std=[0.2,0,0.2]"], "data.std = [0.2, 0, 0.2]: expected auto, or 1 or 3 positive numbers"),
    (["data.mean=[0.5,0.5]"], "data.mean = [0.5, 0.5]: expected auto, or 1 or 3 numbers"),
    (["data.bacth_size=4"], "unknown key 'data.bacth_size'"),
    (["train=3"], "train = 3: expected a mapping of keys to values"),
    (["seed.x=1"], "'seed' is not a section"),
    (["train.epochs"], "expected KEY.PATH=VALUE"),
    (
        ["data.train_subset=100000"],
        "data.train_subset = 100000: expected at most the 180 training images",
    ),
    (["data.val_size=180"], "data.val_size = 180: expected fewer than the 180 training images (some must train)"),
    (["data.val_size=1.5"], "data.val_size = 1.5: expected an image count (an integer >= 0) or a fraction"),
    (["data.val_size=0", "scheduler.name=plateau"], "scheduler.name = 'plateau': expected a validation split"),
    (["data.batch_size=1000"], "data.batch_size = 1000: expected at most the 180 training images"),
    (
        ["analysis.gradcam_layers=[layer5]"],
        "analysis.gradcam_layers = ['layer5']: resnet18 (width 8) has no module 'layer5'",
    ),
    (["analysis.gradcam_layers=['']"], "has no module '' (an empty name is the whole model"),
    (["analysis.misclassified=500"], "analysis.misclassified = 500: expected a value >= 0 and <= 200"),
    (
        ["data.augment_on=loader", "data.augment=[{name: RandomCrop, height: 64, width: 64}]"],
        "data.augment: fails on the 32x32 training images (CropSizeError",
    ),
    (
        ["data.augment=[{name: Rotate, limit: 10}]"],
        "data.augment[0] (Rotate): not available with data.augment_on=device",
    ),
    (["data.augment=[{name: NoSuchTransform}]"], "data.augment[0]: unknown albumentations transform 'NoSuchTransform'"),
    (["data.augment=[{name: CoarseDropout, max_holes: 1}]"], "data.augment[0] (CoarseDropout): invalid arguments"),
    (["data.augment=[{p: 1.0}]"], "data.augment[0] = {'p': 1.0}: expected a 'name' key"),
]


@pytest.mark.parametrize("settings, expected", BAD_SETTINGS, ids=[s[0][-1][:40] for s in BAD_SETTINGS])
def test_bad_setting_is_one_line_and_writes_nothing(settings, expected, cifar_like, tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*experiment_args("resnet18_cpu", cifar_like, *settings), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and expected in err, err
    assert not out.exists()


BAD_FILES = [
    ("not-utf8.yaml", b"name: caf\xe9\n", "not a UTF-8 text file (byte 0xe9 at offset 9)"),
    (
        "duplicate.yaml",
        b"train:\n  epochs: 3\n  epochs: 4\n",
        "malformed YAML at line 3, column 3: duplicate key 'epochs' (line 3)",
    ),
    ("malformed.yaml", b"data: {batch_size: [1, 2\n", "malformed YAML at line"),
    ("list.yaml", b"- just\n- a list\n", "expected a mapping of config keys at the top level, got list"),
    ("missing-base.yaml", b"base: nowhere.yaml\n", "nowhere.yaml: config file not found"),
    ("loop.yaml", b"base: loop.yaml\n", "the chain of base files loops"),
    ("amp-typo.yaml", b"base: resnet18_cpu.yaml\ntrain: {amp: of}\n", "train.amp = 'of': expected one of"),
]


@pytest.mark.parametrize("name, content, expected", BAD_FILES, ids=[f[0] for f in BAD_FILES])
def test_bad_config_file_is_one_line(name, content, expected, tmp_path, capsys):
    path = tmp_path / name
    path.write_bytes(content)
    if name == "amp-typo.yaml":
        (tmp_path / "resnet18_cpu.yaml").write_text(Path(CPU).read_text())
    out = tmp_path / "run"
    assert main([str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err
    assert not out.exists()


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--epochs", "3", CPU], "unrecognized arguments: --epochs"),
        ([], "give a CONFIG file, or --resume RUN_DIR"),
        ([CPU, "--resume", "somewhere"], "give no CONFIG, --set or --out with it"),
        (["experiments"], "experiments: config file not found (it is a folder)"),
        (["--resume", "experiments"], "not a run folder (no config.yaml there)"),
    ],
)
def test_bad_command_line_is_one_line(args, expected, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err


def test_bad_input_through_the_real_command_has_no_traceback(cifar_like, tmp_path):
    out = tmp_path / "run"
    result = run_cli(*experiment_args("resnet18_cpu", cifar_like, "optimizer.lr=.nan"), "--out", str(out))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: --set 'optimizer.lr=.nan': optimizer.lr = nan: expected a finite number"
    ]
    assert not out.exists()


MESSAGES = [
    # a bad value given with --set names the --set, not the file
    (["train.epochs=2.5"], "error: --set 'train.epochs=2.5': train.epochs = 2.5: expected an integer"),
    # an unknown key suggests the nearest
    (["data.bacth_size=4"], "unknown key 'data.bacth_size' (did you mean 'batch_size'? expected one of:"),
    (["train.epoch=4"], "(did you mean 'epochs'?"),
]


@pytest.mark.parametrize("settings, expected", MESSAGES, ids=[m[0][0] for m in MESSAGES])
def test_messages_point_at_the_fix(settings, expected, tmp_path, capsys):
    assert main([CPU, "--set", *settings, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and expected in err, err


def test_a_bad_value_in_a_file_names_the_file(tmp_path, capsys):
    config = tmp_path / "mine.yaml"
    config.write_text(f"base: {CPU}\ntrain: {{epochs: 0}}\n")
    assert main([str(config), "--set", "train.label_smoothing=0.2", "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {config}: train.epochs = 0: expected a value >= 1"


def test_a_config_file_after_set_is_the_config_file(cifar_like, tmp_path):
    """``--set`` takes every value up to the next option; a YAML file among them is the command's file."""
    out = tmp_path / "run"
    set_first = ["--set", *data_overrides(cifar_like), *SMALL, "train.epochs=1", "analysis.enabled=false", CPU]
    assert main([*set_first, "--out", str(out)]) == 0
    assert (out / "summary.json").is_file()


@pytest.mark.parametrize("module", ["run", "analyze", "report", "sweep", "tune", "lr_find", "bench.__main__"])
def test_every_help_starts_with_what_the_command_does(module, capsys):
    command = importlib.import_module(f"harness.{module}")
    with pytest.raises(SystemExit) as done:
        command.main(["--help"])
    first = capsys.readouterr().out.splitlines()[0]
    assert done.value.code == 0 and first[0].isupper() and not first.startswith(("usage", "`")), first


@pytest.mark.parametrize("written, expected", [("off", "off"), ("auto", "auto"), ("bf16", "bf16"), ("fp16", "fp16")])
def test_every_documented_amp_value_is_accepted_as_written(written, expected, tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(f"base: {CPU}\ntrain:\n  amp: {written}\n")
    assert load_config(path).train.amp == expected
    assert load_config(CPU, [f"train.amp={written}"]).train.amp == expected


def test_yaml_12_scalars(tmp_path):
    cfg = load_config(CPU, ["optimizer.lr=1e-3", "seed=010", "data.download=false"])
    assert cfg.optimizer.lr == 0.001 and cfg.seed == 10 and cfg.data.download is False


def test_the_data_source_name_is_checked_before_the_data(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([CPU, "--set", *data_overrides(tmp_path / "nowhere"), "--out", str(out)]) == 2
    assert "folder not found" in capsys.readouterr().err and not out.exists()
