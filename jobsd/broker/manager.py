"""The job manager: what every operation on jobs means, and the only caller of storage.

The broker's commands and timers call this; this decides (a job type's
defaults, retry or dead and when, what becomes of a lost worker's jobs, what
cancel, retry, purge and retention may touch) with the transitions of
``jobsd.storage.rules``, and storage makes each call atomic. Batch in, batch
out. It knows nothing of sockets or sessions.
"""

from __future__ import annotations

import logging
import random
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from jobsd.broker.config import BrokerConfig
from jobsd.protocol.backoff import Backoff
from jobsd.protocol.framing import TOO_LARGE, ProtocolError
from jobsd.protocol.options import NO_OPTIONS, JobOptions
from jobsd.protocol.producer import (
    GetRequest,
    JobSubmission,
    ListRequest,
    PurgeRequest,
    RetryRequest,
    job_view,
    make_cursor,
    read_cursor,
)
from jobsd.protocol.worker import FAIL_CANCELLED, FAIL_FINAL, FAIL_RETRY, Ack, Fail
from jobsd.storage import AddResult, Grant, JobRecord, Lease, NewJob, Storage, Transition
from jobsd.storage.rules import (
    CANCELLABLE,
    RETRYABLE,
    again,
    cancelled,
    done,
    ended,
    released,
    rescheduled,
    retried,
)
from jobsd.vocabulary import (
    CANCELLED,
    DEAD,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_PRIORITY,
    DEFAULT_QUEUE,
    DONE,
    FINAL_STATES,
)

log = logging.getLogger("jobsd.manager")

#: What a job gets when neither its type nor its submit names a policy.
DEFAULT_BACKOFF = Backoff.exponential()
#: Dead jobs retried per page of a retry-all.
_PAGE = 1000


@dataclass(slots=True)  # per job: see the note on mutable records in jobsd/storage/records.py
class Report:
    """One attempt a worker reports: ``outcome`` None hands the job back.
    ``record`` is the job as claimed, when the broker remembers it."""

    lease: Lease
    outcome: Ack | Fail | None
    record: JobRecord | None


@dataclass(slots=True)  # per job: see the note on mutable records
class Outcome:
    """What became of one reported attempt. ``accepted`` False: a stale
    lease. ``final``: the job is done, dead or cancelled now. ``waiting``: it
    is ready or scheduled again, in ``queue`` ("" when not known here)."""

    job_id: str
    accepted: bool
    final: bool
    waiting: bool
    queue: str


class JobManager:
    def __init__(
        self,
        storage: Storage,
        config: BrokerConfig,
        clock: Callable[[], float],
        rng: random.Random | None = None,
    ) -> None:
        self.storage = storage
        self.config = config
        self.clock = clock
        self.rng = rng or random.Random()
        self.job_types: dict[str, JobOptions] = {}
        self.stale_reports = 0

    # -- submitting --------------------------------------------------------------

    def learn_job_types(self, job_types: dict[str, JobOptions]) -> None:
        """Adopt the defaults workers announce, for producers that submit by
        name. A type that sets none is forgotten: its submits take the quick
        path of every default."""
        for name, defaults in job_types.items():
            if defaults == NO_OPTIONS:
                self.job_types.pop(name, None)
            else:
                self.job_types[name] = defaults

    def new_jobs(self, subs: Sequence[JobSubmission], now: float) -> list[NewJob]:
        """Submissions with their type's defaults, then the broker's, filled in."""
        jobs = []
        for sub in subs:
            self.check_args(sub.name, sub.args)
            kind = self.job_types.get(sub.name)
            options = sub.options.merged_over(kind) if sub.options and kind else sub.options or kind
            if options is None:  # most submits: every default
                jobs.append(
                    NewJob(
                        sub.id,
                        sub.name,
                        DEFAULT_QUEUE,
                        sub.args,
                        DEFAULT_PRIORITY,
                        now,
                        DEFAULT_MAX_ATTEMPTS,
                    )
                )
                continue
            attempts = options.max_attempts
            jobs.append(
                NewJob(
                    id=sub.id,
                    name=sub.name,
                    queue=options.queue or DEFAULT_QUEUE,
                    args=sub.args,
                    priority=DEFAULT_PRIORITY if options.priority is None else options.priority,
                    run_at=options.run_at
                    if options.run_at is not None
                    else now + (options.delay or 0),
                    max_attempts=DEFAULT_MAX_ATTEMPTS if attempts is None else attempts or None,
                    backoff=options.backoff.to_wire() if options.backoff else None,
                    timeout=options.timeout or None,  # 0: no limit
                    unique_key=options.unique_key,
                )
            )
        return jobs

    def check_args(self, name: str, args: bytes) -> None:
        """``ProtocolError`` ``too_large`` for args over the payload limit."""
        if len(args) > self.config.max_payload:
            raise ProtocolError(
                f"{name}: its args are {len(args)} bytes, over this broker's limit of "
                f"{self.config.max_payload} (jobs carry references to large data, not the data)",
                code=TOO_LARGE,
            )

    def add(self, jobs: Sequence[NewJob], now: float) -> list[AddResult]:
        return self.storage.add(jobs, now) if jobs else []

    def enqueue_fires(self, fires: Sequence[JobSubmission], now: float) -> list[NewJob]:
        """Cron fires, each once (its id names the schedule and the fire)."""
        jobs = self.new_jobs(fires, now)
        for job, result in zip(jobs, self.add(jobs, now), strict=True):
            done = "enqueued" if result.created else "was already enqueued"
            log.info("cron: %s %s as %s", job.name, done, job.id)
        return jobs

    # -- running jobs ------------------------------------------------------------

    def claim(self, queues: Sequence[str], limit: int, now: float, worker: str) -> list[JobRecord]:
        """Ready jobs for a worker, under a lease token nobody can guess."""
        grant = Grant(secrets.token_hex(16), now + self.config.lease, worker, self.config.name)
        return self.storage.claim(queues, limit, now, grant)

    def report(self, reports: Sequence[Report], now: float) -> list[Outcome]:
        """Apply reported attempts, fenced by their leases."""
        if not reports:
            return []
        unknown = [
            r.lease.job_id for r in reports if r.record is None and isinstance(r.outcome, Fail)
        ]
        stored = self.storage.get(unknown) if unknown else {}
        ends = []
        for r in reports:
            record = r.record or stored.get(r.lease.job_id)
            ends.append((r.lease, self._transition(r.outcome, record, now), record))
        outcomes = self._finish(ends, now)
        stale = sum(1 for o in outcomes if not o.accepted)
        if stale:
            self.count_stale(stale)
        return outcomes

    def _transition(
        self, outcome: Ack | Fail | None, job: JobRecord | None, now: float
    ) -> Transition:
        if outcome is None:
            return released()
        if isinstance(outcome, Ack):
            if outcome.result is not None and len(outcome.result) > self.config.max_payload:
                return ended(
                    DEAD,
                    f"its result is {len(outcome.result)} bytes, over this broker's limit of "
                    f"{self.config.max_payload}: not stored, and not retried (it would be "
                    "as large again)",
                )
            if outcome.reschedule_at is None:
                return done(outcome.result)
            return rescheduled(outcome.reschedule_at, now)
        if job is None:  # deleted meanwhile: the report is stale whatever it says
            return ended(DEAD, outcome.error)
        return self.decide(job, outcome, now)

    def decide(self, job: JobRecord, fail: Fail, now: float) -> Transition:
        """Retry at a time, or end the job: the retry policy in one place."""
        if fail.kind == FAIL_CANCELLED:
            return ended(CANCELLED, fail.error)
        if fail.kind == FAIL_FINAL or _spent(job):
            return ended(DEAD, fail.error)
        if fail.kind == FAIL_RETRY and fail.retry_at is not None:
            return again(max(fail.retry_at, now), now, fail.error)
        policy = Backoff.from_wire(job.backoff) if job.backoff else DEFAULT_BACKOFF
        return again(now + policy.seconds(job.attempts, self.rng), now, fail.error)

    def lost(self, jobs: Sequence[JobRecord], reason: str, now: float) -> list[Outcome]:
        """Jobs whose worker vanished or whose lease ran out: the attempt
        counts, and the job is ready again at once (dead when its attempts
        are spent). The job's backoff is not applied: it paces a job's own
        failures, and the job did not fail; its worker went away."""
        ends = [
            (job.held(), ended(DEAD, reason) if _spent(job) else again(now, now, reason), job)
            for job in jobs
        ]
        return self._finish(ends, now)

    def hand_back(self, jobs: Sequence[JobRecord], now: float) -> list[Outcome]:
        """Jobs that never reached their worker: ready again, attempt not counted."""
        return self._finish([(job.held(), released(), job) for job in jobs], now)

    def _finish(
        self, ends: Sequence[tuple[Lease, Transition, JobRecord | None]], now: float
    ) -> list[Outcome]:
        if not ends:
            return []
        accepted = self.storage.finish([(lease, to) for lease, to, _ in ends], now)
        return [
            Outcome(
                lease.job_id,
                ok,
                ok and to.state in FINAL_STATES,
                ok and to.keeps_key,
                job.queue if job is not None else "",
            )
            for (lease, to, job), ok in zip(ends, accepted, strict=True)
        ]

    def count_stale(self, n: int) -> None:
        self.stale_reports += n
        log.info("ignored %d stale report(s) for leases that moved on", n)

    def keep_alive(self, leases: Sequence[Lease], now: float) -> list[bool]:
        """Push the leases of live workers' jobs ahead of expiry."""
        if not leases:
            return []
        return self.storage.extend_leases(leases, now + self.config.lease, self.config.name)

    def adopt(self, leases: Sequence[Lease], now: float) -> list[JobRecord]:
        """A worker that reconnected still answers for these leases: keep
        those that are current, and return their jobs."""
        current = self.keep_alive(leases, now)
        ids = [lease.job_id for lease, ok in zip(leases, current, strict=True) if ok]
        return list(self.storage.get(ids).values()) if ids else []

    def expired(self, now: float) -> list[JobRecord]:
        return self.storage.expired(now)

    def orphans(self) -> list[JobRecord]:
        """Running jobs this broker handed out (before a restart, say)."""
        return self.storage.running(self.config.name)

    def promote(self, now: float) -> bool:
        return self.storage.promote(now) > 0

    def next_run_at(self) -> float | None:
        return self.storage.next_run_at()

    # -- operators -----------------------------------------------------------------

    def get(self, request: GetRequest) -> list[dict[str, Any] | None]:
        jobs = self.storage.get(request.ids)
        views: list[dict[str, Any] | None] = []
        for job_id in request.ids:
            job = jobs.get(job_id)
            if job is None:
                views.append(None)
                continue
            errors = None
            if request.errors:
                errors = [
                    {"attempt": e.attempt, "at": e.at, "error": e.error}
                    for e in self.storage.errors(job_id)
                ]
            views.append(job_view(job, errors))
        return views

    def list_page(self, request: ListRequest) -> tuple[list[dict[str, Any]], str | None]:
        """One page of jobs, newest first, and the cursor of the next page."""
        before = None if request.cursor is None else read_cursor(request.cursor)
        jobs = self.storage.list_jobs(request.queue, request.state, request.limit, before)
        more = len(jobs) == request.limit
        return [job_view(job) for job in jobs], make_cursor(jobs[-1].seq) if more else None

    def stats(self) -> dict[str, Any]:
        return {
            queue: {"counts": stats.counts, "paused": stats.paused}
            for queue, stats in sorted(self.storage.stats().items())
        }

    def cancel(self, job_ids: Sequence[str], now: float) -> list[bool]:
        """Cancel jobs that wait; running ones are cancelled by their worker."""
        return self.storage.move(job_ids, CANCELLABLE, cancelled(), now)

    def retry(self, request: RetryRequest, now: float) -> tuple[list[str], list[bool]]:
        """Run dead or cancelled jobs again; with ``all_dead``, every dead job
        (of one queue) too, found a page at a time."""
        ids = list(request.ids)
        if request.all_dead:
            before: int | None = None
            while page := self.storage.list_jobs(request.queue, DEAD, _PAGE, before):
                ids += [job.id for job in page]
                before = page[-1].seq
        return ids, self.storage.move(ids, RETRYABLE, retried(now), now)

    def delete(self, job_ids: Sequence[str]) -> int:
        return self.storage.delete(job_ids)

    def set_paused(self, queue: str, paused: bool) -> None:
        self.storage.set_paused(queue, paused)

    def purge(self, request: PurgeRequest, now: float) -> int:
        return self.storage.purge(request.states, now - request.older_than)

    def retention(self, now: float) -> None:
        """Delete finished jobs past their retention, a state at a time."""
        config = self.config
        for state, keep in (
            (DONE, config.keep_done),
            (DEAD, config.keep_dead),
            (CANCELLED, config.keep_cancelled),
        ):
            if keep is not None and (purged := self.storage.purge([state], now - keep)):
                log.info("retention: purged %d %s job(s) older than %.0f s", purged, state, keep)


def _spent(job: JobRecord) -> bool:
    return job.max_attempts is not None and job.attempts >= job.max_attempts
