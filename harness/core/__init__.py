"""Shared helpers of every stage: one-line errors, atomic files, registries, provenance, YAML, the run folder."""
