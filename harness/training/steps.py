"""The training and evaluation steps, and the Ignite engines that run them.

What happens around the steps (evaluation each epoch, logs, checkpoints) is in
``harness.training.handlers``; how one run puts it all together is in ``harness.training.wiring``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from ignite.engine import Engine
from ignite.metrics import Accuracy, Average, Loss, Metric
from torch import nn

from harness.training.config import TrainConfig
from harness.training.diagnostics import UpdateDiagnostics


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: where bf16 matrix products run in hardware. Elsewhere oneDNN emulates
    them, and bf16 autocast is about 10x slower than fp32 (measured on an AVX2 AMD EPYC)."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check() for check in checks if check is not None)


def resolve_amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``train.amp``. ``auto``: bf16 on a GPU that has it, else fp16; on a CPU,
    bf16 where it runs in hardware, else none."""
    if amp == "off":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if device.type == "cpu" and cpu_has_native_bf16() else None


def autocast(device: torch.device, amp_dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Mixed precision in ``amp_dtype`` on ``device``, or nothing when it is None."""
    return torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None)


def prepare_batch(batch: Any, device: torch.device, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = batch
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    images = images.to(device, non_blocking=True).contiguous(memory_format=memory_format)
    return images, labels.to(device, non_blocking=True)


def make_train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    device: torch.device,
    cfg: TrainConfig,
    scaler: torch.amp.GradScaler | None,
    batch_augment: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
    diagnostics: UpdateDiagnostics | None = None,
) -> Callable[[Engine | None, Any], dict[str, torch.Tensor]]:
    """One optimization step; ``batch_augment(images, iteration)`` is data.augment_on=device;
    ``diagnostics`` looks at the gradients before the optimizer step and at the update after it."""
    amp_dtype = resolve_amp_dtype(cfg.amp, device)

    def train_step(engine: Engine | None, batch: Any) -> dict[str, torch.Tensor]:
        model.train()
        iteration, epoch = (engine.state.iteration, engine.state.epoch) if engine else (0, 0)
        images, labels = prepare_batch(batch, device, cfg.channels_last)
        if batch_augment is not None:
            images = batch_augment(images, iteration)
        if cfg.low_res_size and epoch <= cfg.low_res_epochs_used:
            # Antialiased bilinear, like a smaller photo; the model's global pooling takes any size.
            size = cfg.low_res_pixels(*images.shape[-2:])
            images = nn.functional.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False)
        if cfg.channels_last:  # the batched gathers and the resize return the default memory format
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp_dtype):
            logits = model(images)
            loss = loss_fn(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            if cfg.grad_clip:
                scaler.unscale_(optimizer)
            if diagnostics is not None:  # the gradient as computed, before any clipping
                diagnostics.before_step(iteration, None if cfg.grad_clip else scaler._get_scale_async())
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if diagnostics is not None:
                diagnostics.before_step(iteration)
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
        if diagnostics is not None:
            diagnostics.after_step(iteration, epoch)
        # Tensors, not floats: reading them back every iteration would stall a GPU.
        return {"loss": loss.detach(), "y_pred": logits.detach(), "y": labels}

    return train_step


def create_trainer(
    train_step: Callable[[Engine, Any], dict[str, torch.Tensor]], device: torch.device
) -> tuple[Engine, dict[str, Metric]]:
    """The trainer and its epoch-wise metrics (returned so that checkpoints can carry their state)."""
    trainer = Engine(train_step)
    # Metrics live on the device for the same reason.
    metrics: dict[str, Metric] = {
        "train_loss": Average(output_transform=lambda out: out["loss"], device=device),
        "train_acc": Accuracy(output_transform=lambda out: (out["y_pred"], out["y"]), device=device),
    }
    for name, metric in metrics.items():
        metric.attach(trainer, name)
    return trainer, metrics


def make_eval_step(
    model: nn.Module, device: torch.device, cfg: TrainConfig
) -> Callable[[Engine | None, Any], tuple[torch.Tensor, torch.Tensor]]:
    amp_dtype = resolve_amp_dtype(cfg.amp, device)

    @torch.inference_mode()
    def eval_step(engine: Engine | None, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        model.eval()
        images, labels = prepare_batch(batch, device, cfg.channels_last)
        with autocast(device, amp_dtype):
            logits = tta_logits(model, images, cfg.tta_flip, cfg.tta_translate)
        return logits.float(), labels

    return eval_step


def tta_logits(model: nn.Module, images: torch.Tensor, flip: bool, translate: int) -> torch.Tensor:
    """The logits of ``images`` under test-time augmentation: averaged with each image's mirror image
    (``flip``); with ``translate`` pixels, half the weight moves to the two diagonal shifts of the image
    by that many pixels, the border reflected, as the fast-training recipes evaluate (airbench,
    hlb-CIFAR10: a shift the training crops taught the model to expect)."""

    def view(x: torch.Tensor) -> torch.Tensor:
        return (model(x) + model(x.flip(3))) / 2 if flip else model(x)

    logits = view(images)
    if translate:
        height, width = images.shape[-2:]
        padded = nn.functional.pad(images, (translate,) * 4, mode="reflect")
        # Crops of the padded tensor keep its strides: copied in the images' layout, each convolution
        # reads them as it reads the images (no hidden copy, no recompilation under torch.compile).
        nhwc = images.is_contiguous(memory_format=torch.channels_last)
        layout = torch.channels_last if nhwc else torch.contiguous_format
        moved_down_right = padded[..., :height, :width].contiguous(memory_format=layout)
        moved_up_left = padded[..., 2 * translate :, 2 * translate :].contiguous(memory_format=layout)
        logits = logits / 2 + (view(moved_down_right) + view(moved_up_left)) / 4
    return logits


def create_evaluator(model: nn.Module, device: torch.device, cfg: TrainConfig) -> Engine:
    evaluator = Engine(make_eval_step(model, device, cfg))
    Accuracy(device=device).attach(evaluator, "accuracy")
    Loss(nn.CrossEntropyLoss(), device=device).attach(evaluator, "loss")
    return evaluator
