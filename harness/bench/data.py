"""Benchmark of the training loader: images/s for 0, 1, 2, ... workers, beside the model's own rate."""

from __future__ import annotations

import time
from typing import Any

import ignite.distributed as idist

from harness.config import Config
from harness.data.arrays import ImageArrays
from harness.data.loaders import EpochBatchSampler, build_loader, build_train_dataset


def bench_data(
    cfg: Config, train: ImageArrays, batches: int, workers: list[int], model_images_per_s: float | None
) -> dict[str, Any]:
    device = idist.device()
    dataset = build_train_dataset(train, cfg.data)
    rows = []
    for count in workers:
        sampler = EpochBatchSampler(len(train), cfg.data.batch_size, cfg.seed, shuffle=True)
        loader = build_loader(dataset, sampler, count, device)
        iterator = iter(loader)
        next(iterator)  # worker start-up is paid once per run, not per batch
        start = time.perf_counter()
        seen = 0
        for _ in range(batches):
            images, _labels = next(iterator)
            seen += len(images)
        rate = seen / (time.perf_counter() - start)
        rows.append(
            {
                "num_workers": count,
                "loader_images_per_s": rate,
                "loader_over_model": rate / model_images_per_s if model_images_per_s else None,
            }
        )
        del iterator, loader
    return {
        "dataset": cfg.data.dataset,
        "batch": cfg.data.batch_size,
        "model_images_per_s": model_images_per_s,
        "loaders": rows,
    }
