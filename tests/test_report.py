from __future__ import annotations

import json
import shutil

from harness.report import describe_evaluation, differing_keys, load_run, render_run_report
from harness.report import main as report_main

SECTION_IDS = [
    "summary",
    "config",
    "data",
    "model",
    "curves",
    "per-class",
    "misclassified",
    "gradcam",
    "timings",
    "environment",
]


def test_run_writes_a_self_contained_report(analyzed_run):
    html = (analyzed_run / "report.html").read_text()
    for section in SECTION_IDS:
        assert f'id="{section}"' in html, section
    assert "http://" not in html and "https://" not in html, "nothing is fetched from the network"
    assert html.count("data:image/png;base64,") >= 10
    assert "not available" not in html
    assert (analyzed_run / "report.html").stat().st_size < 5_000_000
    assert "<b>trained weights + flip TTA</b>" in html  # what the test accuracy was measured on


def test_report_says_which_weights_were_evaluated():
    assert describe_evaluation({}) == "trained weights"
    assert (
        describe_evaluation({"ema_decay": 0.999, "tta_flip": True})
        == "average of the weights (ema_decay 0.999) + flip TTA"
    )


def test_report_of_a_run_with_missing_pieces(analyzed_run, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(analyzed_run, partial)
    shutil.rmtree(partial / "analysis")
    (partial / "lr.csv").unlink()
    summary = json.loads((partial / "summary.json").read_text())
    summary["status"] = "interrupted"
    (partial / "summary.json").write_text(json.dumps(summary))
    html = render_run_report(partial).read_text()
    assert "missing: lr.csv, analysis" in html
    assert "Grad-CAM for the predicted class not available" in html
    assert "interrupted" in html

    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.yaml").write_text("name: crashed\n")
    html = render_run_report(bare).read_text()
    assert "crashed" in html and "metrics.csv" in html


def test_comparison_lists_differing_keys_and_marks_incomplete_runs(analyzed_run, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(analyzed_run, other)
    config = other / "config.yaml"
    config.chmod(0o644)
    config.write_text(config.read_text().replace("name: sgd", "name: adamw"))
    shutil.rmtree(other / "analysis")
    records = [load_run(analyzed_run), load_run(other)]
    assert differing_keys(records) == ["optimizer.name"]
    out = tmp_path / "compare.html"
    assert report_main([str(analyzed_run), str(other), str(tmp_path / "not-a-run"), "--out", str(out)]) == 0
    html = out.read_text()
    assert "optimizer.name" in html and "adamw" in html
    assert "(no analysis)" in html
    assert 'id="leaderboard"' in html and html.count("data:image/png;base64,") == 1


def test_report_cli_rejects_non_runs(tmp_path, capsys):
    assert report_main([str(tmp_path)]) == 2
    assert "no run folders" in capsys.readouterr().err
