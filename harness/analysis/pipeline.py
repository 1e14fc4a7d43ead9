"""The analysis of a trained run (``python -m harness.analyze RUN_DIR``, and the end of every run).

Per-class accuracy, precision, recall and F1 and the confusion matrix (Ignite's ConfusionMatrix)
over the whole test set, the most-confused class pairs, the misclassified images and the class
activation maps of every ``analysis.cam_methods`` method on them for each layer and target; then
whether those maps and the confidences can be trusted: deletion/insertion faithfulness
(``harness.analysis.faithfulness``), the model-randomization sanity check (``harness.analysis.sanity``),
with two or more methods their ranking (``harness.analysis.cam_comparison``), and calibration
(``harness.analysis.calibration``: ECE and NLL on the test set, before and after a temperature fitted
on the validation split); and the data figures.
Runs at the end of every training run and on any existing run folder, on the final weights (the
newest checkpoint): the weights the final test accuracy belongs to.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import numpy as np
import pandas as pd
import torch
from ignite.engine import Engine, Events
from ignite.metrics import ConfusionMatrix

from harness.analysis import figures
from harness.analysis.artifacts import ARTIFACTS, artifact_path
from harness.analysis.calibration import (
    calibration_bins,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    reliability_diagram,
    softmax,
)
from harness.analysis.cam.base import CAMMethod, build_methods, cam_maps
from harness.analysis.cam_comparison import (
    FIGURE_IMAGES,
    HIGHER_IS_BETTER,
    SANITY_STAGES,
    methods_figure,
    rank_methods,
    ranking_summary,
    road_scores,
)
from harness.analysis.config import AnalysisSpec
from harness.analysis.faithfulness import RANDOM, faithfulness, faithfulness_figure, random_maps
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


def write_data_figures(a: Analysis, train_arrays: Any) -> None:
    cfg, footer = a.cfg, a.footer
    rng = np.random.default_rng(cfg.seed)
    picks = rng.choice(len(train_arrays), size=min(32, len(train_arrays)), replace=False)
    figures.image_grid(
        train_arrays.images[picks],
        [train_arrays.classes[train_arrays.labels[i]] for i in picks],
        a.path("train_samples.png"),
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
        a.path("augmentation_preview.png"),
        columns=9,
        footer=footer,
    )


@dataclass(kw_only=True)
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
    written: set[str] = field(default_factory=set)  # the artifacts this analysis wrote

    @property
    def predicted(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1)

    def path(self, name: str) -> Path:
        """Where the artifact ``name`` (``ARTIFACTS``) is written, noted as written."""
        self.written.add(name)
        return artifact_path(self.out_dir, name)

    def remove_unwritten(self) -> None:
        """What an earlier analysis of this run wrote and this one did not (another config, fewer
        misclassified images) would be shown by the report as if it were this analysis's."""
        for name in ARTIFACTS.keys() - self.written:
            artifact_path(self.out_dir, name).unlink(missing_ok=True)

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
    atomic_io.write_text(a.path("per_class.csv"), table.to_csv(index=False))
    frame = pd.DataFrame(a.confusion, index=a.classes, columns=a.classes)
    atomic_io.write_text(a.path("confusion.csv"), frame.to_csv())
    figures.per_class_bars(a.classes, recall, a.path("per_class_accuracy.png"), footer=a.footer)
    figures.confusion_heatmap(a.classes, a.confusion, a.path("confusion_matrix.png"), footer=a.footer)
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
    atomic_io.write_text(a.path("predictions.csv"), predictions.to_csv(index=False))


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
    atomic_io.write_text(a.path("confused_pairs.csv"), table.to_csv(index=False))
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
            a.path("confused_pairs.png"),
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
    atomic_io.write_text(a.path("misclassified.csv"), rows.to_csv(index=False))
    if len(wrong):
        figures.image_grid(
            a.shown(a.inputs(wrong)),
            a.tile_titles(wrong),
            a.path("misclassified.png"),
            footer=f"pred confidence / true | {a.footer}",
        )


@dataclass
class Explanations:
    """Every method's maps at every configured layer: on the misclassified images for each target, and
    on the correctly classified sample for the predicted class (which is the true one there)."""

    methods: list[str]
    wrong: dict[str, dict[str, dict[str, torch.Tensor]]]  # target -> method -> layer -> (N, H, W)
    right: dict[str, dict[str, torch.Tensor]]  # method -> layer -> (N, H, W)
    seconds_per_100: dict[str, float]  # a method's seconds for 100 images' maps, one target, every layer

    def both(self, target: str, method: str, layer: str) -> torch.Tensor:
        """The misclassified images' maps for ``target``, then the correct sample's, in one tensor."""
        parts = [self.wrong[target].get(method, {}).get(layer), self.right.get(method, {}).get(layer)]
        return torch.cat([part for part in parts if part is not None])


def explain(a: Analysis, methods: dict[str, CAMMethod], wrong: np.ndarray, right: np.ndarray) -> Explanations:
    """Each method's maps, one method at a time, timed (methods could share their passes, ``cam_maps``,
    but each one's cost is part of the comparison: an extra gradient pass per method and layer is cheap)."""
    layers, target_names = a.cfg.analysis.gradcam_layers, a.cfg.analysis.gradcam_targets
    found = Explanations(list(methods), {t: {} for t in target_names}, {}, {})
    if not (layers and target_names):
        return found
    wrong_inputs = a.inputs(wrong) if len(wrong) else None
    wrong_targets = {t: a.targets(wrong, t) for t in target_names}
    right_inputs = a.inputs(right) if len(right) else None
    right_targets = {"predicted": a.targets(right, "predicted")}
    explained = len(wrong) * len(target_names) + len(right)  # maps of one image for one target, every layer
    for name, method in methods.items():
        start = time.perf_counter()
        if wrong_inputs is not None:
            made = cam_maps(a.model, wrong_inputs, wrong_targets, layers, {name: method})
            for target in target_names:
                found.wrong[target][name] = made[target][name]
        if right_inputs is not None:
            found.right[name] = cam_maps(a.model, right_inputs, right_targets, layers, {name: method})["predicted"][
                name
            ]
        found.seconds_per_100[name] = 100 * (time.perf_counter() - start) / explained if explained else math.nan
    return found


def cam_maps_key(method: str, layer: str, target: str) -> str:
    """The key of one method's maps at one layer for one target in ``gradcam.npz``."""
    return f"{method}/{layer}/{target}"


def read_cam_maps(path: Path) -> tuple[np.ndarray, dict[tuple[str, str, str], np.ndarray]]:
    """``gradcam.npz``: the misclassified images' test-set indices, and (method, layer, target) -> maps
    (N, H, W). A run analyzed before the methods had names holds Grad-CAM alone, as ``target/layer``."""
    with np.load(path) as saved:
        maps = {}
        for key in saved.files:
            if key == "indices":
                continue
            parts = key.rsplit("/", 2)  # a plug-in's name may hold slashes (./my_cam.py:MyCAM); layers do not
            method, layer, target = parts if len(parts) == 3 else ("gradcam", parts[1], parts[0])
            maps[(method, layer, target)] = saved[key]
        return saved["indices"], maps


def write_gradcam(a: Analysis, wrong: np.ndarray, explained: Explanations) -> None:
    """gradcam.npz (every method, layer and target on the misclassified images), and the figures of the
    first method's maps, a figure per target."""
    if len(wrong):
        shown = a.shown(a.inputs(wrong))
        titles = [f"P={a.classes[a.predicted[i]]} A={a.classes[a.labels[i]]}" for i in wrong]
        first = explained.methods[0]
        for target_name, by_method in explained.wrong.items():
            if first not in by_method:  # no layer to explain (analysis.gradcam_layers empty)
                continue
            figures.gradcam_grid(
                shown,
                {k: v.numpy() for k, v in by_method[first].items()},
                titles,
                a.path(f"gradcam_{target_name}.png"),
                footer=f"{first} for the {target_name} class | {a.footer}",
            )
    saved = {
        cam_maps_key(method, layer, target): heat.numpy()
        for target, by_method in explained.wrong.items()
        for method, by_layer in by_method.items()
        for layer, heat in by_layer.items()
    }
    atomic_io.write_npz(a.path("gradcam.npz"), indices=wrong, **saved)


def correct_sample(a: Analysis, size: int, seed: int) -> np.ndarray:
    """A seeded sample of correctly classified test images, in test-set order."""
    right = np.flatnonzero(a.predicted == a.labels)
    return np.sort(np.random.default_rng(seed).choice(right, size=min(size, len(right)), replace=False))


def write_faithfulness(
    a: Analysis, wrong: np.ndarray, right: np.ndarray, explained: Explanations
) -> dict[str, dict[str, np.ndarray]]:
    """faithfulness.csv: deletion/insertion AUCs per subset, target, method and layer against random
    maps; a figure of the first method's mean curves per subset (target: the first configured).
    Returns each subset's per-image areas for the first target (``faithfulness``'s curves), to pair
    the methods."""
    frames, first_target, per_image = [], a.cfg.analysis.gradcam_targets[0], {}
    first = explained.methods[0]
    for subset, indices in (("misclassified", wrong), ("correct", right)):
        if not len(indices):
            continue
        inputs = a.inputs(indices)
        measured: pd.DataFrame | None = None  # on correct images every target is the same class: measured once
        for target_name in a.cfg.analysis.gradcam_targets:
            if subset == "correct" and measured is not None:
                frames.append(measured.assign(target=target_name))
                continue
            by_method = explained.wrong[target_name] if subset == "misclassified" else explained.right
            if target_name != first_target:  # the comparison reads the first target: the others, the first method
                by_method = {first: by_method[first]}
            # A method's name may hold slashes (a plug-in's path), a layer's does not: split at the last.
            maps = {f"{m}/{layer}": heat for m, by_layer in by_method.items() for layer, heat in by_layer.items()}
            table, curves = faithfulness(a.model, inputs, a.targets(indices, target_name), maps, seed=a.cfg.seed)
            method_layer = table["layer"].str.rsplit("/", n=1, expand=True)
            table = table.assign(method=method_layer[0], layer=method_layer[1])
            measured = table.assign(subset=subset, target=target_name)
            frames.append(measured)
            if target_name == first_target:
                per_image[subset] = curves
                shown = {
                    key.replace(f"/{first}/", "/"): curve
                    for key, curve in curves.items()
                    if key == "fraction"
                    or key.endswith(f"/{RANDOM}")
                    or key.startswith((f"deletion/{first}/", f"insertion/{first}/"))
                }
                title = f"{subset} test images ({len(indices)}), {first} of the {target_name} class"
                faithfulness_figure(shown, a.path(f"faithfulness_{subset}.png"), a.footer, title)
    if frames:
        table = pd.concat(frames, ignore_index=True)
        first_columns = ["subset", "target", "method", "layer"]
        table = table[[*first_columns, *[c for c in table.columns if c not in first_columns]]]
        atomic_io.write_text(a.path("faithfulness.csv"), table.to_csv(index=False, float_format="%.6g"))
    return per_image


def write_sanity(
    a: Analysis, right: np.ndarray, methods: dict[str, CAMMethod], examples: int = 6
) -> pd.DataFrame | None:
    """sanity.csv, and the first method's correlation figure and row of example maps under cascading
    randomization, on the correctly classified sample with the predicted class as the target.

    The first method goes through the whole cascade; the others, when methods are compared, through
    the stages the ranking shows (``SANITY_STAGES``), since a stage costs a method's maps again, and
    Score-CAM's are 16 forward passes per image and layer."""
    if not len(right):
        return None
    inputs, targets = a.inputs(right), a.targets(right, "predicted")
    layers = a.cfg.analysis.gradcam_layers
    first, *others = methods
    table, maps = cascading_randomization(a.model, inputs, targets, layers, a.cfg.seed, {first: methods[first]})
    if others:
        compared = {name: methods[name] for name in others}
        shallow, _ = cascading_randomization(a.model, inputs, targets, layers, a.cfg.seed, compared, SANITY_STAGES)
        table = pd.concat([table, shallow], ignore_index=True)
    atomic_io.write_text(a.path("sanity.csv"), table.to_csv(index=False, float_format="%.6g"))
    sanity_figure(table[table["method"] == first], a.path("sanity.png"), a.footer, method=first)
    shown_maps = {stage: {layers[-1]: by_method[first][layers[-1]][:examples]} for stage, by_method in maps.items()}
    sanity_examples_figure(
        a.shown(inputs[:examples]), shown_maps, layers[-1], a.path("sanity_examples.png"), a.footer, method=first
    )
    return table


def write_cam_comparison(
    a: Analysis,
    wrong: np.ndarray,
    right: np.ndarray,
    explained: Explanations,
    per_image: dict[str, dict[str, np.ndarray]],
    sanity: pd.DataFrame | None,
) -> dict[str, Any]:
    """cam_ranking.csv (``cam_comparison.rank_methods``: deletion, insertion and ROAD of every method
    and layer on the misclassified images and the correct sample together, for the first target) and
    cam_methods.png (the first misclassified images under every method at the last layer); returns
    what summary.json keeps."""
    layers, target = a.cfg.analysis.gradcam_layers, a.cfg.analysis.gradcam_targets[0]
    subsets = [s for s, indices in (("misclassified", wrong), ("correct", right)) if len(indices)]
    images = a.inputs(np.concatenate([wrong, right]))
    targets = torch.cat([a.targets(wrong, target), a.targets(right, target)])
    scores: dict[str, dict[str, dict[str, np.ndarray]]] = {measure: {} for measure in HIGHER_IS_BETTER}
    for measure in ("deletion", "insertion"):
        for layer in layers:
            scores[measure][layer] = {
                m: np.concatenate([per_image[s][f"{measure}_auc/{m}/{layer}"] for s in subsets])
                for m in explained.methods
            }
    scores["road"] = {
        layer: {
            m: road_scores(a.model, images, targets, explained.both(target, m, layer), a.cfg.seed)
            for m in explained.methods
        }
        for layer in layers
    }
    random = {
        measure: np.concatenate([per_image[s][f"{measure}_auc/{RANDOM}"] for s in subsets])
        for measure in ("deletion", "insertion")
    }
    random["road"] = road_scores(
        a.model, images, targets, random_maps(len(images), *images.shape[-2:], a.cfg.seed), a.cfg.seed
    )
    ranking = rank_methods(scores, random, sanity, explained.seconds_per_100)
    atomic_io.write_text(a.path("cam_ranking.csv"), ranking.to_csv(index=False, float_format="%.6g"))
    shown = wrong[:FIGURE_IMAGES]
    if len(shown):
        methods_figure(
            a.shown(a.inputs(shown)),
            {m: explained.wrong[target][m][layers[-1]][: len(shown)] for m in explained.methods},
            [f"P={a.classes[a.predicted[i]]} A={a.classes[a.labels[i]]}" for i in shown],
            a.path("cam_methods.png"),
            footer=f"{layers[-1]}, the {target} class, every method | {a.footer}",
        )
    return ranking_summary(ranking, target)


def write_calibration(a: Analysis, test_logits: np.ndarray, val: tuple[np.ndarray, np.ndarray] | None) -> dict:
    """Test-set ECE and NLL (calibration.csv, reliability.png), and with a validation split
    (``val``: its logits and labels) the temperature fitted there and the test figures after it
    (calibration_scaled.csv, reliability_scaled.png)."""
    bins = calibration_bins(a.probabilities, a.labels)
    atomic_io.write_text(a.path("calibration.csv"), bins.to_csv(index=False, float_format="%.6g"))
    ece = expected_calibration_error(bins)
    reliability_diagram(bins, a.path("reliability.png"), a.footer, f"Test set, as trained (ECE {100 * ece:.2f}%)")
    found = {"ece": round(ece, 6), "nll": round(negative_log_likelihood(a.probabilities, a.labels), 6)}
    if val is None:
        return {**found, "temperature": None, "ece_scaled": None, "nll_scaled": None}
    temperature = fit_temperature(*val)
    scaled = softmax(test_logits, temperature)
    scaled_bins = calibration_bins(scaled, a.labels)
    atomic_io.write_text(a.path("calibration_scaled.csv"), scaled_bins.to_csv(index=False, float_format="%.6g"))
    ece_scaled = expected_calibration_error(scaled_bins)
    reliability_diagram(
        scaled_bins,
        a.path("reliability_scaled.png"),
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
    methods = build_methods(cfg.analysis.cam_method_names())  # a plug-in that cannot be used fails first
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
        cfg=cfg,
        out_dir=RunFiles(run_dir).analysis,
        footer=figures.provenance(run_dir, summary),
        classes=classes,
        test_set=test_set,
        labels=test_arrays.labels,
        model=model,
        probabilities=probabilities,
        confusion=confusion,
    )

    accuracy = write_class_metrics(a)
    write_predictions(a)
    write_confused_pairs(a)
    wrong = select_misclassified(probabilities, a.labels, cfg.analysis.misclassified, cfg.analysis.order)
    write_misclassified(a, wrong)
    right = correct_sample(a, len(wrong) or cfg.analysis.misclassified, cfg.seed)
    explained = explain(a, methods, wrong, right)
    write_gradcam(a, wrong, explained)
    ranking = None
    if cfg.analysis.gradcam_layers and cfg.analysis.gradcam_targets:
        per_image = write_faithfulness(a, wrong, right, explained)
        sanity = write_sanity(a, right, methods)
        if len(methods) > 1 and per_image:
            ranking = write_cam_comparison(a, wrong, right, explained, per_image, sanity)
    calibration = write_calibration(a, test_logits, val)
    write_data_figures(a, train_arrays)
    a.remove_unwritten()

    per_class = {name: round(float(value), 6) for name, value in zip(classes, accuracy, strict=True)}
    summary.pop("cam_ranking", None)
    summary.update(
        per_class_acc=per_class,
        cam_methods=list(methods),
        **({"cam_ranking": ranking} if ranking else {}),
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
