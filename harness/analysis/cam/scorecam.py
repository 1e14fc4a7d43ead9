"""Score-CAM (Wang, Wang, Du, Yang, Zhang, Ding, Mardziel & Hu, "Score-CAM: Score-Weighted Visual
Explanations for Convolutional Neural Networks", CVPR Workshops 2020, arXiv:1910.01279): no gradients.

Each channel's weight is how much the target's probability rises when the model sees only the part of
the image that channel marks (their Sec. 3, Def. 2, the channel-wise increase of confidence):

    H_k = s(Up(A_k)),   alpha_k = f(X o H_k) - f(X_b),   L = ReLU(sum_k alpha_k A_k),

with Up the bilinear upsampling to the image, s the min-max scaling to [0, 1], X o H_k the image
multiplied by that mask, and f the softmax probability of the target class. The masked images of
every (image, channel) pair run through the model in batches of ``forward_batch``, and one pass
serves every target set (the probabilities of all classes come out of it).

Choices the paper leaves open: the baseline X_b is the all-zero input, in the model's normalized
units the dataset's mean colour, which is what X o H_k shows where a mask is 0 (the authors' code
leaves the f(X_b) term out, as if it were 0); a channel whose map is constant has no mask to apply
and weight 0 (the authors' code skips it too). pytorch-grad-cam weights the channels by a softmax,
over the channels, of the masked images' logits, without a baseline: its maps differ from these.

``max_channels`` keeps, per image, only the channels whose activation maps vary the most, as
"Faster Score-CAM" does (tabayashi0117/Score-CAM: the masks of high-variance channels dominate the
map); the rest get weight 0. ``None`` takes every channel, the paper's method. Dropping constant
channels is exact; the cap is an approximation, and ``DEFAULT_MAX_CHANNELS`` = 16 is our choice, sized
to the analysis's time budget: every masked image is a forward pass of the whole model, and the
width-64 ResNet18's four stages have 960 channels, so 40 images take 38,400 passes with every channel
and 2,560 with 16 per layer: 26 s of one CPU core (Xeon, AVX-512) instead of about 390 s (15 s with
8). What the cap costs in fidelity: on a randomly initialized width-16 ResNet18, Spearman's correlation
between the maps with 16 channels and with all of them was 1.0 at layer1 (16 channels), 0.98, 0.95
and 0.92 at layer2-4 (with 8: 0.72, 0.92, 0.90, 0.86). A trained model's is for the comparison on
real data to measure.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from harness.analysis.cam.base import CAMMethod, LayerRecord

DEFAULT_MAX_CHANNELS = 16


class ScoreCAM(CAMMethod):
    needs_gradients = False

    def __init__(self, max_channels: int | None = DEFAULT_MAX_CHANNELS, forward_batch: int = 256) -> None:
        if max_channels is not None and max_channels < 1:
            raise ValueError(f"max_channels must be at least 1 or None (every channel), not {max_channels}")
        self.max_channels = max_channels
        self.forward_batch = forward_batch

    def chosen_channels(self, activations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The (image, channel) pairs to mask with: per image, the non-constant channels of highest
        spatial variance, at most ``max_channels``; two index tensors of the same length."""
        variance = activations.flatten(2).var(dim=2, unbiased=False)  # (B, K)
        keep = min(variance.shape[1], self.max_channels or variance.shape[1])
        ranked = variance.topk(keep, dim=1).indices  # (B, keep), highest first
        image, slot = (variance.gather(1, ranked) > 0).nonzero(as_tuple=True)
        return image, ranked[image, slot]

    def maps(self, record: LayerRecord) -> torch.Tensor:
        activations, images, targets = record.activations, record.images, record.targets
        image_index, channel_index = self.chosen_channels(activations)
        weights = torch.zeros(*targets.shape, activations.shape[1], device=activations.device)  # (T, B, K)
        with torch.no_grad():
            baseline = torch.softmax(record.model(torch.zeros_like(images[:1])).float(), dim=1)[0]  # f(X_b)
            for start in range(0, len(image_index), self.forward_batch):
                image = image_index[start : start + self.forward_batch]
                channel = channel_index[start : start + self.forward_batch]
                masks = F.interpolate(
                    activations[image, channel][:, None], images.shape[-2:], mode="bilinear", align_corners=False
                )
                low = masks.amin(dim=(2, 3), keepdim=True)
                masks = (masks - low) / (masks.amax(dim=(2, 3), keepdim=True) - low)
                probability = torch.softmax(record.model(images[image] * masks).float(), dim=1)  # (m, classes)
                target = targets[:, image]  # (T, m)
                rise = probability.gather(1, target.T).T - baseline[target]
                weights[:, image, channel] = rise
        return torch.einsum("tbk,bkhw->tbhw", weights, activations.float()).clamp(min=0)
