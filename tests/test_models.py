import subprocess
import sys

import torch

from harness.models.builders import (
    ModelConfig,
    build_model,
    compile_or_fall_back,
    count_parameters,
    resolve_channels_last,
)
from tests.conftest import REPO


def test_resnet18_standard_width_has_the_reference_parameter_count():
    assert count_parameters(build_model(ModelConfig(width=64), num_classes=10)) == 11_173_962


def test_shapes_and_stage_names():
    model = build_model(ModelConfig(width=8), num_classes=7).eval()
    features = {}
    for name in ("layer1", "layer2", "layer3", "layer4"):
        getattr(model, name).register_forward_hook(lambda m, i, o, name=name: features.__setitem__(name, o.shape))
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 7)
    assert features == {
        "layer1": (2, 8, 32, 32),
        "layer2": (2, 16, 16, 16),
        "layer3": (2, 32, 8, 8),
        "layer4": (2, 64, 4, 4),
    }


def test_any_torchvision_classifier_by_name():
    model = build_model(ModelConfig(name="torchvision/mobilenet_v3_small"), num_classes=7).eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def test_compile_failure_falls_back_to_eager_with_a_warning(monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken)
    model = build_model(ModelConfig(width=8), 10)
    used, compiled = compile_or_fall_back(model, torch.device("cpu"), False, (2, 3, 32, 32))
    assert used is model and compiled is False
    assert "train.compile failed (RuntimeError: no compiler here)" in capsys.readouterr().err


def test_channels_last_is_dropped_only_where_onednn_writes_past_its_buffer(monkeypatch):
    """A strided 1x1 convolution with fewer input channels than oneDNN's widest channel block (16, on
    AVX-512): ResNet18's first shortcut has the width's channels. ATen's capability, which
    ATEN_CPU_CAPABILITY lowers while oneDNN still runs AVX-512 kernels, changes nothing."""
    cpu = torch.device("cpu")
    width = {w: build_model(ModelConfig(width=w), 10) for w in (4, 8, 16)}
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert resolve_channels_last(False, width[16], cpu) is False
    assert [resolve_channels_last(True, width[w], cpu) for w in (4, 8, 16)] == [False, False, True]


def test_a_narrow_model_on_large_images_trains_on_this_cpu():
    """What crashed the suite on an AVX-512 machine (a double free in the weight gradient of layer2's
    shortcut): width 8, 96x96 images, channels_last asked for. In a child process: a crash is a signal."""
    script = (
        "import torch\n"
        "from harness.models.builders import build_model, place_model, resolve_channels_last\n"
        "from harness.models.config import ModelConfig\n"
        "model = build_model(ModelConfig(width=8), 12)\n"
        "cl = resolve_channels_last(True, model, torch.device('cpu'))\n"
        "model = place_model(model, torch.device('cpu'), cl)\n"
        "fmt = torch.channels_last if cl else torch.contiguous_format\n"
        "for _ in range(3):\n"
        "    model(torch.randn(12, 3, 96, 96).contiguous(memory_format=fmt)).sum().backward()\n"
        "print('trained')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "trained" in done.stdout, (done.returncode, done.stderr[-2000:])
