"""Models by name (``model.name``): ResNet18 for 32x32 images, and any torchvision classifier.

``resnet18`` follows kuangliu/pytorch-cifar: a 3x3 stem, no max-pool, stages layer1..layer4, and
``model.width`` base channels. ``torchvision/<name>`` builds that torchvision model untrained
(e.g. ``torchvision/resnet50``, ``torchvision/mobilenet_v3_small``); ``model.width`` does not apply.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from harness.core.registry import Registry

if TYPE_CHECKING:
    from harness.config import ModelConfig

MODELS: Registry[Callable[[ModelConfig, int], nn.Module]] = Registry("model.name")


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, blocks_per_stage: list[int], width: int = 64, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.in_planes = width
        self.layer1 = self._make_stage(width, blocks_per_stage[0], stride=1)
        self.layer2 = self._make_stage(width * 2, blocks_per_stage[1], stride=2)
        self.layer3 = self._make_stage(width * 4, blocks_per_stage[2], stride=2)
        self.layer4 = self._make_stage(width * 8, blocks_per_stage[3], stride=2)
        self.linear = nn.Linear(width * 8, num_classes)

    def _make_stage(self, planes: int, num_blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for block_stride in [stride] + [1] * (num_blocks - 1):
            layers.append(BasicBlock(self.in_planes, planes, block_stride))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


@MODELS.register("resnet18")
def resnet18(cfg: ModelConfig, num_classes: int) -> nn.Module:
    return ResNet([2, 2, 2, 2], width=cfg.width, num_classes=num_classes)


def _torchvision_builder(name: str) -> Callable[[ModelConfig, int], nn.Module]:
    def build(cfg: ModelConfig, num_classes: int) -> nn.Module:
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes)

    return build


for _name in torchvision.models.list_models(module=torchvision.models):
    MODELS.add(f"torchvision/{_name}", _torchvision_builder(_name))


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / DataParallel: the one whose layers have names."""
    return model.module if hasattr(model, "module") else model


def build_model(cfg: ModelConfig, num_classes: int) -> nn.Module:
    return MODELS[cfg.name](cfg, num_classes)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def compile_or_fall_back(
    model: nn.Module, device: torch.device, channels_last: bool, batch_shape: tuple[int, ...]
) -> tuple[nn.Module, bool]:
    """torch.compile, tried once on a batch of ``batch_shape`` (N, C, H, W); on failure, say why and
    keep the eager model.

    The try-out uses the training batch's own shape: a different one makes the training graph's
    second compilation mark the batch size dynamic (automatic dynamic shapes), and the training
    step then runs shape-generic kernels for the whole run.
    """
    try:
        compiled = torch.compile(model)
        sample = torch.randn(*batch_shape, device=device)
        if channels_last:
            sample = sample.contiguous(memory_format=torch.channels_last)
        was_training = model.training
        model.eval()
        with torch.no_grad():
            compiled(sample)
        model.train(was_training)
        return compiled, True
    except Exception as error:  # compilers fail in many ways; eager mode always works
        print(
            f"warning: train.compile failed ({type(error).__name__}: {str(error).splitlines()[0][:200]}); "
            "training without torch.compile",
            file=sys.stderr,
        )
        return model, False


def resolve_channels_last(requested: bool, model: nn.Module, device: torch.device) -> bool:
    """Whether to train in NHWC: as requested, except where it would hang or crash.

    On CPUs without AVX-512, oneDNN's AVX2 kernel for the weight gradient of a 1x1 convolution with
    fewer than 8 input channels hangs or segfaults in NHWC (torch 2.14.1, oneDNN 3.12: ResNet18 of
    width 2 to 6 on an AMD EPYC with AVX2, 1 to 3 runs in 3; width 8 and up never).
    """
    if not requested or device.type != "cpu" or torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
        return requested
    narrow = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.in_channels < 8]
    if narrow:
        print(
            f"warning: train.channels_last ignored: a 1x1 convolution with {narrow[0].in_channels} input channels "
            "hits a oneDNN bug on CPUs without AVX-512 (hangs in NHWC); training in NCHW",
            file=sys.stderr,
        )
        return False
    return True


def place_model(model: nn.Module, device: torch.device, channels_last: bool) -> nn.Module:
    """The model on ``device``, in NHWC memory format when asked (faster convolutions on GPUs and CPUs)."""
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model
