"""Producers blocked in WAIT: who waits for which job, and until when.

The broker answers a waiter when its job reaches a final state or its deadline
passes; this keeps the bookkeeping (a map by job and a heap by deadline) out of
the broker loop.
"""

from __future__ import annotations

import heapq
from collections import defaultdict


class Waiters:
    def __init__(self) -> None:
        self._by_job: dict[str, set[bytes]] = defaultdict(set)
        self._deadlines: list[tuple[float, bytes, str]] = []

    def add(self, job_id: str, peer: bytes, deadline: float) -> None:
        self._by_job[job_id].add(peer)
        heapq.heappush(self._deadlines, (deadline, peer, job_id))

    def is_waited(self, job_id: str) -> bool:
        return job_id in self._by_job

    def job_ids(self) -> list[str]:
        return list(self._by_job)

    def pop_job(self, job_id: str) -> set[bytes]:
        """The peers waiting for ``job_id``, forgotten: they are answered now."""
        return self._by_job.pop(job_id, set())

    def pop_expired(self, now: float) -> list[tuple[bytes, str]]:
        """Waiters whose deadline passed and that were not answered yet."""
        expired = []
        while self._deadlines and self._deadlines[0][0] <= now:
            _, peer, job_id = heapq.heappop(self._deadlines)
            peers = self._by_job.get(job_id)
            if peers and peer in peers:
                peers.discard(peer)
                if not peers:
                    del self._by_job[job_id]
                expired.append((peer, job_id))
        return expired

    def next_deadline(self) -> float | None:
        while self._deadlines:
            _, peer, job_id = self._deadlines[0]
            if peer in self._by_job.get(job_id, ()):
                return self._deadlines[0][0]
            heapq.heappop(self._deadlines)
        return None
