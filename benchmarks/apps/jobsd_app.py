"""jobsd workers: ``python -m jobsd worker benchmarks.apps.jobsd_app:jobs``."""

from benchmarks import tasks
from jobsd import Registry

jobs = Registry()


@jobs.job()
def noop(tag: str, i: int) -> None:
    tasks.noop(tag, i)


@jobs.job()
def lat(tag: str, i: int) -> None:
    tasks.lat(tag, i)
