"""Figures for analysis and reports: matplotlib with the Agg backend, one PNG per figure.

Every figure carries a footer naming what produced it (run, device, commit).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from PIL import Image  # noqa: E402

from harness.core import atomic_io  # noqa: E402


def provenance(run_dir: Path, summary: dict) -> str:
    """The footer every figure of a run carries: run folder (hence its config.yaml), device, commit."""
    commit = (summary.get("git_commit") or "no git")[:12]
    return f"{run_dir} | {summary.get('device', '?')} | commit {commit}"


def denormalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Normalized (N, C, H, W) tensors back to (N, H, W, 3) floats in [0, 1] for display (grey repeated)."""
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    shown = (images.float().cpu() * std_t + mean_t).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    return np.repeat(shown, 3, axis=-1) if shown.shape[-1] == 1 else shown


def save_figure(fig: plt.Figure, path: Path, footer: str | None = None) -> Path:
    if footer:
        fig.text(0.5, 0.002, footer, ha="center", va="bottom", fontsize=7, color="#666666")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    # A 256-colour palette keeps figures legible at a third of the size: reports are mailed.
    with Image.open(buffer) as rendered:
        palette = rendered.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    compact = io.BytesIO()
    palette.save(compact, format="PNG", optimize=True)
    return atomic_io.write_bytes(path, compact.getvalue())


OVERLAY_ALPHA = 0.45  # share of the heatmap in a Grad-CAM overlay


def as_display(images: np.ndarray) -> np.ndarray:
    """Images (N, H, W, C) as floats in [0, 1] with three channels (grey ones repeated)."""
    images = np.asarray(images)
    images = images / 255.0 if images.dtype == np.uint8 else images.astype(np.float64)
    return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images


def titled_mosaic(
    cells: list[list[np.ndarray]],
    titles: list[list[str]],
    path: Path,
    cell_inches: float = 1.4,
    fontsize: float = 7,
    footer: str | None = None,
) -> Path:
    """Rows of equally sized (H, W, 3) images in [0, 1], each under its title ('' for none).

    The grid is one image on one Axes: a figure of hundreds of small Axes (20 Grad-CAM rows of 9)
    takes seconds to lay out and draw, this a fraction of one.
    """
    height, width = cells[0][0].shape[:2]
    gap, title_room = max(2, width // 8), max(4, height // 5)
    columns = max(len(row) for row in cells)
    block_h, block_w = title_room + height, width + gap
    canvas = np.ones((len(cells) * block_h, columns * block_w - gap, 3))
    for r, row in enumerate(cells):
        for c, cell in enumerate(row):
            top, left = r * block_h + title_room, c * block_w
            canvas[top : top + height, left : left + width] = cell
    inches_per_pixel = cell_inches / block_w
    footer_room = 0.25 if footer else 0.0  # inches below the grid, so that the footer covers no image
    fig_w, grid_h = canvas.shape[1] * inches_per_pixel, canvas.shape[0] * inches_per_pixel
    fig = plt.figure(figsize=(fig_w, grid_h + footer_room))
    ax = fig.add_axes((0, footer_room / (grid_h + footer_room), 1, grid_h / (grid_h + footer_room)))
    ax.imshow(canvas, interpolation="nearest")
    ax.axis("off")
    for r, row_titles in enumerate(titles):
        for c, title in enumerate(row_titles):
            if title:
                ax.text(
                    c * block_w + width / 2,
                    r * block_h + title_room - 1,
                    title,
                    ha="center",
                    va="bottom",
                    fontsize=fontsize,
                )
    return save_figure(fig, path, footer)


def image_grid(images: np.ndarray, titles: list[str], path: Path, columns: int = 8, footer: str | None = None) -> Path:
    """A grid of (N, H, W, 3) images in [0, 1] or uint8, each with a title."""
    images = as_display(images)
    rows = [list(images[i : i + columns]) for i in range(0, len(images), columns)]
    row_titles = [list(titles[i : i + columns]) for i in range(0, len(titles), columns)]
    return titled_mosaic(rows, row_titles, path, cell_inches=1.5, fontsize=8, footer=footer)


def heat_colors(heat: np.ndarray) -> np.ndarray:
    """A heatmap in [0, 1] as RGB in the jet colormap."""
    return matplotlib.colormaps["jet"](np.clip(np.asarray(heat), 0, 1))[..., :3]


def overlay(image: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """The one Grad-CAM overlay drawing: ``heat`` (H, W) in [0, 1], coloured, blended over ``image`` (H, W, 3)."""
    return (1 - OVERLAY_ALPHA) * image + OVERLAY_ALPHA * heat_colors(heat)


def gradcam_grid(
    images: np.ndarray,
    maps: dict[str, np.ndarray],
    titles: list[str],
    path: Path,
    footer: str | None = None,
) -> Path:
    """A row per image: the image, then heatmap and overlay for each layer (heatmaps in [0, 1])."""
    images = as_display(images)
    rows = []
    for index, image in enumerate(images):
        row = [image]
        for heat in (maps[layer][index] for layer in maps):
            row += [heat_colors(heat), overlay(image, heat)]
        rows.append(row)
    headers = [part for layer in maps for part in (layer, f"{layer} overlay")]
    row_titles = [[title] + (headers if index == 0 else []) for index, title in enumerate(titles)]
    return titled_mosaic(rows, row_titles, path, footer=footer)


# Above these many classes a chart of every class, or a matrix of every pair, is no longer readable.
MAX_CLASSES_SHOWN = 20
MAX_MATRIX_CLASSES = 25


def per_class_bars(classes: list[str], accuracy: Sequence[float], path: Path, footer: str | None = None) -> Path:
    """A bar per class; with more than MAX_CLASSES_SHOWN classes, the worst and the best ten, sorted."""
    if len(classes) <= MAX_CLASSES_SHOWN:
        fig, ax = plt.subplots(figsize=(max(8, 0.45 * len(classes)), 3.2))
        ax.bar(classes, [100 * a for a in accuracy], color="#4C72B0")
        ax.set_ylabel("test accuracy (%)")
        ax.set_ylim(min(100 * min(accuracy) - 5, 90) if len(accuracy) else 0, 100)
        for i, a in enumerate(accuracy):
            ax.text(i, 100 * a, f"{100 * a:.1f}", ha="center", va="bottom", fontsize=8)
        ax.tick_params(axis="x", rotation=30)
    else:
        order = np.argsort(np.asarray(accuracy), kind="stable")
        half = MAX_CLASSES_SHOWN // 2
        shown = np.concatenate([order[:half], order[-half:]])
        fig, ax = plt.subplots(figsize=(8, 0.28 * len(shown) + 1))
        ax.barh([classes[i] for i in shown], [100 * accuracy[i] for i in shown], color="#4C72B0")
        for row, i in enumerate(shown):
            ax.text(100 * accuracy[i], row, f" {100 * accuracy[i]:.1f}", va="center", fontsize=7)
        ax.axhline(half - 0.5, color="#999999", linewidth=0.8, linestyle="--")
        ax.set_xlabel("test accuracy (%)")
        ax.set_xlim(0, 105)
        ax.set_title(
            f"the {half} worst and the {half} best of {len(classes)} classes (all in per_class.csv)", fontsize=9
        )
        ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    return save_figure(fig, path, footer)


def confusion_heatmap(classes: list[str], matrix: np.ndarray, path: Path, footer: str | None = None) -> Path:
    """Row-normalized confusion matrix (rows: true class) with counts written in each cell; with more
    than MAX_MATRIX_CLASSES classes, the most frequent confusions as bars instead (confusion.csv has all)."""
    if len(classes) > MAX_MATRIX_CLASSES:
        return _top_confusions(classes, matrix, path, footer)
    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    shown = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(classes)), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(
                j,
                i,
                int(matrix[i, j]),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if rates[i, j] > 0.5 else "black",
            )
    fig.colorbar(shown, ax=ax, fraction=0.046, label="fraction of true class")
    fig.tight_layout()
    return save_figure(fig, path, footer)


def _top_confusions(classes: list[str], matrix: np.ndarray, path: Path, footer: str | None) -> Path:
    off_diagonal = matrix * (1 - np.eye(len(classes), dtype=matrix.dtype))
    order = np.argsort(-off_diagonal, axis=None, kind="stable")[:MAX_MATRIX_CLASSES]
    pairs = [(t, p) for t, p in zip(*np.unravel_index(order, matrix.shape), strict=True) if off_diagonal[t, p] > 0]
    fig, ax = plt.subplots(figsize=(8, 0.28 * max(len(pairs), 1) + 1))
    labels = [f"{classes[t]} -> {classes[p]}" for t, p in pairs][::-1]
    ax.barh(labels, [int(matrix[t, p]) for t, p in pairs][::-1], color="#C44E52")
    ax.set_xlabel("test images of the true class predicted as the other")
    ax.set_title(
        f"the {len(pairs)} most frequent confusions of {len(classes)} classes (all in confusion.csv)", fontsize=9
    )
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    return save_figure(fig, path, footer)


def curves(
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    ylabel: str,
    path: Path,
    xlabel: str = "epoch",
    footer: str | None = None,
) -> Path:
    """Lines named by ``series`` keys, each (x, y)."""
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    for label, (x, y) in series.items():
        ax.plot(x, y, label=label, linewidth=1.6, marker="o" if len(x) <= 30 else None, markersize=3)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs and iterations are whole numbers
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, footer)


def band_curves(
    groups: dict[str, list[tuple[Sequence[float], Sequence[float]]]],
    ylabel: str,
    path: Path,
    xlabel: str = "epoch",
    log_y: bool = False,
    footer: str | None = None,
) -> Path:
    """Per group, the mean over its runs as a line and the min-max over its runs as a shaded band.

    Runs of a group share their x values (epochs, iterations); where one run stopped early, the
    band covers the runs that got there.
    """
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for label, runs in groups.items():
        frame = pd.concat([pd.Series(np.asarray(y, dtype=float), index=np.asarray(x)) for x, y in runs], axis=1)
        mean, low, high = frame.mean(axis=1), frame.min(axis=1), frame.max(axis=1)
        (line,) = ax.plot(mean.index, mean.values, linewidth=1.6, label=f"{label} (n={len(runs)})")
        if len(runs) > 1:
            ax.fill_between(mean.index, low.values, high.values, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if log_y:
        ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path, footer)


def spread_plot(
    groups: dict[str, Sequence[float]], intervals: dict[str, tuple[float, float]], path: Path, footer: str | None = None
) -> Path:
    """Each run's final accuracy as a dot, with its group's mean and 95% interval: the spread at a glance."""
    labels = list(groups)
    fig, ax = plt.subplots(figsize=(6.5, 0.5 + 0.45 * len(labels)))
    for row, label in enumerate(labels):
        values = 100 * np.asarray(groups[label], dtype=float)
        ax.scatter(values, np.full(len(values), row), s=22, color="#4C72B0", zorder=3)
        low, high = intervals[label]
        ax.plot([100 * low, 100 * high], [row, row], color="#222222", linewidth=1.2, zorder=2)
        ax.plot([values.mean()] * 2, [row - 0.25, row + 0.25], color="#C44E52", linewidth=2, zorder=4)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("final test accuracy (%): runs (dots), mean (red), 95% interval (line)")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return save_figure(fig, path, footer)


def update_ratio_figure(weights: pd.DataFrame, lr: pd.DataFrame, path: Path, footer: str | None = None) -> Path:
    """Update/weight ratio per block over the iterations (log scale, a line per block, the healthy
    1e-3 marked) above the learning rate on the same x axis. ``weights`` has weights.csv's columns."""
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(8, 5.2), sharex=True, gridspec_kw={"height_ratios": [3, 1.2], "hspace": 0.08}
    )
    for layer, rows in weights.groupby("layer", sort=False):
        top.plot(rows["iteration"], rows["update_ratio"], linewidth=1.3, marker=".", markersize=3, label=layer)
    top.axhline(1e-3, color="#333333", linestyle=":", linewidth=1, label="1e-3 (healthy)")
    top.set_yscale("log")
    top.set_ylabel("‖update‖ / ‖weights‖")
    top.grid(alpha=0.3, which="both")
    top.legend(fontsize=7, ncol=2)
    if not lr.empty:
        bottom.plot(lr["iteration"], lr["lr"], color="#555555", linewidth=1.2)
    bottom.set_ylabel("learning rate")
    bottom.set_xlabel("iteration")
    bottom.grid(alpha=0.3)
    return save_figure(fig, path, footer)


def norms_figure(weights: pd.DataFrame, path: Path, footer: str | None = None) -> Path:
    """Gradient norm and weight norm per block over the iterations, side by side, log scale."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharex=True)
    for ax, column, label in zip(axes, ("grad_norm", "weight_norm"), ("gradient norm", "weight norm"), strict=True):
        for layer, rows in weights.groupby("layer", sort=False):
            ax.plot(rows["iteration"], rows[column], linewidth=1.3, label=layer)
        ax.set_yscale("log")
        ax.set_xlabel("iteration")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path, footer)
