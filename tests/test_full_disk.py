"""A disk that fills up, on a real small filesystem: a tmpfs the tests mount (they are skipped, saying
so, where mounting is impossible: mount needs root). A filler file leaves the free space chosen, at
the moment chosen: inside a checkpoint, the best checkpoint, the analysis, the report, a sweep's or a
search's SQLite database and its worker's run. Each time: exit code 2, one line naming the file, nothing
half-written left; then, with room again, ``--resume`` (or the same sweep command) ends as a run that
never stopped."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

import harness.analysis.pipeline
import harness.reporting.run_report
import harness.training.handlers
from harness.analyze import main as analyze_main
from harness.core import atomic_io
from harness.core.full_disk import DiskFullError
from harness.core.run_folder import list_checkpoints
from harness.run import main
from harness.sweep import main as sweep_main
from harness.training.event_files import open_event_file
from harness.tune import main as tune_main
from tests.conftest import TIMING_COLUMNS, TINY, comparable_summary, deep_update, read_rows, tensorboard_scalars

DISK = "24m"
PAGE = 4096
# TINY with a mid-epoch checkpoint (iteration 4 of 8) and one kept, and a quick analysis and the report.
CONFIG = deep_update(
    TINY,
    {
        "checkpoint": {"every_iters": 4, "n_saved": 1},
        "analysis": {"enabled": True, "misclassified": 4, "gradcam_layers": []},
        "report": {"enabled": True},
    },
)


class SmallDisk:
    """A tmpfs whose free space a filler file sets."""

    def __init__(self, root: Path) -> None:
        self.root, self.filler = root, root / "filler"

    def free(self) -> int:
        stats = os.statvfs(self.root)
        return stats.f_bavail * stats.f_frsize

    def leave(self, free: int) -> None:
        """Fill the disk up to ``free`` bytes left (in whole pages)."""
        self.make_room()
        with open(self.filler, "wb") as handle:
            if self.free() > free:
                os.posix_fallocate(handle.fileno(), 0, self.free() - free)

    def make_room(self) -> None:
        self.filler.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def small_disk(tmp_path_factory) -> SmallDisk:
    root = tmp_path_factory.mktemp("small_disk")
    try:
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={DISK}", "tmpfs", str(root)], capture_output=True, text=True
        )
    except FileNotFoundError as error:
        pytest.skip(f"no mount command here ({error}): the full-disk tests mount a tmpfs")
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}): the full-disk tests need root")
    yield SmallDisk(root)
    subprocess.run(["umount", "--lazy", str(root)], check=True)


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("full_disk_config") / "tiny.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    return path


@pytest.fixture(scope="module")
def uninterrupted(config_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("full_disk_reference") / "run"
    assert main([str(config_file), "--out", str(out)]) == 0
    return out


STAGES = {
    "analysis": (harness.analysis.pipeline, "analyze"),
    "report": (harness.reporting.run_report, "render_run_report"),
}


def fill_at(monkeypatch: pytest.MonkeyPatch, disk: SmallDisk, point: str, free: int) -> None:
    """Leave ``free`` bytes on ``disk`` when the run reaches ``point``: the ``analysis``, the ``report``,
    or the save of the checkpoint file whose name starts so (``checkpoint_4.pt``, ``best_model``)."""
    module, name = STAGES.get(point, (harness.training.handlers, "save_through_python"))
    original: Callable[..., Any] = getattr(module, name)

    def filled_first(*args: Any, **kwargs: Any) -> Any:
        if point in STAGES or Path(args[1]).name.startswith(f".{point}"):  # the checkpoint's temporary file
            disk.leave(free)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, filled_first)


def whole_records(event_file: Path) -> bool:
    """Whether an event file ends with a whole record (uint64 length, 4-byte checksum, data, 4-byte checksum)."""
    data, end = event_file.read_bytes(), 0
    while end + 8 <= len(data):
        end += 16 + struct.unpack_from("<Q", data, end)[0]
    return end == len(data)


def assert_nothing_half_written(run_dir: Path) -> None:
    temporary = [
        p
        for p in run_dir.rglob("*")
        if (p.name.endswith(".tmp") or p.name.startswith(("tmp", ".write"))) and not p.name.endswith(".lock")
    ]  # a lock file (.writers.lock: the shared files' writers take turns) is whole at any size
    assert not temporary, temporary
    for path in run_dir.glob("checkpoints/*.pt"):
        torch.load(path, map_location="cpu", weights_only=False)
    for path in run_dir.glob("tensorboard/events.out.tfevents.*"):
        assert whole_records(path), path


def assert_same_as_uninterrupted(run_dir: Path, reference: Path) -> None:
    assert read_rows(run_dir / "metrics.csv", TIMING_COLUMNS) == read_rows(reference / "metrics.csv", TIMING_COLUMNS)
    for name in ("lr.csv", "weights.csv"):
        assert read_rows(run_dir / name) == read_rows(reference / name), name
    assert comparable_summary(run_dir) == comparable_summary(reference)
    assert tensorboard_scalars(run_dir) == tensorboard_scalars(reference), "each step once, as in one run"
    mine, theirs = (
        torch.load(list_checkpoints(d / "checkpoints")[0], weights_only=False)["model"] for d in (run_dir, reference)
    )
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[key], theirs[key]) for key in mine)
    assert (run_dir / "report.html").is_file()


def checkpoint_size(reference: Path) -> int:
    return list_checkpoints(reference / "checkpoints")[0].stat().st_size


# Where the disk fills, the room left there (a share of a checkpoint's size, or bytes), what the line names.
RUN_FILL_POINTS = [
    ("checkpoint_4.pt", 0.5, "checkpoints/checkpoint_4.pt"),  # the first checkpoint, halfway: none to resume from
    ("best_model", 0, "checkpoints/best_model_1"),  # the best checkpoint, at its first byte
    ("checkpoint_8.pt", 1.0, "checkpoints/checkpoint_8.pt"),  # at its last page; the one of iteration 4 is resumed
    ("analysis", 0, "analysis/"),
    ("analysis", 60_000, "analysis/"),  # a few files in
    ("report", 0, "figures/"),
    ("report", 150_000, "report.html"),  # the training curves written, the page not
]


def test_a_full_disk_at_each_stage_of_a_run_then_resume_ends_as_if_it_never_stopped(
    small_disk, config_file, uninterrupted, monkeypatch, capsys
):
    run_dir = small_disk.root / "run"
    command = [str(config_file), "--out", str(run_dir)]
    size = checkpoint_size(uninterrupted)
    for point, room, named in RUN_FILL_POINTS:
        free = int(room * size) - PAGE if isinstance(room, float) else room
        with monkeypatch.context() as patched:
            fill_at(patched, small_disk, point, max(free, 0))
            capsys.readouterr()
            assert main(command) == 2, point
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "the disk is full" in err, err
        assert f"{run_dir}/{named}" in err and err.endswith(f"make room, then --resume {run_dir}"), (point, err)
        assert_nothing_half_written(run_dir)
        small_disk.make_room()
        command = ["--resume", str(run_dir)]
    assert main(command) == 0
    assert_same_as_uninterrupted(run_dir, uninterrupted)
    shutil.rmtree(run_dir)


def test_tensorboard_on_a_full_disk_is_one_line_and_whole_records(small_disk, capsys):
    log_dir = small_disk.root / "tensorboard"
    logger = open_event_file(log_dir, purge_step=1)
    small_disk.leave(0)
    with pytest.raises(DiskFullError) as raised:
        for step in range(1, 10_000):  # until the event file's last page is full
            logger.writer.add_scalar("loss", 1.0, step)
            logger.writer.flush()
    [event_file] = log_dir.iterdir()
    assert raised.value.path == event_file and whole_records(event_file)
    assert capsys.readouterr().err == "", "the writer thread's own traceback stays quiet"
    small_disk.make_room()
    shutil.rmtree(log_dir)


def test_a_full_disk_in_a_sweep_then_the_same_command_ends_as_if_it_never_stopped(
    small_disk, config_file, uninterrupted, capsys
):
    sweep_dir = small_disk.root / "sweep"
    command = [str(config_file), "--seeds", "0", "--out", str(sweep_dir)]
    # Its folder, then its SQLite database at two points of its making (it takes about 28 pages), then
    # the run in its worker process, halfway through the checkpoint of iteration 8 (after the one of
    # iteration 4 and the best, about half a checkpoint): each time the command's one line.
    database = sweep_dir / "sweep.db"
    fill_points = [(0, str(sweep_dir)), (8 * PAGE, str(database)), (20 * PAGE, str(database))]
    fill_points.append(
        (60 * PAGE + 2 * checkpoint_size(uninterrupted), f"{sweep_dir}/tiny-seed0/checkpoints/checkpoint_8.pt")
    )
    for free, named in fill_points:
        small_disk.leave(free)
        capsys.readouterr()
        assert sweep_main(command) == 2, free
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "the disk is full" in err, err
        assert err.startswith(f"error: {named}") and err.endswith("make room, then run the same command again"), err
        assert_nothing_half_written(sweep_dir)
        small_disk.make_room()
    assert sweep_main(command) == 0
    assert_same_as_uninterrupted(sweep_dir / "tiny-seed0", uninterrupted)
    assert (sweep_dir / "compare.html").is_file()
    shutil.rmtree(sweep_dir)


def assert_same_training(run_dir: Path, reference: Path) -> None:
    """The logs and the final weights of ``run_dir`` are those of ``reference`` (a trial writes no report)."""
    assert read_rows(run_dir / "metrics.csv", TIMING_COLUMNS) == read_rows(reference / "metrics.csv", TIMING_COLUMNS)
    for name in ("lr.csv", "weights.csv"):
        assert read_rows(run_dir / name) == read_rows(reference / name), name
    mine, theirs = (
        torch.load(list_checkpoints(d / "checkpoints")[0], weights_only=False)["model"] for d in (run_dir, reference)
    )
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[key], theirs[key]) for key in mine)


def test_a_full_disk_in_a_search_then_the_same_command_ends_as_if_it_never_stopped(
    small_disk, config_file, uninterrupted, tmp_path, capsys
):
    """A one-trial search whose trial is the base itself (baseline_first): the disk fills at its folder,
    twice in its study's SQLite database, and inside its trial's checkpoint; each time one line, then the
    same command ends with the trial trained as the run that never stopped."""
    search = tmp_path / "search.yaml"
    search.write_text(
        yaml.safe_dump(
            {
                "base": str(config_file),
                "trials": 1,
                "space": {"optimizer.lr": {"type": "float", "low": 0.01, "high": 0.3, "log": True}},
                "objective": {"metric": "final_val_acc"},
                "pruner": {"name": "none"},
                "baseline_first": True,
            }
        )
    )
    out = small_disk.root / "study"
    command = [str(search), "--out", str(out)]
    database = out / "study.db"
    fill_points = [(0, str(out)), (8 * PAGE, str(database)), (20 * PAGE, str(database))]
    in_trial = f"{out}/trial-0000/checkpoints/checkpoint_8.pt"
    fill_points.append((60 * PAGE + 2 * checkpoint_size(uninterrupted), in_trial))
    for free, named in fill_points:
        small_disk.leave(free)
        capsys.readouterr()
        assert tune_main(command) == 2, free
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "the disk is full" in err, err
        assert err.startswith(f"error: {named}") and err.endswith("make room, then run the same command again"), err
        assert_nothing_half_written(out)
        small_disk.make_room()
    assert tune_main(command) == 0
    assert_same_training(out / "trial-0000", uninterrupted)
    assert (out / "trials.csv").is_file() and (out / "study.html").is_file() and (out / "best.yaml").is_file()
    shutil.rmtree(out)


def test_a_full_disk_while_writing_the_maps_then_analyze_again_finishes(small_disk, uninterrupted, monkeypatch, capsys):
    """The class activation maps of every method, layer and target (gradcam.npz, the run's largest
    analysis file): one line naming it, no half file; once there is room, the same analysis writes it whole."""
    run_dir = small_disk.root / "analyzed"
    shutil.copytree(uninterrupted, run_dir)
    command = [str(run_dir), "--set", "analysis.gradcam_layers=[layer3, layer4]", "analysis.misclassified=4"]
    write_npz = atomic_io.write_npz

    def filled_first(path: Any, *args: Any, **kwargs: Any) -> Path:
        small_disk.leave(0)
        return write_npz(path, *args, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(atomic_io, "write_npz", filled_first)
        capsys.readouterr()
        assert analyze_main(command) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{run_dir}/analysis/gradcam.npz" in err and "the disk is full" in err, err
    assert_nothing_half_written(run_dir)
    assert not (run_dir / "analysis" / "gradcam.npz").exists() or np.load(run_dir / "analysis" / "gradcam.npz")
    small_disk.make_room()
    assert analyze_main(command) == 0
    with np.load(run_dir / "analysis" / "gradcam.npz") as maps:
        assert {"gradcam/layer3/predicted", "gradcam/layer4/true"} <= set(maps.files)
    shutil.rmtree(run_dir)
