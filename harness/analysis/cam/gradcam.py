"""Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
Localization", ICCV 2017), as Captum's ``LayerGradCam`` computes it.

Eq. 1: a channel's weight is its gradient averaged over the map, alpha_k = (1/Z) sum_ij dS/dA_k[i, j],
with S the target's score before the softmax; Eq. 2: L = ReLU(sum_k alpha_k A_k). The paper's ReLU
is kept (``relu_attributions=True``): the map shows evidence for the class, not against it.

The shared pass (``base.record_with_gradients``) is Captum's ``LayerGradCam.attribute``, so this
method hands on Captum's result; the bilinear upsampling to the image (the paper's choice) and the
scaling by each map's maximum are the base's, as for every method (the scaling is where it differs
from pytorch-grad-cam, which subtracts each map's minimum: see ``base``).
"""

from __future__ import annotations

import torch

from harness.analysis.cam.base import CAMMethod, LayerRecord


class GradCAM(CAMMethod):
    def maps(self, record: LayerRecord) -> torch.Tensor:
        return record.gradcam
