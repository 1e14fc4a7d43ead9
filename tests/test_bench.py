"""The benchmark command runs end to end on tiny settings and records what it measured."""

from __future__ import annotations

import json
import statistics

from harness.bench.__main__ import main as bench_main


def test_bench_writes_every_measurement_it_prints(write_config, tmp_path, capsys):
    config = write_config()
    out = tmp_path / "bench"
    code = bench_main(
        [
            "overhead",
            "diagnostics",
            "throughput",
            "data",
            "gradcam",
            "engine",
            "--engine-trials",
            "3",
            "--config",
            str(config),
            "--width",
            "4",
            "--batch",
            "16",
            "--iterations",
            "2",
            "--repeats",
            "2",
            "--workers",
            "0",
            "--gradcam-images",
            "2",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    [written] = list(out.glob("*.json"))
    results = json.loads(written.read_text())
    overhead = results["overhead"]
    assert len(overhead["pair_ratios"]) == 2 and all(r > 0 for r in overhead["pair_ratios"])
    assert overhead["harness_over_plain"] == statistics.median(overhead["pair_ratios"])
    diagnostics = results["diagnostics"]
    assert len(diagnostics["pair_ratios"]) == 2 and diagnostics["on_over_off"] > 0
    assert results["throughput"]["train_images_per_s"] > 0 and results["throughput"]["projected_run_s"] > 0
    assert results["data"]["loaders"][0]["num_workers"] == 0
    assert results["gradcam"]["batched_s"] > 0
    assert results["engine"]["trials"] == 3 and results["engine"]["ms_per_trial"] > 0
    printed = capsys.readouterr().out
    assert f"harness/plain = {overhead['harness_over_plain']:.3f}" in printed
    assert f"on/off = {diagnostics['on_over_off']:.3f}" in printed
    assert f"{results['engine']['ms_per_trial']:.1f} ms per trial besides its run" in printed
    assert str(written) in printed
