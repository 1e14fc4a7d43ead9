"""One code path for 1 and N processes: gloo on CPU, two processes."""

from __future__ import annotations

import json
from pathlib import Path

import ignite.distributed as idist
import torch
from ignite.engine import Events

from harness.config import config_from_dict
from harness.data.sources import load_arrays
from harness.models.builders import build_model
from harness.training.steps import create_evaluator
from harness.training.wiring import build_loaders
from tests.conftest import TINY, free_port


def _accuracy_with_fixed_weights(local_rank: int, result_file: str) -> None:
    torch.manual_seed(0)
    cfg = config_from_dict(
        TINY, ["data.synthetic_test_size=103", "data.eval_batch_size=10", "data.mean=[0.5]", "data.std=[0.25]"]
    )
    eval_loader = build_loaders(cfg, load_arrays(cfg.data, cfg.seed), idist.device()).test
    model = build_model(cfg.model, 10)  # identical weights on every rank: same seed, no training
    evaluator = create_evaluator(model, idist.device(), cfg.train)
    counted = []
    evaluator.add_event_handler(Events.ITERATION_COMPLETED, lambda e: counted.append(len(e.state.output[1])))
    evaluator.run(eval_loader)
    total = idist.all_reduce(torch.tensor(float(sum(counted)))).item()
    if idist.get_rank() == 0:
        Path(result_file).write_text(json.dumps({"accuracy": evaluator.state.metrics["accuracy"], "images": total}))


def test_test_accuracy_counts_every_image_once_across_processes(tmp_path):
    accuracy = {}
    for nproc in (1, 2):
        out = tmp_path / f"acc{nproc}.json"
        spawn = {"backend": "gloo", "nproc_per_node": nproc, "master_port": free_port()} if nproc > 1 else {}
        with idist.Parallel(**spawn) as parallel:
            parallel.run(_accuracy_with_fixed_weights, str(out))
        result = json.loads(out.read_text())
        assert result["images"] == 103, "no test image dropped, nor padded in twice"
        accuracy[nproc] = result["accuracy"]
    assert accuracy[1] == accuracy[2]
