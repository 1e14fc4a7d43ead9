"""``python -m harness.analyze RUN_DIR``: look inside a trained model.

Per-class accuracy and the confusion matrix (Ignite's ConfusionMatrix) over the whole test set,
the misclassified images, Grad-CAM on them for each layer and target, and the data figures.
Runs at the end of every training run and on any existing run folder, on the final weights (the
newest checkpoint): the weights the final test accuracy belongs to. The best epoch's weights were
chosen on the test set itself, which flatters them.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, NoReturn

import ignite.distributed as idist
import numpy as np
import pandas as pd
import torch
from ignite.engine import Engine, Events
from ignite.metrics import ConfusionMatrix

from harness import atomic_io, figures
from harness.config import Config, load_config
from harness.data import AugmentedArrayDataset, build_eval_transform, build_train_transform
from harness.errors import ArgumentParser, HarnessError, exit_on_harness_error
from harness.gradcam import gradcam_maps
from harness.models import build_model
from harness.run_folder import find_best_checkpoint, list_checkpoints, utc_now
from harness.sources import load_arrays
from harness.steps import make_eval_step


def load_trained_model(
    run_dir: Path, cfg: Config, num_classes: int, device: torch.device
) -> tuple[torch.nn.Module, Path]:
    path = next(iter(list_checkpoints(run_dir / "checkpoints")), None) or find_best_checkpoint(run_dir)
    if path is None:
        raise HarnessError(f"{run_dir}: no checkpoint to analyze in {run_dir / 'checkpoints'}")
    state = torch.load(path, map_location="cpu", weights_only=False)
    model = build_model(cfg.model, num_classes)
    try:
        # A training checkpoint of a run with train.ema_decay holds both; the average is what was evaluated.
        model.load_state_dict(state.get("ema_model", state.get("model", state)))
    except RuntimeError as error:
        raise HarnessError(
            f"{path}: does not fit the model in {run_dir / 'config.yaml'} ({str(error).splitlines()[0]})"
        ) from None
    return model.to(device).eval(), path


def predict(
    model: torch.nn.Module, loader: Any, num_classes: int, cfg: Config, device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities for every test image and the confusion matrix, in one pass."""
    evaluator = Engine(make_eval_step(model, device, cfg.train))
    confusion = ConfusionMatrix(num_classes=num_classes, device=device)
    confusion.attach(evaluator, "confusion")
    probabilities: list[torch.Tensor] = []
    evaluator.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: probabilities.append(torch.softmax(e.state.output[0], dim=1).cpu())
    )
    evaluator.run(loader)
    return torch.cat(probabilities).numpy(), evaluator.state.metrics["confusion"].cpu().numpy().astype(np.int64)


def per_class_accuracy(confusion: np.ndarray) -> np.ndarray:
    return np.diag(confusion) / np.maximum(confusion.sum(axis=1), 1)


def select_misclassified(probabilities: np.ndarray, labels: np.ndarray, count: int, order: str) -> np.ndarray:
    """Indices of wrong predictions: in test-set order, or the most confident mistakes first."""
    predicted = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    if order == "confident":
        wrong = wrong[np.argsort(-probabilities[wrong, predicted[wrong]], kind="stable")]
    return wrong[:count]


def write_data_figures(cfg: Config, train_arrays: Any, out_dir: Path, footer: str) -> None:
    rng = np.random.default_rng(cfg.seed)
    picks = rng.choice(len(train_arrays), size=min(32, len(train_arrays)), replace=False)
    figures.image_grid(
        train_arrays.images[picks],
        [train_arrays.classes[train_arrays.labels[i]] for i in picks],
        out_dir / "train_samples.png",
        footer=footer,
    )
    dataset = AugmentedArrayDataset(train_arrays, build_train_transform(cfg.data))
    views = torch.stack([dataset[(int(picks[0]), seed)][0] for seed in range(8)])
    shown = np.concatenate(
        [train_arrays.images[picks[:1]] / 255.0, figures.denormalize(views, cfg.data.mean, cfg.data.std)]
    )
    figures.image_grid(
        shown,
        ["original"] + [f"augmented {i + 1}" for i in range(8)],
        out_dir / "augmentation_preview.png",
        columns=9,
        footer=footer,
    )


def analyze_run(run_dir: Path, device: torch.device | None = None) -> dict[str, Any]:
    """Write ``RUN_DIR/analysis/`` and add per-class accuracy to summary.json; return what was found."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise HarnessError(f"{run_dir}: not a run folder (no config.yaml there)")
    cfg = load_config(run_dir / "config.yaml")
    device = device or idist.device()
    out_dir = run_dir / "analysis"
    summary_path = run_dir / "summary.json"
    summary = atomic_io.read_json(summary_path)
    footer = figures.provenance(run_dir, summary)
    train_arrays, test_arrays = load_arrays(cfg)
    classes = test_arrays.classes
    model, checkpoint = load_trained_model(run_dir, cfg, len(classes), device)

    test_set = AugmentedArrayDataset(test_arrays, build_eval_transform(cfg.data))
    loader = torch.utils.data.DataLoader(test_set, batch_size=cfg.data.eval_batch_size, shuffle=False)
    probabilities, confusion = predict(model, loader, len(classes), cfg, device)
    accuracy = per_class_accuracy(confusion)

    per_class_table = pd.DataFrame(
        {"class": classes, "accuracy": accuracy.round(6), "correct": np.diag(confusion), "total": confusion.sum(axis=1)}
    )
    atomic_io.write_text(out_dir / "per_class.csv", per_class_table.to_csv(index=False))
    atomic_io.write_text(out_dir / "confusion.csv", pd.DataFrame(confusion, index=classes, columns=classes).to_csv())
    figures.per_class_bars(classes, accuracy, out_dir / "per_class_accuracy.png", footer=footer)
    figures.confusion_heatmap(classes, confusion, out_dir / "confusion_matrix.png", footer=footer)

    wrong = select_misclassified(probabilities, test_arrays.labels, cfg.analysis.misclassified, cfg.analysis.order)
    predicted = probabilities.argmax(axis=1)
    rows = pd.DataFrame(
        {
            "index": wrong,
            "true": [classes[test_arrays.labels[i]] for i in wrong],
            "predicted": [classes[predicted[i]] for i in wrong],
            "confidence": probabilities[wrong, predicted[wrong]].round(4),
        }
    )
    atomic_io.write_text(out_dir / "misclassified.csv", rows.to_csv(index=False))
    # Every test image's prediction: what paired tests between runs (McNemar) compare.
    predictions = pd.DataFrame(
        {
            "index": np.arange(len(predicted)),
            "label": test_arrays.labels,
            "predicted": predicted,
            "confidence": probabilities.max(axis=1).round(6),
        }
    )
    atomic_io.write_text(out_dir / "predictions.csv", predictions.to_csv(index=False))

    maps_saved: dict[str, np.ndarray] = {}
    if len(wrong):
        inputs = torch.stack([test_set[int(i)][0] for i in wrong])
        shown = figures.denormalize(inputs, cfg.data.mean, cfg.data.std)
        figures.image_grid(
            shown,
            [f"{p} / {t}" for p, t in zip(rows["predicted"], rows["true"], strict=True)],
            out_dir / "misclassified.png",
            footer=f"pred / true | {footer}",
        )
        titles = [f"P={p} A={t}" for p, t in zip(rows["predicted"], rows["true"], strict=True)]
        for target_name in cfg.analysis.gradcam_targets:
            target = torch.as_tensor(predicted[wrong] if target_name == "predicted" else test_arrays.labels[wrong])
            maps = gradcam_maps(model, inputs, target, cfg.analysis.gradcam_layers)
            for layer, heat in maps.items():
                maps_saved[f"{target_name}/{layer}"] = heat.numpy()
            figures.gradcam_grid(
                shown,
                {k: v.numpy() for k, v in maps.items()},
                titles,
                out_dir / f"gradcam_{target_name}.png",
                footer=f"Grad-CAM for the {target_name} class | {footer}",
            )
    atomic_io.write_npz(out_dir / "gradcam.npz", indices=wrong, **maps_saved)
    write_data_figures(cfg, train_arrays, out_dir, footer)

    per_class = {name: round(float(a), 6) for name, a in zip(classes, accuracy, strict=True)}
    summary.update(
        per_class_acc=per_class,
        analysis_accuracy=round(float(np.trace(confusion) / max(confusion.sum(), 1)), 6),
        analysis_checkpoint=str(checkpoint),
        class_counts={
            "train": np.bincount(train_arrays.labels, minlength=len(classes)).tolist(),
            "test": np.bincount(test_arrays.labels, minlength=len(classes)).tolist(),
        },
        analysis_completed_utc=utc_now(),
    )  # written last: --resume redoes an analysis that lacks it
    atomic_io.write_json(summary_path, summary)
    return {"per_class_acc": per_class, "misclassified": wrong.tolist(), "checkpoint": str(checkpoint)}


@exit_on_harness_error
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m harness.analyze", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    args = parser.parse_args(argv)
    result = analyze_run(args.run_dir)
    print(f"analysis written to {args.run_dir / 'analysis'} (from {result['checkpoint']})")
    return 0


def cli() -> NoReturn:
    """The console script ``harness-analyze``, and ``python -m harness.analyze``."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
