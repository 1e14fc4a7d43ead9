"""Benchmarks of training: the harness against a plain loop, the weight-update diagnostics, a
config's throughput, and how much of the chip's arithmetic the training step uses (MFU)."""

from __future__ import annotations

import io
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine
from torch import nn

from harness.bench.common import CIFAR_TEST, CIFAR_TRAIN, bench_config, paired, rotated, setting, synchronize
from harness.config import Config, DiagnosticsConfig
from harness.data.loaders import AugmentedArrayDataset, EpochBatchSampler, build_loader, build_train_dataset
from harness.data.sources import make_synthetic
from harness.data.transforms import build_eval_transform
from harness.models.builders import build_model, compile_or_fall_back, place_model, resolve_channels_last
from harness.models.inputs import prepare_inputs
from harness.training.diagnostics import UpdateDiagnostics
from harness.training.optim import build_optimizer
from harness.training.progress import BAR_REFRESH_S, Bars, ProgressClock, RunProgress
from harness.training.steps import autocast, make_eval_step, prepare_batch, resolve_amp_dtype
from harness.training.wiring import build_learner, build_train_step, build_training


def plain_loop_images_per_s(
    cfg: Config,
    loader: Iterable,
    eval_batch: Any,
    iterations: int,
    device: torch.device,
    model: nn.Module | None = None,
) -> float:
    """The reference: a hand-written loop over the same loader, model, batch, precision and memory
    format, ending, like a harness epoch, with one evaluation of the batch-sized test set. ``model``:
    one placed already (a compiled one, whose compilation is not timed); else a new eager one."""
    channels_last = resolve_channels_last(cfg.train.channels_last, build_model(cfg.model, 10), device)
    if model is None:
        model = place_model(build_model(cfg.model, 10), device, channels_last)
    optimizer = build_optimizer(cfg.optimizer, model)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.train.label_smoothing)
    amp_dtype = resolve_amp_dtype(cfg.train.amp, device)
    model.train()
    seen = 0
    start = time.perf_counter()
    for step, batch in enumerate(loader):
        if step == iterations:
            break
        images, labels = prepare_batch(batch, device, channels_last)
        with autocast(device, amp_dtype):
            loss = loss_fn(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += len(labels)
    model.eval()
    with torch.inference_mode(), autocast(device, amp_dtype):
        images, labels = prepare_batch(eval_batch, device, channels_last)
        (model(images).argmax(1) == labels).float().mean().item()
    synchronize(device)
    return seen / (time.perf_counter() - start)


def compiled_plain_model(cfg: Config, loader: Iterable, eval_batch: Any, device: torch.device) -> nn.Module | None:
    """The plain loop's model under ``torch.compile``, compiled by two warm-up steps and an evaluation
    (training and evaluation graphs); None, with the reason on stderr, where compiling fails."""
    model = build_model(cfg.model, 10)
    channels_last = resolve_channels_last(cfg.train.channels_last, model, device)
    model = place_model(model, device, channels_last)
    compiled, ok = compile_or_fall_back(model, device, channels_last, (cfg.data.batch_size, 3, 32, 32))
    if not ok:
        return None
    try:  # the training graph (the backward pass) is compiled here, and can fail where the forward did not
        plain_loop_images_per_s(cfg, loader, eval_batch, 2, device, compiled)
    except Exception as error:
        print(f"warning: the compiled loop is left out ({type(error).__name__}: {str(error)[:200]})", file=sys.stderr)
        return None
    return compiled


def harness_images_per_s(cfg: Config, iterations: int, run_dir: Path) -> float:
    """The Ignite trainer built exactly as ``harness.run`` builds it, handlers and checkpoints included."""
    run = build_training(cfg, run_dir, prepare_inputs(cfg.data, cfg.model, cfg.seed).splits)
    seen = iterations * cfg.data.batch_size
    start = time.perf_counter()
    run.trainer.run(run.loaders.train, max_epochs=1, epoch_length=iterations)
    synchronize(idist.device())
    return seen / (time.perf_counter() - start)


def with_progress(cfg: Config, progress: str) -> Config:
    return cfg.model_copy(update={"logging": cfg.logging.model_copy(update={"progress": progress})})


def progress_handler_seconds(batch: int, repeats: int = 200) -> tuple[float, float]:
    """Median seconds of the progress display's work on one iteration, measured alone: the clock's
    tick between two draws, and one draw of the bar (into memory: the terminal's own drawing is
    another process's time)."""
    engine = Engine(lambda *_: None)
    state = engine.state
    state.epoch, state.max_epochs, state.epoch_length, state.iteration = 1, 10, 10 * repeats, 0
    state.output = {"loss": torch.tensor(1.0)}
    clock = ProgressClock(warmup=3, epoch_cost=lambda _: 1.0)
    progress = RunProgress(Bars(io.StringIO(), notebook=False), clock, batch, lambda: 0.1, "CPU")
    progress.estimated = True  # no estimate line in the middle of the benchmark's table
    progress.start_epoch(engine)
    ticks, draws = [], []
    for iteration in range(1, repeats + 1):
        state.iteration = iteration
        start = time.perf_counter()
        progress.iteration(engine)  # draws once, then ticks only: the next draw is BAR_REFRESH_S away
        ticks.append(time.perf_counter() - start)
        start = time.perf_counter()
        progress.display.update(progress.snapshot(state))
        draws.append(time.perf_counter() - start)
    progress.close()
    return statistics.median(ticks), statistics.median(draws)


def bench_overhead(width: int, batch: int, amp: str, iterations: int, repeats: int) -> dict[str, Any]:
    """Rounds of one harness, one plain and one compiled plain repetition, back to back in rotating
    order; the medians of the rounds' ratios are the harness's efficiency against each reference, and
    each one's images/s is also a share of the chip's matrix-product peak in the training precision
    (MFU). Then pairs of harness repetitions with the terminal's progress bars (drawn into stderr,
    whatever it is) and without any progress display: what the bars cost.

    A shared machine's speed drifts by more than the overhead being measured; within a round it
    drifts little, and the order rotates so that no loop always runs first. The harness repetition
    includes what a real epoch includes around the training steps: one evaluation over a batch-sized
    test set, the metrics row and a checkpoint. The compiled loop's compilation is not timed.
    """
    device = idist.device()
    cfg = bench_config(width, batch, amp, images=batch * iterations)
    source = make_synthetic(cfg.data, cfg.seed)
    train, test = source.train, source.test
    sampler = EpochBatchSampler(len(train), batch, cfg.seed, shuffle=True)
    loader = build_loader(build_train_dataset(train, cfg.data), sampler, 0, device)
    eval_set = AugmentedArrayDataset(test, build_eval_transform(cfg.data))
    eval_batch = next(iter(build_loader(eval_set, EpochBatchSampler(len(test), batch, 0, shuffle=False), 0, device)))
    with tempfile.TemporaryDirectory() as tmp:
        plain_loop_images_per_s(cfg, loader, eval_batch, 2, device)  # warm-up: allocator, kernels
        compiled = compiled_plain_model(cfg, loader, eval_batch, device)
        measures = [
            lambda repeat: harness_images_per_s(cfg, iterations, Path(tmp) / f"r{repeat}"),
            lambda _: plain_loop_images_per_s(cfg, loader, eval_batch, iterations, device),
        ]
        if compiled is not None:
            measures.append(lambda _: plain_loop_images_per_s(cfg, loader, eval_batch, iterations, device, compiled))
        harness, plain, *compiled_rates = rotated(measures, repeats)
        bars, quiet = paired(
            lambda repeat: harness_images_per_s(with_progress(cfg, "bar"), iterations, Path(tmp) / f"bars{repeat}"),
            lambda repeat: harness_images_per_s(with_progress(cfg, "off"), iterations, Path(tmp) / f"quiet{repeat}"),
            repeats,
        )
    ratios = [h / p for h, p in zip(harness, plain, strict=True)]
    bar_ratios = [b / q for b, q in zip(bars, quiet, strict=True)]
    # The bars' cost measured alone, without the noise of whole epochs: a tick every iteration, a draw
    # at most every BAR_REFRESH_S.
    tick_s, draw_s = progress_handler_seconds(batch)
    step_s = batch / statistics.median(quiet)
    flops = training_flops_per_image(build_model(cfg.model, 10).to(device), (32, 32), device)
    peak = matmul_peak_flops(resolve_amp_dtype(amp, device) or torch.float32, device)
    found = {
        **setting(width, batch, amp, iterations, repeats),
        "plain_images_per_s": plain,
        "harness_images_per_s": harness,
        "pair_ratios": ratios,
        "plain_median": statistics.median(plain),
        "harness_median": statistics.median(harness),
        "harness_over_plain": statistics.median(ratios),
        "compiled_images_per_s": compiled_rates[0] if compiled_rates else None,
        "compiled_median": statistics.median(compiled_rates[0]) if compiled_rates else None,
        "harness_over_compiled": (
            statistics.median(h / c for h, c in zip(harness, compiled_rates[0], strict=True))
            if compiled_rates
            else None
        ),
        "gflop_per_image": flops / 1e9,
        "peak_gflop_per_s": peak / 1e9,
        "bars_images_per_s": bars,
        "no_progress_images_per_s": quiet,
        "bars_pair_ratios": bar_ratios,
        "bars_over_no_progress": statistics.median(bar_ratios),
        "progress_tick_us": 1e6 * tick_s,
        "bar_draw_us": 1e6 * draw_s,
        "bars_estimated_overhead": tick_s / step_s + draw_s / BAR_REFRESH_S,
    }
    for loop in ("harness", "plain", "compiled"):
        rate = found[f"{loop}_median"]
        found[f"{loop}_mfu"] = rate * flops / peak if rate else None
    return found


def diagnostics_sample_seconds(cfg: Config, repeats: int) -> float:
    """Median seconds of one diagnostics sample (gradient norms, weight copy, update norms) on the model of ``cfg``."""
    device = idist.device()
    model = place_model(build_model(cfg.model, 10), device, channels_last=False)
    for parameter in model.parameters():
        parameter.grad = torch.randn_like(parameter)
    diagnostics = UpdateDiagnostics(model, samples_per_epoch=1, iters_per_epoch=1)
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        diagnostics.before_step(1)
        diagnostics.after_step(1, 1)
        synchronize(device)
        times.append(time.perf_counter() - start)
    diagnostics.take_rows()
    return statistics.median(times)


def bench_diagnostics(width: int, batch: int, amp: str, iterations: int, repeats: int) -> dict[str, Any]:
    """Harness images/s with the weight-update diagnostics at their default rate vs off, in pairs.

    The default is ``samples_per_epoch`` samples in an epoch of full CIFAR-10; a repetition of
    ``iterations`` steps samples at that same rate (every k-th step), so the ratio is a real run's.
    """
    default = DiagnosticsConfig().samples_per_epoch
    real_epoch = CIFAR_TRAIN // batch
    samples = max(1, round(default * iterations / real_epoch))
    base = bench_config(width, batch, amp, images=batch * iterations)
    on = base.model_copy(update={"diagnostics": DiagnosticsConfig(samples_per_epoch=samples)})
    off = base.model_copy(update={"diagnostics": DiagnosticsConfig(samples_per_epoch=0)})
    with tempfile.TemporaryDirectory() as tmp:
        harness_images_per_s(off, 2, Path(tmp) / "warm-up")
        rates_on, rates_off = paired(
            lambda repeat: harness_images_per_s(on, iterations, Path(tmp) / f"on{repeat}"),
            lambda repeat: harness_images_per_s(off, iterations, Path(tmp) / f"off{repeat}"),
            repeats,
        )
    ratios = [a / b for a, b in zip(rates_on, rates_off, strict=True)]
    # The cost of one sample measured alone, without the noise of whole epochs: what it adds to a step.
    sample_s = diagnostics_sample_seconds(base, repeats=20)
    step_s = batch / statistics.median(rates_off)
    every = max(1, iterations // samples)
    return {
        **setting(width, batch, amp, iterations, repeats),
        "sample_ms": 1000 * sample_s,
        "step_ms": 1000 * step_s,
        "estimated_overhead": sample_s / (every * step_s),
        "samples_per_repetition": samples,
        "sampled_every": every,
        "on_images_per_s": rates_on,
        "off_images_per_s": rates_off,
        "pair_ratios": ratios,
        "on_over_off": statistics.median(ratios),
    }


def run_steps(cfg: Config, image_size: tuple[int, int], device: torch.device) -> tuple[Any, Any]:
    """The training and evaluation steps of a run of ``cfg`` at full size, built as ``harness.run``
    builds them (``build_learner``, ``build_train_step``: precision, memory format, compilation, device
    augmentation, weight-update diagnostics at their rate in a CIFAR-10 epoch)."""
    batch_shape = (cfg.data.batch_size, 3, *image_size)
    learner = build_learner(cfg, device, 10, batch_shape)
    train_cfg = learner.train_cfg.model_copy(update={"low_res_size": None})  # the full-size epochs
    diagnostics = (
        UpdateDiagnostics(learner.model, cfg.diagnostics.samples_per_epoch, CIFAR_TRAIN // cfg.data.batch_size)
        if cfg.diagnostics.samples_per_epoch
        else None
    )
    train_step, _ = build_train_step(
        cfg, train_cfg, learner.step_model, learner.optimizer, device, tuple(image_size), diagnostics
    )
    return train_step, make_eval_step(learner.step_model, device, train_cfg)


def step_rate(step: Any, batch_size: int, image_size: tuple[int, int], iterations: int, device: torch.device) -> float:
    """Images/s of ``step`` on a synthetic batch already on the host (no loader), after 3 warm-up steps."""
    batch = (torch.randn(batch_size, 3, *image_size), torch.randint(0, 10, (batch_size,)))
    for _ in range(3):  # warm-up: cudnn autotuning, compilation, allocator
        step(None, batch)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(iterations):
        step(None, batch)
    synchronize(device)
    return iterations * batch_size / (time.perf_counter() - start)


def bench_throughput(cfg: Config, iterations: int, image_size: tuple[int, int]) -> dict[str, Any]:
    """Model speed at full size on synthetic batches (no loader), with the steps ``harness.run`` uses."""
    device = idist.device()
    train_step, eval_step = run_steps(cfg, image_size, device)
    train_rate = step_rate(train_step, cfg.data.batch_size, image_size, iterations, device)
    eval_rate = step_rate(eval_step, cfg.data.eval_batch_size, image_size, iterations, device)
    projected = cfg.train.epochs * (CIFAR_TRAIN / train_rate + CIFAR_TEST / eval_rate)
    return {
        "width": cfg.model.width,
        "batch": cfg.data.batch_size,
        "amp": cfg.train.amp,
        "epochs": cfg.train.epochs,
        "compile": cfg.train.compile,
        "train_images_per_s": train_rate,
        "eval_images_per_s": eval_rate,
        "projected_run_s": projected,
    }


def training_flops_per_image(model: nn.Module, image_size: tuple[int, int], device: torch.device) -> float:
    """Model FLOPs of one image's forward and backward pass (``torch.utils.flop_counter``: matrix
    products and convolutions, the arithmetic that counts), measured on a batch of 4."""
    from torch.utils.flop_counter import FlopCounterMode

    images = torch.randn(4, 3, *image_size, device=device)
    was_training = model.training
    model.train()
    with FlopCounterMode(display=False) as counter:
        model(images).sum().backward()
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return counter.get_total_flops() / 4


def matmul_peak_flops(dtype: torch.dtype, device: torch.device, size: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of a ``size``-square matrix product in ``dtype`` on this device and thread count: the
    arithmetic this chip delivers to a well-shaped kernel, the denominator of MFU."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def bench_mfu(cfg: Config, iterations: int, image_size: tuple[int, int]) -> dict[str, Any]:
    """Model FLOPs utilization of a config's full-size training: model FLOPs per image x training
    images/s, over the matrix-product peak in the training precision, measured in one run."""
    device = idist.device()
    train_step, _ = run_steps(cfg, image_size, device)
    rate = step_rate(train_step, cfg.data.batch_size, image_size, iterations, device)
    flops = training_flops_per_image(build_model(cfg.model, 10).to(device), image_size, device)
    dtype = resolve_amp_dtype(cfg.train.amp, device) or torch.float32
    peak = matmul_peak_flops(dtype, device)
    return {
        "width": cfg.model.width,
        "batch": cfg.data.batch_size,
        "dtype": str(dtype).replace("torch.", ""),
        "compile": cfg.train.compile,
        "threads": torch.get_num_threads(),
        "train_images_per_s": rate,
        "gflop_per_image": flops / 1e9,
        "achieved_gflop_per_s": flops * rate / 1e9,
        "peak_gflop_per_s": peak / 1e9,
        "mfu": flops * rate / peak,
    }
