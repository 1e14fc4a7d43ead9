"""The ``report`` section of a config."""

from __future__ import annotations

from harness.core.schema import Section


class ReportConfig(Section):
    enabled: bool = True  # render report.html at the end of every run, whatever its status
