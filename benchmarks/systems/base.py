"""The one interface every system adapter implements.

An adapter is the producer side of a system in the harness process (submit
``noop``/``lat`` jobs) plus how to start and stop its workers, which run the
same functions from ``benchmarks.tasks``. Every worker setup is 2 processes.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Sequence
from pathlib import Path

from benchmarks.procs import Proc

#: Jobs per batch for every system that has a batch API.
BATCH = 1000


class System:
    key = "base"  # unique, used on the command line: --systems KEY,...
    family = ""  # jobsd, rq, celery, dramatiq, huey
    backend = ""  # what stores the queue
    settings = ""  # the worker setup, for the table's footer
    batch_api: str | None = None  # how "batched" enqueues, or None: no batch API
    peer = True  # False for jobsd itself
    max_n: int | None = None  # cap on N for systems too slow for the full N
    max_n_quick: int | None = None  # the same cap under --quick
    packages: tuple[str, ...] = ()

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[Proc] = []

    # -- life cycle -----------------------------------------------------------

    def prepare(self) -> None:
        """Clear the queues (and start the broker, for jobsd); no workers yet."""

    def start_workers(self) -> None:
        raise NotImplementedError

    def wait_ready(self, timeout: float) -> None:
        """Block until the workers take jobs (after start_workers)."""

    def stop_workers(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()

    def close(self) -> None:
        """Stop everything this adapter started; safe to call twice."""
        self.stop_workers()

    # -- producing --------------------------------------------------------------

    def submit(self, tag: str, i: int) -> None:
        """Enqueue one ``noop(tag, i)`` the way an application would."""
        raise NotImplementedError

    def submit_batch(self, tag: str, ids: Sequence[int]) -> None:
        """Enqueue ``noop(tag, i)`` for each of ``ids`` with the batch API."""
        raise NotImplementedError

    def submit_latency(self, tag: str, i: int) -> None:
        raise NotImplementedError

    def queued(self) -> int | None:
        """Jobs waiting in the queue, when the system can tell."""
        return None

    def broker_done(self) -> int | None:
        """Jobs the system itself counts as done (jobsd's stats), else None."""
        return None

    def extra_pids(self) -> dict[str, int]:
        """Processes worth profiling, by role."""
        return {}

    def versions(self) -> dict[str, str]:
        out = {}
        for name in self.packages:
            try:
                out[name] = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                out[name] = "?"
        return out

    def worker_logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.tail()}" for p in self.procs)
