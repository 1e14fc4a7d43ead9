from __future__ import annotations

import pytest
import yaml

from harness.config import Config, config_from_dict, load_config, parse_override
from harness.core.errors import ConfigError
from tests.conftest import EXPERIMENTS, REPO


def test_every_experiment_file_is_valid_and_named_after_itself():
    # The study's files in experiments/study/ too; experiments/search/ holds search files (below).
    files = sorted(p for p in EXPERIMENTS.rglob("*.yaml") if p.parent.name != "search")
    assert len(files) >= 16
    for path in files:
        assert load_config(path).name == path.stem, path
    cfg = load_config(EXPERIMENTS / "resnet18.yaml")
    assert cfg.train.epochs == 20 and cfg.model.width == 64
    variant = load_config(EXPERIMENTS / "resnet18_adamw.yaml")  # base: resnet18.yaml, one change
    assert variant.optimizer.name == "adamw" and variant.train.epochs == 20 and variant.data.augment == cfg.data.augment
    # Each study file changes one thing of sgd_onecycle.yaml: the optimizer or the schedule.
    study = {path.stem: load_config(path).to_dict() for path in (EXPERIMENTS / "study").glob("*.yaml")}
    base = study.pop("sgd_onecycle")
    for name, other in study.items():
        changed = {section for section in base if section != "name" and other[section] != base[section]}
        assert changed in ({"optimizer"}, {"scheduler"}, {"optimizer", "scheduler"}), name


def test_defaults_and_overrides():
    cfg = config_from_dict(
        {}, ["train.epochs=3", "data.mean=[0.5, 0.5, 0.5]", "train.grad_clip=null", "optimizer.lr=1e-3"]
    )
    assert isinstance(cfg, Config)
    assert cfg.train.epochs == 3
    assert cfg.data.mean == [0.5, 0.5, 0.5]
    assert cfg.train.grad_clip is None
    assert cfg.optimizer.lr == pytest.approx(1e-3)


@pytest.mark.parametrize(
    "text, path, value",
    [
        ("a.b=3", ["a", "b"], 3),
        ("x=true", ["x"], True),
        ("x=[1, 2]", ["x"], [1, 2]),
        ("x=abc", ["x"], "abc"),
        ("x=", ["x"], None),
    ],
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
        ({"data": {"mean": [0.5, 0.5]}}, [], "data.mean = [0.5, 0.5]: expected auto, or 1 or 3 numbers"),
        ({"scheduler": {"name": "plateau", "warmup_epochs": 1}}, [], "expected 0 with the plateau scheduler"),
        (
            {"scheduler": {"name": "multistep", "milestones": [2], "warmup_epochs": 2}},
            [],
            "expected the warm-up to end before",
        ),
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


def test_every_search_file_is_valid_and_its_ends_make_valid_configs():
    from harness.search.space import load_search

    files = sorted((EXPERIMENTS / "search").glob("*.yaml"))
    assert files
    for path in files:
        search = load_search(path)  # every range's ends and every choice through the experiment's schema
        assert search.name == path.stem and search.base_path.is_file() and search.space


@pytest.mark.parametrize("path", sorted((EXPERIMENTS / "study").glob("*.yaml")), ids=lambda p: p.stem)
def test_the_study_files_still_make_the_committed_runs(path):
    """Tuning the recipe the study starts from must not change the study: each file resolves to the
    config of its committed runs (results/study/), the seed aside."""
    committed = yaml.safe_load((REPO / "results" / "study" / f"{path.stem}-seed0" / "config.yaml").read_text())
    data = [f"data.dataset={committed['data']['dataset']}", f"data.root={committed['data']['root']}"]
    now = load_config(path, data).model_dump(mode="json")
    assert {**without_later_defaults(now, committed), "seed": None} == {**committed, "seed": None}


def without_later_defaults(now: dict, then: dict) -> dict:
    """``now`` without the keys added to the schema since ``then`` was written, where they hold their
    defaults (their default is what the older run did)."""
    defaults = Config().model_dump(mode="json")
    kept = {}
    for key, value in now.items():
        if isinstance(value, dict) and isinstance(then.get(key), dict):
            added = {k for k in value if k not in then[key] and value[k] == defaults[key][k]}
            kept[key] = {k: v for k, v in value.items() if k not in added}
        elif key in then or value != defaults.get(key):
            kept[key] = value
    return kept
