"""How far the softmax confidences over the test set can be trusted as probabilities, and
temperature scaling to make them so.

The maximum softmax probability of each image is binned into equal-width bins; a calibrated model
is right in a bin as often as it is confident there. The expected calibration error (ECE, Guo et
al. 2017) is the count-weighted mean gap between the two; the negative log-likelihood scores the
whole probability vector, not only the top class.

Temperature scaling (Guo et al. 2017) divides the logits by one number T, fitted to minimize the
NLL of the **validation** split and then applied to the test set: fitted on the test set itself,
its "after" figures would be a fit, not a measurement. It never changes a prediction (argmax).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy import optimize, special, stats

from harness.analysis.figures import plt, save_figure

# The probability an image's true class gets at least, in the log-likelihood: a float32 softmax
# rounds very unlikely classes to exactly 0, whose log would make the mean infinite.
PROBABILITY_FLOOR = 1e-12


def calibration_bins(probabilities: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> pd.DataFrame:
    """Per confidence bin (``n_bins`` equal widths over [0, 1]): its edges, count, accuracy and mean
    confidence; a bin holds ``bin_low <= confidence < bin_high``, the top one 1.0 as well.

    ``probabilities`` is (N, classes), ``labels`` (N,). Empty bins have count 0 and NaN means.
    """
    probabilities, labels = np.asarray(probabilities), np.asarray(labels)
    confidence = probabilities.max(axis=1).astype(np.float64)
    correct = (probabilities.argmax(axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # binned_statistic closes the last bin on the right, as the top bin must be; empty bins give NaN means.
    means = stats.binned_statistic(confidence, [correct, confidence], statistic="mean", bins=edges).statistic
    counts = stats.binned_statistic(confidence, confidence, statistic="count", bins=edges).statistic
    return pd.DataFrame(
        {
            "bin_low": edges[:-1],
            "bin_high": edges[1:],
            "count": counts.astype(np.int64),
            "accuracy": means[0],
            "confidence": means[1],
        }
    )


def expected_calibration_error(bins: pd.DataFrame) -> float:
    """Sum over bins of count / N * |accuracy - confidence| (empty bins add nothing); NaN for no images."""
    total = bins["count"].sum()
    if total == 0:
        return float("nan")
    gaps = (bins["accuracy"] - bins["confidence"]).abs().fillna(0.0)
    return float((bins["count"] / total * gaps).sum())


def negative_log_likelihood(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean of -log p(true class) over the images, each p floored at ``PROBABILITY_FLOOR``."""
    probabilities, labels = np.asarray(probabilities, dtype=np.float64), np.asarray(labels)
    true_class = probabilities[np.arange(len(labels)), labels]
    return float(-np.log(np.clip(true_class, PROBABILITY_FLOOR, 1.0)).mean())


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    return special.softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T > 0 that minimizes the mean NLL of ``softmax(logits / T)`` on these images
    (a bounded 1-D search over log T, T from 0.05 to 20: the NLL is convex in 1 / T)."""
    logits, labels = np.asarray(logits, dtype=np.float64), np.asarray(labels)
    if not len(labels):
        raise ValueError("temperature scaling needs at least one image")

    def nll(log_t: float) -> float:
        log_p = special.log_softmax(logits / np.exp(log_t), axis=1)
        return float(-log_p[np.arange(len(labels)), labels].mean())

    found = optimize.minimize_scalar(
        nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded", options={"xatol": 1e-5}
    )
    return float(np.exp(found.x))


def reliability_diagram(bins: pd.DataFrame, path: Path, footer: str | None = None, title: str = "") -> Path:
    """Accuracy per confidence bin against the diagonal of perfect calibration, the gap to each bin's
    mean confidence hatched, and beneath it the number of images per bin."""
    ece = expected_calibration_error(bins)
    centres = ((bins["bin_low"] + bins["bin_high"]) / 2).to_numpy()
    widths = (bins["bin_high"] - bins["bin_low"]).to_numpy()
    filled = bins["count"].to_numpy() > 0
    accuracy, confidence = bins["accuracy"].to_numpy(), bins["confidence"].to_numpy()
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(5.2, 5.6), sharex=True, gridspec_kw={"height_ratios": [3, 1], "hspace": 0.08}
    )
    top.bar(
        centres[filled], accuracy[filled], width=widths[filled], color="#4C72B0", edgecolor="white", label="accuracy"
    )
    # The gap is drawn from the bin's accuracy to its mean confidence (not to the bin centre), as the ECE counts it.
    top.bar(
        centres[filled],
        confidence[filled] - accuracy[filled],
        bottom=accuracy[filled],
        width=widths[filled],
        color="#DD8452",
        alpha=0.35,
        edgecolor="#C44E52",
        hatch="//",
        label="gap to mean confidence",
    )
    top.plot([0, 1], [0, 1], color="#333333", linestyle="--", linewidth=1, label="perfect calibration")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy in bin")
    top.set_title(title or f"Reliability diagram (ECE = {100 * ece:.2f}%)", fontsize=10)
    top.legend(loc="upper left", fontsize=8, title=f"ECE {100 * ece:.2f}%, {len(bins)} bins", title_fontsize=8)
    top.grid(alpha=0.3)
    bottom.bar(centres, bins["count"], width=widths, color="#8C8C8C", edgecolor="white")
    bottom.set_yscale("symlog")  # the top bin of a trained model holds most of the test set
    bottom.set_ylabel("images")
    bottom.set_xlabel("confidence (max softmax probability)")
    bottom.grid(alpha=0.3)
    return save_figure(fig, path, footer)
