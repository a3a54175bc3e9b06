"""Jobs the fault tests steer from outside.

Each job says on stdout when it starts (one ``write``, so the line never
interleaves with log lines), and a test awaits that line in the worker's
output. ``hold`` then waits for a gate file the test creates, so the test
decides when each attempt ends; ``record`` appends one line per execution to
$JOBSD_TEST_RUNS (O_APPEND: concurrent runs never interleave) for the checkers
that count executions and time redeliveries.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from jobsd import JobContext, Registry

jobs = Registry()


def _say(text: str) -> None:
    os.write(1, f"{text}\n".encode())


def gate(gates: str | Path, job_id: str, attempt: int) -> Path:
    """The file that lets attempt ``attempt`` of job ``job_id`` finish."""
    return Path(gates) / f"{job_id}-{attempt}"


@jobs.job(context=True, max_attempts=10)
def hold(ctx: JobContext, gates: str, limit: float = 60.0) -> dict[str, Any]:
    """Runs until the test opens this attempt's gate; returns who ran it."""
    _say(f"job-started {ctx.id} attempt={ctx.attempt} pid={os.getpid()} at={time.time():.6f}")
    path = gate(gates, ctx.id, ctx.attempt)
    deadline = time.monotonic() + limit
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {path} was not opened within {limit} s")
        time.sleep(0.005)
    _say(f"job-finished {ctx.id} attempt={ctx.attempt} pid={os.getpid()}")
    return {"pid": os.getpid(), "attempt": ctx.attempt}


@jobs.job(context=True, max_attempts=0)
def record(ctx: JobContext, seconds: float = 0.0) -> int:
    """Write down this execution (``id attempt pid start-time``), then work ``seconds``."""
    fd = os.open(os.environ["JOBSD_TEST_RUNS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{ctx.id} {ctx.attempt} {os.getpid()} {time.time():.6f}\n".encode())
    finally:
        os.close(fd)
    if seconds:
        time.sleep(seconds)
    return ctx.attempt
