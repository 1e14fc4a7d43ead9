"""The ``report`` section of a config."""

from __future__ import annotations

from pydantic import Field

from harness.core.schema import Section


class ReportConfig(Section):
    enabled: bool = Field(True, description="render `report.html` at the end of every run, whatever its status")
