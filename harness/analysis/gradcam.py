"""Grad-CAM heatmaps with Captum's LayerGradCam: batched, one ``attribute()`` call per layer per batch."""

from __future__ import annotations

import torch
from captum.attr import LayerAttribution, LayerGradCam
from torch import nn

from harness.models.builders import find_layer, unwrap


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


def gradcam_maps(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    layer_names: list[str],
    batch_size: int = 128,
) -> dict[str, torch.Tensor]:
    """Heatmaps (N, H, W) in [0, 1] per layer, upsampled bilinearly to the input size."""
    model = unwrap(model).eval()
    device = next(model.parameters()).device
    out: dict[str, list[torch.Tensor]] = {name: [] for name in layer_names}
    size = tuple(images.shape[-2:])
    for name in layer_names:
        explainer = LayerGradCam(model, find_layer(model, name))
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size].to(device).requires_grad_(True)
            target = targets[start : start + batch_size].to(device)
            attribution = explainer.attribute(batch, target=target, relu_attributions=True)
            upsampled = LayerAttribution.interpolate(attribution, size, interpolate_mode="bilinear")
            out[name].append(normalize_per_image(upsampled[:, 0].detach().float()).cpu())
    return {name: torch.cat(parts) for name, parts in out.items()}
