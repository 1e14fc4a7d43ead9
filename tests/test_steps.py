"""The training and evaluation steps: gradient clipping, flip and translate TTA, parameter groups."""

from __future__ import annotations

import torch
from torch import nn

from harness.models.builders import build_model
from harness.models.config import ModelConfig
from harness.training.config import TrainConfig
from harness.training.optim import OptimizerConfig, build_optimizer
from harness.training.steps import make_eval_step, make_train_step

CPU = torch.device("cpu")


def batch(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, 32, 32, generator=generator), torch.randint(0, 10, (n,), generator=generator)


def gradient_norm(model: nn.Module) -> float:
    return float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()])))


def test_grad_clip_bounds_the_gradient_the_optimizer_applies():
    norms = {}
    for clip in (None, 1e-3):
        torch.manual_seed(0)
        model = build_model(ModelConfig(width=8), 10)
        cfg = TrainConfig(amp="off", channels_last=False, grad_clip=clip)
        step = make_train_step(model, build_optimizer(OptimizerConfig(), model), nn.CrossEntropyLoss(), CPU, cfg, None)
        step(None, batch())
        norms[clip] = gradient_norm(model)  # the gradients stay in .grad after the step
    assert norms[None] > 1e-2
    assert norms[1e-3] <= 1e-3 * 1.0001


class LeftHeavy(nn.Module):
    """Not mirror-symmetric: the logit is the mean of the left half of the image."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = x[..., : x.shape[-1] // 2].mean(dim=(1, 2, 3))
        return torch.stack([left, -left], dim=1)


def test_flip_tta_averages_the_logits_of_the_image_and_its_mirror():
    images, labels = batch(4)
    model = LeftHeavy()
    plain = make_eval_step(model, CPU, TrainConfig(amp="off", channels_last=False))(None, (images, labels))[0]
    tta = make_eval_step(model, CPU, TrainConfig(amp="off", channels_last=False, tta_flip=True))(
        None, (images, labels)
    )[0]
    expected = (model(images) + model(images.flip(3))) / 2
    assert torch.allclose(tta, expected) and not torch.allclose(tta, plain)


def test_translate_tta_gives_half_the_weight_to_two_diagonal_shifts():
    images, labels = batch(4)
    model = LeftHeavy()
    for flip in (False, True):
        cfg = TrainConfig(amp="off", channels_last=False, tta_flip=flip, tta_translate=2)
        tta = make_eval_step(model, CPU, cfg)(None, (images, labels))[0]

        def view(x: torch.Tensor, flip: bool = flip) -> torch.Tensor:
            return (model(x) + model(x.flip(3))) / 2 if flip else model(x)

        padded = nn.functional.pad(images, (2, 2, 2, 2), mode="reflect")
        shifted = [padded[..., :32, :32], padded[..., 4:, 4:]]
        assert torch.equal(shifted[0][..., 2:, 2:], images[..., :30, :30]), "moved down-right by 2 pixels"
        expected = view(images) / 2 + (view(shifted[0]) + view(shifted[1])) / 4
        assert torch.allclose(tta, expected) and not torch.allclose(tta, view(images))


def test_no_weight_decay_on_batchnorm_and_biases():
    model = build_model(ModelConfig(width=8), 10)
    decay, no_decay = build_optimizer(OptimizerConfig(weight_decay=0.05), model).param_groups
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    weights = [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    norms_and_biases = [p for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in (m.weight, m.bias)]
    assert {id(p) for p in decay["params"]} == {id(p) for p in weights}
    assert {id(p) for p in no_decay["params"]} == {id(p) for p in [*norms_and_biases, model.linear.bias]}


class SizeRecorder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 10)
        self.sizes: list[tuple[int, int]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(tuple(x.shape[-2:]))
        return self.linear(x.mean(dim=(2, 3)))


def test_progressive_resizing_trains_small_first_then_at_full_size():
    model = SizeRecorder()
    for epochs, expected in ((3, [20, 20, 32]), (2, [20, 32]), (1, [32])):  # the last epoch always at full size
        model.sizes.clear()
        cfg = TrainConfig(amp="off", channels_last=True, epochs=epochs, low_res_size=20, low_res_epochs=2)
        optimizer = build_optimizer(OptimizerConfig(), model)
        step = make_train_step(model, optimizer, nn.CrossEntropyLoss(), CPU, cfg, None)
        for epoch in range(1, epochs + 1):
            engine = type("E", (), {"state": type("S", (), {"iteration": epoch, "epoch": epoch})()})()
            step(engine, batch())
        assert model.sizes == [(size, size) for size in expected], epochs
