"""jobsd beside its peers: the same no-op work on jobsd, RQ, Celery, Dramatiq
and Huey in one run. ``python -m benchmarks.run --help``; see README.md."""
