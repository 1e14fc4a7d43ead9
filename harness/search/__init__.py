"""Searches and sweeps on one engine: Optuna studies whose storage coordinates the workers."""
