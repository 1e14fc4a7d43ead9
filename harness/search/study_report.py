"""What a search leaves for the user to open: ``trials.csv``, ``study.html`` (self-contained: the
optimization history, parameter importances by Optuna's fANOVA, a slice plot per parameter, the
validation curves of complete and pruned trials) and ``best.yaml``, the best trial as an experiment.

Everything here reads the study's storage and validation metrics only; the test set is reported by
the confirmation runs (``--confirm``), not here.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
from matplotlib.ticker import MaxNLocator
from optuna.trial import FrozenTrial, TrialState

from harness.analysis.figures import plt, save_figure
from harness.config import dump_config
from harness.core import atomic_io
from harness.core.errors import redact
from harness.core.provenance import git_commit
from harness.core.run_folder import utc_now
from harness.reporting.html import embed_png, environment
from harness.search.progress import retries
from harness.search.space import CategoricalDistribution, IntDistribution, Search

COLUMNS = ["number", "state", "value", "epochs", "time_s", "run_dir"]


def trial_state(trial: FrozenTrial, retried: set[int]) -> str | None:
    """The state in words; None for a surplus trial (asked beyond the budget, never run)."""
    if trial.state == TrialState.FAIL:
        if trial.user_attrs.get("surplus"):
            return None
        if trial.user_attrs.get("interrupted"):
            return "interrupted"
        return "retried" if trial.number in retried else "failed"
    return {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned"}.get(trial.state, trial.state.name.lower())


def trials_table(study: optuna.Study, search: Search) -> pd.DataFrame:
    """A row per trial that ran or runs: ``number, state, value, epochs, time_s, run_dir``, a column
    per parameter, then where a retry came from and why a trial failed."""
    trials = study.get_trials(deepcopy=False)
    retried = set(retries(trials))
    rows = []
    for trial in trials:
        state = trial_state(trial, retried)
        if state is None:
            continue
        row = {
            "number": trial.number,
            "state": state,
            "value": trial.value if trial.state == TrialState.COMPLETE else math.nan,
            "epochs": trial.user_attrs.get("epochs"),
            "time_s": trial.user_attrs.get("time_s"),
            "run_dir": trial.user_attrs.get("run_dir", ""),
        }
        row.update({key: trial.params.get(key) for key in search.space})
        origin = trial.system_attrs.get("failed_trial", trial.user_attrs.get("resumes"))
        row["retry_of"] = origin if origin is not None else ""
        row["error"] = trial.user_attrs.get("error", "")
        rows.append(row)
    return pd.DataFrame(rows, columns=[*COLUMNS, *search.space, "retry_of", "error"])


def lost_baseline(study: optuna.Study, search: Search) -> FrozenTrial | None:
    """The baseline's last attempt when the search has one (``baseline_first``) and no attempt of it is
    complete, pruned, running or queued: the study cannot say whether anything beats the recipe."""
    if not search.spec.baseline_first:
        return None
    attempts = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("baseline")]
    if not attempts or any(t.state != TrialState.FAIL for t in attempts):
        return None
    return max(attempts, key=lambda t: t.number)


def completed_baseline(study: optuna.Study) -> FrozenTrial | None:
    """The baseline's complete attempt (the base's own values), or None."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.user_attrs.get("baseline")]
    return done[0] if done else None


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    best = top_trials(study, 1)
    return best[0] if best else None


def top_trials(study: optuna.Study, count: int) -> list[FrozenTrial]:
    """The ``count`` best complete trials, best first (by the study's direction)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    sign = -1 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1
    return sorted(complete, key=lambda t: (sign * t.value, t.number))[:count]


def trial_experiment(search: Search, trial: FrozenTrial, extra: list[str], name: str) -> str:
    """A trial as a ready experiment file named ``name``, at the base's full budget
    (``trial_overrides`` left out; the command line's ``--set`` kept: it applied to every run of the
    search), under a header saying where it came from: best.yaml, and each confirmation's config."""
    cfg = search.config(dict(trial.params), for_trial=False, extra=extra)
    tracked = cfg.logging.mlflow
    if tracked is not None:  # the file's runs go into the search's MLflow experiment, not one of their own name
        experiment = tracked.model_copy(update={"experiment": tracked.experiment or cfg.name})
        cfg = cfg.model_copy(update={"logging": cfg.logging.model_copy(update={"mlflow": experiment})})
    cfg = cfg.model_copy(update={"name": name})
    changed = ", ".join(f"{k}={v!r}" for k, v in trial.params.items())
    header = [
        f"# Trial {trial.number} of the search {search.path} (study {search.name!r}):",
        f"# {search.spec.objective.metric} = {trial.value:.4f} on the validation split.",
        f"# Its parameters: {changed}.",
        f"# Trials ran with {search.spec.trial_overrides or 'no trial_overrides'}; this file runs the base's budget.",
        *([f"# With the search's --set {' '.join(extra)}"] if extra else []),
        f"# Written {utc_now()} at commit {git_commit() or 'unknown'}. Run: python -m harness.run <this file>",
    ]
    return "\n".join(header) + "\n" + dump_config(cfg)


# ---------------------------------------------------------------- figures


def history_figure(study: optuna.Study, path: Path, footer: str, metric: str) -> Path | None:
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    pruned = [t for t in trials if t.state == TrialState.PRUNED and t.intermediate_values]
    if not complete and not pruned:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.6))
    if complete:
        numbers = [t.number for t in complete]
        ax.scatter(numbers, [t.value for t in complete], color="#3b5bdb", label="complete", zorder=3)
        maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
        values = np.array([t.value for t in complete])
        best = np.maximum.accumulate(values) if maximize else np.minimum.accumulate(values)
        ax.step(numbers, best, where="post", color="#d9480f", label="best so far")
    if pruned:
        last = [t.intermediate_values[max(t.intermediate_values)] for t in pruned]
        ax.scatter([t.number for t in pruned], last, marker="x", color="#868e96", label="pruned (last reported)")
    baseline = [t for t in complete if t.user_attrs.get("baseline")]
    if baseline:
        ax.axhline(baseline[0].value, color="#2b8a3e", linestyle="--", linewidth=1, label="baseline (the recipe)")
    ax.set_xlabel("trial")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Optimization history", fontsize=10)
    return save_figure(fig, path, footer)


def importance_figure(study: optuna.Study, path: Path, footer: str) -> tuple[Path | None, str | None]:
    """Parameter importances by fANOVA over the complete trials; or why there are none."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2:
        return None, f"{len(complete)} complete trial(s): fANOVA needs at least 2"
    try:
        importances = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0)
        )
    except (RuntimeError, ValueError) as error:
        return None, f"fANOVA could not rank the parameters ({error})"
    names = list(importances)[::-1]
    fig, ax = plt.subplots(figsize=(6, 0.5 + 0.45 * len(names)))
    ax.barh(names, [importances[n] for n in names], color="#3b5bdb")
    ax.set_xlabel("importance (fANOVA, share of the objective's variance)")
    ax.grid(alpha=0.3, axis="x")
    return save_figure(fig, path, footer), None


def slice_figure(study: optuna.Study, search: Search, path: Path, footer: str, metric: str) -> Path | None:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return None
    keys = list(search.space)
    columns = min(3, len(keys))
    rows = math.ceil(len(keys) / columns)
    # Constrained layout: titles, tick labels and the colour bar never overlap a neighbouring panel.
    fig, axes = plt.subplots(rows, columns, figsize=(4.6 * columns, 3.4 * rows), squeeze=False, layout="constrained")
    for ax, key in zip(axes.flat, keys, strict=False):
        dist = search.space[key]
        values = [t.value for t in complete]
        if isinstance(dist, CategoricalDistribution):
            labels = [str(c) for c in dist.choices]
            xs = [labels.index(str(t.params.get(key))) for t in complete]
            ax.set_xticks(range(len(labels)), labels, rotation=30 if max(map(len, labels)) > 6 else 0)
        else:
            xs = [t.params.get(key) for t in complete]
            if dist.log:
                ax.set_xscale("log")
            elif isinstance(dist, IntDistribution):
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        points = ax.scatter(xs, values, c=[t.number for t in complete], cmap="viridis", s=28)
        ax.set_title(key, fontsize=9)
        ax.set_ylabel(metric, fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    bar = fig.colorbar(points, ax=axes, label="trial", shrink=0.8)
    bar.locator = MaxNLocator(integer=True)
    bar.update_ticks()
    return save_figure(fig, path, footer)


def curves_figure(study: optuna.Study, path: Path, footer: str, reported: str) -> Path | None:
    """The ``reported`` validation metric (``accuracy`` or ``loss``) per epoch of every trial:
    complete ones in colour, pruned ones grey."""
    shown = [t for t in study.get_trials(deepcopy=False) if t.intermediate_values and t.state in
             (TrialState.COMPLETE, TrialState.PRUNED)]  # fmt: skip
    if not shown:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for t in shown:
        steps = sorted(t.intermediate_values)
        values = [t.intermediate_values[s] for s in steps]
        if t.state == TrialState.PRUNED:
            ax.plot(steps, values, color="#adb5bd", linewidth=1, marker="x", markersize=4)
        else:
            ax.plot(steps, values, linewidth=1.5, marker="o", markersize=3, label=f"trial {t.number}")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(f"validation {reported}")
    ax.grid(alpha=0.3)
    ax.set_title("Complete (colour) and pruned (grey, x) trials", fontsize=10)
    if sum(t.state == TrialState.COMPLETE for t in shown) <= 12:
        ax.legend(fontsize=7, ncol=2)
    return save_figure(fig, path, footer)


# ---------------------------------------------------------------- the files


def write_outputs(study: optuna.Study, search: Search, out: Path, storage_url: str, extra: list[str]) -> dict[str, Any]:
    """trials.csv, study.html and best.yaml in ``out``; returns what was written."""

    table = trials_table(study, search)
    atomic_io.write_text(out / "trials.csv", table.to_csv(index=False))
    metric = search.spec.objective.metric
    reported = "loss" if metric == "final_val_loss" else "accuracy"  # what the pruner saw each epoch
    trials = study.get_trials(deepcopy=False)
    devices = sorted({str(t.user_attrs["device"]) for t in trials if t.user_attrs.get("device")}) or ["no trial ran"]
    commits = sorted({str(t.user_attrs["commit"])[:12] for t in trials if t.user_attrs.get("commit")}) or ["?"]
    footer = f"{search.path} | study {search.name} | {'; '.join(devices)} | commit {', '.join(commits)}"
    figure_dir = out / "study_figures"
    importance_png, importance_note = importance_figure(study, figure_dir / "importance.png", footer)
    best = best_trial(study)
    written = {"trials.csv": out / "trials.csv"}
    if best is not None:
        best_file = trial_experiment(search, best, extra, f"{search.name}-best")
        written["best.yaml"] = atomic_io.write_text(out / "best.yaml", best_file)
    counts = table["state"].value_counts().to_dict() if len(table) else {}
    context = {
        "title": f"Search {search.name}: {len(table)} trials",
        "search": search,
        "metric": metric,
        "direction": search.spec.objective.direction,
        "storage": redact(storage_url),
        "counts": counts,
        "best": best,
        "lost_baseline": lost_baseline(study, search),
        "history_png": embed_if(history_figure(study, figure_dir / "history.png", footer, metric)),
        "importance_png": embed_if(importance_png),
        "importance_note": importance_note,
        "slice_png": embed_if(slice_figure(study, search, figure_dir / "slice.png", footer, metric)),
        "curves_png": embed_if(curves_figure(study, figure_dir / "curves.png", footer, reported)),
        "reported": reported,
        "trials": shown_trials(table, study).to_html(index=False, border=0, classes="table trials", na_rep="-"),
        "params": {k: short(v) for k, v in best.params.items()} if best is not None else {},
        "pruner_warning": search.pruner_warning(extra),
        "baseline": completed_baseline(study),
        "footer": footer,
        "generated": utc_now(),
    }
    html = environment().get_template("study.html.j2").render(**context)
    written["study.html"] = atomic_io.write_text(out / "study.html", html)
    return written


def short(value: Any) -> str:
    """A parameter as people read it: 3 significant figures (0.0721, not 0.07212150455100086)."""
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def shown_trials(table: pd.DataFrame, study: optuna.Study) -> pd.DataFrame:
    """The trials table narrow enough for a page: the baseline marked, numbers at 3 significant figures,
    a run folder by its name, an error by its first 80 characters (trials.csv has them whole)."""
    baselines = {t.number for t in study.get_trials(deepcopy=False) if t.user_attrs.get("baseline")}
    shown = table.copy()
    shown["number"] = [f"{n} (baseline)" if n in baselines else str(n) for n in shown["number"]]
    shown["run_dir"] = [Path(d).name if d else "" for d in shown["run_dir"]]
    shown["error"] = [e if len(str(e)) <= 80 else str(e)[:77] + "..." for e in shown["error"].fillna("")]
    for column in shown.columns:
        if shown[column].dtype.kind == "f":
            shown[column] = [short(v) if v == v else "-" for v in shown[column]]
    return shown


def embed_if(path: Path | None) -> str | None:
    return embed_png(path) if path is not None else None
