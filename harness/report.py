"""Self-contained HTML reports (jinja2 templates in ``report_templates/``).

``python -m harness.report RUN_DIR``                      -> RUN_DIR/report.html
``python -m harness.report RUN_DIR_1 RUN_DIR_2 ... --out compare.html`` -> a comparison of runs

Images are embedded as base64 PNG and CSS is inline: the file opens from disk, offline. A run
that lacks pieces (crashed, not analyzed) shows what it has and says what is missing.
"""

from __future__ import annotations

import base64
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import jinja2
import pandas as pd
import yaml

from harness.config import parse_yaml
from harness.core import atomic_io
from harness.core.errors import ArgumentParser, HarnessError, exit_on_harness_error
from harness.core.run_folder import is_pre_validation_run, read_csv_rows, utc_now
from harness.reporting import figures
from harness.training.diagnostics import first_blow_up

TEMPLATES = Path(__file__).resolve().parent.parent / "report_templates"


@dataclass
class RunRecord:
    """Whatever a run folder holds; every piece may be missing."""

    run_dir: Path
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    metrics: pd.DataFrame = field(default_factory=pd.DataFrame)
    lr: pd.DataFrame = field(default_factory=pd.DataFrame)
    weights: pd.DataFrame = field(default_factory=pd.DataFrame)  # weights.csv: per-block update diagnostics
    missing: list[str] = field(default_factory=list)
    # A run from before the validation split, read with its old meaning (see read_pre_validation_run).
    pre_validation: bool = False

    @property
    def name(self) -> str:
        return str(self.config.get("name") or self.run_dir.name)

    @property
    def label(self) -> str:
        folder = self.run_dir.name
        return folder if self.name in folder else f"{self.name} ({folder})"

    @property
    def status(self) -> str:
        return str(self.summary.get("status", "unknown"))

    def analysis(self, name: str) -> Path:
        return self.run_dir / "analysis" / name


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        loaded = parse_yaml(path.read_text(encoding="utf-8"))
        return loaded if isinstance(loaded, dict) else {}
    except (OSError, yaml.YAMLError):
        return {}


PRE_VALIDATION_NOTE = (
    "This run predates the validation split (harness 0.3): what its files call val_acc, val_loss and "
    "final_val_acc was measured on the test set, and its best checkpoint and any plateau schedule were "
    "chosen on the test set. Read here as test figures; it has no validation figures."
)


def read_pre_validation_run(record: RunRecord) -> None:
    """Give an old run's files their real meaning: its ``val_*`` columns and ``final_val_acc`` were
    the test set's. Its "best" was chosen on the test set, so it is not shown as a best at all."""
    record.pre_validation = True
    record.metrics = record.metrics.rename(columns={"val_loss": "test_loss", "val_acc": "test_acc"})
    s = record.summary
    s["final_test_acc"] = s.pop("final_val_acc", None)
    for key in ("best_val_acc", "best_epoch"):
        s.pop(key, None)


def load_run(run_dir: Path) -> RunRecord:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise HarnessError(f"{run_dir}: run folder not found")
    record = RunRecord(run_dir)
    record.config = _read_yaml(run_dir / "config.yaml")
    if not record.config:
        record.missing.append("config.yaml")
    record.summary = atomic_io.read_json(run_dir / "summary.json")
    if not record.summary:
        record.missing.append("summary.json")
    for attr, name in (("metrics", "metrics.csv"), ("lr", "lr.csv")):
        rows = read_csv_rows(run_dir / name)
        if rows:
            setattr(record, attr, pd.DataFrame(rows).apply(pd.to_numeric, errors="coerce"))
        else:
            record.missing.append(name)
    weights = read_csv_rows(run_dir / "weights.csv")
    if weights:
        numeric = ["iteration", "epoch", "grad_norm", "weight_norm", "update_norm", "update_ratio"]
        record.weights = pd.DataFrame(weights).astype({column: float for column in numeric})
    if not (run_dir / "analysis" / "per_class.csv").is_file():
        record.missing.append("analysis")
    if is_pre_validation_run(run_dir):
        read_pre_validation_run(record)
    return record


def embed_png(path: Path) -> str | None:
    if not path.is_file():
        return None
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def training_figures(record: RunRecord) -> dict[str, str | None]:
    """Curves drawn from metrics.csv and lr.csv into RUN_DIR/figures/, returned embedded."""
    out_dir = record.run_dir / "figures"
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


def _table(frame: pd.DataFrame, float_format: str = "{:.4f}") -> str:
    return frame.to_html(index=False, border=0, classes="table", float_format=float_format.format, escape=True)


def environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
    )


def run_context(record: RunRecord) -> dict[str, Any]:
    s = record.summary
    per_class = None
    if record.analysis("per_class.csv").is_file():
        frame = pd.read_csv(record.analysis("per_class.csv"))
        rates = [c for c in ("accuracy", "precision", "recall", "f1") if c in frame]
        per_class = _table(
            frame.assign(**{c: 100 * frame[c] for c in rates}).rename(columns={c: f"{c} (%)" for c in rates}), "{:.2f}"
        )
    class_counts = None
    if s.get("class_counts") and s.get("classes"):
        class_counts = _table(pd.DataFrame({"class": s["classes"], **s["class_counts"]}))
    misclassified = None
    if record.analysis("misclassified.csv").is_file():
        misclassified = _table(pd.read_csv(record.analysis("misclassified.csv")))
    timings = None
    if not record.metrics.empty:
        timings = _table(record.metrics[["epoch", "epoch_time_s", "train_images_per_s"]], "{:.1f}")
    summary_text = record.run_dir / "model_summary.txt"
    return {
        "record": record,
        "title": f"{record.name}: {record.run_dir.name}",
        "header": {
            "experiment": record.name,
            "run folder": str(record.run_dir),
            "status": record.status,
            "date (UTC)": s.get("started_utc", "?"),
            "device": s.get("device", "?"),
            "world size": s.get("world_size", "?"),
            "commit": s.get("git_commit") or "unknown",
            "total time": f"{s['total_time_s']:.1f} s" if isinstance(s.get("total_time_s"), (int, float)) else "?",
            "final test accuracy": _percent(s.get("final_test_acc")),
            "final validation accuracy": _percent(s.get("final_val_acc")),
            "best validation accuracy": _percent(s.get("best_val_acc"))
            + (f" (epoch {s['best_epoch']})" if s.get("best_epoch") else ""),
            "images: train / validation / test": " / ".join(
                f"{s[k]:,}" if isinstance(s.get(k), int) else "?" for k in ("train_images", "val_images", "test_images")
            ),
            "validation split": validation_said(record),
            "test calibration error (ECE)": _percent(s.get("ece"))
            + (f", {_percent(s['ece_scaled'])} after temperature scaling" if s.get("ece_scaled") is not None else ""),
            "evaluated": describe_evaluation(record.config.get("train") or {}),
            "parameters": f"{s['num_params']:,}" if s.get("num_params") else "?",
        },
        "config_yaml": (record.run_dir / "config.yaml").read_text(encoding="utf-8") if record.config else None,
        "curves": training_figures(record),
        "blow_up": first_blow_up(record.weights) if record.status == "diverged" and not record.weights.empty else None,
        "images": {
            name: embed_png(record.analysis(f"{name}.png"))
            for name in (
                "train_samples",
                "augmentation_preview",
                "per_class_accuracy",
                "confusion_matrix",
                "misclassified",
                "gradcam_predicted",
                "gradcam_true",
                "confused_pairs",
                "faithfulness_misclassified",
                "faithfulness_correct",
                "sanity",
                "sanity_examples",
                "reliability",
                "reliability_scaled",
            )
        },
        "class_counts": class_counts,
        "confused_pairs": _csv_table(record.analysis("confused_pairs.csv")),
        "faithfulness": _csv_table(record.analysis("faithfulness.csv")),
        "sanity": _sanity_table(record.analysis("sanity.csv")),
        "calibration": {
            "test ECE": _percent(s.get("ece")),
            "test NLL": _decimal(s.get("nll")),
            "temperature (fitted on validation)": _decimal(s.get("temperature")),
            "test ECE after temperature": _percent(s.get("ece_scaled")),
            "test NLL after temperature": _decimal(s.get("nll_scaled")),
        },
        "no_validation": record.pre_validation or s.get("val_images") == 0,
        "pre_validation_note": PRE_VALIDATION_NOTE if record.pre_validation else None,
        "per_class": per_class,
        "misclassified": misclassified,
        "timings": timings,
        "model_summary": summary_text.read_text(encoding="utf-8") if summary_text.is_file() else None,
        "versions": s.get("versions") or {},
        "generated": utc_now(),
    }


def _csv_table(path: Path) -> str | None:
    return _table(pd.read_csv(path), "{:.4g}") if path.is_file() else None


def _sanity_table(path: Path) -> str | None:
    """Spearman correlation with the trained maps: a row per randomization stage, a column per layer."""
    if not path.is_file():
        return None
    frame = pd.read_csv(path)
    wide = frame.pivot(index="randomized_from", columns="layer", values="spearman")
    wide = wide.reindex(
        index=list(dict.fromkeys(frame["randomized_from"])), columns=list(dict.fromkeys(frame["layer"]))
    )
    return _table(wide.reset_index(), "{:.3f}")


def describe_evaluation(train: dict[str, Any]) -> str:
    """What the test accuracy above was measured on: the live or the averaged weights, with or without TTA."""
    weights = (
        f"average of the weights (ema_decay {train['ema_decay']})" if train.get("ema_decay") else "trained weights"
    )
    return weights + (" + flip TTA" if train.get("tta_flip") else "")


def validation_said(record: RunRecord) -> str:
    """Where the run's validation images came from, or that it had none, in words."""
    if record.pre_validation:
        return "none: this run predates the validation split"
    s = record.summary
    if s.get("val_images") == 0:
        return "none held out (data.val_size: 0): nothing was chosen on held-out data, and no best checkpoint was kept"
    return str(s.get("validation") or "?")


def _decimal(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) and value == value else "?"


def _percent(value: Any) -> str:
    return f"{100 * value:.2f}%" if isinstance(value, (int, float)) and value == value else "?"


def render_run_report(run_dir: Path, out: Path | None = None) -> Path:
    record = load_run(run_dir)
    html = environment().get_template("run.html.j2").render(**run_context(record))
    return atomic_io.write_text(out or record.run_dir / "report.html", html)


def find_run_dirs(paths: list[Path]) -> list[Path]:
    """Run folders among the given paths (globs such as results/*/* may also name other files)."""
    found = [p for p in paths if (p / "config.yaml").is_file() or (p / "summary.json").is_file()]
    if not found:
        raise HarnessError(
            f"no run folders among {', '.join(map(str, paths)) or 'the arguments'} (a run folder holds config.yaml)"
        )
    return found


@exit_on_harness_error
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m harness.report", description="Render a run's report, or compare runs.")
    parser.add_argument("run_dirs", nargs="+", type=Path)
    parser.add_argument(
        "--out", type=Path, help="output HTML (default: RUN_DIR/report.html, or results/compare.html for several runs)"
    )
    parser.add_argument(
        "--layer",
        default="layer4",
        help="comparison: the block whose weight-update ratios are overlaid (default: layer4)",
    )
    args = parser.parse_args(argv)
    run_dirs = find_run_dirs(args.run_dirs)
    if len(run_dirs) == 1:
        path = render_run_report(run_dirs[0], args.out)
    else:
        from harness.reporting.compare import render_comparison

        path = render_comparison(run_dirs, args.out or Path("results") / "compare.html", args.layer)
    print(f"report: {path}")
    return 0


def cli() -> NoReturn:
    """The console script ``harness-report``, and ``python -m harness.report``."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
