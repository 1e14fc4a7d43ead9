"""``python -m harness.bench [overhead|diagnostics|data|throughput|mfu|gradcam|engine]``: measured speed.

- overhead:   images/s of the Ignite trainer with every handler attached vs a plain PyTorch loop and
              the same loop under torch.compile, same model, loader, batch, precision and memory
              format, repetitions in rotating order, medians, each as a share of the matmul peak;
              and of the trainer with the terminal's progress bars vs without any progress display.
- diagnostics: images/s of the harness with the weight-update diagnostics at their default rate
              vs off, back-to-back pairs in ABBA order, median ratio.
- data:       images/s of the albumentations training loader for 0, 1, 2, ... workers, next to
              the model's own training images/s.
- throughput: training and evaluation images/s of a config on this device (full size, the steps a
              run builds), and the projected wall time of its full run.
- mfu:        model FLOPs utilization: model FLOPs of training an image (torch.utils.flop_counter) x
              training images/s, over a 2048-square matrix product's FLOP/s in the same precision
              on the same threads.
- gradcam:    seconds for Grad-CAM on N images x 4 layers x 2 targets, batched vs one at a time; then
              images/s of every class activation map method alone, and all of them together.
- engine:     milliseconds a search trial costs besides its run (asking, the surplus check, the
              heartbeat, recording and telling the result, waiting for the storage), with
              --engine-workers processes on one study in an SQLite file or --engine-storage URL.

Results go to ``results/bench/<UTC timestamp>.json`` with the device and commit, and to a table.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, NoReturn

import ignite.distributed as idist

from harness.bench.data import bench_data
from harness.bench.engine import bench_engine
from harness.bench.gradcam import bench_gradcam
from harness.bench.training import bench_diagnostics, bench_mfu, bench_overhead, bench_throughput
from harness.config import load_config
from harness.core import atomic_io
from harness.core.errors import ArgumentParser, exit_on_harness_error
from harness.core.provenance import describe_device, git_commit
from harness.core.run_folder import utc_now, utc_timestamp
from harness.models.inputs import prepare_inputs


def print_table(results: dict[str, Any]) -> None:
    print(f"\ndevice: {results['device']}  commit: {results['commit']}")
    if "overhead" in results:
        o = results["overhead"]
        print(
            f"overhead  width {o['width']} batch {o['batch']} amp {o['amp']}: plain {o['plain_median']:.0f} img/s, "
            f"harness {o['harness_median']:.0f} img/s -> harness/plain = {o['harness_over_plain']:.3f} "
            f"(median of {o['repeats']} back-to-back rounds, rotating order; "
            f"rounds {min(o['pair_ratios']):.3f}-{max(o['pair_ratios']):.3f})"
        )
        if o["compiled_median"]:
            print(
                f"overhead  plain loop under torch.compile {o['compiled_median']:.0f} img/s -> "
                f"harness/compiled = {o['harness_over_compiled']:.3f}"
            )
        shares = ", ".join(
            f"{loop} {100 * o[f'{loop}_mfu']:.1f}%" for loop in ("harness", "plain", "compiled") if o[f"{loop}_mfu"]
        )
        print(
            f"overhead  share of the matmul peak ({o['peak_gflop_per_s']:.0f} GFLOP/s, "
            f"{o['gflop_per_image']:.3f} GFLOP an image): {shares}"
        )
        bar_pairs = o["bars_pair_ratios"]
        print(
            f"overhead  progress bars: bars/none = {o['bars_over_no_progress']:.3f} (median of {o['repeats']} "
            f"back-to-back pairs, ABBA order; pairs {min(bar_pairs):.3f}-{max(bar_pairs):.3f}); "
            f"alone: a tick {o['progress_tick_us']:.1f} us each iteration, a draw {o['bar_draw_us']:.0f} us at most "
            f"every 0.5 s -> {100 * o['bars_estimated_overhead']:.3f}% expected"
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
    if "mfu" in results:
        m = results["mfu"]
        print(
            f"mfu       width {m['width']} batch {m['batch']} {m['dtype']} {m['threads']} threads: "
            f"{m['gflop_per_image']:.3f} GFLOP an image x {m['train_images_per_s']:.0f} img/s = "
            f"{m['achieved_gflop_per_s']:.0f} GFLOP/s, matmul peak {m['peak_gflop_per_s']:.0f} GFLOP/s "
            f"-> MFU {100 * m['mfu']:.1f}%"
        )
    if "engine" in results:
        e = results["engine"]
        print(
            f"engine    {e['trials']} trials, {e['workers']} worker(s), {e['storage']}: "
            f"{e['ms_per_trial']:.1f} ms per trial besides its run ({e['trials_per_s']:.1f} trials/s)"
        )
    if "gradcam" in results:
        g = results["gradcam"]
        print(
            f"gradcam   {g['images']} images x 4 layers x 2 targets, width {g['width']}: "
            f"batched {g['batched_s']:.1f} s, "
            f"one at a time {g['one_at_a_time_s']:.1f} s ({g['one_at_a_time_s'] / g['batched_s']:.1f}x)"
        )
        for name, rate in g["methods_images_per_s"].items():
            print(
                f"          {name:<10} {rate:7.1f} img/s ({g['methods_s'][name]:.1f} s alone, both targets, 4 layers)"
            )
        print(
            f"          all {len(g['methods_s'])} methods together {g['all_methods_s']:.1f} s (passes shared; "
            f"Score-CAM at most {g['scorecam_max_channels']} channels per image and layer)"
        )


@exit_on_harness_error
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(
        prog="python -m harness.bench", description="Measure speed: the harness against a plain loop, data, Grad-CAM."
    )
    parser.add_argument(
        "which",
        nargs="*",
        metavar="{overhead,diagnostics,data,throughput,mfu,gradcam,engine}",
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
    parser.add_argument(
        "--gradcam-width",
        type=int,
        default=64,
        help="model width for the gradcam benchmark (64: the standard ResNet18)",
    )
    parser.add_argument("--engine-trials", type=int, default=50, help="trials for the engine benchmark")
    parser.add_argument("--engine-workers", type=int, default=1, help="worker processes for the engine benchmark")
    parser.add_argument("--engine-storage", help="storage URL for the engine benchmark (default: an SQLite file)")
    parser.add_argument("--out", type=Path, default=Path("results") / "bench")
    args = parser.parse_args(argv)
    known = ["overhead", "diagnostics", "data", "throughput", "mfu", "gradcam", "engine"]
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
        "utc": utc_now(),
    }
    train = None
    if {"throughput", "mfu", "data"} & set(which):
        inputs = prepare_inputs(cfg.data, cfg.model, cfg.seed)
        cfg, train = cfg.model_copy(update={"data": inputs.data}), inputs.splits.train
    # Each benchmark by name, in the order they run ("data" reads "throughput"'s model rate when both run).
    benchmarks = {
        "overhead": lambda: bench_overhead(args.width, args.batch, args.amp, args.iterations, args.repeats),
        "diagnostics": lambda: bench_diagnostics(args.width, args.batch, args.amp, args.iterations, args.repeats),
        "throughput": lambda: bench_throughput(cfg, args.iterations, train.images.shape[1:3]),
        "mfu": lambda: bench_mfu(cfg, args.iterations, train.images.shape[1:3]),
        "data": lambda: bench_data(
            cfg, train, max(5, args.iterations), args.workers, results.get("throughput", {}).get("train_images_per_s")
        ),
        "gradcam": lambda: bench_gradcam(args.gradcam_images, width=args.gradcam_width),
        "engine": lambda: bench_engine(args.engine_trials, args.engine_workers, args.engine_storage),
    }
    for name, measure in benchmarks.items():
        if name in which:
            results[name] = measure()
    path = atomic_io.write_json(args.out / f"{utc_timestamp()}.json", results)
    print_table(results)
    print(f"\nwritten: {path}")
    return 0


def cli() -> NoReturn:
    """The console script ``harness-bench``, and ``python -m harness.bench``."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
