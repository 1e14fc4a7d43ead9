"""The HTML report of one run (``report_templates/run.html.j2``): a self-contained file, figures
embedded, CSS inline. A run that lacks pieces (crashed, not analyzed) shows what it has and says
what is missing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from harness.analysis import figures
from harness.analysis.artifacts import FIGURES
from harness.analysis.blow_up import first_blow_up
from harness.analysis.cam_comparison import HIGHER_IS_BETTER
from harness.core import atomic_io
from harness.core.run_folder import RunFiles, utc_now
from harness.models.config import describe_model
from harness.reporting.html import decimal, embed_png, environment, percent, table
from harness.reporting.records import RunRecord, load_run


def training_figures(record: RunRecord) -> dict[str, str | None]:
    """Curves drawn from metrics.csv and lr.csv into RUN_DIR/figures/, returned embedded."""
    out_dir = RunFiles(record.run_dir).figures
    footer = figures.provenance(record.run_dir, record.summary)
    m = record.metrics
    made: dict[str, str | None] = dict.fromkeys(["loss", "accuracy", "lr", "timing", "updates", "norms"])
    if not m.empty:
        epochs = m["epoch"]
        splits = [s for s in ("train", "val", "test") if f"{s}_loss" in m and m[f"{s}_loss"].notna().any()]
        label = {"train": "train", "val": "validation", "test": "test"}
        made["loss"] = embed_png(
            figures.curves(
                {label[s]: (epochs, m[f"{s}_loss"]) for s in splits}, "loss", out_dir / "loss.png", footer=footer
            )
        )
        made["accuracy"] = embed_png(
            figures.curves(
                {label[s]: (epochs, 100 * m[f"{s}_acc"]) for s in splits},
                "accuracy (%)",
                out_dir / "accuracy.png",
                footer=footer,
            )
        )
        made["timing"] = embed_png(
            figures.curves(
                {"training images/s": (epochs, m["train_images_per_s"])},
                "images / s",
                out_dir / "throughput.png",
                footer=footer,
            )
        )
    if not record.lr.empty:
        made["lr"] = embed_png(
            figures.curves(
                {"lr": (record.lr["iteration"], record.lr["lr"])},
                "learning rate applied",
                out_dir / "lr.png",
                xlabel="iteration",
                footer=footer,
            )
        )
    if not record.weights.empty:
        made["updates"] = embed_png(
            figures.update_ratio_figure(record.weights, record.lr, out_dir / "updates.png", footer)
        )
        made["norms"] = embed_png(figures.norms_figure(record.weights, out_dir / "norms.png", footer))
    return made


# The report's sections in order, each an id (the template's <section id>, the navigation's anchor) and
# its title in the navigation; the analysis artifacts name the section that shows them.
SECTIONS = {
    "summary": "Summary",
    "config": "Config",
    "data": "Data",
    "model": "Model",
    "curves": "Training curves",
    "updates": "Weight updates",
    "per-class": "Per-class accuracy",
    "misclassified": "Misclassified",
    "gradcam": "Grad-CAM",
    "faithfulness": "Faithfulness",
    "sanity": "Sanity check",
    "cam-methods": "Which explanation to trust",
    "calibration": "Calibration",
    "timings": "Timings",
    "environment": "Environment",
}
OPTIONAL_SECTIONS = {"cam-methods"}  # shown only when the run has what they show


def run_context(record: RunRecord) -> dict[str, Any]:
    """What ``run.html.j2`` renders, gathered section by section."""
    context = {
        "record": record,
        "title": f"{record.name}: {record.run_dir.name}",
        "header": summary_header(record),
        "config_yaml": RunFiles(record.run_dir).config.read_text(encoding="utf-8") if record.config else None,
        "images": {Path(name).stem: embed_png(record.analysis(name)) for name in FIGURES},
        **data_section(record),
        **training_sections(record),
        **analysis_sections(record),
        **environment_section(record),
    }
    shown = [key for key in SECTIONS if key not in OPTIONAL_SECTIONS or context["cam_ranking"]]
    return {**context, "sections": [(key, SECTIONS[key]) for key in shown]}


def summary_header(record: RunRecord) -> dict[str, Any]:
    """The summary section: what ran, where, and how it ended."""
    s = record.summary
    held_out = s.get("val_images") != 0  # a run with data.val_size 0 has no validation figure to show
    return {
        "experiment": record.name,
        "model": describe_model(record.config.get("model") or {}),
        "run folder": str(record.run_dir),
        "status": record.status,
        "date (UTC)": s.get("started_utc", "?"),
        "device": s.get("device", "?"),
        "world size": s.get("world_size", "?"),
        "commit": s.get("git_commit") or "unknown",
        "total time": f"{s['total_time_s']:.1f} s" if isinstance(s.get("total_time_s"), (int, float)) else "?",
        "final test accuracy": percent(s.get("final_test_acc")),
        "final validation accuracy": percent(s.get("final_val_acc")) if held_out else "not held out",
        "best validation accuracy": (
            percent(s.get("best_val_acc")) + (f" (epoch {s['best_epoch']})" if s.get("best_epoch") else "")
            if held_out
            else "not held out"
        ),
        "images: train / validation / test": " / ".join(
            f"{s[k]:,}" if isinstance(s.get(k), int) else "?" for k in ("train_images", "val_images", "test_images")
        ),
        "validation split": validation_said(record),
        "test calibration error (ECE)": percent(s.get("ece"))
        + (f", {percent(s['ece_scaled'])} after temperature scaling" if s.get("ece_scaled") is not None else ""),
        "evaluated": describe_evaluation(record.config.get("train") or {}),
        "what happened": describe_history(s.get("history") or []) or "trained in one go",
        "image size": describe_resolution(record.config, s)
        or "x".join(map(str, (s.get("image_size") or [])[::-1]))
        or "?",
        "parameters": f"{s['num_params']:,}" if s.get("num_params") else "?",
    }


def data_section(record: RunRecord) -> dict[str, Any]:
    """The data section's table: images per class and split."""
    s = record.summary
    counts = s.get("class_counts") and s.get("classes")
    return {"class_counts": table(pd.DataFrame({"class": s["classes"], **s["class_counts"]})) if counts else None}


def training_sections(record: RunRecord) -> dict[str, Any]:
    """The training curves, the weight updates (and where a diverged run blew up), the timings."""
    timings = None
    if not record.metrics.empty:
        timings = table(record.metrics[["epoch", "epoch_time_s", "train_images_per_s"]], "{:.1f}")
    diverged = record.status == "diverged" and not record.weights.empty
    return {
        "curves": training_figures(record),
        "blow_up": first_blow_up(record.weights) if diverged else None,
        "timings": timings,
    }


def analysis_sections(record: RunRecord) -> dict[str, Any]:
    """The tables of the analysis's sections, from its CSVs (the figures are in ``images``)."""
    s = record.summary
    per_class = None
    if record.analysis("per_class.csv").is_file():
        frame = pd.read_csv(record.analysis("per_class.csv"))
        rates = [c for c in ("accuracy", "precision", "recall", "f1") if c in frame]
        per_class = table(
            frame.assign(**{c: 100 * frame[c] for c in rates}).rename(columns={c: f"{c} (%)" for c in rates}), "{:.2f}"
        )
    return {
        "per_class": per_class,
        "misclassified": _csv_table(record.analysis("misclassified.csv"), "{:.4f}"),
        "confused_pairs": _csv_table(record.analysis("confused_pairs.csv")),
        "faithfulness": _csv_table(record.analysis("faithfulness.csv")),
        "sanity": _sanity_table(record.analysis("sanity.csv")),
        "cam_method": (s.get("cam_methods") or ["gradcam"])[0],  # the method of the Grad-CAM and sanity figures
        "cam_ranking": cam_ranking(record.analysis("cam_ranking.csv")),
        "calibration": {
            "test ECE": percent(s.get("ece")),
            "test NLL": decimal(s.get("nll")),
            "temperature (fitted on validation)": decimal(s.get("temperature")),
            "test ECE after temperature": percent(s.get("ece_scaled")),
            "test NLL after temperature": decimal(s.get("nll_scaled")),
        },
        "no_validation": s.get("val_images") == 0,
    }


def environment_section(record: RunRecord) -> dict[str, Any]:
    """The model's printed summary, the library versions, when the report was made."""
    summary_text = RunFiles(record.run_dir).model_summary
    return {
        "model_summary": summary_text.read_text(encoding="utf-8") if summary_text.is_file() else None,
        "versions": record.summary.get("versions") or {},
        "generated": utc_now(),
    }


def _csv_table(path: Path, number_format: str = "{:.4g}") -> str | None:
    return table(pd.read_csv(path), number_format) if path.is_file() else None


def _sanity_table(path: Path) -> str | None:
    """Spearman correlation with the trained maps: a row per randomization stage, a column per layer, of
    the first method (the only one of a run analyzed before there were several)."""
    if not path.is_file():
        return None
    frame = pd.read_csv(path)
    if "method" in frame:
        frame = frame[frame["method"] == frame["method"].iloc[0]]
    wide = frame.pivot(index="randomized_from", columns="layer", values="spearman")
    wide = wide.reindex(
        index=list(dict.fromkeys(frame["randomized_from"])), columns=list(dict.fromkeys(frame["layer"]))
    )
    return table(wide.reset_index(), "{:.3f}")


MEASURE_NAMES = {
    "deletion": "deletion AUC (lower: faithful)",
    "insertion": "insertion AUC (higher)",
    "road": "ROAD (higher)",
}
ALPHA = 0.05


def cam_ranking(path: Path) -> list[dict[str, str]] | None:
    """Which explanation to trust (``cam_ranking.csv``): per layer, the ranking as a table, and in words
    which methods beat a random map and which the tests do not tell apart from the best."""
    if not path.is_file():
        return None
    frame = pd.read_csv(path)
    sanity = [c for c in frame.columns if c.startswith("sanity_")]
    layers = []
    for layer, rows in frame.groupby("layer", sort=False):
        shown = {("", "rank"): rows["rank"], ("", "method"): rows["method"]}
        for measure, name in MEASURE_NAMES.items():
            shown[(name, "mean")] = rows[measure]
            shown[(name, "p vs random")] = rows[f"{measure}_p_random"]
            shown[(name, "p vs best")] = rows[f"{measure}_p_best"]
        for column in sanity:
            shown[("Spearman with the trained maps", f"random to {column.removeprefix('sanity_')}")] = rows[column]
        shown[("", "s / 100 images")] = rows["seconds_per_100_images"]
        table_html = pd.DataFrame(shown).to_html(
            index=False, border=0, classes="table", na_rep="-", float_format="{:.3g}".format
        )
        beat_random = rows.loc[(rows[[f"{m}_p_random" for m in HIGHER_IS_BETTER]] < ALPHA).all(axis=1), "method"]
        as_good = rows.loc[(rows[[f"{m}_p_best" for m in HIGHER_IS_BETTER]].fillna(1.0) >= ALPHA).all(axis=1), "method"]
        friedman = ", ".join(f"{m} p = {rows[f'{m}_friedman_p'].iloc[0]:.2g}" for m in HIGHER_IS_BETTER)
        layers.append(
            {
                "layer": str(layer),
                "table": table_html,
                "n_images": int(rows["n_images"].iloc[0]),
                "beat_random": ", ".join(beat_random) or "none",
                "as_good": ", ".join(as_good) or "none",
                "friedman": friedman,
            }
        )
    return layers


def describe_evaluation(train: dict[str, Any]) -> str:
    """What the test accuracy above was measured on: the live or the averaged weights, with or without TTA."""
    weights = (
        f"average of the weights (ema_decay {train['ema_decay']})" if train.get("ema_decay") else "trained weights"
    )
    tta = [name for name, on in (("flip", train.get("tta_flip")), ("translate", train.get("tta_translate"))) if on]
    shift = f" {train['tta_translate']} px" if train.get("tta_translate") else ""
    return weights + (f" + {' and '.join(tta)}{shift} TTA" if tta else "")


def describe_history(history: list[dict[str, Any]]) -> str | None:
    """What happened to the run's training, when a run stopped and was resumed: None for a run that
    started and ended in one go (or predates the history)."""
    if not history or [h["event"] for h in history] in (["started"], ["started", "completed"]):
        return None
    said = []
    for before, event in zip([None, *history], history, strict=False):
        when = str(event.get("utc", "?")).replace("T", " ").removesuffix("Z")
        if event["event"] == "resumed":
            if before is not None and before["event"] in ("started", "resumed"):  # no end recorded: killed
                said.append("stopped without a word (killed, or the machine went down)")
            said.append(f"resumed {when} UTC from {event.get('checkpoint', '?')} at iteration {event['iteration']}")
        else:
            said.append(f"{event['event']} {when} UTC at iteration {event['iteration']}")
    return "; ".join(said)


def describe_resolution(config: dict[str, Any], summary: dict[str, Any]) -> str | None:
    """Progressive resizing in words: which epochs trained at which size; None without it."""
    train = config.get("train") or {}
    size, epochs, low = train.get("low_res_size"), train.get("epochs"), train.get("low_res_epochs", 0)
    if not (size and low and isinstance(epochs, int)):
        return None
    used = min(low, epochs - 1)
    height, width = summary.get("image_size") or [32, 32]
    low_h, low_w = (round(size * height), round(size * width)) if isinstance(size, float) else (size, size)
    full = f"epochs {used + 1}-{epochs}" if used + 1 < epochs else f"epoch {epochs}"
    return f"epochs 1-{used} at {low_w}x{low_h}, {full} and every evaluation at {width}x{height}"


def validation_said(record: RunRecord) -> str:
    """Where the run's validation images came from, or that it had none, in words."""
    s = record.summary
    if s.get("val_images") == 0:
        return "none held out (data.val_size: 0): nothing was chosen on held-out data, and no best checkpoint was kept"
    return str(s.get("validation") or "?")


def render_run_report(run_dir: Path, out: Path | None = None) -> Path:
    record = load_run(run_dir)
    html = environment().get_template("run.html.j2").render(**run_context(record))
    return atomic_io.write_text(out or RunFiles(record.run_dir).report, html)
