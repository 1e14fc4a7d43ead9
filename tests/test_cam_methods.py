"""The class activation maps: answers worked out by hand on models built so that a layer's activations
and gradients are known, the properties each method's paper implies, and the passes they share.

The known-answer models read their "layer" (a ReLU) straight from the image, so an image of K
channels and 1 x 3 pixels is the layer's activations, and the maps need no upsampling: the expected
values are each method's formula on those numbers, scaled by the map's maximum.
"""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from torch import nn

from harness.analysis.cam.base import CAMMethod, LayerRecord, build_method, cam_maps
from harness.analysis.cam.scorecam import ScoreCAM
from harness.analysis.config import CAM_METHODS
from harness.core.registry import PluginError
from harness.models.builders import ModelConfig, build_model
from tests.conftest import REPO

GRADIENT_METHODS = ["gradcam", "gradcam++", "xgradcam", "hirescam", "layercam"]


class SpatialHead(nn.Module):
    """logit_c = sum_kij weights[c, k, i, j] A[k, i, j], A = ReLU(image) at ``features``: the gradient of
    class c's score at ``features`` is weights[c], whatever the image."""

    def __init__(self, weights: list) -> None:
        super().__init__()
        weights = torch.tensor(weights, dtype=torch.float32)
        self.features = nn.ReLU()
        self.head = nn.Linear(weights[0].numel(), len(weights), bias=False)
        with torch.no_grad():
            self.head.weight.copy_(weights.flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


class PooledHead(nn.Module):
    """logits = weights @ (A averaged over the map), A = ReLU(image) at ``features``, no bias."""

    def __init__(self, weights: list) -> None:
        super().__init__()
        weights = torch.tensor(weights, dtype=torch.float32)
        self.features = nn.ReLU()
        self.head = nn.Linear(weights.shape[1], len(weights), bias=False)
        with torch.no_grad():
            self.head.weight.copy_(weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def image(*channels: list) -> torch.Tensor:
    """One image (1, K, 1, 3) whose channel k is ``channels[k]``, three locations each."""
    return torch.tensor([[[row] for row in channels]], dtype=torch.float32)


def maps_of(model: nn.Module, x: torch.Tensor, methods, classes=(0, 1)) -> dict:
    """method -> class -> the one image's map, as a list of three values."""
    targets = {str(c): torch.full((len(x),), c) for c in classes}
    found = cam_maps(model, x, targets, ["features"], methods)
    return {m: {c: found[str(c)][m]["features"][0, 0].tolist() for c in classes} for m in found[str(classes[0])]}


# Two channels over three locations: A_0 = [1, 1, 2], A_1 = [1, 1, 0]. Class 0's weights, its gradients,
# are V_0 = [1, -1, 1], V_1 = [2, 2, -1]; class 1's are -V. Sums of A: 4 and 2.
ACTIVATIONS = ([1, 1, 2], [1, 1, 0])
CLASS_0 = [[[1, -1, 1]], [[2, 2, -1]]]
# By hand, (class 0, class 1), each scaled by its maximum:
KNOWN = {
    # alpha = the mean gradient (1/3, 1): [4/3, 4/3, 2/3]. Class 1: both alphas < 0, nothing left by the ReLU.
    "gradcam": ([1, 1, 1 / 2], [0, 0, 0]),
    # sum_k V_k A_k = [1 + 2, -1 + 2, 2 + 0] = [3, 1, 2]. Class 1: its negative, all 0.
    "hirescam": ([1, 1 / 3, 2 / 3], [0, 0, 0]),
    # alpha_k = sum(A_k V_k) / sum(A_k) = (2/4, 4/2): [5/2, 5/2, 1]. Class 1: (-1/2, -2), all 0.
    "xgradcam": ([1, 1, 2 / 5], [0, 0, 0]),
    # sum_k ReLU(V_k) A_k = [1 + 2, 0 + 2, 2 + 0]. Class 1: ReLU(-V) is 1 at channel 0's middle only: [0, 1, 0].
    "layercam": ([1, 2 / 3, 2 / 3], [0, 1, 0]),
    # alpha = g^2 / (2 g^2 + sum(A_k) g^3) where g > 0: channel 0, g = 1: 1/(2 + 4) = 1/6 twice, w_0 = 1/3;
    # channel 1, g = 2: 4/(8 + 16) = 1/6 twice, w_1 = 2 * 2/6 = 2/3: [1, 1, 2/3]. Class 1: channel 0's one
    # g = 1 gives w_0 = 1/6, channel 1's one g = 1 gives 1/(2 + 2) = 1/4: [5/12, 5/12, 4/12] -> [1, 1, 4/5].
    "gradcam++": ([1, 1, 2 / 3], [1, 1, 4 / 5]),
}


@pytest.mark.parametrize("method", list(KNOWN))
def test_gradient_methods_known_answers(method):
    model = SpatialHead([CLASS_0, [[[-v for v in row[0]]] for row in CLASS_0]])
    found = maps_of(model, image(*ACTIVATIONS), [method])[method]
    assert found[0] == pytest.approx(KNOWN[method][0], abs=1e-6)
    assert found[1] == pytest.approx(KNOWN[method][1], abs=1e-6)


def test_known_answers_tell_the_methods_apart():
    """Each method's answer differs from every other's, so a method computed by another's formula fails."""
    answers = [tuple(class_0) for class_0, _ in KNOWN.values()]
    assert len(set(answers)) == len(answers)


# Score-CAM on a pooled head with no bias: the all-zero baseline scores 1/2 for either class. Channel 0
# is [2, 0, 0] (its mask [1, 0, 0]), channel 1 is [1, 4, 1] (its mask, scaled from its minimum, [0, 1, 0]).
# Masked by channel 1 the image averages (0, 4/3), by channel 0 (2/3, 1/3); class 0's weights w_1 =
# (3/4) ln(7/5) and w_0 = (3/2) (ln 3 - w_1 / 3) make those logits ln(7/5) and ln 3, probabilities 7/12 and
# 3/4, and the channels' weights 7/12 - 1/2 = 1/12 and 3/4 - 1/2 = 1/4. Map: 1/4 [2, 0, 0] + 1/12 [1, 4, 1]
# = [7/12, 4/12, 1/12]. Class 1 (weights 0): 1/2 - 1/2 = 0 everywhere.
SCORE_CLASS_0 = [1.5 * (math.log(3) - 0.25 * math.log(7 / 5)), 0.75 * math.log(7 / 5)]
SCORE_WEIGHTS = [SCORE_CLASS_0, [0.0, 0.0]]


def test_scorecam_known_answer():
    model, x = PooledHead(SCORE_WEIGHTS), image([2, 0, 0], [1, 4, 1])
    found = maps_of(model, x, {"scorecam": ScoreCAM(max_channels=None)})["scorecam"]
    assert found[0] == pytest.approx([1, 4 / 7, 1 / 7], abs=1e-6)
    assert found[1] == pytest.approx([0, 0, 0], abs=1e-6)


def test_scorecam_keeps_the_channels_that_vary_most():
    # Variances: channel 0 [2, 0, 0] 8/9, channel 1 [1, 4, 1] 2. One channel: channel 1 alone, 1/12 [1, 4, 1].
    model, x = PooledHead(SCORE_WEIGHTS), image([2, 0, 0], [1, 4, 1])
    found = maps_of(model, x, {"scorecam": ScoreCAM(max_channels=1)})["scorecam"]
    assert found[0] == pytest.approx([1 / 4, 1, 1 / 4], abs=1e-6)
    # A constant channel has no mask: it is skipped (weight 0), and the other one decides alone.
    x = image([2, 0, 0], [5, 5, 5])
    found = maps_of(model, x, {"scorecam": ScoreCAM(max_channels=None)})["scorecam"]
    assert found[0] == pytest.approx([1, 0, 0], abs=1e-6)


@pytest.mark.parametrize(
    ("channels", "expected"),
    [
        # Rank one: every channel a multiple of [3, 1, 0]; the first component is that pattern.
        (([3, 1, 0], [6, 2, 0]), [1, 1 / 3, 0]),
        # Orthogonal channels, singular values 3 and 1: the stronger one alone.
        (([3, 0, 0], [0, 1, 0]), [1, 0, 0]),
    ],
)
def test_eigencam_known_answers_ignore_the_class(channels, expected):
    model = PooledHead([[1.0, -2.0], [-3.0, 0.5]])
    found = maps_of(model, image(*channels), ["eigencam"])["eigencam"]
    assert found[0] == pytest.approx(expected, abs=1e-6)
    assert found[1] == found[0]


@pytest.fixture(scope="module")
def small_resnet() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return build_model(ModelConfig(width=8), 10).eval(), torch.randn(4, 3, 32, 32)


def test_at_a_pooled_linear_head_the_gradient_methods_agree(small_resnet):
    """At the last convolutional layer before global average pooling and a linear head, the gradient is the
    same at every location: HiResCAM and XGrad-CAM are Grad-CAM, and LayerCAM is too when every class
    weight is positive. One layer down they are not."""
    model, x = small_resnet
    targets = {"t": torch.tensor([0, 3, 5, 9])}
    found = cam_maps(model, x, targets, ["layer4", "layer3"], GRADIENT_METHODS)["t"]
    for method in ("hirescam", "xgradcam"):
        assert torch.allclose(found[method]["layer4"], found["gradcam"]["layer4"], atol=1e-5), method
        assert not torch.allclose(found[method]["layer3"], found["gradcam"]["layer3"], atol=1e-3), method
    assert not torch.allclose(found["layercam"]["layer4"], found["gradcam"]["layer4"], atol=1e-3)
    positive = build_model(ModelConfig(width=8), 10).eval()
    positive.load_state_dict(model.state_dict())
    with torch.no_grad():
        positive.linear.weight.abs_()
    found = cam_maps(positive, x, targets, ["layer4"], ["gradcam", "layercam"])["t"]
    assert torch.allclose(found["layercam"]["layer4"], found["gradcam"]["layer4"], atol=1e-5)


def test_eigencam_ignores_the_target(small_resnet):
    model, x = small_resnet
    found = cam_maps(
        model, x, {"a": torch.tensor([0, 1, 2, 3]), "b": torch.tensor([9, 8, 7, 6])}, ["layer2"], ["eigencam"]
    )
    assert torch.equal(found["a"]["eigencam"]["layer2"], found["b"]["eigencam"]["layer2"])


def test_batches_give_the_same_maps(small_resnet):
    model, x = small_resnet
    targets = {"predicted": torch.tensor([1, 2, 3, 4]), "true": torch.tensor([4, 3, 2, 1])}
    methods = {name: build_method(name) for name in CAM_METHODS.names()} | {"scorecam": ScoreCAM(max_channels=4)}
    whole = cam_maps(model, x, targets, ["layer2"], methods, batch_size=4)
    parts = cam_maps(model, x, targets, ["layer2"], methods, batch_size=3)
    for target in targets:
        for method in methods:
            assert torch.allclose(whole[target][method]["layer2"], parts[target][method]["layer2"], atol=1e-5)


def test_scorecam_batches_its_masked_passes_exactly(small_resnet):
    model, x = small_resnet
    targets = {"t": torch.tensor([1, 2])}
    one = cam_maps(model, x[:2], targets, ["layer3"], {"s": ScoreCAM(max_channels=None, forward_batch=1)})
    many = cam_maps(model, x[:2], targets, ["layer3"], {"s": ScoreCAM(max_channels=None, forward_batch=4096)})
    assert torch.allclose(one["t"]["s"]["layer3"], many["t"]["s"]["layer3"], atol=1e-5)


def count_passes(model: nn.Module) -> dict[str, int]:
    """Counts of the model's forward passes and of the backward passes through its output, from now on."""
    calls = {"forward": 0, "backward": 0}

    def count_backward(gradient: torch.Tensor) -> None:
        calls["backward"] += 1

    def count(module: nn.Module, inputs: object, output: torch.Tensor) -> None:
        calls["forward"] += 1
        if output.requires_grad:
            output.register_hook(count_backward)

    model.register_forward_hook(count)
    return calls


def test_one_pass_per_layer_and_batch_serves_every_method():
    torch.manual_seed(0)
    model, x = build_model(ModelConfig(width=4), 10).eval(), torch.randn(5, 3, 32, 32)
    targets = {"predicted": torch.tensor([1, 2, 3, 4, 5]), "true": torch.tensor([0, 0, 1, 1, 2])}
    calls = count_passes(model)
    cam_maps(model, x, targets, ["layer2", "layer4"], [*GRADIENT_METHODS, "eigencam"], batch_size=5)
    assert calls == {"forward": 2, "backward": 2}, "a pass per layer for every method and both targets"
    calls.update(forward=0, backward=0)
    cam_maps(model, x, targets, ["layer2", "layer4"], [*GRADIENT_METHODS, "eigencam"], batch_size=3)
    assert calls == {"forward": 4, "backward": 4}, "and per batch"
    calls.update(forward=0, backward=0)
    cam_maps(model, x, targets, ["layer1", "layer2", "layer4"], ["eigencam"], batch_size=5)
    assert calls == {"forward": 1, "backward": 0}, "without gradients, one forward pass records every layer"


class Blank(CAMMethod):
    """A user's own method: the same map, 1 everywhere, for any layer and target."""

    needs_gradients = False

    def maps(self, record: LayerRecord) -> torch.Tensor:
        shape = (*record.targets.shape, *record.activations.shape[2:])
        return torch.ones(shape)


def test_a_method_of_ones_own_plugs_in_by_import_path(small_resnet):
    model, x = small_resnet
    found = cam_maps(
        model, x, {"t": torch.zeros(4, dtype=torch.long)}, ["layer1"], ["tests.test_cam_methods:Blank", "gradcam"]
    )
    assert torch.equal(found["t"]["tests.test_cam_methods:Blank"]["layer1"], torch.ones(4, 32, 32))
    with pytest.raises(PluginError, match="expected one of gradcam"):
        build_method("nope")
    with pytest.raises(PluginError, match="expected a harness.analysis.cam.base.CAMMethod, found ModelConfig"):
        build_method("harness.models.config:ModelConfig")


def test_naming_the_methods_imports_no_torch():
    code = "import sys, harness.analysis.config as c; assert c.CAM_METHODS.names() and 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
