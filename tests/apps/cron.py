"""A job on a one-second cron schedule, for the exactly-once-per-fire test."""

from __future__ import annotations

import os

from jobsd import JobContext, Registry

jobs = Registry()


@jobs.job(cron="* * * * * *", context=True)
def tick(ctx: JobContext) -> str:
    """Note which fire ran (its id names the fire time)."""
    with open(os.environ["JOBSD_TEST_TICKS"], "a") as ticks:
        ticks.write(f"{ctx.id} {ctx.attempt}\n")
    return ctx.id
