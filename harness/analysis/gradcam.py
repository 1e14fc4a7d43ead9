"""Grad-CAM heatmaps per layer for one target set: ``harness.analysis.cam`` with the one method, batched,
a pass of Captum's LayerGradCam per layer per batch."""

from __future__ import annotations

import torch
from torch import nn

from harness.analysis.cam.base import cam_maps, normalize_per_image

__all__ = ["gradcam_maps", "normalize_per_image"]


def gradcam_maps(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    layer_names: list[str],
    batch_size: int = 128,
) -> dict[str, torch.Tensor]:
    """Heatmaps (N, H, W) in [0, 1] per layer, upsampled bilinearly to the input size."""
    return cam_maps(model, images, {"target": targets}, layer_names, ["gradcam"], batch_size)["target"]["gradcam"]
