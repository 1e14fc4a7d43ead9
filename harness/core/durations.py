"""Durations as a person reads them in a progress line or an estimate: ``14 s``, ``18 min``, ``1 h 52 min``."""

from __future__ import annotations


def format_duration(seconds: float) -> str:
    """Seconds under a minute, whole minutes under an hour, hours and minutes beyond: an estimate's
    precision, not a stopwatch's."""
    seconds = max(0.0, seconds)
    if seconds < 59.5:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60} min"
