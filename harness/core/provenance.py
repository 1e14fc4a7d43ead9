"""What produced a result: the code's commit, the library versions and the device."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import torch


def git_commit() -> str | None:
    """The harness checkout's commit, with ``-dirty`` when tracked files differ from it."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if commit.returncode != 0:
        return None
    return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def library_versions() -> dict[str, str]:
    import albumentations
    import captum
    import ignite
    import torchvision

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "ignite": ignite.__version__,
        "albumentations": albumentations.__version__,
        "captum": captum.__version__,
    }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_device(device: torch.device) -> str:
    """The device in words; on a CPU, the vector instructions too (bf16 is fast with AVX512-BF16/AMX, slow without)."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    isa = torch.backends.cpu.get_cpu_capability().lower()
    return f"cpu ({cpu_model()}, {platform.machine()} {isa}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"
