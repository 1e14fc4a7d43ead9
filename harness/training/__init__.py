"""Training: optimizers, schedules, the steps and engines, every handler, and how one run is wired."""
