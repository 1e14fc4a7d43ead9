"""One experiment put to work: ``run_experiment`` (train, analyze, report; or resume), and what the
API does with finished runs (``analyze_run``, ``compare_runs``)."""
