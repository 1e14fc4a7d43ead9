"""Models by name (``model.name``, registered in ``harness.models.config``): ResNet18 for small
images (``harness.models.resnet``), any torchvision classifier (``torchvision/<name>``), or a user's
own class or function by import path; placement, compilation and layer lookup.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable

import torch
from torch import nn

from harness.core.errors import HarnessError
from harness.core.registry import PluginError, call_plain, first_line, where_raised
from harness.models.config import MODELS, ModelConfig
from harness.models.resnet import ResNet


def resnet18(cfg: ModelConfig, num_classes: int, in_channels: int = 3) -> nn.Module:
    return ResNet([2, 2, 2, 2], width=cfg.width, num_classes=num_classes, in_channels=in_channels, **cfg.kwargs)


def torchvision_model(name: str) -> Callable[[ModelConfig, int], nn.Module]:
    """The builder of torchvision's classifier ``name`` (untrained); ValueError for a name it lacks."""
    import torchvision

    known = torchvision.models.list_models(module=torchvision.models)
    if name not in known:
        raise ValueError(f"torchvision has no classifier {name!r} (e.g. {', '.join(known[:5])}, ...)")

    def build(cfg: ModelConfig, num_classes: int, in_channels: int = 3) -> nn.Module:
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **cfg.kwargs)

    build.colour_only = True  # torchvision's classifiers take three channels
    return build


def takes_grey(cfg: ModelConfig) -> bool:
    """Whether the model can be built for one-channel images: the built-in ResNet, and a plug-in whose
    constructor has an ``in_channels`` argument; torchvision's classifiers and other plug-ins take three."""
    try:
        found = MODELS.resolve(cfg.name)
    except PluginError as problem:
        raise HarnessError(f"model.name = {cfg.name!r}: {problem}") from None
    if found.native:
        return not getattr(found.obj, "colour_only", False)
    try:
        return "in_channels" in inspect.signature(found.obj).parameters
    except (TypeError, ValueError):
        return False


def build_model(cfg: ModelConfig, num_classes: int, in_channels: int = 3) -> nn.Module:
    """The model ``cfg.name`` names, with ``num_classes`` outputs, for images of ``in_channels``. A
    plug-in is called with ``model.kwargs``, ``num_classes`` (and ``in_channels`` for grey images);
    anything but an ``nn.Module`` is refused in one line."""
    try:
        found = MODELS.resolve(cfg.name)
        if found.native:
            try:
                model = found.obj(cfg, num_classes, in_channels)
            except TypeError as error:  # model.kwargs a built-in model does not take
                raise PluginError(f"model.kwargs = {cfg.kwargs}: {error}") from None
        else:
            grey = {"in_channels": in_channels} if in_channels != 3 else {}
            model = call_plain(found, "model.kwargs", cfg.kwargs, num_classes=num_classes, **grey)
    except PluginError as problem:
        raise HarnessError(f"model.name = {cfg.name!r}: {problem}") from None
    if not isinstance(model, nn.Module):
        raise HarnessError(
            f"model.name = {cfg.name!r}: expected a torch.nn.Module (or a function returning one), "
            f"found {type(model).__name__}"
        )
    return model


def check_model_output(model: nn.Module, cfg: ModelConfig, image_shape: tuple[int, ...], num_classes: int) -> None:
    """A forward pass on two images of ``image_shape`` (C, H, W): the output must be (2, num_classes) logits."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = model(torch.zeros(2, *image_shape))
    except Exception as error:  # a user's forward may raise anything
        raise HarnessError(
            f"model.name = {cfg.name!r}: its forward pass on a batch of shape {(2, *image_shape)} raised "
            f"{type(error).__name__}{where_raised(error)}: {first_line(error)}"
        ) from None
    finally:
        model.train(was_training)
    shape = tuple(output.shape) if isinstance(output, torch.Tensor) else None
    if shape != (2, num_classes):
        found = f"shape {shape}" if shape is not None else type(output).__name__
        raise HarnessError(
            f"model.name = {cfg.name!r}: expected logits of shape (batch, classes) = (2, {num_classes}) "
            f"for a batch of 2 images, found {found}"
        )


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / DataParallel: the one whose layers have names."""
    return model.module if hasattr(model, "module") else model


def find_layer(model: nn.Module, name: str) -> nn.Module:
    """The module at a dotted path (``layer4``, ``layer4.1``, ``layer4.1.conv2``): the one lookup that
    the config check, Grad-CAM and the sanity check share. ValueError names what the model has."""
    model = unwrap(model)
    top = ", ".join(child for child, _ in model.named_children())
    if not name:
        raise ValueError(f"has no module '' (an empty name is the whole model; top-level modules: {top})")
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise ValueError(f"has no module {name!r} (top-level modules: {top}; nested ones as layer4.1)") from None


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


# oneDNN's widest channel block for float convolutions (AVX-512's; AVX2's is 8). Not read from ATen's
# CPU capability: that follows ATEN_CPU_CAPABILITY, which oneDNN ignores when it picks its kernels.
ONEDNN_BLOCK = 16


def nhwc_unsafe_conv(model: nn.Module, device: torch.device) -> nn.Conv2d | None:
    """A convolution of ``model`` that oneDNN mishandles in NHWC on this CPU, or None.

    oneDNN computes the weight gradient of a strided 1x1 convolution in NHWC through a unit-stride
    copy of its input that it sizes by whole channel blocks, and writes past it when the input has
    fewer channels than one block (uxlfoundation/oneDNN#6035, open; torch 2.14.1 ships oneDNN 3.12):
    on AVX-512, ResNet18 of width 8 on 48x48 images and larger dies of a double free or SIGSEGV; on
    AVX2, width 2 to 6 hang or segfault, 1 to 3 runs in 3.
    """
    if device.type != "cpu":
        return None
    return next(
        (
            m
            for m in model.modules()
            if isinstance(m, nn.Conv2d)
            and m.kernel_size == (1, 1)
            and m.stride != (1, 1)
            and m.in_channels < ONEDNN_BLOCK
        ),
        None,
    )


def resolve_channels_last(requested: bool, model: nn.Module, device: torch.device) -> bool:
    """Whether to train in NHWC: as requested, except where oneDNN would crash or hang
    (``nhwc_unsafe_conv``): such a model trains in NCHW, which ``summary.json`` records."""
    return requested and nhwc_unsafe_conv(model, device) is None


def place_model(model: nn.Module, device: torch.device, channels_last: bool) -> nn.Module:
    """The model on ``device``, in NHWC memory format when asked (faster convolutions on GPUs and CPUs)."""
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model
