"""What the search and sweep commands print while their workers run: a status line on every change
of a trial's state (``trials: 4 of 10 done (1 pruned), 0 failed, 2 running, best final_val_acc
0.8123 (trial 3), ETA 12 min``), read from the study's storage as ``engine.supervise`` polls it.

The ETA is the mean wall time of the trials finished so far (complete or pruned: a search's later
trials are pruned about as often as its earlier ones), for each trial still to start and for what
is left of each running one, spread over the workers."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from optuna.trial import FrozenTrial, TrialState

from harness.core.durations import format_duration

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def retries(trials: list[FrozenTrial]) -> dict[int, int]:
    """Each failed trial that was queued again, with the number of the trial that took it over (a
    stale trial retried by Optuna, or an interrupted one resumed by a later command)."""
    taken_over: dict[int, int] = {}
    for trial in trials:
        origin = trial.system_attrs.get("failed_trial", trial.user_attrs.get("resumes"))
        if origin is not None:
            taken_over[origin] = trial.number
    return taken_over


def counted(trial: FrozenTrial) -> bool:
    """Whether a trial is one of the study's own: a surplus trial never ran, and an interrupted one
    is queued again as a new trial that resumes it."""
    return not trial.user_attrs.get("surplus") and not trial.user_attrs.get("interrupted")


@dataclass
class StudyStatus:
    """Where a study stands: ``total`` units of work (a search's trials, a sweep's runs), each
    represented by its latest trial (``trials``) or, when done before the study knew it, in ``done_before``."""

    noun: str
    total: int
    trials: list[FrozenTrial]
    done_before: int = 0
    failure_ends: bool = False  # a sweep's failed run is done with; a search's failed trial gives its place back
    metric: str | None = None  # a search's objective; a sweep decides nothing, and shows no best
    maximize: bool = True

    def count(self, *states: TrialState) -> int:
        return sum(trial.state in states for trial in self.trials)

    def best(self) -> FrozenTrial | None:
        complete = [trial for trial in self.trials if trial.state == TrialState.COMPLETE and trial.value is not None]
        pick = max if self.maximize else min
        return pick(complete, key=lambda trial: trial.value) if complete else None

    def eta_s(self, workers: int, now: datetime) -> float | None:
        durations = [
            (trial.datetime_complete - trial.datetime_start).total_seconds()
            for trial in self.trials
            if trial.state in FINISHED and trial.datetime_start and trial.datetime_complete
        ]
        if not durations:
            return None
        mean = sum(durations) / len(durations)
        running = [trial for trial in self.trials if trial.state == TrialState.RUNNING]
        finished = self.done_before + self.count(*FINISHED) + (self.count(TrialState.FAIL) if self.failure_ends else 0)
        to_start = max(0, self.total - finished - len(running))
        left = [
            max(0.0, mean - (now - trial.datetime_start).total_seconds()) for trial in running if trial.datetime_start
        ]
        return (sum(left) + to_start * mean) / max(workers, len(running), 1)

    def line(self, workers: int, now: datetime) -> str:
        done = self.done_before + self.count(*FINISHED)
        pruned = self.count(TrialState.PRUNED)
        parts = [
            f"{self.noun}: {done} of {self.total} done" + (f" ({pruned} pruned)" if self.metric else ""),
            f"{self.count(TrialState.FAIL)} failed",
            f"{self.count(TrialState.RUNNING)} running",
        ]
        best = self.best() if self.metric else None
        if best is not None:
            parts.append(f"best {self.metric} {best.value:.4f} (trial {best.number})")
        eta = self.eta_s(workers, now)
        if eta is not None and done < self.total:
            parts.append(f"ETA {format_duration(eta)}")
        return ", ".join(parts)


def latest_per_run(trials: list[FrozenTrial]) -> dict[str, FrozenTrial]:
    """A sweep's runs by name, each represented by its latest counted trial (a run queued again by a
    later command is a new trial)."""
    latest: dict[str, FrozenTrial] = {}
    for trial in sorted(trials, key=lambda t: t.number):
        name = trial.user_attrs.get("run")
        if name is not None and counted(trial):
            latest[name] = trial
    return latest
