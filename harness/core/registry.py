"""Named things of one kind (models, optimizers, schedules, data sources, CAM methods), found lazily.

An entry is a name, an import string and a one-line description: nothing is imported until a run
uses it, so validating a config imports no torch. A config may name, besides a registered entry:

- an import path: ``my_models:WideNet`` (a module on ``sys.path``) or ``./my_models.py:WideNet`` (a
  file; a relative path is taken from the YAML file that names it, or from the working folder for
  ``--set``);
- an entry of an installed package's entry-point group ``harness.plugins``, named ``<kind>.<name>``
  (``model.widenet = "my_pkg.models:WideNet"``), used as ``name``;
- an entry added in the running process (a notebook): ``MODELS.register("widenet", "...")(WideNet)``.

Built-in entries take the harness's own arguments (their config section); everything else is a plain
callable called with the section's ``kwargs`` (``native`` says which). ``resolve`` imports an entry
and records where it came from (file and sha256, or package and version), so a run stays reproducible.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import re
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENTRY_POINT_GROUP = "harness.plugins"
_IMPORT_PATH = re.compile(r"^(?P<module>[^:]+):(?P<attr>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)$")
_MODULE_NAME = re.compile(r"^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*$")


class PluginError(ValueError):
    """An entry that cannot be used: does not import, lacks the attribute, or is of the wrong kind."""


def where_raised(error: BaseException) -> str:
    """``file.py:line`` of the innermost frame of ``error``'s traceback: where a user's code failed."""
    frames = traceback.extract_tb(error.__traceback__)
    return f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""


def is_import_path(name: str) -> bool:
    """``module:attr`` or ``path/to/file.py:attr``."""
    match = _IMPORT_PATH.match(name)
    if not match:
        return False
    module = match["module"]
    return module.endswith(".py") or bool(_MODULE_NAME.match(module))


def file_of(name: str) -> Path | None:
    """The file an import path names (``./my_models.py:WideNet``), or None for a module path."""
    match = _IMPORT_PATH.match(name)
    return Path(match["module"]) if match and match["module"].endswith(".py") else None


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class Entry:
    name: str
    target: Any  # "package.module:attribute", or the object itself (registered in this process)
    description: str
    native: bool = False  # called with the harness's own arguments (its config section), not plain kwargs
    origin: str = "harness"  # "harness", "this process", or the installed package that registered it


@dataclass(frozen=True)
class Resolved:
    """An entry imported: the object, how to call it, and where it came from (recorded in the run)."""

    name: str
    obj: Any
    native: bool
    provenance: dict[str, Any] = field(default_factory=dict)


def _load_file(path: Path) -> Any:
    """A Python file as a module, once per path and content (the same classes on every use)."""
    path = path.resolve()
    if not path.is_file():
        raise PluginError(f"file {path} not found")
    stem = re.sub(r"\W", "_", path.stem)
    module_name = f"harness_plugin_{stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # before executing: dataclasses and pickling look the module up
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        del sys.modules[module_name]
        raise PluginError(f"{path} does not import ({type(error).__name__}: {first_line(error)})") from None
    return module


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


def _import_module(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except Exception as error:  # a user's module may raise anything while importing
        raise PluginError(f"module {module!r} does not import ({type(error).__name__}: {first_line(error)})") from None


@functools.cache
def _distributions() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()  # reads every installed package's metadata: once


def _package_of(module_name: str) -> dict[str, str]:
    """The installed distribution that ships ``module_name``'s top-level package, and its version."""
    top = module_name.split(".")[0]
    for dist in _distributions().get(top, []):
        try:
            return {"package": dist, "version": importlib.metadata.version(dist)}
        except importlib.metadata.PackageNotFoundError:
            continue
    return {}


def import_target(target: str, record: bool = True) -> tuple[Any, dict[str, Any]]:
    """The object an import string names, and (when ``record``) its provenance: file and sha256;
    package and version."""
    match = _IMPORT_PATH.match(target)
    if not match or not is_import_path(target):
        raise PluginError("expected an import path: module:Attribute or ./file.py:Attribute")
    module_ref, attr = match["module"], match["attr"]
    if module_ref.endswith(".py"):
        module = _load_file(Path(module_ref))
        provenance: dict[str, Any] = {"file": str(Path(module_ref).resolve())}
    else:
        module = _import_module(module_ref)
        provenance = {"module": module_ref, **(_package_of(module_ref) if record else {})}
        if getattr(module, "__file__", None):
            provenance["file"] = str(Path(module.__file__).resolve())
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            where = provenance.get("file") or module_ref
            raise PluginError(f"{where} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not record:
        return obj, {}
    if provenance.get("file") and Path(provenance["file"]).is_file():
        provenance["sha256"] = sha256_of(Path(provenance["file"]))
    return obj, {"target": target, **provenance}


class Registry:
    """The entries one config key (``key``, e.g. ``model.name``) may name; ``kind`` is their
    entry-point prefix (``model``). ``namespaces`` map a prefix (``torchvision/``) to a factory
    (import string) that turns the rest of the name into an entry, or raises ValueError."""

    def __init__(
        self,
        key: str,
        kind: str,
        plugins: str,
        namespaces: dict[str, tuple[str, str]] | None = None,
    ) -> None:
        self.key, self.kind = key, kind
        self.plugins = plugins  # what a plug-in by import path is, with an example, in words
        self.namespaces = namespaces or {}
        self._entries: dict[str, Entry] = {}

    # ------------------------------------------------------------ adding

    def add(self, name: str, target: Any, description: str, native: bool = False, origin: str = "harness") -> None:
        if name in self._entries:
            raise ValueError(f"{self.key}: {name!r} is registered twice")
        self._entries[name] = Entry(name, target, description, native, origin)

    def register(self, name: str, description: str = "") -> Callable[[Any], Any]:
        """Decorator: an object of this process (a notebook's model class) under ``name``; registering
        the name again (the notebook's cell run again) replaces it, but never a harness entry."""

        def add(obj: Any) -> Any:
            if self._entries.get(name, Entry(name, None, "", origin="this process")).origin == "this process":
                self._entries.pop(name, None)
            summary = description or (obj.__doc__ or "").strip().split("\n")[0]
            self.add(name, obj, summary, native=False, origin="this process")
            return obj

        return add

    # ------------------------------------------------------------ looking up

    def _entry_points(self) -> dict[str, Entry]:
        found = {}
        for point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            kind, _, name = point.name.partition(".")
            if kind == self.kind and name:
                dist = getattr(point, "dist", None)
                origin = f"{dist.name} {dist.version}" if dist else "an installed package"
                found[name] = Entry(name, point.value, f"{point.value} (from {origin})", False, origin)
        return found

    def entries(self) -> list[Entry]:
        """Every usable entry: the harness's own, then this process's, then installed packages'."""
        merged = dict(self._entry_points())
        merged.update(self._entries)  # the harness's own names win over a package's
        # In registration order, the harness's first: the order the docs and messages show.
        return sorted(merged.values(), key=lambda e: (e.origin != "harness", e.origin != "this process"))

    def names(self) -> list[str]:
        return [entry.name for entry in self.entries()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.problem(name) is None

    def expected(self, shown: int = 12) -> str:
        """What the key accepts, for an error message."""
        names = self.names()
        listed = ", ".join(names[:shown]) + (f" (and {len(names) - shown} more)" if len(names) > shown else "")
        namespaces = "".join(f", {prefix}<name>" for prefix in self.namespaces)
        return f"one of {listed}{namespaces}, or an import path module:Attribute or ./file.py:Attribute"

    def problem(self, name: str) -> str | None:
        """Why ``name`` cannot name an entry, without importing anything; None when it may."""
        if name in self._entries or any(name.startswith(p) and len(name) > len(p) for p in self.namespaces):
            return None
        if is_import_path(name) or name in self._entry_points():
            return None
        return f"expected {self.expected()}"

    def resolve(self, name: str) -> Resolved:
        """Import the entry ``name`` names. PluginError says why it cannot be used."""
        entry = self._entries.get(name) or self._entry_points().get(name)
        if entry is not None:
            if not isinstance(entry.target, str):
                return Resolved(name, entry.target, entry.native, {"target": name, "origin": entry.origin})
            # The harness's own entries need no record: its commit and version name them already.
            obj, provenance = import_target(entry.target, record=entry.origin != "harness")
            return Resolved(name, obj, entry.native, provenance)
        for prefix, (factory, _) in self.namespaces.items():
            if name.startswith(prefix):
                make, _ = import_target(factory, record=False)
                try:
                    return Resolved(name, make(name[len(prefix) :]), True, {})
                except ValueError as error:
                    raise PluginError(str(error)) from None
        if is_import_path(name):
            obj, provenance = import_target(name)
            return Resolved(name, obj, False, provenance)
        raise PluginError(f"expected {self.expected()}")

    def describe(self, harness_only: bool = False) -> list[tuple[str, str]]:
        """(name, description) of every entry (the harness's own only, for the docs), namespace and the
        plug-ins, for ``--list`` and the docs."""
        rows = [(e.name, e.description) for e in self.entries() if e.origin == "harness" or not harness_only]
        rows += [(f"{prefix}<name>", description) for prefix, (_, description) in self.namespaces.items()]
        return [*rows, ("<module>:<Attribute>", self.plugins)]


def call_plain(resolved: Resolved, kwargs_key: str, kwargs: dict[str, Any], *args: Any, **fixed: Any) -> Any:
    """Call a plug-in that takes plain arguments (a user's class or function) with ``args``, the
    harness's own keyword arguments ``fixed`` (``num_classes``) and ``kwargs`` from the config key
    ``kwargs_key``: arguments its signature refuses, or an exception it raises, are a PluginError."""
    kwargs = {**fixed, **kwargs}
    obj = resolved.obj
    if not callable(obj):
        raise PluginError(f"expected a class or a function, found {type(obj).__name__} {obj!r:.80}")
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):  # some built-in callables have none
        signature = None
    if signature is not None:
        try:
            signature.bind(*args, **kwargs)
        except TypeError as error:
            accepted = ", ".join(signature.parameters)
            given = {k: v for k, v in kwargs.items() if k not in fixed}
            raise PluginError(f"{kwargs_key} = {given}: {error} (it takes: {accepted})") from None
    try:
        return obj(*args, **kwargs)
    except Exception as error:  # a user's constructor may raise anything
        raise PluginError(f"raised {type(error).__name__}{where_raised(error)}: {first_line(error)}") from None
