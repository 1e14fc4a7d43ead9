"""XGrad-CAM (Fu, Hu, Dong, Guo, Gao & Li, "Axiom-based Grad-CAM: Towards Accurate Visualization and
Explanation of CNNs", BMVC 2020, arXiv:2008.02312).

The weights that best satisfy the paper's two axioms, sensitivity and conservation, given that a
ReLU network's score is its gradient times its activations plus a bias at any layer (their Eq. 5):
a channel's gradient averaged over the map with its own activations as the weights,

    alpha_k = sum_ij (A_k[i, j] / sum_ab A_k[a, b]) dS/dA_k[i, j],

and L = ReLU(sum_k alpha_k A_k), the ReLU as in Grad-CAM (the paper writes the linear combination;
the ReLU keeps the evidence for the class). Choice the paper leaves open: a channel whose activations
sum to 0 gets weight 0 (pytorch-grad-cam divides by the sum plus 1e-7 instead, the same for a channel
of zeros). With a global-average-pooled linear head at the last convolutional layer the gradient is
the same at every location, and alpha_k is Grad-CAM's weight.
"""

from __future__ import annotations

import torch

from harness.analysis.cam.base import CAMMethod, LayerRecord


class XGradCAM(CAMMethod):
    def maps(self, record: LayerRecord) -> torch.Tensor:
        activations, gradients = record.activations, record.gradients
        sums = activations.sum(dim=(2, 3), keepdim=True)
        weighted = (activations * gradients).sum(dim=(3, 4), keepdim=True)  # (T, B, K, 1, 1)
        alpha = torch.where(sums != 0, weighted / torch.where(sums != 0, sums, 1), 0)
        return (alpha * activations).sum(dim=2).clamp(min=0)
