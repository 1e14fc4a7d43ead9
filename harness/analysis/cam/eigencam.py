"""Eigen-CAM (Muhammad & Yeasin, "Eigen-CAM: Class Activation Map using Principal Components", IJCNN
2020): no gradients and no class.

The activations, as a matrix O of (locations x channels), are factored O = U S V^T, and the map is
their projection on the first right singular vector, L = O v_1 (the paper's definition): the spatial pattern
that most of the layer's activation follows. The same map for every target, by construction.

Choices the paper leaves open: the sign of v_1, which a singular value decomposition does not fix, is
the one that makes the map's sum positive (for activations >= 0, as after a ReLU, v_1 is then >= 0
and so is the map); a ReLU clips what is left negative. O is not centred, as in the paper;
pytorch-grad-cam subtracts each channel's mean first and leaves the sign to LAPACK, so its maps
differ (the centring moves the weakest locations below 0, where the ReLU removes them).
"""

from __future__ import annotations

import torch

from harness.analysis.cam.base import CAMMethod, LayerRecord


class EigenCAM(CAMMethod):
    needs_gradients = False

    def maps(self, record: LayerRecord) -> torch.Tensor:
        activations = record.activations
        matrix = activations.flatten(2).transpose(1, 2)  # (B, h*w, K)
        _, _, right = torch.linalg.svd(matrix, full_matrices=False)
        projection = matrix @ right[:, 0, :, None]  # (B, h*w, 1)
        projection = projection * torch.where(projection.sum(dim=1, keepdim=True) < 0, -1.0, 1.0)
        maps = projection.clamp(min=0).view(activations.shape[0], *activations.shape[2:])
        return maps.expand(record.targets.shape[0], *maps.shape)
