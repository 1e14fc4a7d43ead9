import torch

from harness.models.builders import (
    ModelConfig,
    build_model,
    compile_or_fall_back,
    count_parameters,
    resolve_channels_last,
)


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


def test_channels_last_is_dropped_only_where_onednn_avx2_hangs(monkeypatch):
    cpu = torch.device("cpu")
    narrow, wide = build_model(ModelConfig(width=4), 10), build_model(ModelConfig(width=16), 10)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert resolve_channels_last(True, narrow, cpu) is False
    assert resolve_channels_last(True, wide, cpu) is True
    assert resolve_channels_last(False, wide, cpu) is False
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert resolve_channels_last(True, narrow, cpu) is True
