"""The background-jobs example: state built once per worker process, shared by
every job it runs (a connection pool, an HTTP session, a cache).

    jobsd worker examples.app_state:jobs -c 4
    jobsd submit remember '["greeting", "hello"]' --wait
    jobsd submit recall '["greeting"]' --wait
"""

from __future__ import annotations

import os
import threading
from typing import Any

from jobsd import JobContext, Registry


class AppState:
    """Stands in for a DB pool: expensive to build, safe to share."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.instance = id(self)
        self.lock = threading.Lock()
        self.store: dict[str, Any] = {}

    # A state that is a context manager is entered at worker start and exited
    # at shutdown: the place to close pools.
    def __enter__(self) -> AppState:
        return self

    def __exit__(self, *exc: object) -> None:
        self.store.clear()


jobs = Registry(state=AppState)


@jobs.job(context=True)
def remember(ctx: JobContext, key: str, value: Any) -> None:
    with ctx.state.lock:
        ctx.state.store[key] = value


@jobs.job(context=True)
def recall(ctx: JobContext, key: str) -> Any:
    with ctx.state.lock:
        return ctx.state.store.get(key)


@jobs.job(context=True)
def whoami(ctx: JobContext) -> dict[str, int]:
    """Which process and which state object ran this job."""
    return {"pid": ctx.state.pid, "state": ctx.state.instance, "attempt": ctx.attempt}
