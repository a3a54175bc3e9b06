"""The work every system runs, and how each run is recorded.

``noop(tag, i)`` does nothing but record that job ``i`` of run ``tag`` ran;
``lat(tag, i)`` records the moment it started. Every system's workers run these
same two functions (wrapped the way each system declares jobs), so the work is
the same everywhere and every run is counted in one place, Redis DB 15:

* ``bench:{tag}:n``      INCRBY: how many times jobs of the run ran
* ``bench:{tag}:ids``    SADD: which job numbers ran (duplicates collapse)
* ``bench:{tag}:first`` / ``:last``  per process, the earliest / latest moment
  (``time.monotonic()``, one clock for all processes of this machine) a job ran
* ``bench:{tag}:lat``    RPUSH ``"i started"``: for the latency workload

``n == ids == N`` proves every job ran exactly once. To keep that bookkeeping
cheap and equal for all, ``noop`` only appends to a per-process buffer that a
thread flushes in one pipelined round trip per batch. A process that runs one
job and dies (RQ's forking worker) sets ``BENCH_RECORD_DIRECT=1`` and writes
at once instead.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

import redis

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")
FLUSH_DELAY = 0.005  # seconds a flush waits after the first record, to batch more


def key(tag: str, what: str) -> str:
    return f"bench:{tag}:{what}"


class Recorder:
    def __init__(self) -> None:
        self.pid = os.getpid()
        self.member = f"{os.uname().nodename}:{self.pid}"
        self.client = redis.Redis.from_url(REDIS_URL)
        self.direct = os.environ.get("BENCH_RECORD_DIRECT") == "1"
        self._lock = threading.Lock()
        self._pending: dict[str, list[Any]] = {}  # tag -> [ids, first, last]
        self._wake = threading.Event()
        if not self.direct:
            threading.Thread(target=self._flusher, name="bench-recorder", daemon=True).start()

    def add(self, tag: str, i: int, at: float) -> None:
        if self.direct:
            self._write({tag: [[i], at, at]})
            return
        with self._lock:
            entry = self._pending.get(tag)
            if entry is None:
                self._pending[tag] = [[i], at, at]
            else:
                entry[0].append(i)
                if at < entry[1]:
                    entry[1] = at
                if at > entry[2]:
                    entry[2] = at
        self._wake.set()

    def _flusher(self) -> None:
        while True:
            self._wake.wait()
            time.sleep(FLUSH_DELAY)
            self._wake.clear()
            with self._lock:
                batch, self._pending = self._pending, {}
            while batch:
                try:
                    self._write(batch)
                    batch = {}
                except redis.RedisError as exc:  # keep the counts: retry, never drop
                    print(f"bench recorder: {exc}; retrying", file=sys.stderr)
                    time.sleep(0.1)

    def _write(self, batch: dict[str, list[Any]]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for tag, (ids, first, last) in batch.items():
            pipe.sadd(key(tag, "ids"), *ids)
            pipe.incrby(key(tag, "n"), len(ids))
            pipe.zadd(key(tag, "first"), {self.member: first}, lt=True)
            pipe.zadd(key(tag, "last"), {self.member: last}, gt=True)
        pipe.execute()

    def started(self, tag: str, i: int, at: float) -> None:
        """A latency job: written at once, one round trip."""
        pipe = self.client.pipeline(transaction=False)
        pipe.sadd(key(tag, "ids"), i)
        pipe.incrby(key(tag, "n"), 1)
        pipe.rpush(key(tag, "lat"), f"{i} {at!r}")
        pipe.execute()


_recorder: Recorder | None = None
_recorder_lock = threading.Lock()


def recorder() -> Recorder:
    """This process's recorder (a fresh one after fork: threads do not cross it)."""
    global _recorder
    rec = _recorder
    if rec is None or rec.pid != os.getpid():
        with _recorder_lock:
            rec = _recorder
            if rec is None or rec.pid != os.getpid():
                rec = _recorder = Recorder()
    return rec


def noop(tag: str, i: int) -> None:
    recorder().add(tag, i, time.monotonic())


def lat(tag: str, i: int) -> None:
    recorder().started(tag, i, time.monotonic())
