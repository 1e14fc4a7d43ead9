"""What the engine's trials run: a search's trials (sampled configs, pruned on validation accuracy)
and a sweep's (every planned config and seed, exactly once)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from harness.config import Config, load_config
from harness.search.engine import Job, frozen, retrying, trials_by_state
from harness.search.space import Search

# The states that use up a search's budget: a failed or interrupted trial gives its place back.
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def trial_folder(out: Path, number: int) -> Path:
    return out / f"trial-{number:04d}"


class SearchPlan:
    """Trials of a search file: each a run of the base experiment with sampled parameters, at the
    trials' budget, reporting validation accuracy every epoch for pruning; ``search.trials`` of
    them complete or pruned."""

    kind = "search"
    prunes = True

    def __init__(self, search: Search, out: Path, extra: list[str]) -> None:
        self.search, self.out, self.extra = search, out, extra
        self.reported_metric = "loss" if search.spec.objective.metric == "final_val_loss" else "accuracy"

    def queue_baseline(self, study: optuna.Study) -> None:
        """Queue the base's own values (``baseline_first``) when the study has no trial yet, marked
        ``baseline``. The caller holds the storage's lock (``exclusive``): two commands that start
        together on a new study queue one baseline."""
        if not self.search.spec.baseline_first or retrying("reading the trials", lambda: study.get_trials()):
            return
        params = self.search.base_params(self.extra)
        retrying("queueing the base's own values", lambda: study.enqueue_trial(params, user_attrs={"baseline": True}))

    def state(self, study: optuna.Study) -> str:
        trials = trials_by_state(study)
        finished = sum(len(trials[s]) for s in FINISHED)
        if finished >= self.search.trials:
            return "done"
        if trials[TrialState.WAITING]:
            return "ask"
        return "wait" if finished + len(trials[TrialState.RUNNING]) >= self.search.trials else "ask"

    def _surplus(self, study: optuna.Study, trial: optuna.Trial) -> bool:
        """Asked beyond the budget by a worker that raced another: trials before it already fill it."""
        if frozen(study, trial).system_attrs.get("fixed_params"):
            return False  # a retried or resumed trial takes the place its original gave back
        trials = retrying("reading the trials", lambda: study.get_trials(deepcopy=False))
        before = [t for t in trials if t.number < trial.number]
        return sum(t.state in (*FINISHED, TrialState.RUNNING) for t in before) >= self.search.trials

    def job(self, study: optuna.Study, trial: optuna.Trial) -> Job | None:
        if self._surplus(study, trial):
            return None
        params = self.search.suggest(trial)
        run_dir = Path(trial.user_attrs.get("run_dir") or trial_folder(self.out, trial.number))
        return Job(run_dir, self.search.config(params, for_trial=True, extra=self.extra), params)

    def value(self, summary: dict[str, Any]) -> float | None:
        value = summary.get(self.search.spec.objective.metric)
        return float(value) if isinstance(value, int | float) else None

    def failure_ends_trial(self) -> bool:
        return False

    def after(self, job: Job) -> None:
        pass


@dataclass
class SweepRun:
    """One (config, seed) pair of a sweep: its file, its seed and its run folder."""

    config: Path
    seed: int
    run_dir: Path

    @property
    def name(self) -> str:
        return self.run_dir.name

    def experiment(self, overrides: list[str]) -> Config:
        """The file's config with the sweep's ``--set`` overrides and this run's seed."""
        return load_config(self.config, [*overrides, f"seed={self.seed}"])


class SweepPlan:
    """Trials of a sweep: one per planned run, queued by name; a worker asks for queued trials only,
    so every run is run once (its folder's lock refuses a second, its status skips a finished one)."""

    kind = "sweep"
    prunes = False
    reported_metric = "accuracy"

    def __init__(self, runs: list[SweepRun], overrides: list[str], after_run: Callable[[], None]) -> None:
        self.runs = {run.name: run for run in runs}
        self.overrides = overrides
        self.after_run = after_run

    def queue(self, study: optuna.Study, finished: set[str]) -> int:
        """Queue every planned run that is neither finished nor already queued or running; returns how many.

        A queued trial carries its run by name in its user attributes, not as a parameter: the set of
        names changes with the command (other files, other seeds), and a parameter's choices may not."""
        trials = trials_by_state(study)
        pending = {t.user_attrs.get("run") for s in (TrialState.WAITING, TrialState.RUNNING) for t in trials[s]}
        queued = 0
        for name, run in self.runs.items():
            if name not in finished and name not in pending:
                study.enqueue_trial({}, user_attrs={"run": name, "run_dir": str(run.run_dir)})
                queued += 1
        return queued

    def state(self, study: optuna.Study) -> str:
        trials = trials_by_state(study)
        if trials[TrialState.WAITING]:
            return "ask"
        return "wait" if trials[TrialState.RUNNING] else "done"

    def job(self, study: optuna.Study, trial: optuna.Trial) -> Job | None:
        name = trial.user_attrs.get("run")
        if name not in self.runs:
            return None  # not one of the queued runs: asked after the queue ran dry
        run = self.runs[name]
        return Job(run.run_dir, run.experiment(self.overrides), attrs={"run": name})

    def value(self, summary: dict[str, Any]) -> float | None:
        # A sweep decides nothing: the value only records the validation accuracy (0 without a split).
        value = summary.get("final_val_acc")
        return float(value) if isinstance(value, int | float) else 0.0

    def failure_ends_trial(self) -> bool:
        return True

    def after(self, job: Job) -> None:
        self.after_run()
