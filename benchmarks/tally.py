"""The harness's side of the bookkeeping in ``benchmarks.tasks``: wait for a
run's jobs, prove each ran exactly once, and read when they ran."""

from __future__ import annotations

import itertools
import os
import time

import redis

from benchmarks.tasks import REDIS_URL, key


class CountError(AssertionError):
    """Jobs lost, or run more than once."""


class Tally:
    def __init__(self, url: str = REDIS_URL) -> None:
        self.url = url
        self.redis = redis.Redis.from_url(url)
        self._seq = itertools.count(1)
        self._run = f"{os.getpid()}-{int(time.time())}"

    def flush(self) -> None:
        """Empty the dedicated database (DB 15 by default): every key the
        benchmark and the peers it drives use lives there."""
        self.redis.flushdb()

    def new_tag(self, system: str, workload: str) -> str:
        return f"{self._run}:{next(self._seq)}:{system}:{workload}"

    def count(self, tag: str) -> int:
        return int(self.redis.get(key(tag, "n")) or 0)

    def unique(self, tag: str) -> int:
        return int(self.redis.scard(key(tag, "ids")))

    def wait_count(self, tag: str, n: int, stall: float, interval: float = 0.005) -> None:
        """Until ``n`` runs are recorded. Raises when no job at all ran for
        ``stall`` seconds (a stuck system), never waits forever."""
        last, last_change = -1, time.monotonic()
        while True:
            got = self.count(tag)
            if got >= n:
                return
            now = time.monotonic()
            if got != last:
                last, last_change = got, now
            elif now - last_change > stall:
                raise CountError(f"{tag}: {got}/{n} jobs ran, then none for {stall:.0f} s")
            time.sleep(interval)

    def verify(self, tag: str, n: int) -> None:
        runs, unique = self.count(tag), self.unique(tag)
        if runs != n or unique != n:
            raise CountError(
                f"{tag}: expected {n} jobs each run once; {runs} runs of {unique} distinct jobs"
            )
        expected = set(range(n))
        ids = {int(x) for x in self.redis.smembers(key(tag, "ids"))}
        if ids != expected:
            raise CountError(f"{tag}: job numbers differ from 0..{n - 1}")

    def window(self, tag: str) -> tuple[float, float]:
        """(earliest, latest) moment a job of the run ran, over all processes."""
        first = self.redis.zrange(key(tag, "first"), 0, 0, withscores=True)
        last = self.redis.zrange(key(tag, "last"), -1, -1, withscores=True)
        if not first or not last:
            raise CountError(f"{tag}: no job recorded a time")
        return float(first[0][1]), float(last[0][1])

    def next_start(self, tag: str, timeout: float) -> tuple[int, float]:
        """The next latency job's (number, start moment), as it is recorded."""
        item = self.redis.blpop([key(tag, "lat")], timeout=timeout)
        if item is None:
            raise CountError(f"{tag}: no latency job started within {timeout} s")
        number, started = item[1].decode().split()
        return int(number), float(started)
