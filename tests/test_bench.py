"""The benchmark command runs end to end on tiny settings and records what it measured; the FLOP
count it divides by is checked against the published size of ResNet18 on CIFAR-10."""

from __future__ import annotations

import json

import pytest
import torch

from harness.bench.__main__ import main as bench_main
from harness.bench.training import training_flops_per_image
from harness.config import config_from_dict
from harness.models.builders import build_model


def test_bench_writes_every_measurement_it_prints(write_config, tmp_path, capsys, monkeypatch):
    # The plain loop under torch.compile is measured as compiled; compiling it costs about 90 s on 2
    # cores, so here torch.compile hands back the model (the benchmark's own runs compile for real).
    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: model)
    config = write_config()
    out = tmp_path / "bench"
    benchmarks = ["overhead", "diagnostics", "throughput", "mfu", "data", "gradcam", "engine"]
    settings = ["--width", "4", "--batch", "16", "--iterations", "2", "--repeats", "2", "--workers", "0"]
    code = bench_main(
        [
            *benchmarks,
            "--config",
            str(config),
            *settings,
            "--gradcam-images",
            "2",
            "--gradcam-width",
            "4",
            "--engine-trials",
            "3",
            "--out",
            str(out),
        ]  # fmt: skip
    )
    assert code == 0
    [written] = list(out.glob("*.json"))
    results = json.loads(written.read_text())
    assert set(benchmarks) <= set(results)
    assert len(results["overhead"]["pair_ratios"]) == 2 and len(results["diagnostics"]["pair_ratios"]) == 2
    assert results["engine"]["trials"] == 3
    printed = capsys.readouterr().out
    assert f"harness/plain = {results['overhead']['harness_over_plain']:.3f}" in printed
    overhead = results["overhead"]
    assert len(overhead["compiled_images_per_s"]) == 2, "the plain loop under torch.compile, in every round"
    assert f"harness/compiled = {overhead['harness_over_compiled']:.3f}" in printed
    assert f"harness {100 * overhead['harness_mfu']:.1f}%, plain {100 * overhead['plain_mfu']:.1f}%" in printed
    assert f"bars/none = {results['overhead']['bars_over_no_progress']:.3f}" in printed
    assert f"on/off = {results['diagnostics']['on_over_off']:.3f}" in printed
    assert f"MFU {100 * results['mfu']['mfu']:.1f}%" in printed
    assert f"{results['engine']['ms_per_trial']:.1f} ms per trial besides its run" in printed
    assert results["mfu"]["gflop_per_image"] == pytest.approx(0.209 / 4, rel=0.05), "width 8: a quarter of width 16"
    assert str(written) in printed


def test_training_flops_match_resnet18s_published_size():
    # ResNet18 for CIFAR-10 (width 64) is 0.56 GMACs forward: 1.11 GFLOP; the backward pass costs twice
    # the forward's (input and weight gradients), so about 3.3 GFLOP per image in training.
    model = build_model(config_from_dict({}).model, 10)
    flops = training_flops_per_image(model, (32, 32), torch.device("cpu"))
    assert flops / 1e9 == pytest.approx(3 * 1.11, rel=0.03)
