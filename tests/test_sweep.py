from __future__ import annotations

import yaml

from harness.sweep import main as sweep_main
from tests.conftest import TINY, deep_update


def test_sweep_runs_each_config_and_writes_the_comparison(tmp_path):
    paths = []
    for optimizer in ("sgd", "adamw"):
        path = tmp_path / f"{optimizer}.yaml"
        path.write_text(
            yaml.safe_dump(deep_update(TINY, {"name": f"tiny_{optimizer}", "optimizer": {"name": optimizer}}))
        )
        paths.append(str(path))
    out = tmp_path / "sweep"
    assert sweep_main([*paths, "--set", "train.epochs=1", "--out", str(out)]) == 0
    runs = sorted(p.name for p in out.iterdir() if p.is_dir() and p.name[0].isdigit())
    assert runs == ["01-tiny_sgd", "02-tiny_adamw"]
    html = (out / "compare.html").read_text()
    assert "optimizer.name" in html and "tiny_adamw" in html


def test_sweep_validates_every_config_before_running_any(tmp_path, capsys):
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(TINY))
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {epochs: zero}\n")
    assert sweep_main([str(good), str(bad), "--out", str(tmp_path / "sweep")]) == 2
    assert "train.epochs = 'zero'" in capsys.readouterr().err
    assert not (tmp_path / "sweep").exists()
