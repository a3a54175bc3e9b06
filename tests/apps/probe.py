"""Jobs that report what a worker did, so tests can check it from outside."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any

from jobsd import JobContext, Registry

STATE_BUILDS = 0


class State:
    """Counts how often the factory ran in this process, and how many jobs
    run at once."""

    def __init__(self) -> None:
        global STATE_BUILDS
        STATE_BUILDS += 1
        self.builds = STATE_BUILDS
        self.lock = threading.Lock()
        self.running = 0
        self.peak = 0
        self.barrier: threading.Barrier | None = None


jobs = Registry(state=State)


@jobs.job(context=True)
def whoami(ctx: JobContext, tag: Any = None) -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "queue": ctx.queue,
        "builds": ctx.state.builds,
        "state": id(ctx.state),
        "attempt": ctx.attempt,
        "tag": tag,
    }


@jobs.job(queue="other", context=True)
def other_whoami(ctx: JobContext) -> dict[str, Any]:
    return {"pid": os.getpid(), "queue": ctx.queue}


@jobs.job(context=True)
def together(ctx: JobContext, parties: int, timeout: float) -> dict[str, int]:
    """Returns only if ``parties`` jobs run at once in this process; reports
    the most that ran at once."""
    state = ctx.state
    with state.lock:
        if state.barrier is None or state.barrier.broken:
            state.barrier = threading.Barrier(parties)
        barrier = state.barrier
        state.running += 1
        state.peak = max(state.peak, state.running)
    try:
        barrier.wait(timeout)
        return {"peak": state.peak, "pid": os.getpid()}
    finally:
        with state.lock:
            state.running -= 1


@jobs.job()
def echo(*args: Any, **kwargs: Any) -> dict[str, Any]:
    return {"args": list(args), "kwargs": kwargs}


@jobs.job()
async def async_echo(value: Any, pause: float = 0.0) -> Any:
    await asyncio.sleep(pause)
    return value


@jobs.job()
def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@jobs.job()
def big(mib: int) -> bytes:
    """A result of ``mib`` MiB."""
    return b"\0" * (mib << 20)
