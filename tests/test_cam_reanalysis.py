"""``python -m harness.analyze RUN --set analysis.cam_methods=all`` on a trained run: every method's maps,
the ranking in cam_ranking.csv, summary.json and report.html (in Chromium too), and a run folder
analyzed before the methods had names still reads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.analysis.config import CAM_METHODS
from harness.analysis.pipeline import read_cam_maps
from harness.analyze import main as analyze_main
from harness.config import config_from_dict
from harness.core.errors import ConfigError
from tests.test_report_browser import open_in_chromium

LAYERS = ["layer3", "layer4"]


@pytest.fixture(scope="module")
def compared_run(analyzed_run, tmp_path_factory) -> Path:
    """A copy of the shared test run, analyzed again with every method (on few images and two layers:
    the plumbing is under test here, the methods in test_cam_methods.py)."""
    run = tmp_path_factory.mktemp("cam") / "run"
    shutil.copytree(analyzed_run, run)
    overrides = [
        "analysis.cam_methods=all",
        "analysis.misclassified=2",
        f"analysis.gradcam_layers=[{','.join(LAYERS)}]",
    ]
    assert analyze_main([str(run), "--set", *overrides]) == 0
    return run


def test_every_method_is_ranked_at_every_layer(compared_run):
    methods = CAM_METHODS.names()
    ranking = pd.read_csv(compared_run / "analysis" / "cam_ranking.csv")
    assert list(dict.fromkeys(ranking["layer"])) == LAYERS
    for _, rows in ranking.groupby("layer"):
        assert sorted(rows["method"]) == sorted(methods) and list(rows["rank"]) == list(range(1, len(methods) + 1))
    assert {"deletion_p_random", "insertion_p_best", "road", "sanity_head", "sanity_layer4"} <= set(ranking.columns)
    assert (ranking["seconds_per_100_images"] > 0).all()
    summary = json.loads((compared_run / "summary.json").read_text())
    assert summary["cam_methods"] == methods
    assert set(summary["cam_ranking"]["best"]) == set(LAYERS)
    for layer in LAYERS:
        first = ranking[ranking["layer"] == layer].iloc[0]
        assert summary["cam_ranking"]["best"][layer] == first["method"]
        assert summary["cam_ranking"]["layers"][layer][0]["road"] == pytest.approx(first["road"], abs=1e-5)
    faithfulness = pd.read_csv(compared_run / "analysis" / "faithfulness.csv")
    assert set(faithfulness["method"]) == set(methods)
    sanity = pd.read_csv(compared_run / "analysis" / "sanity.csv")
    assert set(sanity["method"]) == set(methods)


def test_the_maps_file_names_method_layer_and_target(compared_run, tmp_path):
    indices, maps = read_cam_maps(compared_run / "analysis" / "gradcam.npz")
    methods = CAM_METHODS.names()
    assert set(maps) == {(m, layer, t) for m in methods for layer in LAYERS for t in ("predicted", "true")}
    assert maps[("scorecam", "layer4", "true")].shape == (len(indices), 32, 32)
    # A run analyzed before the methods had names saved Grad-CAM alone, as target/layer.
    old = tmp_path / "gradcam.npz"
    np.savez(old, indices=indices, **{"predicted/layer4": maps[("gradcam", "layer4", "predicted")]})
    old_indices, old_maps = read_cam_maps(old)
    assert np.array_equal(old_indices, indices) and list(old_maps) == [("gradcam", "layer4", "predicted")]


def test_the_report_says_which_explanation_to_trust(compared_run, tmp_path):
    html = (compared_run / "report.html").read_text(encoding="utf-8")
    section = html[html.index('<section id="cam-methods">') :]
    section = section[: section.index("</section>")]
    assert "Which explanation to trust" in section and "What the statistics tell apart" in section
    assert section.count("<table") == len(LAYERS) and "data:image/png;base64," in section
    widths, headings, errors = open_in_chromium(compared_run / "report.html", tmp_path / "report.png")
    assert "cam-methods" in headings and all(w > 0 for w in widths)
    assert errors == []


def test_one_method_again_leaves_no_comparison_behind(compared_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(compared_run, run)
    assert analyze_main([str(run), "--set", "analysis.misclassified=1", "analysis.gradcam_layers=[layer4]"]) == 0
    assert not (run / "analysis" / "cam_ranking.csv").exists() and not (run / "analysis" / "cam_methods.png").exists()
    assert "cam_ranking" not in json.loads((run / "summary.json").read_text())
    assert 'id="cam-methods"' not in (run / "report.html").read_text(encoding="utf-8")


def test_cam_methods_are_checked_item_by_item():
    with pytest.raises(ConfigError, match=r"analysis.cam_methods\[1\] = 'gradcam\+\+\+': expected one of gradcam"):
        config_from_dict({}, ["analysis.cam_methods=[gradcam, gradcam+++]"])
    assert config_from_dict({}, ["analysis.cam_methods=all"]).analysis.cam_method_names() == CAM_METHODS.names()


def test_an_analysis_that_writes_less_leaves_nothing_of_the_earlier_one(compared_run, tmp_path):
    """No layers and no misclassified images shown: the maps' figures, faithfulness and sanity of the
    earlier analysis would otherwise stay and the report would show them as this analysis's."""
    run = tmp_path / "run"
    shutil.copytree(compared_run, run)
    assert analyze_main([str(run), "--set", "analysis.misclassified=0", "analysis.gradcam_layers=[]"]) == 0
    left = {path.name for path in (run / "analysis").iterdir()}
    gone = {"misclassified.png", "gradcam_predicted.png", "gradcam_true.png", "faithfulness.csv", "sanity.png",
            "sanity_examples.png", "cam_ranking.csv", "cam_methods.png"}  # fmt: skip
    assert not gone & left, gone & left
    assert {"per_class.csv", "misclassified.csv", "gradcam.npz", "train_samples.png"} <= left
    html = (run / "report.html").read_text(encoding="utf-8")
    assert 'id="cam-methods"' not in html
    for key in ("gradcam", "faithfulness", "sanity"):
        section = html[html.index(f'<section id="{key}">') :]
        assert "data:image/png" not in section[: section.index("</section>")], f"the {key} section shows a figure"
