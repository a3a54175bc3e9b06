"""The job manager: what submitting, finishing and failing a job mean.

The broker's handlers parse messages and call this; this decides (defaults,
retry or dead, when to retry) and calls storage, which makes it atomic. It knows
nothing of sockets.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from jobsd import protocol
from jobsd.backoff import DEFAULT_BACKOFF, Backoff
from jobsd.storage import (
    CANCELLED,
    DEAD,
    DEFAULT_PRIORITY,
    AddResult,
    Completion,
    Failure,
    JobRecord,
    NewJob,
    Storage,
)

log = logging.getLogger("jobsd.manager")

DEFAULT_QUEUE = "default"
DEFAULT_MAX_ATTEMPTS = 25


# Records marked "per job" are not frozen, for speed: see the note on mutable
# records in jobsd/storage/base.py.
@dataclass(slots=True)  # per job: see the note on mutable records
class Outcome:
    """What became of one reported attempt: ``accepted`` False for a stale
    report; ``final`` when the job reached done, dead or cancelled."""

    job_id: str
    accepted: bool
    final: bool


class JobManager:
    def __init__(
        self,
        storage: Storage,
        clock: Callable[[], float],
        rng: random.Random | None = None,
    ) -> None:
        self.storage = storage
        self.clock = clock
        self.rng = rng or random.Random()
        self.job_types: dict[str, protocol.JobType] = {}
        self.stale_reports = 0

    # -- submitting --------------------------------------------------------------

    def learn_job_types(self, job_types: dict[str, protocol.JobType]) -> None:
        """Adopt the defaults workers announce, for producers that submit by name."""
        self.job_types.update(job_types)

    def new_job(self, sub: protocol.JobSubmission, now: float) -> NewJob:
        """A submission with its type's defaults filled in. ``ProtocolError``
        when an option is invalid (the whole SUBMIT is then refused)."""
        kind = self.job_types.get(sub.name, _NO_TYPE)
        backoff = sub.backoff if sub.backoff is not None else kind.backoff
        if backoff is not None:
            backoff = Backoff.from_wire(backoff).to_wire()
        max_attempts = sub.max_attempts if sub.max_attempts is not None else kind.max_attempts
        if max_attempts is None:
            max_attempts = DEFAULT_MAX_ATTEMPTS
        if sub.run_at is not None:
            run_at = sub.run_at
        else:
            run_at = now + (sub.delay or 0.0)
        job = NewJob(
            id=sub.id,
            name=sub.name,
            queue=sub.queue or kind.queue or DEFAULT_QUEUE,
            args=sub.args,
            priority=_first(sub.priority, kind.priority, DEFAULT_PRIORITY),
            run_at=run_at,
            max_attempts=max_attempts or None,  # 0 on the wire: no limit
            backoff=backoff,
            timeout=sub.timeout if sub.timeout is not None else kind.timeout,
            unique_key=sub.unique_key,
        )
        try:
            job.check()
        except ValueError as exc:  # refused here, so it cannot fail a group commit
            raise protocol.ProtocolError(str(exc)) from None
        return job

    def add(self, jobs: Sequence[NewJob], now: float) -> list[AddResult]:
        return self.storage.add(jobs, now) if jobs else []

    # -- finishing -----------------------------------------------------------------

    def complete(self, acks: Sequence[protocol.Ack], now: float) -> list[Outcome]:
        if not acks:
            return []
        accepted = self.storage.complete(
            [Completion(a.job_id, a.attempt, a.result, a.reschedule_at) for a in acks], now
        )
        outcomes = [
            Outcome(a.job_id, ok, ok and a.reschedule_at is None)
            for a, ok in zip(acks, accepted, strict=True)
        ]
        self._count_stale(outcomes)
        return outcomes

    def fail(
        self,
        fails: Sequence[protocol.Fail],
        running: Callable[[str], JobRecord | None],
        now: float,
    ) -> list[Outcome]:
        """Decide each failed attempt's fate. ``running`` finds the job as
        claimed (the broker remembers what it dispatched); jobs it does not know
        (dispatched before a broker restart) are read from storage."""
        if not fails:
            return []
        records = {f.job_id: running(f.job_id) for f in fails}
        unknown = [job_id for job_id, record in records.items() if record is None]
        if unknown:
            records.update(self.storage.get(unknown))
        decisions: list[Failure] = []
        for f in fails:
            record = records.get(f.job_id)
            if record is None:  # deleted meanwhile: the report is stale
                decisions.append(Failure(f.job_id, f.attempt, f.error, None, DEAD))
                continue
            decisions.append(self.decide(record, f.attempt, f.error, f.kind, f.retry_at, now))
        accepted = self.storage.fail(decisions, now)
        outcomes = [
            Outcome(d.job_id, ok, ok and d.retry_at is None)
            for d, ok in zip(decisions, accepted, strict=True)
        ]
        self._count_stale(outcomes)
        return outcomes

    def decide(
        self,
        job: JobRecord,
        attempt: int,
        error: str,
        kind: str,
        retry_at: float | None,
        now: float,
    ) -> Failure:
        """Retry at a time, or end the job: the retry policy in one place."""
        if kind == protocol.FAIL_CANCELLED:
            return Failure(job.id, attempt, error, None, CANCELLED)
        spent = job.max_attempts is not None and attempt >= job.max_attempts
        if kind == protocol.FAIL_FINAL or spent:
            return Failure(job.id, attempt, error, None, DEAD)
        if kind == protocol.FAIL_RETRY and retry_at is not None:
            return Failure(job.id, attempt, error, max(retry_at, now))
        policy = Backoff.from_wire(job.backoff) if job.backoff else DEFAULT_BACKOFF
        return Failure(job.id, attempt, error, now + policy.seconds(attempt, self.rng))

    def lost(self, jobs: Sequence[JobRecord], reason: str, now: float) -> list[Outcome]:
        """Jobs whose worker vanished or whose lease ran out: the attempt
        counts, and the job is ready again at once (dead when its attempts
        are spent). The job's backoff is not applied: it paces a job's own
        failures, and the job did not fail; its worker went away."""
        if not jobs:
            return []
        decisions = [
            Failure(job.id, job.attempts, reason, None)
            if job.max_attempts is not None and job.attempts >= job.max_attempts
            else Failure(job.id, job.attempts, reason, now)
            for job in jobs
        ]
        accepted = self.storage.fail(decisions, now)
        return [
            Outcome(d.job_id, ok, ok and d.retry_at is None)
            for d, ok in zip(decisions, accepted, strict=True)
        ]

    def _count_stale(self, outcomes: Sequence[Outcome]) -> None:
        stale = sum(1 for o in outcomes if not o.accepted)
        if stale:
            self.stale_reports += stale
            log.info("ignored %d stale report(s) for leases that moved on", stale)


_NO_TYPE = protocol.JobType()


def _first(*values: int | None) -> int:
    for value in values:
        if value is not None:
            return value
    raise ValueError("no value")
