"""Write files so that a crash leaves either the old file or the new one, never half of either; and
let the writers of a folder's shared files take turns."""

from __future__ import annotations

import fcntl
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from harness.core.full_disk import reported_as_full_disk

TEMP_SUFFIX = ".tmp"  # of the temporary file beside the one being written: .<name>.<random>.tmp
_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` then rename the temporary file onto ``path``. Whatever stops it, a full
    disk included (a DiskFullError naming ``path``), removes the temporary file and leaves ``path`` as it was."""
    path = Path(path)
    with reported_as_full_disk(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            write(tmp)
            os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; results are meant to be shared
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return path


def remove_partial_files(folder: Path) -> None:
    """Remove what a process killed in the middle of ``atomic_write`` left in ``folder``."""
    for partial in folder.glob(f".*{TEMP_SUFFIX}"):
        partial.unlink(missing_ok=True)


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on the file ``path`` (created if missing), waited for; the kernel drops it
    when its holder dies, even by kill -9."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)


@contextmanager
def one_writer(folder: Path) -> Iterator[None]:
    """The writers of ``folder``'s shared files (a sweep's compare.html and leaderboard.csv, a search's
    trials.csv, study.html and best.yaml), rewritten by several workers as their runs finish, take
    turns: each reads what it writes from, and replaces the files, under this lock. So two writers
    never leave one's leaderboard beside the other's comparison, nor an older state over a newer one."""
    with locked(folder / ".writers.lock"):
        yield


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def write_json(path: str | Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: str | Path) -> dict[str, Any]:
    """What write_json wrote; an empty dict when the file is missing or unreadable."""
    try:
        loaded = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def write_npz(path: str | Path, compress: bool = True, **arrays: Any) -> Path:
    buffer = io.BytesIO()
    (np.savez_compressed if compress else np.savez)(buffer, **arrays)
    return write_bytes(path, buffer.getvalue())
