"""``python -m harness.docs [--check]``: the documentation pages generated from the code, so that
they cannot go stale: the config reference (every key's type, default, allowed values and meaning,
read from the schema's fields) and the registered names (read from the registries).

``--check`` writes nothing and exits 1 when a committed page differs from what the code generates
(``tests/test_readme.py`` checks the committed pages against it).
"""

from __future__ import annotations

import sys
import types
import typing
from pathlib import Path
from typing import Any, NoReturn

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from harness.config import REGISTRIES, Config
from harness.core import atomic_io
from harness.core.errors import ArgumentParser, exit_on_harness_error
from harness.core.schema import section_model

DOCS = Path(__file__).resolve().parent.parent / "docs"
CONFIG_PAGE = Path("reference") / "config.md"
BOUNDS = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}


def type_name(annotation: Any) -> str:
    """A field's type as a reader writes it in YAML: ``int``, ``float or null``, ``list of str``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin is typing.Literal:
        return "one of " + ", ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType) and section_model(annotation) is not None:
        return "`true`, `false` or a mapping of the keys below"  # a section switched on or off (logging.mlflow)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else type_name(a) for a in args)
    if origin is list:
        return f"list of {type_name(args[0])}" if args else "list"
    if origin is dict:
        return "mapping"
    return {int: "integer", float: "number", str: "string", bool: "true or false"}.get(annotation, str(annotation))


def bounds(field: FieldInfo) -> str:
    """``≥ 1 and < 4294967296``, from the field's constraints."""
    found = [f"{symbol} {getattr(c, attr)}" for c in field.metadata for attr, symbol in BOUNDS.items()
             if getattr(c, attr, None) is not None]  # fmt: skip
    return " and ".join(found)


def default_text(field: FieldInfo) -> str:
    value = field.get_default(call_default_factory=True)
    if isinstance(value, list) and value and all(isinstance(v, dict) and "name" in v for v in value):
        return "the " + ", ".join(v["name"] for v in value)  # a transform list: by name
    text = yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix("...").strip()
    return f"`{text}`"


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def section_table(prefix: str, model: type[BaseModel]) -> list[str]:
    return ["| key | type | default | meaning |", "| --- | --- | --- | --- |", *key_rows(prefix, model)]


def key_rows(prefix: str, model: type[BaseModel]) -> list[str]:
    """A row per key of ``model``; a section that may be null (``logging.mlflow``) is a row, then its keys'."""
    rows = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            continue  # a section of its own
        kind = type_name(annotation) + (f", {bounds(field)}" if bounds(field) else "")
        key = f"{prefix}.{name}" if prefix else name
        rows.append(f"| `{key}` | {cell(kind)} | {cell(default_text(field))} | {cell(field.description or '')} |")
        if (nested := section_model(annotation)) is not None:
            rows += key_rows(key, nested)
    return rows


def config_reference() -> str:
    """docs/reference/config.md, generated."""
    lines = [
        "# Config reference",
        "",
        "Every key an experiment file may set, with its type, its default and what it does; a file names only",
        "what it changes (and may start from another with `base: other.yaml`), and `--set key.path=value`",
        "overrides any key. This page is generated from the schema by `python -m harness.docs`; a test fails",
        "when it differs from what the code says.",
        "",
        "## Top level",
        "",
        *section_table("", Config),
    ]
    for name, field in Config.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            lines += ["", f"## `{name}`", "", *section_table(name, field.annotation)]
    lines += [
        "",
        "## Registered names",
        "",
        "The names these keys take, and what else they take: an import path to your own code",
        "(`module:Attribute`, or `./file.py:Attribute` beside the YAML file), or a name an installed package",
        "registers through the entry-point group `harness.plugins`. `python -m harness.run --list` prints",
        "the same, with the installed packages' names.",
    ]
    for key, registry in REGISTRIES.items():
        lines += ["", f"### `{key}`", "", "| name | what it is |", "| --- | --- |"]
        lines += [f"| `{cell(name)}` | {cell(description)} |" for name, description in registry.describe(True)]
    return "\n".join(lines) + "\n"


def generated() -> dict[Path, str]:
    """Each generated page (relative to docs/) and its text."""
    return {CONFIG_PAGE: config_reference()}


@exit_on_harness_error
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(
        prog="python -m harness.docs", description="Write the documentation pages generated from the code."
    )
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a committed page is stale")
    args = parser.parse_args(argv)
    stale = []
    for page, text in generated().items():
        path = DOCS / page
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(str(path))
        else:
            atomic_io.write_text(path, text)
            print(f"written: {path}")
    if stale:
        print(f"error: stale: {', '.join(stale)}; run python -m harness.docs", file=sys.stderr)
        return 1
    return 0


def cli() -> NoReturn:
    """``python -m harness.docs``."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
