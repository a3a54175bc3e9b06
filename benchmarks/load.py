"""How busy the rest of the machine is: the cores used by processes that are
not this harness, its children or the servers it drives (Redis, RabbitMQ,
PostgreSQL). On 2 cores a test suite running beside the
benchmark halves some numbers, so every system's records carry the background
load measured while it ran."""

from __future__ import annotations

import os
import threading
import time

import psutil

#: The servers the benchmark drives: their work is the benchmark's, not background.
SERVICES = frozenset({"redis-server", "beam.smp", "postgres", "epmd", "erl_child_setup"})


def _others() -> dict[int, float]:
    ours = {os.getpid(), *(p.pid for p in psutil.Process().children(recursive=True))}
    out = {}
    for proc in psutil.process_iter(["name"]):
        if proc.pid in ours or proc.info["name"] in SERVICES:
            continue
        try:
            t = proc.cpu_times()
            out[proc.pid] = t.user + t.system
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return out


def _cores(before: dict[int, float], after: dict[int, float], seconds: float) -> float:
    used = sum(max(0.0, cpu - before.get(pid, 0.0)) for pid, cpu in after.items())
    return used / seconds if seconds > 0 else 0.0


def background_load(seconds: float = 1.0) -> float:
    before, t0 = _others(), time.monotonic()
    time.sleep(seconds)
    return _cores(before, _others(), time.monotonic() - t0)


class LoadMonitor:
    """Samples the background load every ``interval`` seconds in a thread;
    ``mark()`` returns the average since the previous mark."""

    def __init__(self, interval: float = 2.0) -> None:
        self.interval = interval
        self._samples: list[float] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="load-monitor", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        before, t0 = _others(), time.monotonic()
        while not self._stop.wait(self.interval):
            after, t1 = _others(), time.monotonic()
            with self._lock:
                self._samples.append(_cores(before, after, t1 - t0))
            before, t0 = after, t1

    def mark(self) -> tuple[float, float]:
        """(mean, max) cores used by others since the last mark."""
        with self._lock:
            samples, self._samples = self._samples, []
        if not samples:
            return 0.0, 0.0
        return sum(samples) / len(samples), max(samples)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5.0)
