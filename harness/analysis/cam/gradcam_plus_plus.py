"""Grad-CAM++ (Chattopadhay, Sarkar, Howlader & Balasubramanian, "Grad-CAM++: Generalized
Gradient-based Visual Explanations for Deep Convolutional Networks", WACV 2018, arXiv:1710.11063).

A channel's weight sums its positive gradients, each weighted by how much of the evidence its
location carries: w_k = sum_ij alpha_k[i, j] ReLU(dS/dA_k[i, j]), with the closed form of Eq. 19
(taking the class output as Y = exp(S), which makes the higher derivatives powers of the first):

    alpha_k[i, j] = g^2 / (2 g^2 + (sum_ab A_k[a, b]) g^3),   g = dS/dA_k[i, j],

and L = ReLU(sum_k w_k A_k). The factor exp(S) that Y's gradient carries is one positive number
per image and is left out, since the map is scaled by its maximum. Choices the paper leaves open:
alpha is 0 where its denominator is 0 (a zero gradient: the location adds nothing either way).
pytorch-grad-cam adds 1e-6 to every denominator instead: where gradients are about 1e-3 or smaller
(2 g^2 no longer large against 1e-6, as at early layers) that shrinks alpha towards 0 and changes
the map, so the two differ there on purpose; here alpha is the paper's.
"""

from __future__ import annotations

import torch

from harness.analysis.cam.base import CAMMethod, LayerRecord


class GradCAMPlusPlus(CAMMethod):
    def maps(self, record: LayerRecord) -> torch.Tensor:
        activations, gradients = record.activations, record.gradients
        activation_sums = activations.sum(dim=(2, 3), keepdim=True)  # (B, K, 1, 1), the same for every target
        squared = gradients**2
        denominator = 2 * squared + activation_sums * squared * gradients
        alpha = torch.where(denominator != 0, squared / torch.where(denominator != 0, denominator, 1), 0)
        weights = (alpha * gradients.clamp(min=0)).sum(dim=(3, 4), keepdim=True)  # (T, B, K, 1, 1)
        return (weights * activations).sum(dim=2).clamp(min=0)
