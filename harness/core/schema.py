"""What every config schema shares: the strict section base, names checked against a registry,
and a pydantic error as one line naming the file, the key, the value and what was expected."""

from __future__ import annotations

import difflib
import typing
from typing import Any

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError

from harness.core.registry import Registry


class Section(BaseModel):
    # strict: "3" is not a number and 1 is not true; a YAML user writes what they mean.
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, validate_default=False)


def registered(registry: Registry) -> AfterValidator:
    """A name that ``registry`` holds or may import (checked without importing it); otherwise what it accepts."""

    def check(name: str) -> str:
        problem = registry.problem(name)
        if problem:
            raise ValueError(problem)
        return name

    return AfterValidator(check)


_EXPECTED = {
    "int_type": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "finite_number": "a finite number",
    "bool_type": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping of keys to values",
    "model_attributes_type": "a mapping of keys to values",
}
_BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}


def _key_path(loc: tuple) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def section_model(annotation: Any) -> type[BaseModel] | None:
    """The section a field holds: its model, also when the section may be null (``Section | None``)."""
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _field(loc: tuple, schema: type[BaseModel]) -> Any:
    """The pydantic FieldInfo at a key path, or the section model when the path ends at one."""
    node: Any = schema
    for part in loc:
        if isinstance(part, int):
            continue
        model = section_model(node.annotation if hasattr(node, "annotation") else node)
        if model is None or part not in model.model_fields:
            return None
        node = model.model_fields[part]
    return node


def _section_fields(loc: tuple, schema: type[BaseModel]) -> list[str]:
    node = _field(loc, schema)
    model = section_model(node.annotation if hasattr(node, "annotation") else node)
    return list(model.model_fields) if model is not None else []


def _bounds(loc: tuple, schema: type[BaseModel]) -> str:
    """Every bound of the field at ``loc``, e.g. '>= 0 and <= 200'."""
    symbols = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
    node = _field(loc, schema)
    parts = []
    for constraint in getattr(node, "metadata", []):
        for attr, symbol in symbols.items():
            if getattr(constraint, attr, None) is not None:
                parts.append(f"{symbol} {getattr(constraint, attr)}")
    return " and ".join(parts)


def error_key(error: ValidationError) -> str:
    """The dotted key path of the first problem (``data.batch_size``, ``data.augment[0]``)."""
    return _key_path(tuple(error.errors()[0]["loc"]))


def format_validation_error(error: ValidationError, source: str, schema: type[BaseModel], prefix: str = "") -> str:
    """A pydantic error of ``schema`` as one line naming the file, the key path (under ``prefix`` when
    the schema is part of a file), the value and what was expected."""
    first = error.errors()[0]
    kind, loc, ctx = first["type"], tuple(first["loc"]), first.get("ctx") or {}
    path = ".".join(part for part in (prefix, _key_path(loc)) if part)
    if kind == "missing":
        return f"{source}: {path}: missing (this key is required)"
    if kind == "extra_forbidden":
        fields = _section_fields(loc[:-1], schema)
        nearest = difflib.get_close_matches(str(loc[-1]), fields, n=1)
        hint = f"did you mean '{nearest[0]}'? " if nearest else ""
        return f"{source}: unknown key '{path}' ({hint}expected one of: {', '.join(fields)})"
    if kind in _BOUNDS:
        expected = f"a value {_bounds(loc, schema) or _BOUNDS[kind] + ' ' + str(next(iter(ctx.values())))}"
    elif kind == "literal_error":
        expected = f"one of {ctx['expected'].replace(' or ', ', ')}"
    elif kind == "string_pattern_mismatch":
        expected = "a name of letters, digits, '.', '_' or '-' (it names the run folder)"
    elif kind == "value_error":
        expected = str(ctx.get("error", first["msg"])).removeprefix("expected ")
    else:
        expected = _EXPECTED.get(kind) or first["msg"].removeprefix("Input should be ")
    where = path or "the top level"
    return f"{source}: {where} = {first['input']!r}: expected {expected}"
