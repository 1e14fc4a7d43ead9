"""``python -m harness.bench.__main__ [overhead|data|throughput|gradcam ...]``: measured speed, never asserted.

- overhead:   images/s of the Ignite trainer with every handler attached vs a plain PyTorch loop,
              same model, loader, batch and precision, alternating repetitions, medians.
- diagnostics: images/s of the harness with the weight-update diagnostics at their default rate
              vs off, back-to-back pairs in ABBA order, median ratio.
- data:       images/s of the albumentations training loader for 0, 1, 2, ... workers, next to
              the model's own training images/s.
- throughput: training and evaluation images/s of a config on this device, and the projected
              wall time of its full run.
- gradcam:    seconds for Grad-CAM on N images x 4 layers x 2 targets, batched vs one at a time.
- engine:     milliseconds a search trial costs besides its run (asking, the surplus check, the
              heartbeat, recording and telling the result), against an SQLite storage.

Results go to ``results/bench/<UTC timestamp>.json`` with the device and commit, and to a table.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NoReturn

import ignite.distributed as idist
import torch
from torch import nn

from harness.analysis.gradcam import gradcam_maps
from harness.config import Config, DiagnosticsConfig, config_from_dict, load_config
from harness.core import atomic_io
from harness.core.errors import ArgumentParser, exit_on_harness_error
from harness.core.provenance import describe_device, git_commit
from harness.data.loaders import AugmentedArrayDataset, EpochBatchSampler, build_loader, build_train_dataset
from harness.data.sources import ImageArrays, load_arrays, make_synthetic
from harness.data.transforms import build_eval_transform
from harness.models.builders import build_model, compile_or_fall_back, place_model, resolve_channels_last
from harness.training.diagnostics import UpdateDiagnostics
from harness.training.optim import build_optimizer
from harness.training.steps import autocast, make_eval_step, make_train_step, prepare_batch, resolve_amp_dtype
from harness.training.wiring import build_training

CIFAR_TRAIN, CIFAR_TEST = 50_000, 10_000


def _bench_config(width: int, batch: int, amp: str, images: int, channels_last: bool = True) -> Config:
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
            },
            "model": {"width": width},
            "train": {"epochs": 1000, "amp": amp, "channels_last": channels_last},
            "analysis": {"enabled": False},
            "report": {"enabled": False},
        }
    )


def plain_loop_images_per_s(
    cfg: Config, loader: Iterable, eval_batch: Any, iterations: int, device: torch.device
) -> float:
    """The reference: a hand-written loop over the same loader, model, batch and precision, ending,
    like a harness epoch, with one evaluation of the batch-sized test set."""
    model = build_model(cfg.model, 10)
    channels_last = resolve_channels_last(cfg.train.channels_last, model, device)
    model = place_model(model, device, channels_last)
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
    _synchronize(device)
    return seen / (time.perf_counter() - start)


def harness_images_per_s(cfg: Config, iterations: int, run_dir: Path) -> float:
    """The Ignite trainer built exactly as ``harness.run`` builds it, handlers and checkpoints included."""
    run = build_training(cfg, run_dir, load_arrays(cfg.data, cfg.seed))
    seen = iterations * cfg.data.batch_size
    start = time.perf_counter()
    run.trainer.run(run.loaders.train, max_epochs=1, epoch_length=iterations)
    _synchronize(idist.device())
    return seen / (time.perf_counter() - start)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_overhead(width: int, batch: int, amp: str, iterations: int, repeats: int) -> dict[str, Any]:
    """Pairs of one plain and one harness repetition, run back to back; the median of the pairs'
    ratios is the harness's efficiency.

    A shared machine's speed drifts by more than the overhead being measured; within a pair it
    drifts little, and the order alternates (ABBA) so that neither loop always runs second. The
    harness repetition includes what a real epoch includes around the training steps: one
    evaluation over a batch-sized test set, the metrics row and a checkpoint.
    """
    device = idist.device()
    cfg = _bench_config(width, batch, amp, images=batch * iterations)
    source = make_synthetic(cfg.data, cfg.seed)
    train, test = source.train, source.test
    sampler = EpochBatchSampler(len(train), batch, cfg.seed, shuffle=True)
    loader = build_loader(build_train_dataset(train, cfg.data), sampler, 0, device)
    eval_set = AugmentedArrayDataset(test, build_eval_transform(cfg.data))
    eval_batch = next(iter(build_loader(eval_set, EpochBatchSampler(len(test), batch, 0, shuffle=False), 0, device)))
    with tempfile.TemporaryDirectory() as tmp:
        plain_loop_images_per_s(cfg, loader, eval_batch, 2, device)  # warm-up: allocator, kernels
        plain, harness = paired(
            lambda _: plain_loop_images_per_s(cfg, loader, eval_batch, iterations, device),
            lambda repeat: harness_images_per_s(cfg, iterations, Path(tmp) / f"r{repeat}"),
            repeats,
        )
    ratios = [h / p for h, p in zip(harness, plain, strict=True)]
    return {
        **_setting(width, batch, amp, iterations, repeats),
        "plain_images_per_s": plain,
        "harness_images_per_s": harness,
        "pair_ratios": ratios,
        "plain_median": statistics.median(plain),
        "harness_median": statistics.median(harness),
        "harness_over_plain": statistics.median(ratios),
    }


def _setting(width: int, batch: int, amp: str, iterations: int, repeats: int) -> dict[str, Any]:
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


def diagnostics_sample_seconds(cfg: Config, repeats: int) -> float:
    """Median seconds of one diagnostics sample (gradient norms, weight copy, update norms) on the model of ``cfg``."""
    device = idist.device()
    model = place_model(build_model(cfg.model, 10), device, channels_last=False)
    for parameter in model.parameters():
        parameter.grad = torch.randn_like(parameter)
    diagnostics = UpdateDiagnostics(model, samples_per_epoch=1, iters_per_epoch=1)
    times = []
    for _ in range(repeats):
        _synchronize(device)
        start = time.perf_counter()
        diagnostics.before_step(1)
        diagnostics.after_step(1, 1)
        _synchronize(device)
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
    base = _bench_config(width, batch, amp, images=batch * iterations)
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
        **_setting(width, batch, amp, iterations, repeats),
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


def bench_throughput(cfg: Config, iterations: int, image_size: tuple[int, int]) -> dict[str, Any]:
    """Model speed on synthetic batches already in memory (no loader), with the training and
    evaluation steps that ``harness.run`` uses, in the config's precision and memory format."""
    device = idist.device()
    model = build_model(cfg.model, 10)
    train_cfg = cfg.train.model_copy(
        update={"channels_last": resolve_channels_last(cfg.train.channels_last, model, device)}
    )
    model = place_model(model, device, train_cfg.channels_last)
    if cfg.train.compile:
        step_model = compile_or_fall_back(
            model, device, train_cfg.channels_last, (cfg.data.batch_size, 3, *image_size)
        )[0]
    else:
        step_model = model
    optimizer = build_optimizer(cfg.optimizer, model)
    scaler = torch.amp.GradScaler(device.type) if resolve_amp_dtype(cfg.train.amp, device) == torch.float16 else None
    train_step = make_train_step(
        step_model, optimizer, nn.CrossEntropyLoss(label_smoothing=cfg.train.label_smoothing), device, train_cfg, scaler
    )
    eval_step = make_eval_step(step_model, device, train_cfg)

    def rate(step: Callable, batch_size: int) -> float:
        batch = (torch.randn(batch_size, 3, *image_size), torch.randint(0, 10, (batch_size,)))
        for _ in range(3):  # warm-up: cudnn autotuning, compilation, allocator
            step(None, batch)
        _synchronize(device)
        start = time.perf_counter()
        for _ in range(iterations):
            step(None, batch)
        _synchronize(device)
        return iterations * batch_size / (time.perf_counter() - start)

    train_rate = rate(train_step, cfg.data.batch_size)
    eval_rate = rate(eval_step, cfg.data.eval_batch_size)
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


def bench_engine(trials: int) -> dict[str, Any]:
    """The search engine's own cost per trial: ``harness.search.engine.work`` on a fresh SQLite study
    with a run that does nothing but return a summary, so what is timed is the engine alone."""
    from harness.search.engine import open_storage, open_study, work
    from harness.search.plans import SearchPlan
    from harness.search.space import load_search

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "base.yaml").write_text("name: bench\n")
        (folder / "search.yaml").write_text(
            f"base: base.yaml\ntrials: {trials}\nspace:\n  optimizer.lr: {{type: float, low: 0.01, high: 1.0}}\n"
        )
        search = load_search(folder / "search.yaml")
        study = open_study(
            open_storage(f"sqlite:///{folder / 'study.db'}", search.spec.heartbeat), search.name, "search", "maximize"
        )

        def no_run(job: Any, trial: Any, metric: str) -> dict[str, Any]:
            return {"status": "completed", "final_val_acc": 0.5, "epochs_completed": 1}

        start = time.perf_counter()
        work(study, SearchPlan(search, folder, []), heartbeat_s=search.spec.heartbeat.interval_s, run=no_run)
        elapsed = time.perf_counter() - start
    return {"trials": trials, "storage": "sqlite", "ms_per_trial": 1000 * elapsed / trials}


def print_table(results: dict[str, Any]) -> None:
    print(f"\ndevice: {results['device']}  commit: {results['commit']}")
    if "overhead" in results:
        o = results["overhead"]
        print(
            f"overhead  width {o['width']} batch {o['batch']} amp {o['amp']}: plain {o['plain_median']:.0f} img/s, "
            f"harness {o['harness_median']:.0f} img/s -> harness/plain = {o['harness_over_plain']:.3f} "
            f"(median of {o['repeats']} back-to-back pairs, ABBA order; "
            f"pairs {min(o['pair_ratios']):.3f}-{max(o['pair_ratios']):.3f})"
        )
    if "data" in results:
        d = results["data"]
        model = d["model_images_per_s"]
        for row in d["loaders"]:
            ratio = f" = {row['loader_over_model']:.2f} x the model's {model:.0f} img/s" if model else ""
            print(f"data      {row['num_workers']} workers: {row['loader_images_per_s']:.0f} img/s{ratio}")
    if "diagnostics" in results:
        d = results["diagnostics"]
        print(
            f"diagnostics width {d['width']} batch {d['batch']} amp {d['amp']}: on/off = {d['on_over_off']:.3f} "
            f"(sampled every {d['sampled_every']} steps, as in a CIFAR-10 epoch; median of {d['repeats']} ABBA pairs, "
            f"pairs {min(d['pair_ratios']):.3f}-{max(d['pair_ratios']):.3f}); one sample {d['sample_ms']:.2f} ms "
            f"alone, a step {d['step_ms']:.0f} ms -> {100 * d['estimated_overhead']:.2f}% expected"
        )
    if "throughput" in results:
        t = results["throughput"]
        print(
            f"throughput width {t['width']} batch {t['batch']} amp {t['amp']}: "
            f"train {t['train_images_per_s']:.0f} img/s, "
            f"eval {t['eval_images_per_s']:.0f} img/s -> {t['epochs']} epochs projected {t['projected_run_s']:.0f} s"
        )
    if "engine" in results:
        e = results["engine"]
        print(f"engine    {e['trials']} trials, {e['storage']}: {e['ms_per_trial']:.1f} ms per trial besides its run")
    if "gradcam" in results:
        g = results["gradcam"]
        print(
            f"gradcam   {g['images']} images x 4 layers x 2 targets, width {g['width']}: "
            f"batched {g['batched_s']:.1f} s, "
            f"one at a time {g['one_at_a_time_s']:.1f} s ({g['one_at_a_time_s'] / g['batched_s']:.1f}x)"
        )


@exit_on_harness_error
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m harness.bench.__main__", description=__doc__.splitlines()[0])
    parser.add_argument(
        "which",
        nargs="*",
        metavar="{overhead,diagnostics,data,throughput,gradcam,engine}",
        help="benchmarks to run (default: all)",
    )
    parser.add_argument(
        "--config", type=Path, default=Path("experiments/resnet18.yaml"), help="config for throughput and data"
    )
    parser.add_overrides()
    parser.add_argument("--width", type=int, default=16, help="model width for the overhead benchmark")
    parser.add_argument("--batch", type=int, default=128, help="batch for the overhead benchmark")
    parser.add_argument(
        "--amp", default="off", choices=["auto", "bf16", "fp16", "off"], help="precision for the overhead benchmark"
    )
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--gradcam-images", type=int, default=100)
    parser.add_argument("--engine-trials", type=int, default=50, help="trials for the engine benchmark")
    parser.add_argument("--out", type=Path, default=Path("results") / "bench")
    args = parser.parse_args(argv)
    known = ["overhead", "diagnostics", "data", "throughput", "gradcam", "engine"]
    unknown = [name for name in args.which if name not in known]
    if unknown:
        parser.error(f"unknown benchmark {unknown[0]!r} (expected some of: {', '.join(known)})")
    which = args.which or known
    cfg = load_config(args.config, args.overrides)
    device = idist.device()
    results: dict[str, Any] = {
        "device": describe_device(device),
        "commit": git_commit(),
        "config": str(args.config),
        "overrides": args.overrides,
        "utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if "overhead" in which:
        results["overhead"] = bench_overhead(args.width, args.batch, args.amp, args.iterations, args.repeats)
    if "diagnostics" in which:
        results["diagnostics"] = bench_diagnostics(args.width, args.batch, args.amp, args.iterations, args.repeats)
    train = load_arrays(cfg.data, cfg.seed).train if {"throughput", "data"} & set(which) else None
    if "throughput" in which:
        results["throughput"] = bench_throughput(cfg, args.iterations, train.images.shape[1:3])
    if "data" in which:
        model_rate = results.get("throughput", {}).get("train_images_per_s")
        results["data"] = bench_data(cfg, train, max(5, args.iterations), args.workers, model_rate)
    if "gradcam" in which:
        results["gradcam"] = bench_gradcam(args.gradcam_images, width=64)
    if "engine" in which:
        results["engine"] = bench_engine(args.engine_trials)
    path = atomic_io.write_json(args.out / f"{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}.json", results)
    print_table(results)
    print(f"\nwritten: {path}")
    return 0


def cli() -> NoReturn:
    """The console script ``harness-bench``, and ``python -m harness.bench``."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
