"""Benchmark of Grad-CAM: N images x 4 layers x 2 targets, batched against one image at a time."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from harness.analysis.gradcam import gradcam_maps
from harness.config import config_from_dict
from harness.models.builders import build_model


def bench_gradcam(images: int, width: int) -> dict[str, Any]:
    model = build_model(config_from_dict({"model": {"width": width}}).model, 10).eval()
    inputs = torch.randn(images, 3, 32, 32)
    targets = torch.randint(0, 10, (images,))
    layers = ["layer1", "layer2", "layer3", "layer4"]

    def timed(call: Callable[[], None]) -> float:
        start = time.perf_counter()
        call()
        return time.perf_counter() - start

    def batched() -> None:
        for _ in range(2):  # two targets: predicted and true
            gradcam_maps(model, inputs, targets, layers)

    def one_at_a_time() -> None:
        for _ in range(2):
            for i in range(images):
                gradcam_maps(model, inputs[i : i + 1], targets[i : i + 1], layers)

    return {
        "images": images,
        "width": width,
        "layers": 4,
        "targets": 2,
        "batched_s": timed(batched),
        "one_at_a_time_s": timed(one_at_a_time),
    }
