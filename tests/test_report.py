from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest

from harness.analysis.artifacts import ARTIFACTS
from harness.analysis.blow_up import first_blow_up
from harness.core.errors import HarnessError
from harness.core.run_folder import WEIGHTS_COLUMNS
from harness.report import main as report_main
from harness.reporting.compare import differing_keys
from harness.reporting.records import load_run
from harness.reporting.run_report import OPTIONAL_SECTIONS, SECTIONS, describe_evaluation, render_run_report
from tests.conftest import REPO

# The sections a run with one CAM method shows, in order (the manifest the template's navigation reads).
SECTION_IDS = [key for key in SECTIONS if key not in OPTIONAL_SECTIONS]


def test_run_writes_a_self_contained_report(analyzed_run):
    html = (analyzed_run / "report.html").read_text()
    assert re.findall(r'<section id="([^"]+)"', html) == SECTION_IDS
    nav = html[html.index("<nav>") : html.index("</nav>")]
    assert re.findall(r'href="#([^"]+)"', nav) == SECTION_IDS, "the navigation links every section, in order"
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
    both = describe_evaluation({"tta_flip": True, "tta_translate": 1})
    assert both == "trained weights + flip and translate 1 px TTA"


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
    assert "analysis" in html  # the run without it says so in the runs table
    assert 'id="leaderboard"' in html
    assert (
        "Weight updates of layer4" in html and "Weight-update ratios of layer4 (weights.csv) not available" not in html
    )
    board = pd.read_csv(tmp_path / "leaderboard.csv")
    assert list(board.columns[:8]) == ["group", "n_runs", "mean_acc", "std_acc", "min_acc", "max_acc", "ci95_low",
                                       "ci95_high"]  # fmt: skip
    assert board["interval"].tolist() == ["Wilson (one run)"] * 2
    assert board["test"].iloc[1].startswith("- (no predictions.csv")  # the copy lost its analysis


def test_report_cli_rejects_non_runs(tmp_path, capsys):
    assert report_main([str(tmp_path)]) == 2
    assert "no run folders" in capsys.readouterr().err


def test_weights_csv_is_finite_per_block_and_reported(analyzed_run):
    weights = pd.read_csv(analyzed_run / "weights.csv")
    assert list(weights.columns) == WEIGHTS_COLUMNS
    numbers = weights[["grad_norm", "weight_norm", "update_norm", "update_ratio"]].to_numpy()
    assert np.isfinite(numbers).all()
    assert np.allclose(weights["update_ratio"], weights["update_norm"] / weights["weight_norm"], rtol=1e-4)
    assert list(dict.fromkeys(weights["layer"])) == ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    assert weights["iteration"].nunique() >= 3 and (weights["update_ratio"] > 0).all()
    html = (analyzed_run / "report.html").read_text()
    assert "Weight updates" in html and "The first block to blow up" not in html


def test_first_blow_up_names_the_layer_that_went_first():
    healthy = [(i, layer, ratio) for i in (1, 2, 3, 4) for layer, ratio in (("head", 0.2), ("layer1", 1e-3))]
    weights = pd.DataFrame(healthy, columns=["iteration", "layer", "update_ratio"])
    assert first_blow_up(weights) is None  # a large but steady ratio is the block's normal
    later = pd.DataFrame(
        [(5, "head", 0.3), (5, "layer1", 0.02), (6, "head", float("nan")), (6, "layer1", float("nan"))],
        columns=weights.columns,
    )
    assert first_blow_up(pd.concat([weights, later])) == {"layer": "layer1", "iteration": 5, "update_ratio": 0.02}


def variant(
    source,
    folder,
    seed: int,
    lr: float,
    accuracy: float,
    val_accuracy: float | None = None,
    cam_best: dict | None = None,
):
    """A copy of a finished run as another seed or config, with a chosen final test (and validation)
    accuracy, and the CAM methods its analysis ranked first per layer."""
    shutil.copytree(source, folder)
    config = folder / "config.yaml"
    config.chmod(0o644)
    text = re.sub(r"^seed: 0$", f"seed: {seed}", config.read_text(), flags=re.M)
    config.write_text(re.sub(r"^  lr: 0.1$", f"  lr: {lr}", text, flags=re.M))
    summary = json.loads((folder / "summary.json").read_text())
    summary["final_test_acc"] = accuracy
    if val_accuracy is not None:
        summary.update(final_val_acc=val_accuracy, val_images=500)
    if cam_best is not None:
        summary["cam_ranking"] = {"best": cam_best, "layers": {}}
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def test_a_comparison_ranked_on_validation_reads_no_test_accuracy_to_rank(analyzed_run, tmp_path):
    """--rank-on validation: groups ordered, tested and described by their final validation accuracy
    (here the opposite order of their test accuracy); runs without a validation split are left out."""
    from harness import compare_runs

    runs = [
        variant(analyzed_run, tmp_path / "a0", 0, 0.1, 0.62, 0.40),
        variant(analyzed_run, tmp_path / "a1", 1, 0.1, 0.60, 0.42),
        variant(analyzed_run, tmp_path / "b0", 0, 0.002, 0.52, 0.50),
        variant(analyzed_run, tmp_path / "b1", 1, 0.002, 0.50, 0.54),
        variant(analyzed_run, tmp_path / "c0", 0, 0.03, 0.90),  # no validation split: not ranked
    ]
    on_test = compare_runs(runs, tmp_path / "test" / "compare.html").leaderboard
    assert on_test["split"].tolist() == ["test"] * 3 and on_test["mean_acc"].iloc[0] == pytest.approx(0.90)
    comparison = compare_runs(runs, tmp_path / "val" / "compare.html", rank_on="validation")
    board = comparison.leaderboard
    assert board["split"].tolist() == ["validation"] * 2 and board["n_runs"].tolist() == [2, 2]
    assert board["mean_acc"].tolist() == pytest.approx([0.52, 0.41])
    assert board["mean_test_acc"].tolist() == pytest.approx([0.51, 0.61]), "the test accuracy, beside, unranked"
    assert board["test"].iloc[1] == "Welch t"
    html = comparison.html.read_text()
    sentence = html.split('<p class="verdict"><b>')[1].split("</b>")[0]
    assert "points of final validation accuracy (52.00% vs 41.00%" in sentence
    assert "final validation acc (%)" in html and "ranked on the final\n  epoch's <b>validation</b>" in html
    cli = tmp_path / "cli" / "compare.html"
    assert report_main([*map(str, runs), "--out", str(cli), "--rank-on", "validation"]) == 0
    assert pd.read_csv(tmp_path / "cli" / "leaderboard.csv")["split"].tolist() == ["validation"] * 2
    nothing = compare_runs(runs[4:], tmp_path / "none" / "compare.html", rank_on="validation")
    assert nothing.leaderboard.empty and "split" in nothing.leaderboard.columns, "no run held out: an empty board"
    assert "No run has finished its training yet with a validation split" in nothing.html.read_text()
    with pytest.raises(HarnessError, match="rank_on = 'val': expected one of test, validation"):
        compare_runs(runs, tmp_path / "bad" / "compare.html", rank_on="val")


def test_the_comparison_opens_with_its_verdict(analyzed_run, tmp_path):
    """A 2-seed sweep of two configs: the first sentence names the leader, its lead, the Holm p and
    what these seeds can detect, from the leaderboard's own numbers."""
    from harness import compare_runs

    runs = [
        variant(analyzed_run, tmp_path / "a0", 0, 0.1, 0.62, cam_best={"layer3": "layercam", "layer4": "gradcam"}),
        variant(analyzed_run, tmp_path / "a1", 1, 0.1, 0.58, cam_best={"layer3": "layercam", "layer4": "gradcam"}),
        variant(analyzed_run, tmp_path / "b0", 0, 0.002, 0.52),
        variant(analyzed_run, tmp_path / "b1", 1, 0.002, 0.51),
    ]
    comparison = compare_runs(runs, tmp_path / "compare.html")
    board = pd.read_csv(tmp_path / "leaderboard.csv")
    best, second = board.iloc[0], board.iloc[1]
    lead = 100 * (best.mean_acc - second.mean_acc)
    html = comparison.html.read_text()
    sentence = html.split('<p class="verdict"><b>')[1].split("</b>")[0]
    assert sentence.startswith(f"{best.group} leads {second.group} by {lead:.2f} points")
    assert f"Holm p = {second.p_holm:.2g}" in sentence and "5% (one comparison)" in sentence
    assert ("not significant" in sentence) == (second.p_holm >= 0.05)
    assert f"2 seeds detect only differences of {100 * second.detectable_diff_80pct:.2f} points" in sentence
    assert "seeds per group would detect" in sentence
    assert html.index('class="verdict"') < html.index('id="leaderboard"')
    assert (board["ci95_low"] >= 0).all() and (board["ci95_high"] <= 1).all()  # 2 seeds: clipped to 0-100%
    assert html.count('.html">') >= 4 and 'href="a0/report.html"' in html  # each run links to its report
    methods = html[html.index('id="cam-methods"') : html.index('id="runs"')]
    assert "gradcam (2 of 2 runs)" in methods and "layercam (2 of 2 runs)" in methods, "each group's best method"
    assert "<title>Comparison of 4 runs in 2 groups</title>" in html
    one = compare_runs(runs[:2], tmp_path / "one" / "compare.html").html.read_text()
    assert "<title>Comparison of 2 runs in 1 group</title>" in one and "accuracy over 2 runs (95% interval" in one


def test_the_report_says_what_happened_to_the_run():
    from harness.reporting.run_report import describe_history, describe_resolution

    assert describe_history([]) is None
    assert (
        describe_history(
            [{"event": "started", "utc": "t0", "iteration": 0}, {"event": "completed", "utc": "t1", "iteration": 9}]
        )
        is None
    )
    stopped = [
        {"event": "started", "utc": "2026-12-02T10:00:00Z", "iteration": 0},
        {"event": "interrupted", "utc": "2026-12-02T10:05:00Z", "iteration": 40},
        {"event": "resumed", "utc": "2026-12-02T11:00:00Z", "iteration": 40, "checkpoint": "checkpoint_40.pt"},
        {"event": "resumed", "utc": "2026-12-02T12:00:00Z", "iteration": 60, "checkpoint": "checkpoint_60.pt"},
        {"event": "completed", "utc": "2026-12-02T12:30:00Z", "iteration": 90},
    ]
    assert describe_history(stopped) == (
        "started 2026-12-02 10:00:00 UTC at iteration 0; interrupted 2026-12-02 10:05:00 UTC at iteration 40; "
        "resumed 2026-12-02 11:00:00 UTC from checkpoint_40.pt at iteration 40; "
        "stopped without a word (killed, or the machine went down); "
        "resumed 2026-12-02 12:00:00 UTC from checkpoint_60.pt at iteration 60; "
        "completed 2026-12-02 12:30:00 UTC at iteration 90"
    )
    config = {"train": {"epochs": 15, "low_res_size": 0.75, "low_res_epochs": 7}}
    assert (
        describe_resolution(config, {"image_size": [32, 32]})
        == "epochs 1-7 at 24x24, epochs 8-15 and every evaluation at 32x32"
    )
    assert describe_resolution({"train": {"epochs": 2, "low_res_size": 24, "low_res_epochs": 7}}, {}) == (
        "epochs 1-1 at 24x24, epoch 2 and every evaluation at 32x32"
    )
    assert describe_resolution({"train": {"epochs": 5}}, {}) is None


def test_every_analysis_artifact_has_a_section_a_figure_slot_and_a_line_in_the_docs():
    """The manifest of the analysis's files against what reads it: the report's sections, the
    template's figures, the run-folder page."""
    template = (REPO / "report_templates" / "run.html.j2").read_text()
    docs = (REPO / "docs" / "run-folder.md").read_text()
    for name, artifact in ARTIFACTS.items():
        assert artifact.section in SECTIONS, name
        assert f"`{name}`" in docs, f"docs/run-folder.md does not name {name}"
        if name.endswith(".png"):
            assert f"images.{name.removesuffix('.png')}" in template, f"the report shows no {name}"
