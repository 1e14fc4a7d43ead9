"""What the benchmarks share: a small synthetic config, device synchronization, paired and rotated
measurements."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from harness.config import Config, config_from_dict

CIFAR_TRAIN, CIFAR_TEST = 50_000, 10_000


def bench_config(width: int, batch: int, amp: str, images: int, channels_last: bool = True) -> Config:
    return config_from_dict(
        {
            "name": "bench",
            "data": {
                "dataset": "synthetic",
                "synthetic_train_size": images,
                "synthetic_test_size": batch,
                "val_size": 0,  # the plain loop evaluates one test batch; so does the harness
                "batch_size": batch,
                "eval_batch_size": batch,
                "num_workers": 0,
                "mean": [0.5, 0.5, 0.5],  # speed does not depend on the numbers: none measured
                "std": [0.25, 0.25, 0.25],
            },
            "model": {"width": width},
            "train": {"epochs": 1000, "amp": amp, "channels_last": channels_last},
            "analysis": {"enabled": False},
            "report": {"enabled": False},
        }
    )


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def setting(width: int, batch: int, amp: str, iterations: int, repeats: int) -> dict[str, Any]:
    return {"width": width, "batch": batch, "amp": amp, "iterations": iterations, "repeats": repeats}


def paired(
    measure_a: Callable[[int], float], measure_b: Callable[[int], float], repeats: int
) -> tuple[list[float], list[float]]:
    """``repeats`` pairs of one A and one B measurement back to back, in ABBA order."""
    a, b = [], []
    for repeat in range(repeats):
        for measure, into in ((measure_a, a), (measure_b, b))[:: 1 if repeat % 2 == 0 else -1]:
            into.append(measure(repeat))
    return a, b


def rotated(measures: list[Callable[[int], float]], repeats: int) -> list[list[float]]:
    """``repeats`` rounds of every measurement back to back, each round starting one later and running
    backwards every other round (ABC, CBA... shifted), so that no measurement always runs first or last;
    returns each measurement's values, in the order of ``measures``."""
    values: list[list[float]] = [[] for _ in measures]
    for repeat in range(repeats):
        order = [(repeat // 2 + k) % len(measures) for k in range(len(measures))]
        for index in order if repeat % 2 == 0 else order[::-1]:
            values[index].append(measures[index](repeat))
    return values
