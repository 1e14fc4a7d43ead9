"""The run folder on disk: its creation and lock, the CSV logs, and where the checkpoints are.

Training writes through this module; analysis, reports and sweeps read through it, without
importing any Ignite handler.
"""

from __future__ import annotations

import csv
import errno
import fcntl
import io
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from harness.core import atomic_io
from harness.core.errors import HarnessError
from harness.core.full_disk import reported_as_full_disk

METRICS_COLUMNS = [
    "epoch",
    "iteration",
    "lr",
    "train_loss",
    "train_acc",
    "val_loss",  # the validation split: what decides (empty without one, data.val_size: 0)
    "val_acc",
    "test_loss",  # the test set: what is reported
    "test_acc",
    "epoch_time_s",
    "train_images_per_s",
]
LR_COLUMNS = ["iteration", "epoch", "lr"]
WEIGHTS_COLUMNS = ["iteration", "epoch", "layer", "grad_norm", "weight_norm", "update_norm", "update_ratio"]
CHECKPOINT_PREFIX = "checkpoint"  # ignite names the files checkpoint_<iteration>.pt
BEST_PREFIX = "best"
TIMESTAMP = "%Y%m%d-%H%M%S"  # run, sweep and benchmark folders and files are named by their UTC start


@dataclass(frozen=True)
class RunFiles:
    """Where each file of a run folder is: the one place their names are written down."""

    root: Path

    @property
    def config(self) -> Path:  # the resolved config, read-only
        return self.root / "config.yaml"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.csv"

    @property
    def lr(self) -> Path:
        return self.root / "lr.csv"

    @property
    def weights(self) -> Path:
        return self.root / "weights.csv"

    @property
    def model_summary(self) -> Path:
        return self.root / "model_summary.txt"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def analysis(self) -> Path:
        return self.root / "analysis"

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    def read_summary(self) -> dict[str, Any]:
        """summary.json as a dict ({} when missing or unreadable)."""
        return atomic_io.read_json(self.summary)


def utc_timestamp() -> str:
    return datetime.now(timezone.utc).strftime(TIMESTAMP)


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def default_run_dir(name: str) -> Path:
    return Path("results") / name / utc_timestamp()


# ---------------------------------------------------------------- CSV logs


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def csv_text(columns: list[str], rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


class RunLog:
    """metrics.csv (a row per epoch), lr.csv (a row per iteration) and, with ``weights=True``,
    weights.csv (a row per block of the model and sampled iteration), rewritten atomically.

    On resume the rows past the checkpoint are dropped, so a crash never leaves a row twice or a gap.
    Only the process that owns the run folder writes (``write=False`` on the other ranks).
    """

    def __init__(self, run_dir: Path, write: bool = True, weights: bool = False) -> None:
        files = RunFiles(run_dir)
        self.metrics_path = files.metrics
        self.lr_path = files.lr
        self.weights_path = files.weights if weights else None
        self.write = write
        self.metrics_rows: list[dict[str, Any]] = []
        self.lr_rows: list[dict[str, Any]] = []
        self.weights_rows: list[dict[str, Any]] = []

    def restore(self, iteration: int, epoch_length: int) -> None:
        finished_epochs = iteration // epoch_length
        self.metrics_rows = [r for r in read_csv_rows(self.metrics_path) if int(r["epoch"]) <= finished_epochs]
        self.lr_rows = [r for r in read_csv_rows(self.lr_path) if int(r["iteration"]) <= iteration]
        if self.weights_path is not None:
            self.weights_rows = [r for r in read_csv_rows(self.weights_path) if int(r["iteration"]) <= iteration]

    def add_lr(self, iteration: int, epoch: int, lr: float) -> None:
        self.lr_rows.append({"iteration": iteration, "epoch": epoch, "lr": f"{lr:.8g}"})

    def add_epoch(self, row: dict[str, Any]) -> None:
        self.metrics_rows.append(row)

    def add_weights(self, rows: list[dict[str, Any]]) -> None:
        self.weights_rows.extend(rows)

    def best(self) -> tuple[float | None, int | None]:
        """The best validation accuracy and its epoch (the first, on a tie, as the best checkpoint keeps
        it); None without a validation split."""
        scored = [r for r in self.metrics_rows if r.get("val_acc") not in (None, "")]
        if not scored:
            return None, None
        best = max(scored, key=lambda r: float(r["val_acc"]))
        return float(best["val_acc"]), int(best["epoch"])

    def flush(self) -> None:
        if not self.write:
            return
        atomic_io.write_text(self.metrics_path, csv_text(METRICS_COLUMNS, self.metrics_rows))
        atomic_io.write_text(self.lr_path, csv_text(LR_COLUMNS, self.lr_rows))
        if self.weights_path is not None:
            atomic_io.write_text(self.weights_path, csv_text(WEIGHTS_COLUMNS, self.weights_rows))


# ---------------------------------------------------------------- checkpoints


def checkpoint_iteration(path: Path) -> int:
    return int(path.stem.rsplit("_", 1)[-1])


def list_checkpoints(checkpoint_dir: Path) -> list[Path]:
    """Resume checkpoints, newest first."""
    paths = [p for p in checkpoint_dir.glob(f"{CHECKPOINT_PREFIX}_*.pt") if p.stem.rsplit("_", 1)[-1].isdigit()]
    return sorted(paths, key=checkpoint_iteration, reverse=True)


def find_best_checkpoint(run_dir: Path) -> Path | None:
    found = sorted(RunFiles(run_dir).checkpoints.glob(f"{BEST_PREFIX}_*.pt"))
    return found[-1] if found else None


# ---------------------------------------------------------------- the folder and its lock


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """An exclusive lock on a run folder, held by the process that writes it for the whole run.

    A second ``harness.run`` on the same folder (a new run or ``--resume``) is refused while the
    first runs. The kernel drops the lock when its holder dies, even by kill -9; loader worker
    processes inherit it and may outlive their parent by a few seconds, which ``acquire`` waits out.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.fd: int | None = None

    def acquire(self, orphan_wait_s: float = 15.0) -> None:
        path = RunFiles(self.run_dir).lock
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + orphan_wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as error:
                if error.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            if holder.isdigit() and not _pid_alive(int(holder)) and time.monotonic() < deadline:
                time.sleep(0.2)  # the writer is gone; a worker process it forked still holds the lock
                continue
            os.close(fd)
            raise HarnessError(
                f"{self.run_dir}: in use by another harness.run (pid {holder or '?'}); "
                "wait for it to finish or stop it first"
            )
        try:
            with reported_as_full_disk(path):
                os.ftruncate(fd, 0)
                os.pwrite(fd, str(os.getpid()).encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def create_output_dir(folder: Path) -> Path:
    """Create ``folder`` (and its parents) and check that it takes files; one line if it does not."""
    try:
        with reported_as_full_disk(folder):
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / ".write-test"
            try:
                probe.write_text("ok")
            finally:
                probe.unlink(missing_ok=True)
    except OSError as error:
        raise HarnessError(f"output folder {folder}: cannot be written ({error.strerror or error})") from None
    return folder


def create_run_dir(run_dir: Path) -> RunLock:
    """Create and lock a new run folder, refusing one that holds another run; returns the held lock."""
    create_output_dir(run_dir)
    RunFiles(run_dir).checkpoints.mkdir(exist_ok=True)
    lock = RunLock(run_dir)
    lock.acquire(orphan_wait_s=0.0)
    if RunFiles(run_dir).summary.exists() or RunFiles(run_dir).config.exists():
        lock.release()
        raise HarnessError(
            f"--out {run_dir}: already holds a run; continue it with --resume {run_dir} or choose another folder"
        )
    return lock
