"""Benchmark of the class activation maps: N images x 4 layers x 2 targets. Grad-CAM batched against one
image at a time, then every registered method alone and all of them together (sharing their passes)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from harness.analysis.cam.base import cam_maps
from harness.analysis.cam.scorecam import DEFAULT_MAX_CHANNELS
from harness.analysis.config import CAM_METHODS
from harness.analysis.gradcam import gradcam_maps
from harness.config import config_from_dict
from harness.models.builders import build_model


def bench_gradcam(images: int, width: int) -> dict[str, Any]:
    model = build_model(config_from_dict({"model": {"width": width}}).model, 10).eval()
    inputs = torch.randn(images, 3, 32, 32)
    targets = torch.randint(0, 10, (images,))
    both = {"predicted": targets, "true": torch.randint(0, 10, (images,))}
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

    names = CAM_METHODS.names()
    cam_maps(model, inputs[:1], {"warm-up": targets[:1]}, layers, names)  # first calls pay one-off costs
    methods = {name: timed(lambda name=name: cam_maps(model, inputs, both, layers, [name])) for name in names}
    return {
        "images": images,
        "width": width,
        "layers": 4,
        "targets": 2,
        "batched_s": timed(batched),
        "one_at_a_time_s": timed(one_at_a_time),
        "methods_s": methods,
        "methods_images_per_s": {name: images / seconds for name, seconds in methods.items()},
        "all_methods_s": timed(lambda: cam_maps(model, inputs, both, layers, names)),
        "scorecam_max_channels": DEFAULT_MAX_CHANNELS,
    }
