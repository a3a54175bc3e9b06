"""In-process storage: dicts and heaps in the broker. Nothing survives a restart.

For tests, development and work that can be lost. Heaps use lazy deletion: an
entry is skipped when its job has left the state the heap stands for, so every
operation stays O(log n) without searching a heap.
"""

from __future__ import annotations

import heapq
import itertools
from collections import defaultdict
from collections.abc import Iterable, Sequence

from jobsd.storage.base import Storage
from jobsd.storage.records import (
    AddResult,
    AttemptError,
    Grant,
    JobRecord,
    Lease,
    NewJob,
    QueueStats,
)
from jobsd.storage.rules import DELETABLE, GIVE_BACK, RESET, Transition, waiting
from jobsd.vocabulary import ACTIVE_STATES, DONE, READY, SCHEDULED


class MemoryStorage(Storage):
    transactional = False
    shared = False
    concurrent = False

    def __init__(self) -> None:
        self.url = "memory://"
        self._jobs: dict[str, JobRecord] = {}
        self._errors: dict[str, list[AttemptError]] = defaultdict(list)
        self._ready: dict[str, list[tuple[int, float, int, str]]] = defaultdict(list)
        self._scheduled: list[tuple[float, int, str]] = []
        self._running: dict[str, JobRecord] = {}
        self._active_keys: dict[str, str] = {}
        self._paused: set[str] = set()
        self._seq = itertools.count(1)

    # -- moves between states ------------------------------------------------

    def _place(self, job: JobRecord, state: str, run_at: float, now: float) -> None:
        job.state = state
        job.run_at = run_at
        job.updated_at = now
        if state == READY:
            heapq.heappush(self._ready[job.queue], (job.priority, run_at, job.seq, job.id))
        else:
            heapq.heappush(self._scheduled, (run_at, job.seq, job.id))

    def _apply(self, job: JobRecord, to: Transition, now: float) -> None:
        if to.error is not None:
            job.error = to.error
            self._errors[job.id].append(AttemptError(job.attempts, now, to.error))
        elif to.clear_error:
            job.error = None
        if to.attempts == RESET:
            job.attempts = 0
        elif to.attempts == GIVE_BACK:
            job.attempts -= 1
        if to.state == DONE:
            job.result = to.result
        if to.keeps_key:
            self._place(job, to.state, job.run_at if to.run_at is None else to.run_at, now)
            return
        job.state = to.state
        job.updated_at = now
        if job.unique_key is not None and self._active_keys.get(job.unique_key) == job.id:
            del self._active_keys[job.unique_key]

    def _stale_ready(self, entry: tuple[int, float, int, str]) -> bool:
        """A ready-heap entry whose job is no longer ready, or was made ready
        again since under another ``run_at`` (a retry): its place is wrong."""
        job = self._jobs.get(entry[3], _GONE)
        return job.state != READY or job.run_at != entry[1]

    # -- producers -----------------------------------------------------------

    def add(self, jobs: Sequence[NewJob], now: float) -> list[AddResult]:
        results = []
        for new in jobs:
            if new.id in self._jobs:
                results.append(AddResult(new.id, False))
                continue
            holder = self._active_keys.get(new.unique_key) if new.unique_key else None
            if holder is not None:
                results.append(AddResult(holder, False))
                continue
            job = JobRecord(  # positional: a third cheaper than by keyword, per job
                new.id,
                new.name,
                new.queue,
                new.args,
                new.priority,
                SCHEDULED,  # state, until placed
                new.run_at,
                0,  # attempts
                new.max_attempts,
                new.backoff,
                new.timeout,
                new.unique_key,
                next(self._seq),
                now,  # created_at
                now,  # updated_at
            )
            self._jobs[job.id] = job
            if job.unique_key is not None:
                self._active_keys[job.unique_key] = job.id
            self._place(job, waiting(new.run_at, now), new.run_at, now)
            results.append(AddResult(job.id, True))
        return results

    # -- running jobs --------------------------------------------------------

    def claim(self, queues: Sequence[str], limit: int, now: float, grant: Grant) -> list[JobRecord]:
        heads = [q for q in dict.fromkeys(queues) if q not in self._paused]
        claimed: list[JobRecord] = []
        while len(claimed) < limit:
            best: tuple[int, float, int, str] | None = None
            best_queue = ""
            for queue in heads:
                heap = self._ready.get(queue)
                while heap and self._stale_ready(heap[0]):
                    heapq.heappop(heap)  # lazily drop entries of jobs that moved on
                if heap and (best is None or heap[0] < best):
                    best, best_queue = heap[0], queue
            if best is None:
                break
            heapq.heappop(self._ready[best_queue])
            job = self._jobs[best[3]]
            job.run_under(grant, now)
            self._running[job.id] = job
            claimed.append(job.copy())
        return claimed

    def _holding(self, lease: Lease) -> JobRecord | None:
        job = self._running.get(lease.job_id)
        if job is None or job.lease != lease.token:
            return None
        return job if lease.worker is None or job.worker == lease.worker else None

    def finish(self, ends: Sequence[tuple[Lease, Transition]], now: float) -> list[bool]:
        results = []
        for lease, to in ends:
            job = self._holding(lease)
            if job is not None:
                del self._running[job.id]
                job.lease = job.lease_until = job.worker = job.broker = None
                self._apply(job, to, now)
            results.append(job is not None)
        return results

    def extend_leases(self, leases: Sequence[Lease], until: float, broker: str) -> list[bool]:
        results = []
        for lease in leases:
            job = self._holding(lease)
            if job is not None:
                job.lease_until = until
                job.broker = broker
            results.append(job is not None)
        return results

    def expired(self, now: float, limit: int = 1000) -> list[JobRecord]:
        late = [job for job in self._running.values() if (job.lease_until or 0.0) < now]
        late.sort(key=lambda job: (job.lease_until or 0.0, job.seq))
        return [job.copy() for job in late[:limit]]

    def running(self, broker: str, limit: int = 1000) -> list[JobRecord]:
        held = [job for job in self._running.values() if job.broker == broker]
        return [job.copy() for job in sorted(held, key=lambda job: job.seq)[:limit]]

    def promote(self, now: float) -> int:
        promoted = 0
        while (run_at := self.next_run_at()) is not None and run_at <= now:
            job_id = heapq.heappop(self._scheduled)[2]
            self._place(self._jobs[job_id], READY, run_at, now)
            promoted += 1
        return promoted

    def next_run_at(self) -> float | None:
        """The head of the scheduled heap, once entries of jobs that moved on are dropped."""
        heap = self._scheduled
        while heap:
            run_at, _, job_id = heap[0]
            job = self._jobs.get(job_id, _GONE)
            if job.state == SCHEDULED and job.run_at == run_at:
                return run_at
            heapq.heappop(heap)
        return None

    # -- operators -----------------------------------------------------------

    def move(
        self, job_ids: Sequence[str], accepts: frozenset[str], to: Transition, now: float
    ) -> list[bool]:
        results = []
        for job_id in job_ids:
            job = self._jobs.get(job_id, _GONE)
            ok = job.state in accepts
            key = job.unique_key
            if ok and key is not None and to.keeps_key and job.state not in ACTIVE_STATES:
                ok = key not in self._active_keys  # taken back, unless another holds it
                if ok:
                    self._active_keys[key] = job.id
            if ok:
                self._apply(job, to, now)
            results.append(ok)
        return results

    def delete(self, job_ids: Sequence[str]) -> int:
        return self._delete(
            job_id
            for job_id in dict.fromkeys(job_ids)  # an id named twice is deleted once
            if self._jobs.get(job_id, _GONE).state in DELETABLE
        )

    def purge(self, states: Iterable[str], finished_before: float) -> int:
        wanted = set(states) & DELETABLE
        return self._delete(
            [
                job.id
                for job in self._jobs.values()
                if job.state in wanted and job.updated_at < finished_before
            ]
        )

    def _delete(self, job_ids: Iterable[str]) -> int:
        doomed = list(job_ids)
        for job_id in doomed:
            del self._jobs[job_id]
            self._errors.pop(job_id, None)
        return len(doomed)

    def set_paused(self, queue: str, paused: bool) -> None:
        if paused:
            self._paused.add(queue)
        else:
            self._paused.discard(queue)

    # -- queries -------------------------------------------------------------

    def get(self, job_ids: Sequence[str]) -> dict[str, JobRecord]:
        return {i: self._jobs[i].copy() for i in job_ids if i in self._jobs}

    def errors(self, job_id: str) -> list[AttemptError]:
        return list(self._errors.get(job_id, ()))

    def list_jobs(
        self,
        queue: str | None = None,
        state: str | None = None,
        limit: int = 100,
        before_seq: int | None = None,
    ) -> list[JobRecord]:
        found = [
            job
            for job in self._jobs.values()
            if (queue is None or job.queue == queue)
            and (state is None or job.state == state)
            and (before_seq is None or job.seq < before_seq)
        ]
        found.sort(key=lambda job: job.seq, reverse=True)
        return [job.copy() for job in found[:limit]]

    def stats(self) -> dict[str, QueueStats]:
        stats: dict[str, QueueStats] = {}
        for job in self._jobs.values():
            stats.setdefault(job.queue, QueueStats()).counts[job.state] += 1
        for queue in self._paused:
            stats.setdefault(queue, QueueStats()).paused = True
        return stats

    def paused_queues(self) -> set[str]:
        return set(self._paused)


# A stand-in for a missing job in lazy-deletion checks: in no state at all.
_GONE = JobRecord("", "", "", b"", 0, "", 0.0, 0, None, None, None, None, 0, 0.0, 0.0)
