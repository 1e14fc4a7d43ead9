"""A researcher's own model, optimizer, schedule and data by import path or installed package: the
shipped examples run end to end, every bad plug-in is one line and exit code 2 before the run folder
exists, a run records what it imported, and ``--resume`` refuses a plug-in that changed since."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from harness.config import config_from_dict
from harness.core.run_folder import RunFiles
from harness.core.yaml_io import read_yaml
from harness.data.sources import load_arrays
from harness.run import main
from tests.conftest import (
    EXPERIMENTS,
    SMALL,
    TINY,
    data_overrides,
    deep_update,
    experiment_args,
    run_cli,
    subprocess_env,
)

EXAMPLES = EXPERIMENTS / "examples"


def example_args(name: str, data_root: Path, *more: str) -> list[str]:
    return [str(EXAMPLES / f"{name}.yaml"), "--set", *data_overrides(data_root), *SMALL, *more]


def test_a_model_from_a_file_trains_is_analyzed_and_reported(cifar_like, tmp_path):
    """The README's example: WideNet from experiments/examples/my_models.py, Grad-CAM on its named layers."""
    out = tmp_path / "run"
    assert main([*example_args("custom_model", cifar_like), "--out", str(out)]) == 0
    summary = RunFiles(out).read_summary()
    assert summary["status"] == "completed" and summary["analysis_completed_utc"]
    recorded = summary["plugins"]["model.name"]
    model_file = EXAMPLES / "my_models.py"
    assert recorded["file"] == str(model_file.resolve())
    assert recorded["sha256"] == __import__("hashlib").sha256(model_file.read_bytes()).hexdigest()
    assert read_yaml(RunFiles(out).config)["model"]["name"] == f"{model_file.resolve()}:WideNet"
    with np.load(out / "analysis" / "gradcam.npz") as maps:
        assert {"gradcam/stage2/predicted", "gradcam/stage3/true"} <= set(maps.files)
    report = RunFiles(out).report.read_text(encoding="utf-8")
    assert "WideNet" in report and "stage3" in report
    assert "WideNet" in RunFiles(out).model_summary.read_text()


@pytest.mark.parametrize("name", ["custom_optimizer", "torch_scheduler", "custom_data"])
def test_the_other_examples_train(name, cifar_like, tmp_path):
    out = tmp_path / "run"
    size = ["data.kwargs={train_per_class: 30, test_per_class: 10}"] if name == "custom_data" else []
    args = example_args(name, cifar_like, "analysis.enabled=false", *size)
    if name == "custom_data":  # its own data: only the size keys of the shipped file change
        args = [str(EXAMPLES / f"{name}.yaml"), "--set", *SMALL, *size, "analysis.enabled=false"]
    assert main([*args, "--out", str(out)]) == 0
    summary = RunFiles(out).read_summary()
    assert summary["status"] == "completed"
    key = {"custom_optimizer": "optimizer.name", "torch_scheduler": "scheduler.name", "custom_data": "data.dataset"}
    assert key[name] in summary["plugins"]
    if name == "custom_data":
        assert summary["classes"] == ["horizontal", "vertical", "diagonal"] and summary["test_images"] == 30


def tiny_args(write_config, tmp_path, changes: dict) -> list[str]:
    return [str(write_config(changes)), "--out", str(tmp_path / "run")]


def test_a_torch_scheduler_steps_each_epoch_or_each_iteration(write_config, tmp_path):
    """StepLR halves the learning rate once per epoch; ExponentialLR multiplies it every iteration."""
    per_epoch = {
        "optimizer": {"lr": 0.1},
        "train": {"epochs": 3},
        "scheduler": {
            "name": "torch.optim.lr_scheduler:StepLR",
            "warmup_epochs": 0,
            "kwargs": {"step_size": 1, "gamma": 0.5},
        },
    }
    assert main(tiny_args(write_config, tmp_path, per_epoch)) == 0
    lr = pd.read_csv(RunFiles(tmp_path / "run").lr)
    by_epoch = lr.groupby("epoch")["lr"]
    assert by_epoch.min().tolist() == pytest.approx([0.1, 0.05, 0.025]) == by_epoch.max().tolist()
    shutil.rmtree(tmp_path / "run")
    exponential = {"name": "torch.optim.lr_scheduler:ExponentialLR", "interval": "iteration", "kwargs": {"gamma": 0.9}}
    per_iteration = {**per_epoch, "scheduler": {**exponential, "warmup_epochs": 0}}
    assert main(tiny_args(write_config, tmp_path, per_iteration)) == 0
    lr = pd.read_csv(RunFiles(tmp_path / "run").lr)["lr"].to_numpy()
    assert lr == pytest.approx(0.1 * 0.9 ** np.arange(len(lr)))


BAD_MODELS = textwrap.dedent(
    """
    import torch
    from torch import nn

    class NotAModule:
        def __init__(self, num_classes):
            pass

    def returns_int(num_classes):
        return 3

    class WrongOutput(nn.Module):
        def __init__(self, num_classes):
            super().__init__()
            self.fc = nn.Linear(3, num_classes + 1)

        def forward(self, x):
            return self.fc(x.mean((2, 3)))

    class Raises(nn.Module):
        def __init__(self, num_classes):
            super().__init__()
            raise RuntimeError("boom")

    def no_data():
        return [1, 2, 3]

    def not_an_optimizer(params, lr):
        return 3
    """
)

# (what --set gives, with {dir} the folder of bad_models.py and broken.py; what the one line says)
BAD = "{dir}/bad_models.py"
STEP_LR = "scheduler.name=torch.optim.lr_scheduler:StepLR"
NEEDS_FORM = "expected (train, test) or a mapping"
BAD_PLUGINS = [
    (["model.name={dir}/broken.py:Net"], "broken.py does not import (ModuleNotFoundError: No module named 'no_such'"),
    (["model.name={dir}/absent.py:Net"], "absent.py not found"),
    (["model.name=no_such_module:Net"], "module 'no_such_module' does not import (ModuleNotFoundError"),
    ([f"model.name={BAD}:Missing"], "bad_models.py has no attribute 'Missing'"),
    ([f"model.name={BAD}:NotAModule"], "expected a torch.nn.Module (or a function returning one), found NotAModule"),
    ([f"model.name={BAD}:returns_int"], "expected a torch.nn.Module (or a function returning one), found int"),
    ([f"model.name={BAD}:WrongOutput"], "expected logits of shape (batch, classes) = (2, 10)"),
    ([f"model.name={BAD}:Raises"], "raised RuntimeError at bad_models.py:23: boom"),
    (["model.name=torch.nn:Linear", "model.kwargs={{in_features: 3}}"], "missing a required argument: 'out_features'"),
    (["model.name=torchvision/resnt50"], "torchvision has no classifier 'resnt50'"),
    (["model.kwargs={{depth: 3}}"], "model.kwargs = {{'depth': 3}}: "),
    (
        ["optimizer.name=torch.optim:RMSprop", "optimizer.kwargs={{betas: [0.9, 0.99]}}"],
        "optimizer.kwargs = {{'betas': [0.9, 0.99]}}: got an unexpected keyword argument 'betas'",
    ),
    (["optimizer.name=torch.nn:Linear"], "optimizer.name = 'torch.nn:Linear': optimizer.kwargs = {{}}"),
    ([f"optimizer.name={BAD}:not_an_optimizer"], "expected a torch.optim.Optimizer class, found int"),
    (
        ["scheduler.name=torch.optim:SGD", "scheduler.warmup_epochs=0"],
        "expected a torch.optim.lr_scheduler.LRScheduler class",
    ),
    (
        ["scheduler.name=torch.optim.lr_scheduler:ReduceLROnPlateau", "scheduler.warmup_epochs=0"],
        "use scheduler.name: plateau",
    ),
    ([STEP_LR, "scheduler.warmup_epochs=1"], "scheduler.warmup_epochs = 1.0: expected 0 with a torch scheduler"),
    ([STEP_LR, "scheduler.warmup_epochs=0"], "missing a required argument: 'step_size'"),
    ([f"data.dataset={BAD}:no_data"], f"data.dataset = '{BAD}:no_data': returned list: {NEEDS_FORM}"),
    (
        [f"analysis.cam_methods=[gradcam, {BAD}:no_data]"],
        f"analysis.cam_methods: '{BAD}:no_data': expected a harness.analysis.cam.base.CAMMethod, found list",
    ),
    (
        ["model.name=not a path"],
        "model.name = 'not a path': expected one of resnet18, torchvision/<name>, or an import",
    ),
]


@pytest.mark.parametrize("settings, expected", BAD_PLUGINS, ids=[s[0][-1][:50] for s in BAD_PLUGINS])
def test_a_bad_plugin_is_one_line_before_the_run_folder(settings, expected, cifar_like, tmp_path, capsys):
    (tmp_path / "bad_models.py").write_text(BAD_MODELS)
    (tmp_path / "broken.py").write_text("import no_such\n")
    settings = [s.format(dir=tmp_path) for s in settings]
    out = tmp_path / "run"
    assert main([*experiment_args("resnet18_cpu", cifar_like, *settings), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and expected.format(dir=tmp_path) in err, err
    assert not out.exists()


def copy_example(folder: Path) -> Path:
    """custom_model.yaml and my_models.py in a folder of their own (the YAML names the file beside it)."""
    folder.mkdir()
    shutil.copy(EXAMPLES / "my_models.py", folder / "my_models.py")
    text = (
        (EXAMPLES / "custom_model.yaml")
        .read_text()
        .replace("base: ../resnet18_cpu.yaml", f"base: {EXPERIMENTS}/resnet18_cpu.yaml")
    )
    (folder / "custom_model.yaml").write_text(text)
    return folder / "custom_model.yaml"


def test_resume_refuses_a_plugin_file_that_changed(cifar_like, tmp_path, capsys):
    config = copy_example(tmp_path / "mine")
    out = tmp_path / "run"
    args = [str(config), "--set", *data_overrides(cifar_like), *SMALL, "train.epochs=1", "analysis.enabled=false"]
    assert main([*args, "report.enabled=false", "--out", str(out)]) == 0
    assert main(["--resume", str(out)]) == 0  # unchanged: finishes whatever is missing
    model_file = tmp_path / "mine" / "my_models.py"
    model_file.write_text(model_file.read_text() + "\n# a change\n")
    capsys.readouterr()
    assert main(["--resume", str(out)]) == 2
    err = capsys.readouterr().err
    assert "model.name" in err and f"{model_file} changed since the run started" in err and len(err.splitlines()) == 1


def test_a_relative_plugin_file_is_found_from_the_yaml_and_from_set(tmp_path, monkeypatch):
    from harness.config import load_config

    config = copy_example(tmp_path / "mine")
    assert load_config(config).model.name == f"{tmp_path / 'mine' / 'my_models.py'}:WideNet"
    monkeypatch.chdir(tmp_path)
    assert load_config(config, ["model.name=./mine/my_models.py:WideNet"]).model.name.startswith(str(tmp_path))


ONES_CAM = textwrap.dedent(
    """
    import torch
    from harness.analysis.cam.base import CAMMethod

    class Ones(CAMMethod):
        needs_gradients = False

        def maps(self, record):
            return torch.ones(*record.targets.shape, *record.activations.shape[2:])
    """
)


def test_a_cam_method_from_a_file_is_built_and_recorded(tmp_path):
    from harness.analysis.cam.base import build_methods
    from harness.config import config_from_dict
    from harness.runner.plugins import imported_plugins

    (tmp_path / "my_cam.py").write_text(ONES_CAM)
    name = f"{tmp_path / 'my_cam.py'}:Ones"
    cfg = config_from_dict({}, [f"analysis.cam_methods=[all, {name}]"])
    assert cfg.analysis.cam_method_names()[-1] == name and cfg.analysis.cam_method_names()[0] == "gradcam"
    assert type(build_methods([name])[name]).__name__ == "Ones"
    recorded = imported_plugins(cfg)
    assert list(recorded) == [f"analysis.cam_methods[{name}]"], "the harness's own methods need no record"
    assert (
        recorded[f"analysis.cam_methods[{name}]"]["sha256"]
        == __import__("hashlib").sha256((tmp_path / "my_cam.py").read_bytes()).hexdigest()
    )


def make_installed_package(root: Path) -> Path:
    """A package ``tinypkg`` 1.0, as pip would leave it: its module and its metadata with an entry
    point of the group ``harness.plugins`` for two kinds (model.tinynet, and optimizer.tinysgd: torch's SGD
    under the package's own name)."""
    (root / "tinypkg").mkdir(parents=True)
    (root / "tinypkg" / "__init__.py").write_text(
        textwrap.dedent(
            '''
            """A tiny model shipped by an installed package."""
            from torch import nn

            class TinyNet(nn.Module):
                """A convolution, pooling and a linear head."""

                def __init__(self, num_classes, width=8):
                    super().__init__()
                    self.features = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU())
                    self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))

                def forward(self, x):
                    return self.head(self.features(x))
            '''
        )
    )
    meta = root / "tinypkg-1.0.dist-info"
    meta.mkdir()
    (meta / "METADATA").write_text("Metadata-Version: 2.1\nName: tinypkg\nVersion: 1.0\n")
    (meta / "top_level.txt").write_text("tinypkg\n")
    (meta / "RECORD").write_text("tinypkg/__init__.py,,\n")
    points = ["[harness.plugins]", "model.tinynet = tinypkg:TinyNet", "optimizer.tinysgd = torch.optim:SGD"]
    (meta / "entry_points.txt").write_text("\n".join(points) + "\n")
    return root


def test_an_installed_package_registers_a_model_and_an_optimizer_by_entry_point(tmp_path):
    site = make_installed_package(tmp_path / "site")
    env = {**subprocess_env(), "PYTHONPATH": f"{site}:{subprocess_env()['PYTHONPATH']}"}
    listed = run_cli("--list", env=env)
    assert listed.returncode == 0, listed.stderr
    assert "tinynet" in listed.stdout and "tinypkg:TinyNet (from tinypkg 1.0)" in listed.stdout
    assert "tinysgd" in listed.stdout
    for name in ("resnet18", "torchvision/<name>", "sgd", "torch.optim", "onecycle", "image_folder"):
        assert name in listed.stdout
    config = tmp_path / "tiny.yaml"
    plugins = {"model": {"name": "tinynet", "kwargs": {"width": 4}}, "optimizer": {"name": "tinysgd"}}
    config.write_text(json.dumps(deep_update(TINY, plugins)))
    run = run_cli(str(config), "--out", str(tmp_path / "run"), env=env)
    assert run.returncode == 0, run.stderr
    recorded = RunFiles(tmp_path / "run").read_summary()["plugins"]["model.name"]
    assert recorded["name"] == "tinynet" and recorded["package"] == "tinypkg" and recorded["version"] == "1.0"
    optimizer = RunFiles(tmp_path / "run").read_summary()["plugins"]["optimizer.name"]
    assert optimizer["name"] == "tinysgd" and optimizer["package"] == "torch", "the code that ran is torch's"


def test_a_notebook_registers_its_own_model(write_config, tmp_path):
    """In one process (a notebook): ``MODELS.register`` makes a class of the session a name."""
    from torch import nn

    from harness import load_config, run_experiment
    from harness.models.config import MODELS

    @MODELS.register("notebook_net", "a model defined in this test")
    class NotebookNet(nn.Module):
        def __init__(self, num_classes: int) -> None:
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes)
            )

        def forward(self, x):
            return self.body(x)

    result = run_experiment(load_config(write_config({"model": {"name": "notebook_net"}})), tmp_path / "run")
    assert result.status == "completed" and len(result.metrics) == 1
    assert result.summary["plugins"]["model.name"]["origin"] == "this process"
    MODELS.register("notebook_net")(NotebookNet)  # a notebook's cell run again replaces its own entry


def test_a_data_source_may_return_torch_datasets(tmp_path):
    """The other form a data plug-in may return: torch Datasets of (CHW float tensor, label tensor) items,
    the class names from the dataset's ``classes``."""
    (tmp_path / "tensor_data.py").write_text(
        textwrap.dedent(
            """
            import torch
            from torch.utils.data import TensorDataset

            def load(n=40):
                images = torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(0))
                labels = torch.arange(n) % 2
                train = TensorDataset(images, labels)
                train.classes = ["even", "odd"]
                return train, TensorDataset(images[:10], labels[:10])
            """
        )
    )
    cfg = config_from_dict({"data": {"dataset": f"{tmp_path / 'tensor_data.py'}:load", "val_size": 0}})
    splits = load_arrays(cfg.data, 0)
    images = torch.rand(40, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    expected = np.rint(images.permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)
    assert splits.train.classes == ["even", "odd"] and splits.test.images.shape == (10, 16, 16, 3)
    assert sorted(splits.train.labels.tolist()) == sorted((np.arange(40) % 2).tolist())
    assert {splits.train.images[i].tobytes() for i in range(40)} == {expected[i].tobytes() for i in range(40)}
