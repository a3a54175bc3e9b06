"""Producers blocked in WAIT: who waits for which job, until when, and their answers.

The broker answers a waiter when its job reaches a final state or its deadline
passes; this keeps the bookkeeping (a map by job and a heap by deadline) and
the answering out of the broker loop.
"""

from __future__ import annotations

import heapq
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from jobsd.protocol.framing import OK
from jobsd.storage import StorageError
from jobsd.vocabulary import FINAL_STATES

log = logging.getLogger("jobsd.broker")

#: The job views of these ids (None for a job that does not exist).
Views = Callable[[list[str]], list[dict[str, Any] | None]]
Send = Callable[[bytes, bytes, Any], bool]


class Waiters:
    def __init__(self, views: Views, send: Send) -> None:
        self._views = views
        self._send = send
        self._by_job: dict[str, set[bytes]] = defaultdict(set)
        self._deadlines: list[tuple[float, bytes, str]] = []
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, job_id: str, peer: bytes, deadline: float) -> None:
        peers = self._by_job[job_id]
        if peer not in peers:
            peers.add(peer)
            self._count += 1
        heapq.heappush(self._deadlines, (deadline, peer, job_id))

    def finished(self, job_ids: Sequence[str], only_final: bool = False) -> None:
        """Answer who waits for these jobs, now finished (``only_final``:
        for those of them that are). A storage failure leaves them waiting:
        the poll chore asks again."""
        waited = [job_id for job_id in job_ids if job_id in self._by_job]
        if not waited:
            return
        try:
            views = self._views(waited)
        except StorageError as exc:
            log.error("storage failed to read finished jobs for waiters: %s", exc)
            return
        for view in views:
            if view is not None and (not only_final or view["state"] in FINAL_STATES):
                peers = self._by_job.pop(view["id"], set())
                self._count -= len(peers)
                for peer in peers:
                    self._send(peer, OK, {"job": view})

    def waited(self) -> list[str]:
        return list(self._by_job)

    def expire(self, now: float) -> None:
        """Answer the waiters whose deadline passed with the job as it is."""
        while self._deadlines and self._deadlines[0][0] <= now:
            _, peer, job_id = heapq.heappop(self._deadlines)
            peers = self._by_job.get(job_id)
            if peers and peer in peers:
                peers.discard(peer)
                self._count -= 1
                if not peers:
                    del self._by_job[job_id]
                (view,) = self._views([job_id])
                self._send(peer, OK, {"job": view})

    def next_deadline(self) -> float | None:
        while self._deadlines:
            _, peer, job_id = self._deadlines[0]
            if peer in self._by_job.get(job_id, ()):
                return self._deadlines[0][0]
            heapq.heappop(self._deadlines)
        return None
