"""What a run imported besides the harness (plug-ins by import path, installed packages' entries),
recorded in its summary.json so that the run stays reproducible, and checked again on ``--resume``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.config import REGISTRIES, Config
from harness.core.errors import HarnessError
from harness.core.registry import PluginError, sha256_of
from harness.core.run_folder import RunFiles


def imported_plugins(cfg: Config) -> dict[str, dict[str, Any]]:
    """``{config key: provenance}`` for every entry that is not the harness's own: the import path, the
    file and its sha256, or the package and its version. A key holding a list of names records each
    entry as ``key[name]`` (``analysis.cam_methods[./my_cam.py:MyCAM]``)."""
    found = {}
    for key, value in cfg.plugin_names().items():
        named = {f"{key}[{name}]": name for name in value} if isinstance(value, list) else {key: value}
        for label, name in named.items():
            try:
                provenance = REGISTRIES[key].resolve(name).provenance
            except PluginError as problem:  # the checks before the run report it in their words
                raise HarnessError(f"{key} = {value!r}: {name!r}: {problem}") from None
            if provenance:
                found[label] = {"name": name, **provenance}
    return found


def _changes(recorded: dict[str, Any], now: dict[str, Any] | None) -> str | None:
    """What differs between a plug-in as the run recorded it and as it is now, in words; None if nothing."""
    if now is None:
        return "is no longer a plug-in"
    file = recorded.get("file")
    if file and recorded.get("sha256"):
        if not Path(file).is_file():
            return f"{file} is gone"
        if sha256_of(Path(file)) != recorded["sha256"]:
            return f"{file} changed since the run started (sha256 {recorded['sha256'][:12]}... then)"
    if recorded.get("version") and recorded.get("version") != now.get("version"):
        return f"package {recorded.get('package')} is {now.get('version')} now, {recorded['version']} then"
    return None


def check_plugins_unchanged(run_dir: Path, cfg: Config) -> None:
    """Refuse to resume a run whose plug-in file or package changed: its checkpoints belong to the old code."""
    recorded = RunFiles(run_dir).read_summary().get("plugins") or {}
    if not recorded:
        return
    now = imported_plugins(cfg)
    for key, then in recorded.items():
        change = _changes(then, now.get(key))
        if change:
            raise HarnessError(
                f"--resume {run_dir}: {key} = {then.get('name')!r}: {change}; "
                "resuming would mix two versions of the code in one run: restore it, or start a new run"
            )


def registered_names() -> str:
    """Every name each registry holds, with its description: ``python -m harness.run --list``."""
    lines = []
    for key, registry in REGISTRIES.items():
        lines.append(f"{key}:")
        rows = registry.describe()
        width = max(len(name) for name, _ in rows)
        lines += [f"  {name:<{width}}  {description}" for name, description in rows]
    return "\n".join(lines)
