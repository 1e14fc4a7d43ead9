"""The HTML side of every report: the jinja2 templates (``report_templates/``), embedded PNGs and
the small formatting helpers the run report, the comparison and the study share."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd


def template_folders() -> list[Path]:
    """Where ``report_templates/`` is: beside the package in a checkout (the top-level folder the
    user asked for), or inside it once installed (``pip install .`` ships it as harness/report_templates)."""
    package = Path(__file__).resolve().parent.parent
    return [folder for folder in (package / "report_templates", package.parent / "report_templates") if folder.is_dir()]


def environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(template_folders()),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
    )


def embed_png(path: Path) -> str | None:
    if not path.is_file():
        return None
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def table(frame: pd.DataFrame, float_format: str = "{:.4f}") -> str:
    return frame.to_html(index=False, border=0, classes="table", float_format=float_format.format, escape=True)


def percent(value: Any) -> str:
    return f"{100 * value:.2f}%" if isinstance(value, (int, float)) and value == value else "?"


def decimal(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) and value == value else "?"
