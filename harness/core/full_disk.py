"""A full disk, however a library reports it, as the one-line error that names the file.

Python and NumPy raise OSError ENOSPC (EDQUOT past a quota). torch's zip writer turns the OSError of
a short write into a RuntimeError ("unexpected pos"), raised while handling it. SQLite says
"database or disk is full" (under SQLAlchemy's and Optuna's errors, raised from it). TensorBoard's
writer thread re-raises its OSError in whichever call comes next.
"""

from __future__ import annotations

import errno
import io
import os
import sqlite3
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from harness.core.errors import HarnessError

FULL_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
SQLITE_FULL_MESSAGE = "database or disk is full"
RUN_AGAIN = "run the same command again"


class DiskFullError(HarnessError):
    """A file that could not be written because its disk (or the user's quota) is full."""

    def __init__(self, path: str | Path, reason: str, next_step: str = RUN_AGAIN) -> None:
        self.path, self.reason, self.next_step = Path(path), reason, next_step
        super().__init__(
            f"{path}: the disk is full ({reason}); nothing half-written was kept: make room, then {next_step}"
        )

    def then(self, next_step: str) -> DiskFullError:
        """The same error, with what to do once there is room."""
        return DiskFullError(self.path, self.reason, next_step)


def full_disk_reason(error: BaseException) -> str | None:
    """What says the disk is full in ``error`` or the errors it was raised from or while handling
    (``No space left on device``, ``Disk quota exceeded``, SQLite's message); None for any other error."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in FULL_DISK_ERRNOS:
            return current.strerror or os.strerror(current.errno)
        if isinstance(current, sqlite3.Error) and SQLITE_FULL_MESSAGE in str(current):
            return SQLITE_FULL_MESSAGE
        current = earlier_error(current)
    return None


def earlier_error(error: BaseException) -> BaseException | None:
    """The error ``error`` was raised from or while handling, as a traceback shows it (``from None`` hides it)."""
    if error.__cause__ is not None:
        return error.__cause__
    return None if error.__suppress_context__ else error.__context__


@contextmanager
def reported_as_full_disk(path: str | Path, tidy: Callable[[], None] | None = None) -> Iterator[None]:
    """Writing ``path`` inside: a full disk becomes a DiskFullError naming it, after ``tidy()`` (what
    removes a partial write that the writer itself leaves)."""
    try:
        yield
    except DiskFullError:
        raise
    except Exception as error:
        reason = full_disk_reason(error)
        if reason is None:
            raise
        if tidy is not None:
            tidy()
        raise DiskFullError(path, reason) from None


class LogDroppingOnFullDisk(io.TextIOBase):
    """A log file as a process's stdout or stderr, written through at once, that drops what a full disk
    refuses: a lost log line must not stop a worker's run, whose own files report the full disk."""

    def __init__(self, stream: TextIO) -> None:
        stream.flush()
        self._fd = stream.fileno()

    def write(self, text: str) -> int:
        data = text.encode(errors="replace")
        try:
            while data:
                data = data[os.write(self._fd, data) :]
        except OSError as error:
            if error.errno not in FULL_DISK_ERRNOS:
                raise
        return len(text)

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd


def log_to_a_disk_that_may_fill() -> None:
    """A worker process's stdout and stderr (its log file) drop the lines a full disk refuses."""
    sys.stdout, sys.stderr = LogDroppingOnFullDisk(sys.stdout), LogDroppingOnFullDisk(sys.stderr)
