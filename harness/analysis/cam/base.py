"""The shared base of the class activation maps: one pass per layer and batch, read by every method.

A pass records, at one layer, the activations A (the layer's output, K channels of h x w) of a batch
of images and, when a requested method needs them, the gradients dS/dA of each target's score S (the
logit, before the softmax). The pass that takes gradients is Captum's ``LayerGradCam.attribute``
itself, with a hook riding along on the layer, as pytorch-grad-cam's ``BaseCAM`` hooks one: Grad-CAM
stays Captum's own result, and every other gradient method reads the activations and gradients of
that same forward and backward. The target sets (e.g. the predicted and the true class) are stacked
into one batch of T x B images, so one pass serves them all. Captum differentiates one layer at a
time, so a model's layers take a pass each; without a gradient method, one forward pass without
gradients records every layer at once. Score-CAM adds its own masked forward passes.

Each method turns a ``LayerRecord`` into maps (T, B, h, w) at the layer's resolution, with the ReLU
its paper puts there; the base upsamples them bilinearly to the image (``F.interpolate`` with
``align_corners=False``, as Captum's ``LayerAttribution.interpolate`` does) and scales each by its
maximum (``normalize_per_image``).

Where this differs from pytorch-grad-cam on purpose: it scales each map to ``(x - min) / (max - min)``
at the layer's resolution and then resizes it with OpenCV, so every map has a pixel at 0; here 0 keeps
meaning "no positive evidence" (a map with evidence everywhere keeps it everywhere) and the scaling
comes after the upsampling. Both are increasing maps of the same values, image by image, and bilinear
upsampling commutes with them: the rankings of the pixels, which the faithfulness measures (deletion,
insertion, ROAD) and the Spearman correlations read, are the same. Compare pixel values between the
two only after a min-max scaling of each map.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from captum.attr import LayerGradCam
from torch import nn

from harness.analysis.config import CAM_METHODS
from harness.core.errors import HarnessError
from harness.core.registry import PluginError, call_plain
from harness.models.builders import find_layer, unwrap


@dataclass(frozen=True)
class LayerRecord:
    """What a pass over a batch of B images recorded at one layer, for T target sets."""

    model: nn.Module  # the model the pass ran (unwrapped, in eval mode), for methods that run it again
    images: torch.Tensor  # (B, C, H, W), on the model's device
    targets: torch.Tensor  # (T, B): the class whose score each map explains, a row per target set
    activations: torch.Tensor  # (B, K, h, w): the layer's output, the same for every target
    gradients: torch.Tensor | None  # (T, B, K, h, w): dS/dA of each target's score; None after a forward-only pass
    gradcam: torch.Tensor | None  # (T, B, h, w): Captum's LayerGradCam of the same pass (ReLU'd); None likewise


class CAMMethod(ABC):
    """A class activation map method: maps from a layer's record."""

    needs_gradients: ClassVar[bool] = True  # False: a forward pass without gradients records enough

    @abstractmethod
    def maps(self, record: LayerRecord) -> torch.Tensor:
        """Maps (T, B, h, w) at the layer's resolution, >= 0, for every target set of ``record``."""


def build_method(name: str) -> CAMMethod:
    """The method ``name`` names (``CAM_METHODS``: registered, or a plug-in), imported now and built
    without arguments. PluginError says why it cannot be used."""
    resolved = CAM_METHODS.resolve(name)
    method = resolved.obj() if resolved.native else call_plain(resolved, "analysis.cam_methods", {})
    if not isinstance(method, CAMMethod):
        raise PluginError(f"expected a {CAMMethod.__module__}.CAMMethod, found {type(method).__name__} {method!r:.80}")
    return method


def build_methods(names: Sequence[str]) -> dict[str, CAMMethod]:
    """``build_method`` of each name, before anything is computed: one that cannot be used is a
    HarnessError naming the key, the name and why."""
    methods = {}
    for name in names:
        try:
            methods[name] = build_method(name)
        except PluginError as problem:
            raise HarnessError(f"analysis.cam_methods: {name!r}: {problem}") from None
    return methods


def normalize_per_image(maps: torch.Tensor) -> torch.Tensor:
    """Scale each (H, W) map into [0, 1] by its maximum; an all-zero map stays zero.

    Captum's own visualizer asserts on all-zero maps, which ReLU'd Grad-CAM produces whenever a
    target class has no positive evidence at that layer.
    """
    flat = maps.flatten(1)
    low = flat.min(dim=1, keepdim=True).values.clamp(max=0)
    span = flat.max(dim=1, keepdim=True).values - low
    scaled = torch.where(span > 0, (flat - low) / span.clamp(min=1e-12), torch.zeros_like(flat))
    return scaled.view_as(maps)


class _Recorder:
    """A forward hook that keeps a layer's output and, when it takes part in a backward pass, its gradient."""

    def __init__(self, layer: nn.Module, name: str) -> None:
        self.name = name
        self.activations: torch.Tensor | None = None
        self.gradients: torch.Tensor | None = None
        self._handle = layer.register_forward_hook(self._keep)

    def _keep(self, module: nn.Module, inputs: object, output: object) -> None:
        if not isinstance(output, torch.Tensor) or output.dim() != 4:
            raise ValueError(f"layer {self.name!r} must output one (N, C, H, W) tensor for a class activation map")
        # A copy: an in-place operation after the layer (ReLU(inplace=True)) would otherwise change it.
        self.activations = output.detach().clone()
        if output.requires_grad:
            output.register_hook(self._keep_gradient)

    def _keep_gradient(self, gradient: torch.Tensor) -> None:
        self.gradients = gradient.detach()

    def remove(self) -> None:
        self._handle.remove()


def record_with_gradients(model: nn.Module, layer: str, images: torch.Tensor, targets: torch.Tensor) -> LayerRecord:
    """One forward and one backward pass of the T x B stacked images through Captum's LayerGradCam,
    recording ``layer``'s activations and gradients for every target set of ``targets`` (T, B)."""
    sets, count = targets.shape
    module = find_layer(model, layer)
    recorder = _Recorder(module, layer)
    try:
        # Inputs that need gradients: the layer's output then does, and records its gradient, even when the
        # model's weights are frozen.
        stacked = images.repeat(sets, 1, 1, 1).requires_grad_(True)
        gradcam = LayerGradCam(model, module).attribute(stacked, target=targets.flatten(), relu_attributions=True)
    finally:
        recorder.remove()
    activations, gradients = recorder.activations, recorder.gradients
    return LayerRecord(
        model,
        images,
        targets,
        activations[:count],
        gradients.view(sets, count, *gradients.shape[1:]),
        gradcam.detach().view(sets, count, *gradcam.shape[2:]),
    )


def record_without_gradients(
    model: nn.Module, layers: Sequence[str], images: torch.Tensor, targets: torch.Tensor
) -> dict[str, LayerRecord]:
    """One forward pass without gradients, recording the activations of every one of ``layers``."""
    recorders = [_Recorder(find_layer(model, layer), layer) for layer in layers]
    try:
        with torch.no_grad():
            model(images)
    finally:
        for recorder in recorders:
            recorder.remove()
    return {r.name: LayerRecord(model, images, targets, r.activations, None, None) for r in recorders}


def resolve_methods(methods: Sequence[str] | Mapping[str, CAMMethod]) -> dict[str, CAMMethod]:
    """Methods by name: names (``CAM_METHODS``) built with their defaults, or the given instances as they are."""
    if isinstance(methods, Mapping):
        return dict(methods)
    return {name: build_method(name) for name in methods}


def cam_maps(
    model: nn.Module,
    images: torch.Tensor,
    targets: Mapping[str, torch.Tensor],
    layers: Sequence[str],
    methods: Sequence[str] | Mapping[str, CAMMethod] = ("gradcam",),
    batch_size: int = 64,
) -> dict[str, dict[str, dict[str, torch.Tensor]]]:
    """Class activation maps of ``images`` (N, C, H, W) for each target set of ``targets`` (a name, e.g.
    ``"predicted"``, to N class indices), by every method at every one of ``layers``.

    Returns target set -> method -> layer -> maps (N, H, W) in [0, 1], on the CPU. ``methods`` are
    names (``CAM_METHODS``) or instances by name. A batch of ``batch_size`` images takes one
    pass per layer (stacking the target sets), shared by every method; see the module's docstring.
    """
    model = unwrap(model).eval()
    methods = resolve_methods(methods)
    device = next(model.parameters()).device
    size = tuple(images.shape[-2:])
    names = list(targets)
    stacked_targets = torch.stack([torch.as_tensor(targets[name]) for name in names])
    if stacked_targets.shape[1:] != images.shape[:1]:
        raise ValueError(f"every target set needs one class per image ({len(images)} images)")
    gradients_needed = any(method.needs_gradients for method in methods.values())
    parts: dict[str, dict[str, list[torch.Tensor]]] = {m: {layer: [] for layer in layers} for m in methods}
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size].to(device)
        batch_targets = stacked_targets[:, start : start + batch_size].to(device)
        shared = None if gradients_needed else record_without_gradients(model, layers, batch, batch_targets)
        for layer in layers:  # a layer's record at a time: the gradients of every layer would add up
            record = shared[layer] if shared else record_with_gradients(model, layer, batch, batch_targets)
            for method_name, method in methods.items():
                low = method.maps(record).float()
                upsampled = F.interpolate(low.flatten(0, 1)[:, None], size, mode="bilinear", align_corners=False)
                scaled = normalize_per_image(upsampled[:, 0]).view(len(names), -1, *size)
                parts[method_name][layer].append(scaled.cpu())
    empty = torch.zeros(len(names), 0, *size)  # no images: no maps, of the right shape
    joined = {
        m: {layer: torch.cat([empty, *found], dim=1) for layer, found in by_layer.items()}
        for m, by_layer in parts.items()
    }
    return {
        target: {m: {layer: maps[index] for layer, maps in by_layer.items()} for m, by_layer in joined.items()}
        for index, target in enumerate(names)
    }
