"""TensorBoard's event files on a full disk: one line naming the file, and no record cut short.

An event file is appended to, record by record, by a writer thread; a full disk stops it in the
middle of a record, and the thread's error surfaces in whichever call the run makes next. Here that
call reports it (the file named, cut back to its last whole record), and the thread itself stays
quiet: its own traceback would be a second report of the same error.
"""

from __future__ import annotations

import functools
import os
import struct
import threading
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from ignite.handlers import TensorboardLogger

from harness.core.full_disk import full_disk_reason, reported_as_full_disk

EVENT_FILES = "events.out.tfevents.*"
LENGTH = struct.Struct("<Q")
# A record: uint64 length, uint32 checksum of the length, the data, uint32 checksum of the data.
RECORD_OVERHEAD = LENGTH.size + 4 + 4
WRITER_THREAD_MODULE = "tensorboard.summary.writer.event_file_writer"


def cut_to_whole_records(path: Path) -> None:
    """Truncate an event file after its last whole record; remove it when none is whole."""
    size, end = path.stat().st_size, 0
    with open(path, "rb") as handle:
        while end + LENGTH.size <= size:
            handle.seek(end)
            (length,) = LENGTH.unpack(handle.read(LENGTH.size))
            if end + RECORD_OVERHEAD + length > size:
                break
            end += RECORD_OVERHEAD + length
    if end == 0:
        path.unlink()
    elif end < size:
        os.truncate(path, end)


class FullDiskReportingWriter:
    """A SummaryWriter whose every call reports a full disk as the one-line error naming its event file.
    ``close`` flushes first: TensorBoard's own close drops an error the thread met after the last call."""

    def __init__(self, writer: Any, event_file: Path) -> None:
        self._writer, self.event_file = writer, event_file

    def _reported(self) -> AbstractContextManager[None]:
        return reported_as_full_disk(self.event_file, tidy=lambda: cut_to_whole_records(self.event_file))

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._writer, name)
        if not callable(attribute):
            return attribute

        @functools.wraps(attribute)
        def reporting(*args: Any, **kwargs: Any) -> Any:
            with self._reported():
                return attribute(*args, **kwargs)

        return reporting

    def close(self) -> None:
        with self._reported():
            self._writer.flush()
            self._writer.close()


def quiet_writer_threads_on_full_disk() -> None:
    """Let TensorBoard's writer threads die of a full disk without printing it (once per process)."""
    previous = threading.excepthook
    if getattr(previous, "quiet_on_full_disk", False):
        return

    def hook(args: threading.ExceptHookArgs) -> None:
        from_writer = type(args.thread).__module__ == WRITER_THREAD_MODULE
        if from_writer and args.exc_value is not None and full_disk_reason(args.exc_value):
            return  # raised again in the run's next call to the writer, and reported there
        previous(args)

    hook.quiet_on_full_disk = True  # type: ignore[attr-defined]
    threading.excepthook = hook


def open_event_file(log_dir: Path, purge_step: int) -> TensorboardLogger:
    """Ignite's TensorboardLogger on a new event file in ``log_dir``, reporting a full disk in one line."""
    quiet_writer_threads_on_full_disk()
    before = set(log_dir.glob(EVENT_FILES))

    def new_files() -> list[Path]:
        return sorted(set(log_dir.glob(EVENT_FILES)) - before)

    def tidy() -> None:
        for path in new_files():
            cut_to_whole_records(path)

    with reported_as_full_disk(log_dir, tidy=tidy):  # the writer's first record, written as it opens
        logger = TensorboardLogger(log_dir=str(log_dir), purge_step=purge_step)
    [event_file] = new_files()
    logger.writer = FullDiskReportingWriter(logger.writer, event_file)
    return logger
