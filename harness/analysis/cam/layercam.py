"""LayerCAM (Jiang, Zhang, Hou, Cheng & Wei, "LayerCAM: Exploring Hierarchical Class Activation Maps
for Localization", IEEE Transactions on Image Processing 30, 2021).

Every location is weighted by its own positive gradient, w_k[i, j] = ReLU(dS/dA_k[i, j]), and
L = ReLU(sum_k w_k[i, j] A_k[i, j]) (the paper's definition). Choice the paper leaves to the use: its
tanh(2 L / max L) rescaling of shallow layers is for fusing the maps of several layers
into one; a map per layer is kept as it is here, and tanh would not change its ranking of pixels.
With a global-average-pooled linear head at the last convolutional layer and every class weight
positive, the gradient is positive and the same everywhere, and LayerCAM is Grad-CAM.
"""

from __future__ import annotations

import torch

from harness.analysis.cam.base import CAMMethod, LayerRecord


class LayerCAM(CAMMethod):
    def maps(self, record: LayerRecord) -> torch.Tensor:
        return (record.gradients.clamp(min=0) * record.activations).sum(dim=2).clamp(min=0)
