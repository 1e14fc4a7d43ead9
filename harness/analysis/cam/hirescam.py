"""HiResCAM (Draelos & Carin, "Use HiResCAM instead of Grad-CAM for faithful explanations of
convolutional neural networks", arXiv:2011.08891, 2020).

Grad-CAM without the averaging of the gradients: every location's activation times its own gradient,
summed over the channels, L = sum_k dS/dA_k (elementwise) A_k (the paper's definition), so the map is the
first-order contribution of each location to the score. The ReLU that keeps the evidence for the
class is our choice for a [0, 1] map, as pytorch-grad-cam's (the paper shows the signed map too).
With a global-average-pooled linear head at the last convolutional layer the gradient is the same at
every location and HiResCAM is Grad-CAM (the paper's own observation).
"""

from __future__ import annotations

import torch

from harness.analysis.cam.base import CAMMethod, LayerRecord


class HiResCAM(CAMMethod):
    def maps(self, record: LayerRecord) -> torch.Tensor:
        return (record.gradients * record.activations).sum(dim=2).clamp(min=0)
