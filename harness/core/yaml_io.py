"""YAML as the harness reads and writes it: YAML 1.2 scalars, no duplicate keys, ``base:`` files.

YAML is read with the YAML 1.2 rules for scalars: only true/false are booleans (YAML 1.1, PyYAML's
default, reads ``amp: off`` as false and ``1e-3`` as a string), decimal integers have no octal
form (``010`` is 10), and a key written twice in one mapping is an error, not a silent overwrite.
Every file the harness reads (configs, search files, a run's config.yaml) goes through here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from harness.core.errors import ConfigError
from harness.core.registry import file_of


class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 booleans, integers and floats, refusing duplicate keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                mark = key_node.start_mark
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (line {mark.line + 1})", mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_BOOL, _INT, _FLOAT = "tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in (_BOOL, _INT, _FLOAT)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_Yaml12Loader.add_implicit_resolver(_INT, re.compile(r"^[-+]?[0-9]+$"), list("-+0123456789"))
_Yaml12Loader.add_implicit_resolver(
    _FLOAT,
    re.compile(
        r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"
    ),
    list("-+0123456789."),
)
_Yaml12Loader.add_constructor(_INT, lambda loader, node: int(loader.construct_scalar(node)))


class _QuotingDumper(yaml.SafeDumper):
    """Quotes every string that YAML 1.1 or 1.2 would read as something else ("off", "1e5"), so that
    config.yaml reads back the same in either."""


for _first, _resolvers in _Yaml12Loader.yaml_implicit_resolvers.items():
    for _tag, _regexp in _resolvers:
        _QuotingDumper.add_implicit_resolver(_tag, _regexp, [_first])


def parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Yaml12Loader)  # noqa: S506 - a SafeLoader subclass


def dump_yaml(data: Any) -> str:
    """YAML that reads back the same under YAML 1.1 and 1.2 (strings like "off" quoted)."""
    return yaml.dump(data, Dumper=_QuotingDumper, sort_keys=False, default_flow_style=None)


def _deep_merge(base: dict, changes: dict) -> dict:
    merged = dict(base)
    for key, value in changes.items():
        both_sections = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = _deep_merge(merged[key], value) if both_sections else value
    return merged


def absolute_plugin_files(node: Any, folder: Path) -> Any:
    """``node`` with every plug-in file named by a relative path (``./my_models.py:Net``) made absolute
    from ``folder``: the YAML file's own folder, so that a config names files beside it wherever it
    is run from, and the run's config.yaml names them wherever it is resumed from."""
    if isinstance(node, dict):
        return {key: absolute_plugin_files(value, folder) for key, value in node.items()}
    if isinstance(node, list):
        return [absolute_plugin_files(value, folder) for value in node]
    if isinstance(node, str) and (file := file_of(node)) is not None and not file.is_absolute():
        return f"{(folder / file).resolve()}:{node.rsplit(':', 1)[1]}"
    return node


def read_yaml(path: str | Path, _seen: tuple[Path, ...] = (), follow_base: bool = True) -> dict:
    """A config file as a dict; ``base: other.yaml`` (relative to the file) is read first and
    overlaid, so that a variant names only what it changes (unless ``follow_base`` is false: a
    search file's ``base`` names its experiment, it is not overlaid)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        raw = parse_yaml(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"{path}: not a UTF-8 text file (byte {error.object[error.start]:#04x} at offset {error.start})"
        ) from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot be read ({error.strerror or error})") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or "could not be parsed"
        raise ConfigError(f"{path}: malformed YAML{where}: {problem}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level, got {type(raw).__name__}")
    raw = absolute_plugin_files(raw, path.parent)
    if "base" not in raw or not follow_base:
        return raw
    base = raw.pop("base")
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base = {base!r}: expected the path of another config file")
    base_path = (path.parent / base).resolve()
    if base_path in _seen:
        raise ConfigError(f"{path}: base = {base!r}: the chain of base files loops")
    return _deep_merge(read_yaml(base_path, (*_seen, path.resolve())), raw)


def read_yaml_or_empty(path: Path) -> dict[str, Any]:
    """A mapping file as a dict, or {} when it is missing, unreadable or not a mapping: for readers
    of run folders that show whatever is there (reports, comparisons)."""
    try:
        loaded = parse_yaml(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    return loaded if isinstance(loaded, dict) else {}
