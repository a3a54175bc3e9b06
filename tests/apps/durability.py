"""A job that writes down each run, for the checks that nothing is lost."""

from __future__ import annotations

import os

from jobsd import JobContext, Registry

jobs = Registry()


@jobs.job(context=True)
def record(ctx: JobContext) -> None:
    """Append ``id attempt`` to the file $JOBSD_TEST_RUNS (one write: atomic
    with O_APPEND, so concurrent runs never interleave)."""
    fd = os.open(os.environ["JOBSD_TEST_RUNS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{ctx.id} {ctx.attempt}\n".encode())
    finally:
        os.close(fd)
