"""``python -m harness.bench``: measured speed, never asserted."""
