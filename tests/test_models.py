import torch

from harness.config import ModelConfig
from harness.models import build_model, count_parameters


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
