"""Jobs whose behaviour depends on their attempt, the clock or a file, for the
lifecycle tests (retries, dead jobs, delays, priorities, cancel, cron)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from jobsd import Backoff, JobContext, Registry, Reschedule, Retry

jobs = Registry()


@jobs.job(context=True, max_attempts=5, backoff=Backoff.exponential(0.3, factor=2.0, jitter=False))
def flaky(ctx: JobContext, failures: int) -> int:
    """Fails its first ``failures`` attempts, then returns the attempt number."""
    if ctx.attempt <= failures:
        raise RuntimeError(f"attempt {ctx.attempt} fails on purpose")
    return ctx.attempt


@jobs.job(max_attempts=2, backoff=Backoff.fixed(0.05))
def needs_file(path: str) -> str:
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is not there yet")
    return Path(path).read_text()


@jobs.job()
def started_at(tag: Any = None) -> dict[str, Any]:
    return {"at": time.time(), "tag": tag}


@jobs.job()
def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@jobs.job(context=True)
def until_cancelled(ctx: JobContext, limit: float) -> str:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        ctx.raise_if_cancelled()
        time.sleep(0.01)
    return "not cancelled"


@jobs.job(context=True, max_attempts=3)
def retry_later(ctx: JobContext, delay: float, marker: str) -> list[float]:
    """Asks to run again after ``delay``; then returns its attempt and how long
    after the request it runs (both times the job's own)."""
    if ctx.attempt == 1:
        Path(marker).write_text(repr(time.time()))
        raise Retry(delay=delay)
    return [ctx.attempt, time.time() - float(Path(marker).read_text())]


@jobs.job(context=True)
def reschedule_once(ctx: JobContext, marker: str, delay: float) -> Any:
    """The first run reschedules itself; the next one finishes."""
    if not os.path.exists(marker):
        Path(marker).write_text("rescheduled")
        return Reschedule(delay=delay)
    return "second run"


@jobs.job(timeout=0.5, max_attempts=1)
def overrun(seconds: float) -> str:
    time.sleep(seconds)
    return "finished"
