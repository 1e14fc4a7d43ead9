"""What each optimizer step does to each block of the model: gradient norm, weight norm, and the
ratio of the update the step applied to the weights it was applied to.

Sampled about ``diagnostics.samples_per_epoch`` times an epoch, at iterations fixed by the iteration
number alone (so a resumed run samples the same ones). Everything is computed on the device with
fused multi-tensor norms (``torch._foreach_norm``) and kept there; the samples are read back once,
when the epoch's log is written, so sampling adds no host-device synchronization inside an epoch.

A ratio near 1e-3 is the usual sign of a healthy learning rate for a layer; far above, the layer is
being rewritten every step (unstable); far below, it barely moves (frozen).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from harness.models.builders import unwrap

# Top-level children by what they are in a classifier: the stem before the stages, the head after.
BLOCK_ALIASES = {"conv1": "stem", "bn1": "stem", "linear": "head", "fc": "head", "classifier": "head"}


def block_of(parameter_name: str) -> str:
    top = parameter_name.split(".", 1)[0]
    return BLOCK_ALIASES.get(top, top)


class UpdateDiagnostics:
    """Called by the training step around ``optimizer.step()``; see the module docstring."""

    def __init__(self, model: nn.Module, samples_per_epoch: int, iters_per_epoch: int) -> None:
        named = [(name, p) for name, p in unwrap(model).named_parameters() if p.requires_grad]
        self.blocks = list(dict.fromkeys(block_of(name) for name, _ in named))
        self.params = [p for _, p in named]
        device = self.params[0].device
        self.block_index = torch.tensor([self.blocks.index(block_of(name)) for name, _ in named], device=device)
        self.every = max(1, iters_per_epoch // samples_per_epoch)
        self.iters_per_epoch = iters_per_epoch
        self.pending: list[tuple[int, int, torch.Tensor]] = []  # (iteration, epoch, (4, blocks) on the device)
        self._before: list[torch.Tensor] | None = None
        self._grad_norms: torch.Tensor | None = None

    def due(self, iteration: int) -> bool:
        return ((iteration - 1) % self.iters_per_epoch) % self.every == 0

    def _per_block(self, norms: list[torch.Tensor]) -> torch.Tensor:
        squares = torch.stack(norms).float() ** 2
        return torch.zeros(len(self.blocks), device=squares.device).index_add_(0, self.block_index, squares).sqrt()

    def before_step(self, iteration: int, grad_scale: torch.Tensor | None = None) -> None:
        if not self.due(iteration):
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        self._grad_norms = self._per_block(torch._foreach_norm(grads))
        if grad_scale is not None:  # fp16: the gradients are still multiplied by the GradScaler's scale
            self._grad_norms = self._grad_norms / grad_scale
        self._before = [p.detach().clone() for p in self.params]

    def after_step(self, iteration: int, epoch: int) -> None:
        if self._before is None:
            return
        weights = [p.detach() for p in self.params]
        weight_norms = self._per_block(torch._foreach_norm(self._before))
        update_norms = self._per_block(torch._foreach_norm(torch._foreach_sub(weights, self._before)))
        sample = torch.stack([self._grad_norms, weight_norms, update_norms, update_norms / weight_norms])
        self.pending.append((iteration, epoch, sample))
        self._before = self._grad_norms = None

    def take_rows(self) -> list[dict[str, Any]]:
        """The samples so far as weights.csv rows, read back from the device in one transfer."""
        if not self.pending:
            return []
        values = torch.stack([sample for _, _, sample in self.pending]).cpu().tolist()
        rows = []
        for (iteration, epoch, _), (grads, weights, updates, ratios) in zip(self.pending, values, strict=True):
            for b, layer in enumerate(self.blocks):
                rows.append({"iteration": iteration, "epoch": epoch, "layer": layer, "grad_norm": f"{grads[b]:.6g}",
                             "weight_norm": f"{weights[b]:.6g}", "update_norm": f"{updates[b]:.6g}",
                             "update_ratio": f"{ratios[b]:.6g}"})  # fmt: skip
        self.pending.clear()
        return rows
