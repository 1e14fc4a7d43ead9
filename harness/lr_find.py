"""``python -m harness.lr_find CONFIG [--set K=V ...] [--out DIR] [--start-lr X] [--end-lr Y] [--iterations N]``:
an LR range test (Smith, "Cyclical Learning Rates", 2015; fastai's ``lr_find``) with Ignite's ``FastaiLRFinder``.

The config's own model, data, optimizer (momentum, weight decay), augmentation (``augment_on: device``
included), label smoothing, amp and channels_last make the same training step a run uses; its
learning-rate schedule is not attached: the finder drives the lr, from ``--start-lr`` (1e-6) up to
``--end-lr`` (10) in exponential steps over ``--iterations`` (100) batches, over as many epochs
as a small training set needs. ``train.compile`` is ignored (compiling costs more than 100 steps).
The sweep stops early once the loss diverges: non-finite, or above ``diverge_th`` = 5 times the
lowest so far.

The loss is recorded as Ignite records it: smoothed, ``s_i = 0.05 * loss_i + 0.95 * s_(i-1)``
(``smooth_f`` = 0.05, Ignite's default and pytorch-lr-finder's; fastai's 0.98 momentum is the same
rule with 0.02). Smoothing makes a curve of single batches readable, and it lags: about
1 / smooth_f = 20 steps, which with the defaults (7 decades of lr in 100 steps) shifts the curve
over a decade to the right of the raw losses.

The suggestion is Ignite's ``lr_suggestion()``: the lr at the steepest negative gradient of the
smoothed loss curve, searched only up to the curve's lowest point. Its known weakness: users of
Lightning's and Ignite's finders report unreliable suggestions. On a noisy or short curve the
steepest point is where the noise happens to dip, and on a clean one it can sit right next to the
divergence. Read the curve in ``lr_find.png`` before pasting the number; a common rule of thumb
is about one tenth of the lr where the loss is lowest, which the figure also marks.

Writes ``DIR/lr_find.csv`` (``lr, loss``), ``DIR/lr_find.png`` and ``DIR/lr_find.json``; the
default DIR is ``results/lr_find/<config name>/<UTC timestamp>``. Nothing else is written: the
config's file and its run folders stay as they were, and the model and optimizer built here are
dropped afterwards. Exit code 0 with a suggestion, 1 when the curve gives none (the files are
still written), and 2 for bad input (one line on stderr, nothing written).
"""

from __future__ import annotations

import math
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import ignite.distributed as idist
import torch
from ignite.engine import Engine
from ignite.handlers import FastaiLRFinder
from ignite.utils import manual_seed
from torch import nn
from torch.utils.data import DataLoader

from harness.analysis.figures import plt, provenance, save_figure
from harness.config import Config, load_config
from harness.core import atomic_io
from harness.core.errors import ArgumentParser, HarnessError, exit_on_harness_error
from harness.core.provenance import describe_device, git_commit
from harness.core.run_folder import csv_text, utc_now, utc_timestamp
from harness.data.sources import DataSplits
from harness.data.transforms import check_augment
from harness.models.inputs import prepare_inputs
from harness.training.steps import create_trainer
from harness.training.wiring import build_learner, build_loaders, build_train_step

SMOOTH_F = 0.05  # Ignite's default
DIVERGE_TH = 5.0  # Ignite's default: stop once the smoothed loss exceeds 5x the lowest so far
MIN_ITERATIONS = 3  # lr_suggestion needs three points up to the lowest loss


def build_finder_trainer(
    cfg: Config, splits: DataSplits, device: torch.device
) -> tuple[Engine, DataLoader, nn.Module, torch.optim.Optimizer, int]:
    """The trainer of a run without its handlers (no schedule, evaluation, logs or checkpoints),
    its training loader, model, optimizer and iterations per epoch."""
    loaders = build_loaders(cfg, splits, device)
    _, height, width, channels = splits.train.images.shape
    # The learner a run builds, uncompiled: compiling costs more than the sweep's hundred steps.
    uncompiled = cfg.model_copy(update={"train": cfg.train.model_copy(update={"compile": False})})
    batch_shape = (loaders.train_sampler.batch_size, channels, height, width)
    learner = build_learner(uncompiled, device, len(splits.classes), batch_shape)
    train_step, _ = build_train_step(
        uncompiled, learner.train_cfg, learner.model, learner.optimizer, device, (height, width)
    )
    trainer, _ = create_trainer(train_step, device)
    return trainer, loaders.train, learner.model, learner.optimizer, len(loaders.train_sampler)


def _loss_or_inf(output: dict[str, torch.Tensor]) -> float:
    # A NaN never compares greater than diverge_th x the lowest loss, so the finder would sweep on
    # and its argmin would pick the NaN; inf stops it at once as divergence.
    loss = float(output["loss"])
    return loss if math.isfinite(loss) else math.inf


def _group_lr(lr: float | list[float]) -> float:
    # The optimizer has two parameter groups (with and without weight decay); the finder gives both
    # the same lr and then reports a list.
    return float(lr[0] if isinstance(lr, list) else lr)


@dataclass
class RangeTest:
    """What the finder recorded: its finite points, where it stopped, and its suggestion or why none."""

    lrs: list[float]
    losses: list[float]  # smoothed, as Ignite records them
    diverged_at: float | None  # lr of the step where the loss diverged; None when it never did
    suggestion: float | None
    no_suggestion: str | None

    @property
    def lowest_lr(self) -> float | None:
        """The lr where the smoothed loss is lowest."""
        return min(zip(self.losses, self.lrs, strict=True))[1] if self.losses else None


def sweep(
    trainer: Engine,
    loader: DataLoader,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    start_lr: float,
    end_lr: float,
    iterations: int,
) -> RangeTest:
    """Run the range test with Ignite's finder over ``iterations`` batches (a small training set is
    gone through again); it restores the model and optimizer afterwards."""
    finder = FastaiLRFinder()
    with warnings.catch_warnings():
        # "Run completed without loss diverging": the caller says so in its own words.
        warnings.filterwarnings("ignore", message="Run completed without loss diverging")
        with finder.attach(
            trainer,
            to_save={"model": model, "optimizer": optimizer},
            output_transform=_loss_or_inf,
            num_iter=iterations,
            start_lr=start_lr,
            end_lr=end_lr,
            step_mode="exp",
            smooth_f=SMOOTH_F,
            diverge_th=DIVERGE_TH,
        ) as finder_trainer:
            # One engine epoch of exactly the iterations asked; a loader shorter than that starts over.
            finder_trainer.run(loader, max_epochs=1, epoch_length=iterations)
    history = finder.get_results()
    all_lrs = [_group_lr(lr) for lr in history["lr"]]
    last = history["loss"][-1]
    diverged = not math.isfinite(last) or last > DIVERGE_TH * min(history["loss"])  # the finder's own test
    points = [(lr, loss) for lr, loss in zip(all_lrs, history["loss"], strict=True) if math.isfinite(loss)]
    try:
        suggestion, reason = _group_lr(finder.lr_suggestion()), None
    except RuntimeError as error:  # fewer than 3 points up to the lowest loss: the curve is not U-shaped
        suggestion, reason = None, str(error)
    return RangeTest(
        [lr for lr, _ in points], [loss for _, loss in points], all_lrs[-1] if diverged else None, suggestion, reason
    )


def plot_curve(test: RangeTest, title: str, path: Path, footer: str) -> Path:
    """Loss vs lr on a log axis; the suggestion, the lowest loss and a tenth of its lr marked."""
    fig, ax = plt.subplots(figsize=(8, 4.8))
    ax.plot(test.lrs, test.losses, marker=".", markersize=3, linewidth=1.2, label=f"loss, smoothed ({SMOOTH_F})")
    if test.lowest_lr is not None:
        low = min(test.losses)
        ax.plot(test.lowest_lr, low, "v", color="#555555", label=f"lowest loss, at lr {test.lowest_lr:.3g}")
        ax.axvline(
            test.lowest_lr / 10, color="#555555", linestyle=":", label=f"a tenth of it: {test.lowest_lr / 10:.3g}"
        )
        # The divergent tail climbs to 5x the lowest loss; clipping it keeps the descent legible.
        top = max(test.losses[: test.losses.index(low) + 1])
        margin = max(top - low, 1e-3 * abs(top), 1e-6)
        ax.set_ylim(low - 0.2 * margin, top + 0.5 * margin)
    if test.suggestion is not None:
        ax.axvline(test.suggestion, color="#d62728", label=f"suggestion {test.suggestion:.3g} (steepest descent)")
        ax.text(
            test.suggestion,
            0.98,
            f" {test.suggestion:.3g}",
            color="#d62728",
            transform=ax.get_xaxis_transform(),
            ha="left",
            va="top",
        )
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("training loss, smoothed")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    return save_figure(fig, path, footer)


def default_out(cfg: Config) -> Path:
    return Path("results") / "lr_find" / cfg.name / utc_timestamp()


def _three_digits(value: float | None) -> float | None:
    """What is printed and pasted: 3 significant digits."""
    return None if value is None else float(f"{value:.3g}")


def write_results(test: RangeTest, cfg: Config, args: Any, iterations: int, out: Path, device_name: str) -> None:
    """lr_find.csv, lr_find.png and lr_find.json in ``out``."""
    commit = git_commit()
    source = args.config + (f" (+ {len(args.overrides)} --set, see lr_find.json)" if args.overrides else "")
    footer = provenance(Path(source), {"device": device_name, "git_commit": commit})
    title = f"LR range test: {cfg.name}, {cfg.optimizer.name}, batch {cfg.data.batch_size}, {len(test.lrs)} steps"
    if test.diverged_at is not None:
        title += f", diverged at lr {test.diverged_at:.3g}"
    summary = {
        "config": args.config,
        "overrides": args.overrides,
        "suggested_lr": _three_digits(test.suggestion),
        "method": "Ignite FastaiLRFinder.lr_suggestion(): the lr at the steepest descent of the smoothed loss",
        "no_suggestion": test.no_suggestion,
        "lowest_loss_lr": _three_digits(test.lowest_lr),
        "diverged_at_lr": _three_digits(test.diverged_at),
        "start_lr": args.start_lr,
        "end_lr": args.end_lr,
        "step_mode": "exp",
        "iterations": iterations,
        "batch_size": cfg.data.batch_size,
        "smooth_f": SMOOTH_F,
        "diverge_th": DIVERGE_TH,
        "device": device_name,
        "git_commit": commit,
        "utc": utc_now(),
    }
    rows = [{"lr": lr, "loss": loss} for lr, loss in zip(test.lrs, test.losses, strict=True)]
    try:
        atomic_io.write_text(out / "lr_find.csv", csv_text(["lr", "loss"], rows))
        plot_curve(test, title, out / "lr_find.png", footer)
        atomic_io.write_json(out / "lr_find.json", summary)
    except OSError as error:
        raise HarnessError(f"output folder {out}: cannot be written ({error.strerror or error})") from None


def parse_args(argv: list[str] | None) -> Any:
    parser = ArgumentParser(
        prog="python -m harness.lr_find", description="LR range test for an experiment's model, data and optimizer."
    )
    parser.add_argument("config", help="experiment YAML, e.g. experiments/resnet18.yaml")
    parser.add_overrides("data.batch_size=256")
    parser.add_argument("--out", type=Path, help="output folder (default: results/lr_find/<name>/<UTC timestamp>)")
    parser.add_argument("--start-lr", type=float, default=1e-6, help="first lr of the sweep (default: 1e-6)")
    parser.add_argument("--end-lr", type=float, default=10.0, help="last lr of the sweep (default: 10)")
    parser.add_argument(
        "--iterations",
        type=int,
        default=100,
        help="batches in the sweep, over several epochs if need be (default: 100)",
    )
    args = parser.parse_args(argv)
    for name in ("start_lr", "end_lr"):
        value = getattr(args, name)
        if not (math.isfinite(value) and value > 0):
            parser.error(f"--{name.replace('_', '-')} {value}: expected a positive number")
    if args.start_lr >= args.end_lr:
        parser.error(f"--start-lr {args.start_lr} must be below --end-lr {args.end_lr}")
    if args.iterations < MIN_ITERATIONS:
        parser.error(f"--iterations {args.iterations}: expected at least {MIN_ITERATIONS}")
    if args.out is not None and args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
        parser.error(f"--out {args.out}: exists and is not an empty folder; choose another")
    return args


@exit_on_harness_error
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    check_augment(cfg.data)  # a bad transform fails before the data is read
    inputs = prepare_inputs(cfg.data, cfg.model, cfg.seed)
    splits, cfg = inputs.splits, cfg.model_copy(update={"data": inputs.data})
    train = splits.train
    check_augment(cfg.data, train.images[0])
    device = idist.device()
    manual_seed(cfg.seed)
    trainer, loader, model, optimizer, iters_per_epoch = build_finder_trainer(cfg, splits, device)
    iterations = args.iterations
    if iterations > iters_per_epoch:
        epochs = math.ceil(iterations / iters_per_epoch)
        print(f"note: one epoch is {iters_per_epoch} batches: the {iterations} batches take {epochs} epochs")
    out = args.out or default_out(cfg)
    device_name = describe_device(device)
    print(
        f"lr range test: {cfg.name}, lr {args.start_lr:g} to {args.end_lr:g} over {iterations} batches "
        f"of {cfg.data.batch_size}, {device_name}",
        flush=True,
    )

    result = sweep(trainer, loader, model, optimizer, args.start_lr, args.end_lr, iterations)
    write_results(result, cfg, args, iterations, out, device_name)

    if result.diverged_at is not None:
        print(f"the loss diverged at lr {result.diverged_at:.3g}: the sweep stopped there")
    else:
        print(f"note: the loss did not diverge up to lr {args.end_lr:g}; the curve may not show where it rises")
    if result.lowest_lr is not None:
        print(
            f"lowest loss at lr {result.lowest_lr:.3g}; a common rule takes a tenth of it: {result.lowest_lr / 10:.3g}"
        )
    print(f"files: {out / 'lr_find.csv'}, lr_find.png (read the curve), lr_find.json")
    if result.suggestion is None:
        print(f"error: no suggestion: {result.no_suggestion}", file=sys.stderr)
        return 1
    print(f"suggested lr (steepest descent of the smoothed loss): {result.suggestion:.3g}; to use it:")
    print(f"--set optimizer.lr={result.suggestion:.3g}")
    return 0


def cli() -> NoReturn:
    """The console script ``harness-lr-find``, and ``python -m harness.lr_find``."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
