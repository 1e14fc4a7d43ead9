"""Comparison of runs: grouped by config, with how sure each difference is.

Runs whose configs differ only in ``seed`` (and in keys that do not change training: checkpoints,
analysis, report, logging, worker count, cache folder) form a group. Each group gets its mean final
test accuracy (the last epoch's, what a run reports; never a best epoch; or the final validation
accuracy, to choose between groups without reading the test set), spread, a 95% interval, a
p-value against the best group and that p-value Holm-corrected for the number of comparisons
(``harness.reporting.stats``), and the comparison says the smallest difference its seeds could detect.
Written as ``compare.html`` (``report_templates/compare.html.j2``) and ``leaderboard.csv`` beside it.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.analysis import figures
from harness.analysis.figures import MAX_CLASSES_SHOWN
from harness.core import atomic_io
from harness.core.errors import HarnessError
from harness.core.run_folder import RunFiles, utc_now
from harness.reporting import stats
from harness.reporting.html import embed_png, environment
from harness.reporting.records import RunRecord, load_run

# Keys that do not change what is trained or measured: runs that differ only in these are replicates.
NOT_THE_EXPERIMENT = (
    "seed", "checkpoint.", "analysis.", "report.", "logging.", "diagnostics.", "data.num_workers", "data.cache_dir",
    "train.cpu_recipe",
)  # fmt: skip
DEFAULT_LAYER = "layer4"  # the block whose update/weight ratio the comparison overlays
SIGNIFICANCE = 0.05
# What a comparison may rank and test: the final accuracy on one split, as summary.json keys (the
# accuracy, the split's image count) and as metrics.csv's column of it.
SPLITS = {
    "test": ("final_test_acc", "test_images", "test_acc"),
    "validation": ("final_val_acc", "val_images", "val_acc"),
}


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, path + "."))
        else:
            flat[path] = json.dumps(value) if isinstance(value, list | dict) else value
    return flat


def experiment_key(config: dict[str, Any]) -> str:
    flat = flatten(config)
    return json.dumps({k: v for k, v in flat.items() if not k.startswith(NOT_THE_EXPERIMENT)}, sort_keys=True)


def differing_keys(records: list[RunRecord]) -> list[str]:
    """Config keys whose values differ between runs (besides the name), as written in the configs."""
    flats = [flatten(r.config) for r in records if r.config]
    keys = sorted({k for f in flats for k in f})
    return [k for k in keys if k != "name" and len({repr(f.get(k)) for f in flats}) > 1]


@dataclass
class Group:
    label: str
    records: list[RunRecord] = field(default_factory=list)
    split: str = "test"  # what is ranked and tested: a key of SPLITS

    @property
    def finished(self) -> list[RunRecord]:
        """The runs whose training completed: only their final accuracy is a result."""
        key = SPLITS[self.split][0]
        return [r for r in self.records if r.status == "completed" and isinstance(r.summary.get(key), float)]

    @property
    def accuracies(self) -> list[float]:
        """Final accuracy on the group's split of each finished run: what is compared."""
        return [r.summary[SPLITS[self.split][0]] for r in self.finished]

    def mean_of(self, key: str) -> float:
        values = [r.summary[key] for r in self.finished if isinstance(r.summary.get(key), float)]
        return float(np.mean(values)) if values else math.nan


def group_runs(records: list[RunRecord], split: str = "test") -> list[Group]:
    """Replicates together, in the order of their first run, compared on ``split``; labelled by config
    name, and by the keys that tell them apart when two groups share a name."""
    by_key: dict[str, Group] = {}
    for record in records:
        by_key.setdefault(experiment_key(record.config), Group(record.name, split=split)).records.append(record)
    groups = list(by_key.values())
    names = [g.label for g in groups]
    suffixes = {}
    for group in groups:
        if names.count(group.label) > 1:
            namesakes = [g.records[0] for g in groups if g.label == group.label]
            keys = [k for k in differing_keys(namesakes) if not k.startswith(NOT_THE_EXPERIMENT)]
            flat = flatten(group.records[0].config)
            suffixes[id(group)] = " (" + ", ".join(f"{k}={flat.get(k)}" for k in keys) + ")"
    for group in groups:  # relabelled after all are compared: a new label must not hide a namesake
        group.label += suffixes.get(id(group), "")
    return groups


def correctness(record: RunRecord) -> np.ndarray | None:
    """Per test image, whether the analyzed (final) weights got it right; None without predictions.csv."""
    path = record.analysis("predictions.csv")
    if not path.is_file():
        return None
    frame = pd.read_csv(path)
    return (frame["label"] == frame["predicted"]).to_numpy()


def interval(group: Group) -> tuple[float, float, str]:
    accuracies = group.accuracies
    if len(accuracies) >= 2:
        low, high = stats.t_interval(accuracies)
        clipped = low < 0 or high > 1  # few seeds and a wide spread: an accuracy stays within 0-100%
        return max(0.0, low), min(1.0, high), "t over seeds" + (", clipped to 0-100%" if clipped else "")
    run = group.finished[0]
    total = int(run.summary.get(SPLITS[group.split][1]) or 0)
    if not total:
        return math.nan, math.nan, "-"
    return (*stats.wilson_interval(round(accuracies[0] * total), total), "Wilson (one run)")


def p_value_against(group: Group, best: Group) -> tuple[float, str]:
    """The p-value of the difference from the best group, and the test that gave it."""
    a, b = group.accuracies, best.accuracies
    if len(a) >= 2 and len(b) >= 2:
        return stats.welch_p_value(a, b), "Welch t"
    if len(a) == 1 and len(b) == 1:
        if group.split != "test":
            return math.nan, "- (per-image predictions are kept for the test set only)"
        mine, theirs = correctness(group.finished[0]), correctness(best.finished[0])
        if mine is None or theirs is None or mine.shape != theirs.shape:
            return math.nan, "- (no predictions.csv on the same test set)"
        return stats.mcnemar_exact_p_value(mine, theirs), "McNemar exact"
    many, single = (a, b[0]) if len(a) > 1 else (b, a[0])
    return stats.one_sample_p_value(many, single), "one-sample t"


LEADERBOARD_COLUMNS = [
    "group", "n_runs", "mean_acc", "std_acc", "min_acc", "max_acc", "ci95_low", "ci95_high", "interval",
    "p_value_vs_best", "p_holm", "test", "significant_at_5pct", "detectable_diff_80pct", "split", "mean_val_acc",
    "mean_test_acc", "mean_time_s", "mean_ece", "mean_ece_scaled",
]  # fmt: skip


def leaderboard(groups: list[Group]) -> pd.DataFrame:
    """One row per group that has a finished run, best mean final accuracy (on the groups' split) first.

    ``p_holm`` is each p-value against the best group, Holm-corrected over those comparisons, and
    ``significant_at_5pct`` reads it; ``detectable_diff_80pct`` is the smallest difference a t-test
    of this group against the best, with their runs and the pooled spread of every group, would
    detect at 80% power at Holm's strictest level (5% / comparisons).
    """
    scored = sorted((g for g in groups if g.finished), key=lambda g: -np.mean(g.accuracies))
    if not scored:  # its header alone, so that leaderboard.csv reads back (no run finished, none validated)
        return pd.DataFrame(columns=LEADERBOARD_COLUMNS)
    best = scored[0]
    tests = [p_value_against(g, best) for g in scored[1:]]
    holm = stats.holm_adjusted([p for p, _ in tests])
    comparisons = sum(1 for p, _ in tests if p == p)
    spread = stats.pooled_std([g.accuracies for g in scored])
    rows = []
    for i, group in enumerate(scored):
        accuracies = group.accuracies
        low, high, how = interval(group)
        p_value, test = (math.nan, "best") if i == 0 else tests[i - 1]
        p_holm = math.nan if i == 0 else holm[i - 1]
        detectable = (
            stats.detectable_difference(spread, len(accuracies), len(best.accuracies), SIGNIFICANCE / comparisons)
            if i and comparisons
            else math.nan
        )
        rows.append({
            "group": group.label,
            "n_runs": len(accuracies),
            "mean_acc": np.mean(accuracies),
            "std_acc": stats.sample_std(accuracies),
            "min_acc": min(accuracies),
            "max_acc": max(accuracies),
            "ci95_low": low,
            "ci95_high": high,
            "interval": how,
            "p_value_vs_best": p_value,
            "p_holm": p_holm,
            "test": test,
            "significant_at_5pct": "" if i == 0 else ("yes" if p_holm < SIGNIFICANCE else "no"),
            "detectable_diff_80pct": detectable,
            "split": group.split,
            "mean_val_acc": group.mean_of("final_val_acc"),
            "mean_test_acc": group.mean_of("final_test_acc"),
            "mean_time_s": np.mean([r.summary.get("total_time_s") or math.nan for r in group.finished]),
            "mean_ece": group.mean_of("ece"),
            "mean_ece_scaled": group.mean_of("ece_scaled"),
        })  # fmt: skip
    return pd.DataFrame(rows, columns=LEADERBOARD_COLUMNS)


def _level(comparisons: int) -> str:
    """Holm's strictest level in words: '5%' for one comparison, '5% / 3 = 1.67% for 3 comparisons'."""
    if comparisons == 1:
        return "5% (one comparison)"
    return f"5% / {comparisons} = {100 * SIGNIFICANCE / comparisons:.2g}% ({comparisons} comparisons)"


def power_statement(board: pd.DataFrame, groups: list[Group]) -> str | None:
    """One sentence: how small a difference these seeds could tell apart, and at what level."""
    comparisons = int(board["p_holm"].notna().sum()) if len(board) else 0
    seeded = [g for g in groups if len(g.accuracies) >= 2]
    if not comparisons or not seeded:
        return None
    spread = stats.pooled_std([g.accuracies for g in seeded])
    n = min(len(g.accuracies) for g in seeded)
    strict = stats.detectable_difference(spread, n, n, SIGNIFICANCE / comparisons)
    loose = stats.detectable_difference(spread, n, n, SIGNIFICANCE)
    return (
        f"With {n} runs per group and a pooled seed-to-seed standard deviation of {100 * spread:.2f} points, "
        f"a t-test detects (at 80% power) a true difference of {100 * strict:.2f} points or more at Holm's strictest "
        f"level, {_level(comparisons)}, and {100 * loose:.2f} points at an uncorrected 5%. Smaller differences "
        "may well be real; these runs cannot tell them."
    )


def split_of(board: pd.DataFrame) -> str:
    """The split a leaderboard ranks (boards written before there was a choice rank the test set)."""
    return str(board["split"].iloc[0]) if "split" in board and len(board) else "test"


def counted(n: int, noun: str) -> str:
    """``1 run``, ``3 runs``: a count and its noun, singular for one."""
    return f"{n} {noun}{'s' if n != 1 else ''}"


def verdict(board: pd.DataFrame, reference: str | None = None) -> str | None:
    """The comparison's answer in one sentence, from the leaderboard: who leads whom by how much, how
    sure that is, and how many seeds would settle it. The leader is compared with the runner-up, or
    with ``reference`` (a group's label: a search's baseline) when that is in the board."""
    if board.empty:
        return None
    top, split = board.iloc[0], split_of(board)
    if len(board) == 1:
        return (
            f"One group: {top.group}, {100 * top.mean_acc:.2f}% final {split} accuracy over "
            f"{counted(top.n_runs, 'run')} (95% interval {100 * top.ci95_low:.2f} to {100 * top.ci95_high:.2f}%)."
        )
    others = board[board["group"] == reference] if reference in set(board["group"]) and top.group != reference else []
    second = others.iloc[0] if len(others) else board.iloc[1]
    lead = 100 * (top.mean_acc - second.mean_acc)
    comparisons = int(board["p_holm"].notna().sum())
    said = {label: label + (" (the reference)" if label == reference else "") for label in (top.group, second.group)}
    sentence = (
        f"{said[top.group]} leads {said[second.group]} by {lead:.2f} points of final {split} accuracy "
        f"({100 * top.mean_acc:.2f}% vs {100 * second.mean_acc:.2f}%, {top.n_runs} and {counted(second.n_runs, 'run')})"
    )
    if second.p_holm != second.p_holm:  # NaN: no test was possible
        return sentence + f"; no test could compare them ({second.test})."
    significant = "significant" if second.p_holm < SIGNIFICANCE else "not significant"
    sentence += f"; Holm p = {second.p_holm:.2g} ({second.test}), {significant} at {_level(comparisons)}"
    seeded = board[board["n_runs"] >= 2]  # the seed-to-seed spread pooled over the groups that have one
    spread = (
        math.sqrt(((seeded["n_runs"] - 1) * seeded["std_acc"] ** 2).sum() / (seeded["n_runs"] - 1).sum())
        if len(seeded)
        else math.nan
    )
    if spread == spread and second.detectable_diff_80pct == second.detectable_diff_80pct:
        n = min(top.n_runs, second.n_runs)
        needed = stats.runs_to_detect(lead / 100, spread, SIGNIFICANCE / comparisons)
        sentence += f"; {n} seeds detect only differences of {100 * second.detectable_diff_80pct:.2f} points or more"
        if second.p_holm >= SIGNIFICANCE:
            sentence += (
                f", and about {needed} seeds per group would detect {lead:.2f} (at 80% power)"
                if needed
                else f", and no practical number of seeds would detect {lead:.2f}"
            )
    elif second.p_holm >= SIGNIFICANCE:
        sentence += "; run 2 or more seeds per group to measure how much runs vary"
    rest = len(board) - 2
    return sentence + (f". {counted(rest, 'more group')} in the leaderboard." if rest else ".")


def time_to_target(groups: list[Group], target: float) -> pd.DataFrame:
    """Per group: how many of its runs reached ``target`` accuracy on the groups' split, after how many
    epochs and seconds of training (mean over those that did)."""
    rows = []
    for group in groups:
        epochs, seconds = [], []
        column = SPLITS[group.split][2]
        for record in group.records:
            m = record.metrics
            if m.empty or column not in m:
                continue
            reached = m.index[m[column] >= target]
            if len(reached):
                epochs.append(int(m.loc[reached[0], "epoch"]))
                seconds.append(float(m.loc[: reached[0], "epoch_time_s"].sum()))
        rows.append({
            "group": group.label,
            "reached": f"{len(epochs)}/{len(group.records)}",
            "epochs": np.mean(epochs) if epochs else math.nan,
            "training seconds": np.mean(seconds) if seconds else math.nan,
        })  # fmt: skip
    return pd.DataFrame(rows)


def per_class_heat(groups: list[Group], best_label: str | None) -> str | None:
    """Mean per-class accuracy (%) per group as a heat table, and each group's difference to the best; with
    many classes, the ones the best group finds hardest."""
    columns = {}
    for group in groups:
        analyzed = [r.summary["per_class_acc"] for r in group.records if r.summary.get("per_class_acc")]
        if analyzed:
            columns[group.label] = 100 * pd.DataFrame(analyzed).mean()
    if not columns:
        return None
    frame = pd.DataFrame(columns).rename_axis("class")
    if len(frame) > MAX_CLASSES_SHOWN and best_label in frame:  # the classes the best group finds hardest
        frame = frame.sort_values(best_label).head(MAX_CLASSES_SHOWN)
    if best_label in frame:
        for label in [c for c in frame.columns if c != best_label]:
            frame[f"{label} - best"] = frame[label] - frame[best_label]
    accuracy_cols = list(columns)
    diff_cols = [c for c in frame.columns if c not in columns]
    styler = frame.style.format("{:.1f}").background_gradient(cmap="RdYlGn", subset=accuracy_cols, axis=None)
    if diff_cols:
        limit = max(1.0, float(np.nanmax(np.abs(frame[diff_cols].to_numpy()))))
        styler = styler.background_gradient(cmap="RdBu", subset=diff_cols, vmin=-limit, vmax=limit)
    return styler.set_table_attributes('class="table"').to_html()


def best_cam_methods(groups: list[Group]) -> str | None:
    """Each group's best class activation map method per layer (``summary.json``'s ``cam_ranking``, from
    an analysis with two or more methods): the method its runs ranked first most often, and in how many
    of its compared runs."""
    rows = []
    for group in groups:
        bests = [r.summary["cam_ranking"]["best"] for r in group.records if r.summary.get("cam_ranking")]
        if not bests:
            continue
        row = {"group": group.label}
        for layer in dict.fromkeys(layer for best in bests for layer in best):
            firsts = pd.Series([best[layer] for best in bests if layer in best]).value_counts()
            row[layer] = f"{firsts.index[0]} ({firsts.iloc[0]} of {len(bests)} runs)"
        rows.append(row)
    if not rows:
        return None
    return pd.DataFrame(rows).to_html(index=False, border=0, classes="table", na_rep="-")


def _number(value: float, form: str) -> str:
    return format(value, form) if value == value else "-"  # NaN: not available


def _format_leaderboard(board: pd.DataFrame) -> str:
    """The leaderboard as people read it, narrow enough for a 1400-pixel page: percentages, mean ± std,
    the interval and how it was made, the Holm-corrected p-value, its test and its verdict; beside the
    ranked split's accuracy, the other split's."""
    split = split_of(board)
    other, other_column = ("val acc (%)", "mean_val_acc") if split == "test" else ("test acc (%)", "mean_test_acc")
    rows = []
    for r in board.itertuples():
        p_value = (
            "best" if r.test == "best" else f"{_number(r.p_holm, '.3g')} (raw {_number(r.p_value_vs_best, '.3g')})"
        )
        rows.append(
            {
                "group": r.group,
                "runs": r.n_runs,
                f"final {split} acc (%)": f"{100 * r.mean_acc:.2f}"
                + (f" ± {100 * r.std_acc:.2f}" if r.n_runs > 1 else ""),
                "95% interval (%)": f"{_number(100 * r.ci95_low, '.2f')} to {_number(100 * r.ci95_high, '.2f')} "
                f"({r.interval})",
                "p vs best, Holm": p_value,
                "test": "" if r.test == "best" else r.test,
                "significant?": r.significant_at_5pct,
                "detectable (points)": _number(100 * r.detectable_diff_80pct, ".2f"),
                other: _number(100 * getattr(r, other_column), ".2f"),
                "ECE, scaled": f"{_number(r.mean_ece, '.3f')}, {_number(r.mean_ece_scaled, '.3f')}",
                "time (s)": _number(r.mean_time_s, ".0f"),
            }
        )
    return pd.DataFrame(rows).to_html(index=False, border=0, classes="table leaderboard", escape=True)


def spans_decades(series: dict[str, list], decades: float = 2.0) -> bool:
    """Whether the curves' positive values span more than ``decades`` orders of magnitude (then a log axis
    shows them all: AdamW's 2e-3 beside SGD's 0.2 would sit on the zero line)."""
    values = np.concatenate([np.asarray(y, dtype=float) for runs in series.values() for _, y in runs] or [[]])
    positive = values[values > 0]
    return bool(len(positive)) and float(positive.max() / positive.min()) > 10**decades


def report_link(record: RunRecord, out: Path) -> str | None:
    """The run's report.html as a link relative to the comparison's page, or None when it has none."""
    report = RunFiles(record.run_dir).report
    return os.path.relpath(report.resolve(), out.resolve().parent) if report.is_file() else None


def update_ratios(groups: list[Group], layer: str) -> dict[str, list]:
    """Per group, each run's (iteration, update/weight ratio) of ``layer`` from weights.csv."""
    found = {
        g.label: [(w["iteration"], w["update_ratio"]) for w in (r.weights[r.weights["layer"] == layer]
                  for r in g.records if not r.weights.empty) if not w.empty]
        for g in groups
    }  # fmt: skip
    return {label: runs for label, runs in found.items() if runs}


def comparison_context(
    records: list[RunRecord],
    groups: list[Group],
    board: pd.DataFrame,
    out: Path,
    layer: str = DEFAULT_LAYER,
    reference: str | None = None,
) -> dict[str, Any]:
    best = board["group"].iloc[0] if len(board) else None
    split = groups[0].split if groups else "test"
    figure_dir = out.parent / (out.stem + "_figures")
    devices = sorted({str(r.summary.get("device", "?")) for r in records})
    commits = sorted({str(r.summary.get("git_commit") or "no git")[:12] for r in records})
    footer = f"{len(records)} runs in {len(groups)} groups | {out} | {'; '.join(devices)} | commit {', '.join(commits)}"

    def bands(column: str, scale: float, source: str = "metrics") -> dict[str, list]:
        x_column = "epoch" if source == "metrics" else "iteration"

        def has(frame: pd.DataFrame) -> bool:  # a run without a validation split has no val_acc to draw
            return column in frame and frame[column].notna().any()

        found = {
            g.label: [(getattr(r, source)[x_column], scale * getattr(r, source)[column]) for r in g.records
                      if has(getattr(r, source))]
            for g in groups
        }  # fmt: skip
        return {label: runs for label, runs in found.items() if runs}

    def figure(name: str, make: Any, *args: Any, **kwargs: Any) -> str | None:
        return embed_png(make(*args, figure_dir / f"{name}.png", footer=footer, **kwargs)) if args[0] else None

    target = math.floor(90 * board["mean_acc"].iloc[0]) / 100 if len(board) else None
    lr_bands = bands("lr", 1, "lr")
    intervals = {row.group: (row.ci95_low, row.ci95_high) for row in board.itertuples()}
    spread = {g.label: g.accuracies for g in groups if g.label in intervals}
    return {
        "title": f"Comparison of {counted(len(records), 'run')} in {counted(len(groups), 'group')}",
        "split": split,
        "split_key": SPLITS[split][0],
        "verdict": verdict(board, reference),
        "report_links": {str(r.run_dir): report_link(r, out) for r in records},
        "records": records,
        "groups": groups,
        "differing": differing_keys(records),
        "leaderboard": _format_leaderboard(board) if len(board) else None,
        "spread_png": figure("spread", figures.spread_plot, spread, intervals),
        "accuracy_png": figure("test_accuracy", figures.band_curves, bands("test_acc", 100), "test accuracy (%)"),
        "val_accuracy_png": figure(
            "val_accuracy", figures.band_curves, bands("val_acc", 100), "validation accuracy (%)"
        ),
        "power": power_statement(board, groups),
        "loss_png": figure("train_loss", figures.band_curves, bands("train_loss", 1), "train loss"),
        "lr_png": figure(
            "lr", figures.band_curves, lr_bands, "learning rate", xlabel="iteration", log_y=spans_decades(lr_bands)
        ),
        "layer": layer,
        "updates_png": figure(
            "update_ratio",
            figures.band_curves,
            update_ratios(groups, layer),
            f"{layer}: ‖update‖ / ‖weights‖",
            xlabel="iteration",
            log_y=True,
        ),  # fmt: skip
        "target": target,
        "time_to_target": time_to_target(groups, target).to_html(
            index=False, border=0, classes="table", na_rep="-", float_format="{:.1f}".format
        )
        if target
        else None,
        "per_class": per_class_heat(groups, best),
        "cam_methods": best_cam_methods(groups),
        "generated": utc_now(),
    }


def render_comparison(
    run_dirs: list[Path],
    out: Path,
    layer: str = DEFAULT_LAYER,
    reference: str | None = None,
    rank_on: str = "test",
) -> Path:
    """``out`` (HTML) and ``leaderboard.csv`` beside it, ranking and testing the final accuracy on
    ``rank_on`` (a key of ``SPLITS``); ``layer``'s update/weight ratios overlaid; the first sentence
    measures the leader against ``reference`` (a group's label) when given."""
    if rank_on not in SPLITS:
        raise HarnessError(f"rank_on = {rank_on!r}: expected one of {', '.join(SPLITS)}")
    records = [load_run(d) for d in run_dirs]
    groups = group_runs(records, rank_on)
    board = leaderboard(groups)
    atomic_io.write_text(out.parent / "leaderboard.csv", board.to_csv(index=False))
    html = (
        environment()
        .get_template("compare.html.j2")
        .render(**comparison_context(records, groups, board, out, layer, reference))
    )
    return atomic_io.write_text(out, html)
