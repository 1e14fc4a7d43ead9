"""The analysis of a trained run (``python -m harness.analyze RUN_DIR``, and the end of every run).

Per-class accuracy, precision, recall and F1 and the confusion matrix (Ignite's ConfusionMatrix)
over the whole test set, the most-confused class pairs, the misclassified images and Grad-CAM on
them for each layer and target; then whether those maps and the confidences can be trusted:
deletion/insertion faithfulness (``harness.analysis.faithfulness``), the model-randomization sanity
check (``harness.analysis.sanity``) and calibration (``harness.analysis.calibration``: ECE and NLL on
the test set, before and after a temperature fitted on the validation split); and the data figures.
Runs at the end of every training run and on any existing run folder, on the final weights (the
newest checkpoint): the weights the final test accuracy belongs to.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import numpy as np
import pandas as pd
import torch
from ignite.engine import Engine, Events
from ignite.metrics import ConfusionMatrix

from harness.analysis import figures
from harness.analysis.calibration import (
    calibration_bins,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    reliability_diagram,
    softmax,
)
from harness.analysis.config import AnalysisSpec
from harness.analysis.faithfulness import faithfulness, faithfulness_figure
from harness.analysis.gradcam import gradcam_maps
from harness.analysis.sanity import cascading_randomization, sanity_examples_figure, sanity_figure
from harness.core import atomic_io
from harness.core.errors import HarnessError
from harness.core.run_folder import RunFiles, find_best_checkpoint, list_checkpoints, utc_now
from harness.data.arrays import ImageArrays
from harness.data.loaders import AugmentedArrayDataset
from harness.data.transforms import build_eval_transform, build_train_transform
from harness.models.builders import build_model
from harness.models.inputs import prepare_inputs
from harness.training.steps import make_eval_step


def load_trained_model(
    run_dir: Path, cfg: AnalysisSpec, num_classes: int, device: torch.device, in_channels: int = 3
) -> tuple[torch.nn.Module, Path]:
    path = next(iter(list_checkpoints(RunFiles(run_dir).checkpoints)), None) or find_best_checkpoint(run_dir)
    if path is None:
        raise HarnessError(f"{run_dir}: no checkpoint to analyze in {run_dir / 'checkpoints'}")
    state = torch.load(path, map_location="cpu", weights_only=False)
    model = build_model(cfg.model, num_classes, in_channels)
    try:
        # A training checkpoint of a run with train.ema_decay holds both; the average is what was evaluated.
        model.load_state_dict(state.get("ema_model", state.get("model", state)))
    except RuntimeError as error:
        raise HarnessError(
            f"{path}: does not fit the model in {run_dir / 'config.yaml'} ({str(error).splitlines()[0]})"
        ) from None
    return model.to(device).eval(), path


def predict(
    model: torch.nn.Module, arrays: ImageArrays, cfg: AnalysisSpec, device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    """The logits of every image of ``arrays`` (evaluated as training evaluated them: TTA included)
    and the confusion matrix, in one pass."""
    dataset = AugmentedArrayDataset(arrays, build_eval_transform(cfg.data))
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.data.eval_batch_size, shuffle=False)
    evaluator = Engine(make_eval_step(model, device, cfg.train))
    confusion = ConfusionMatrix(num_classes=len(arrays.classes), device=device)
    confusion.attach(evaluator, "confusion")
    logits: list[torch.Tensor] = []
    evaluator.add_event_handler(Events.ITERATION_COMPLETED, lambda e: logits.append(e.state.output[0].cpu()))
    evaluator.run(loader)
    return torch.cat(logits).numpy(), evaluator.state.metrics["confusion"].cpu().numpy().astype(np.int64)


def per_class_accuracy(confusion: np.ndarray) -> np.ndarray:
    return np.diag(confusion) / np.maximum(confusion.sum(axis=1), 1)


def select_misclassified(probabilities: np.ndarray, labels: np.ndarray, count: int, order: str) -> np.ndarray:
    """Indices of wrong predictions: in test-set order, or the most confident mistakes first."""
    predicted = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    if order == "confident":
        wrong = wrong[np.argsort(-probabilities[wrong, predicted[wrong]], kind="stable")]
    return wrong[:count]


def write_data_figures(cfg: AnalysisSpec, train_arrays: Any, out_dir: Path, footer: str) -> None:
    rng = np.random.default_rng(cfg.seed)
    picks = rng.choice(len(train_arrays), size=min(32, len(train_arrays)), replace=False)
    figures.image_grid(
        train_arrays.images[picks],
        [train_arrays.classes[train_arrays.labels[i]] for i in picks],
        out_dir / "train_samples.png",
        footer=footer,
    )
    dataset = AugmentedArrayDataset(train_arrays, build_train_transform(cfg.data, train_arrays.images.shape[1:3]))
    views = torch.stack([dataset[(int(picks[0]), seed)][0] for seed in range(8)])
    shown = np.concatenate(
        [figures.as_display(train_arrays.images[picks[:1]]), figures.denormalize(views, cfg.data.mean, cfg.data.std)]
    )
    figures.image_grid(
        shown,
        ["original"] + [f"augmented {i + 1}" for i in range(8)],
        out_dir / "augmentation_preview.png",
        columns=9,
        footer=footer,
    )


@dataclass
class Analysis:
    """What the steps of an analysis share: the run, its trained model and its test-set predictions."""

    cfg: AnalysisSpec
    out_dir: Path
    footer: str
    classes: list[str]
    test_set: AugmentedArrayDataset
    labels: np.ndarray
    model: torch.nn.Module
    probabilities: np.ndarray
    confusion: np.ndarray

    @property
    def predicted(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1)

    def inputs(self, indices: np.ndarray) -> torch.Tensor:
        return torch.stack([self.test_set[int(i)][0] for i in indices])

    def shown(self, inputs: torch.Tensor) -> np.ndarray:
        return figures.denormalize(inputs, self.cfg.data.mean, self.cfg.data.std)

    def tile_titles(self, indices: np.ndarray) -> list[str]:
        """``predicted confidence / true``, e.g. ``cat 0.93 / dog``."""
        return [
            f"{self.classes[self.predicted[i]]} {self.probabilities[i, self.predicted[i]]:.2f} / "
            f"{self.classes[self.labels[i]]}"
            for i in indices
        ]

    def targets(self, indices: np.ndarray, target_name: str) -> torch.Tensor:
        return torch.as_tensor(self.predicted[indices] if target_name == "predicted" else self.labels[indices])


def write_class_metrics(a: Analysis) -> np.ndarray:
    """per_class.csv (accuracy = recall, precision, F1), confusion.csv and their figures; returns the accuracy."""
    correct, total, called = np.diag(a.confusion), a.confusion.sum(axis=1), a.confusion.sum(axis=0)
    recall = per_class_accuracy(a.confusion)
    precision = correct / np.maximum(called, 1)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    table = pd.DataFrame(
        {
            "class": a.classes,
            "accuracy": recall.round(6),
            "precision": precision.round(6),
            "recall": recall.round(6),
            "f1": f1.round(6),
            "correct": correct,
            "total": total,
        }
    )
    atomic_io.write_text(a.out_dir / "per_class.csv", table.to_csv(index=False))
    frame = pd.DataFrame(a.confusion, index=a.classes, columns=a.classes)
    atomic_io.write_text(a.out_dir / "confusion.csv", frame.to_csv())
    figures.per_class_bars(a.classes, recall, a.out_dir / "per_class_accuracy.png", footer=a.footer)
    figures.confusion_heatmap(a.classes, a.confusion, a.out_dir / "confusion_matrix.png", footer=a.footer)
    return recall


def write_predictions(a: Analysis) -> None:
    """Every test image's prediction: what paired tests between runs (McNemar) compare."""
    predictions = pd.DataFrame(
        {
            "index": np.arange(len(a.labels)),
            "label": a.labels,
            "predicted": a.predicted,
            "confidence": a.probabilities.max(axis=1).round(6),
        }
    )
    atomic_io.write_text(a.out_dir / "predictions.csv", predictions.to_csv(index=False))


def write_confused_pairs(a: Analysis, pairs: int = 5, examples: int = 8) -> None:
    """The most frequent (true, predicted) mistakes, with their most confident examples."""
    off_diagonal = a.confusion * (1 - np.eye(len(a.classes), dtype=np.int64))
    order = np.argsort(-off_diagonal, axis=None, kind="stable")[:pairs]
    found = [
        (int(t), int(p))
        for t, p in zip(*np.unravel_index(order, a.confusion.shape), strict=True)
        if off_diagonal[t, p] > 0
    ]
    table = pd.DataFrame(
        {
            "true": [a.classes[t] for t, _ in found],
            "predicted": [a.classes[p] for _, p in found],
            "count": [int(a.confusion[t, p]) for t, p in found],
            "share_of_true_class": [round(a.confusion[t, p] / max(a.confusion[t].sum(), 1), 4) for t, p in found],
        }
    )
    atomic_io.write_text(a.out_dir / "confused_pairs.csv", table.to_csv(index=False))
    rows, titles = [], []
    for t, p in found:
        members = np.flatnonzero((a.labels == t) & (a.predicted == p))
        picked = members[np.argsort(-a.probabilities[members, p], kind="stable")[:examples]]
        rows.append(list(a.shown(a.inputs(picked))))
        titles.append(a.tile_titles(picked))
    if rows:
        figures.titled_mosaic(
            rows,
            titles,
            a.out_dir / "confused_pairs.png",
            footer=f"a row per confused pair, most confident first: pred conf / true | {a.footer}",
        )


def write_misclassified(a: Analysis, wrong: np.ndarray) -> None:
    rows = pd.DataFrame(
        {
            "index": wrong,
            "true": [a.classes[a.labels[i]] for i in wrong],
            "predicted": [a.classes[a.predicted[i]] for i in wrong],
            "confidence": a.probabilities[wrong, a.predicted[wrong]].round(4),
        }
    )
    atomic_io.write_text(a.out_dir / "misclassified.csv", rows.to_csv(index=False))
    if len(wrong):
        figures.image_grid(
            a.shown(a.inputs(wrong)),
            a.tile_titles(wrong),
            a.out_dir / "misclassified.png",
            footer=f"pred confidence / true | {a.footer}",
        )


def write_gradcam(a: Analysis, wrong: np.ndarray) -> dict[str, dict[str, torch.Tensor]]:
    """Grad-CAM of every configured layer and target on the misclassified images: figures and gradcam.npz."""
    maps: dict[str, dict[str, torch.Tensor]] = {}
    if len(wrong):
        inputs = a.inputs(wrong)
        shown = a.shown(inputs)
        titles = [f"P={a.classes[a.predicted[i]]} A={a.classes[a.labels[i]]}" for i in wrong]
        for target_name in a.cfg.analysis.gradcam_targets:
            maps[target_name] = gradcam_maps(
                a.model, inputs, a.targets(wrong, target_name), a.cfg.analysis.gradcam_layers
            )
            figures.gradcam_grid(
                shown,
                {k: v.numpy() for k, v in maps[target_name].items()},
                titles,
                a.out_dir / f"gradcam_{target_name}.png",
                footer=f"Grad-CAM for the {target_name} class | {a.footer}",
            )
    saved = {f"{target}/{layer}": heat.numpy() for target, by_layer in maps.items() for layer, heat in by_layer.items()}
    atomic_io.write_npz(a.out_dir / "gradcam.npz", indices=wrong, **saved)
    return maps


def correct_sample(a: Analysis, size: int, seed: int) -> np.ndarray:
    """A seeded sample of correctly classified test images, in test-set order."""
    right = np.flatnonzero(a.predicted == a.labels)
    return np.sort(np.random.default_rng(seed).choice(right, size=min(size, len(right)), replace=False))


def write_faithfulness(
    a: Analysis, wrong: np.ndarray, wrong_maps: dict[str, dict[str, torch.Tensor]], right: np.ndarray
) -> pd.DataFrame | None:
    """faithfulness.csv: deletion/insertion AUCs per subset, target and layer against random maps;
    a figure of the mean curves per subset (target: the predicted class)."""
    frames = []
    for subset, indices in (("misclassified", wrong), ("correct", right)):
        if not len(indices):
            continue
        inputs = a.inputs(indices)
        measured: dict[str, pd.DataFrame] = {}  # on correct images both targets are the same class: measured once
        for target_name in a.cfg.analysis.gradcam_targets:
            same_as = next((t for t in measured if subset == "correct"), None)
            if same_as is not None:
                frames.append(measured[same_as].assign(target=target_name))
                continue
            targets = a.targets(indices, target_name)
            maps = (
                wrong_maps[target_name]
                if subset == "misclassified"
                else gradcam_maps(a.model, inputs, targets, a.cfg.analysis.gradcam_layers)
            )
            table, curves = faithfulness(a.model, inputs, targets, maps, seed=a.cfg.seed)
            measured[target_name] = table.assign(subset=subset, target=target_name)
            frames.append(measured[target_name])
            if target_name == a.cfg.analysis.gradcam_targets[0]:
                title = f"{subset} test images ({len(indices)}), Grad-CAM of the {target_name} class"
                faithfulness_figure(curves, a.out_dir / f"faithfulness_{subset}.png", a.footer, title)
    if not frames:
        return None
    table = pd.concat(frames, ignore_index=True)
    table = table[["subset", "target", *[c for c in table.columns if c not in ("subset", "target")]]]
    atomic_io.write_text(a.out_dir / "faithfulness.csv", table.to_csv(index=False, float_format="%.6g"))
    return table


def write_sanity(a: Analysis, right: np.ndarray, examples: int = 6) -> pd.DataFrame | None:
    """sanity.csv, the correlation figure and a row of example maps under cascading randomization,
    on the correctly classified sample with the predicted class as the target."""
    if not len(right):
        return None
    inputs = a.inputs(right)
    layers = a.cfg.analysis.gradcam_layers
    table, maps = cascading_randomization(a.model, inputs, a.targets(right, "predicted"), layers, seed=a.cfg.seed)
    atomic_io.write_text(a.out_dir / "sanity.csv", table.to_csv(index=False, float_format="%.6g"))
    sanity_figure(table, a.out_dir / "sanity.png", a.footer)
    shown_maps = {stage: {layers[-1]: by_layer[layers[-1]][:examples]} for stage, by_layer in maps.items()}
    sanity_examples_figure(
        a.shown(inputs[:examples]), shown_maps, layers[-1], a.out_dir / "sanity_examples.png", a.footer
    )
    return table


def write_calibration(a: Analysis, test_logits: np.ndarray, val: tuple[np.ndarray, np.ndarray] | None) -> dict:
    """Test-set ECE and NLL (calibration.csv, reliability.png), and with a validation split
    (``val``: its logits and labels) the temperature fitted there and the test figures after it
    (calibration_scaled.csv, reliability_scaled.png)."""
    bins = calibration_bins(a.probabilities, a.labels)
    atomic_io.write_text(a.out_dir / "calibration.csv", bins.to_csv(index=False, float_format="%.6g"))
    ece = expected_calibration_error(bins)
    reliability_diagram(bins, a.out_dir / "reliability.png", a.footer, f"Test set, as trained (ECE {100 * ece:.2f}%)")
    found = {"ece": round(ece, 6), "nll": round(negative_log_likelihood(a.probabilities, a.labels), 6)}
    if val is None:
        return {**found, "temperature": None, "ece_scaled": None, "nll_scaled": None}
    temperature = fit_temperature(*val)
    scaled = softmax(test_logits, temperature)
    scaled_bins = calibration_bins(scaled, a.labels)
    atomic_io.write_text(a.out_dir / "calibration_scaled.csv", scaled_bins.to_csv(index=False, float_format="%.6g"))
    ece_scaled = expected_calibration_error(scaled_bins)
    reliability_diagram(
        scaled_bins,
        a.out_dir / "reliability_scaled.png",
        a.footer,
        f"Test set, temperature {temperature:.3f} fitted on validation (ECE {100 * ece_scaled:.2f}%)",
    )
    return {
        **found,
        "temperature": round(temperature, 6),
        "ece_scaled": round(ece_scaled, 6),
        "nll_scaled": round(negative_log_likelihood(scaled, a.labels), 6),
    }


def analyze(cfg: AnalysisSpec, run_dir: Path, device: torch.device | None = None) -> dict[str, Any]:
    """Write ``RUN_DIR/analysis/`` for the run's final weights as ``cfg`` (the run's config) says, and
    add what it found to summary.json; return the highlights."""
    device = device or idist.device()
    summary_path = RunFiles(run_dir).summary
    summary = atomic_io.read_json(summary_path)
    inputs = prepare_inputs(cfg.data, cfg.model, cfg.seed)
    cfg = cfg.model_copy(update={"data": inputs.data})  # data.mean and data.std as numbers
    splits = inputs.splits
    train_arrays, test_arrays = splits.train, splits.test
    classes = test_arrays.classes
    model, checkpoint = load_trained_model(run_dir, cfg, len(classes), device, inputs.in_channels)
    test_set = AugmentedArrayDataset(test_arrays, build_eval_transform(cfg.data))
    test_logits, confusion = predict(model, test_arrays, cfg, device)
    probabilities = softmax(test_logits).astype(np.float32)
    val = (predict(model, splits.val, cfg, device)[0], splits.val.labels) if splits.val is not None else None
    a = Analysis(
        cfg,
        RunFiles(run_dir).analysis,
        figures.provenance(run_dir, summary),
        classes,
        test_set,
        test_arrays.labels,
        model,
        probabilities,
        confusion,
    )

    accuracy = write_class_metrics(a)
    write_predictions(a)
    write_confused_pairs(a)
    wrong = select_misclassified(probabilities, a.labels, cfg.analysis.misclassified, cfg.analysis.order)
    write_misclassified(a, wrong)
    maps = write_gradcam(a, wrong)
    right = correct_sample(a, len(wrong) or cfg.analysis.misclassified, cfg.seed)
    if cfg.analysis.gradcam_layers and cfg.analysis.gradcam_targets:
        write_faithfulness(a, wrong, maps, right)
        write_sanity(a, right)
    calibration = write_calibration(a, test_logits, val)
    write_data_figures(cfg, train_arrays, a.out_dir, a.footer)

    per_class = {name: round(float(value), 6) for name, value in zip(classes, accuracy, strict=True)}
    summary.update(
        per_class_acc=per_class,
        analysis_accuracy=round(float(np.trace(confusion) / max(confusion.sum(), 1)), 6),
        **calibration,
        analysis_checkpoint=str(checkpoint),
        class_counts={
            "train": np.bincount(train_arrays.labels, minlength=len(classes)).tolist(),
            **({"val": np.bincount(splits.val.labels, minlength=len(classes)).tolist()} if splits.val else {}),
            "test": np.bincount(test_arrays.labels, minlength=len(classes)).tolist(),
        },
        analysis_completed_utc=utc_now(),
    )  # written last: --resume redoes an analysis that lacks it
    atomic_io.write_json(summary_path, summary)
    return {"per_class_acc": per_class, "misclassified": wrong.tolist(), "checkpoint": str(checkpoint), **calibration}
