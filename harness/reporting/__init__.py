"""Reports: figures, the run report, comparisons of runs and their statistics."""
