"""A model of your own, trained by the harness from a YAML file that names it (custom_model.yaml):

    model:
      name: ./my_models.py:WideNet      # a file beside the YAML, or my_models:WideNet on the Python path
      kwargs: {width: 32, dropout: 0.1}  # the constructor's arguments; num_classes is passed for you

Any torch.nn.Module class (or a function returning one) works if it takes ``num_classes`` and maps a
batch of images (N, 3, H, W) to logits (N, num_classes). Name its layers: Grad-CAM and the sanity
check take them by name (analysis.gradcam_layers: [stage2, stage3]).
"""

from __future__ import annotations

import torch
from torch import nn


def conv_bn(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class WideNet(nn.Module):
    """Three stages of two 3x3 convolutions, each stage twice as wide as the last and halving the
    resolution, then global average pooling and a linear head."""

    def __init__(self, num_classes: int, width: int = 32, dropout: float = 0.0) -> None:
        super().__init__()
        self.stage1 = nn.Sequential(conv_bn(3, width), conv_bn(width, width))
        self.stage2 = nn.Sequential(nn.MaxPool2d(2), conv_bn(width, 2 * width), conv_bn(2 * width, 2 * width))
        self.stage3 = nn.Sequential(nn.MaxPool2d(2), conv_bn(2 * width, 4 * width), conv_bn(4 * width, 4 * width))
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(4 * width, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stage3(self.stage2(self.stage1(x))))
