"""The LR range test: a curve over the swept range, a suggestion inside it, nothing left behind."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from harness.lr_find import main as lr_find_main
from tests.conftest import EXPERIMENTS, TINY

# The CPU experiment on synthetic images (learnable: a class is a square at its own place), only smaller.
SIZE = ["data.dataset=synthetic", "data.synthetic_train_size=1024", "data.batch_size=16", "model.width=8"]


def test_range_test_writes_the_curve_and_prints_the_line_to_paste(tmp_path, capsys):
    config = EXPERIMENTS / "resnet18_cpu.yaml"
    before = config.read_bytes()
    out = tmp_path / "lr"
    code = lr_find_main([str(config), "--set", *SIZE, "--out", str(out), "--iterations", "60"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    curve = pd.read_csv(out / "lr_find.csv")
    assert list(curve.columns) == ["lr", "loss"] and len(curve) >= 10
    assert curve["lr"].is_monotonic_increasing and curve["lr"].iloc[0] >= 1e-6 and curve["lr"].iloc[-1] <= 10
    summary = json.loads((out / "lr_find.json").read_text())
    suggestion = summary["suggested_lr"]
    assert curve["lr"].min() <= suggestion <= curve["lr"].max()
    assert printed.out.strip().splitlines()[-1] == f"--set optimizer.lr={suggestion:.3g}"
    assert (out / "lr_find.png").stat().st_size > 10_000
    assert config.read_bytes() == before  # the config is read, never written
    assert sorted(p.name for p in out.iterdir()) == ["lr_find.csv", "lr_find.json", "lr_find.png"]


def test_a_small_training_set_is_gone_through_again_for_the_iterations_asked(tmp_path, capsys):
    # 176 training images (after the 10% held out for validation) in batches of 16: 11 an epoch.
    small = ["data.dataset=synthetic", "data.synthetic_train_size=196", "data.batch_size=16", "model.width=8"]
    out = tmp_path / "lr"
    argv = [str(EXPERIMENTS / "resnet18_cpu.yaml"), "--set", *small, "--out", str(out), "--iterations", "40"]
    code = lr_find_main([*argv, "--end-lr", "0.3"])  # no divergence below 0.3: every step is a point
    assert code in (0, 1), capsys.readouterr().err
    assert "the 40 batches take 4 epochs" in capsys.readouterr().out
    curve = pd.read_csv(out / "lr_find.csv")
    assert len(curve) == 40, "the iterations asked, not one epoch's 11"
    assert curve["lr"].iloc[-1] == pytest.approx(0.3, rel=0.01)


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "lr"
    cases = [
        ([str(config), "--iterations", "2"], "--iterations 2: expected at least 3"),
        ([str(config), "--start-lr", "1", "--end-lr", "0.1"], "must be below --end-lr"),
        ([str(config), "--set", "optimizer.lr=-1"], "optimizer.lr"),
        ([str(tmp_path / "missing.yaml")], "missing.yaml"),
    ]
    for argv, expected in cases:
        assert lr_find_main([*argv, "--out", str(out)]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert expected in err and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert not out.exists()
