"""The values that cross the storage contract: jobs as submitted, as stored,
and the leases that fence a running job.

A note on mutable records: the types marked "per job" (here, in the protocol
and in the manager) are made for every job on the hot paths, so they are not
frozen. A frozen dataclass's ``__init__`` sets each field through
``object.__setattr__``: 1.3 us against 0.2 us for ten fields, a tenth of the
broker's work per submitted job. Nothing changes them after construction
unless its docstring says so: treat them as values.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

from jobsd.vocabulary import DEFAULT_PRIORITY, RUNNING, STATES


@dataclass(slots=True)  # per job: see the note on mutable records
class NewJob:
    """A job as submitted, its options resolved. ``args`` is opaque msgpack:
    storage never decodes it. Callers keep every key within
    ``MAX_KEY_LENGTH`` (the protocol refuses longer ones)."""

    id: str
    name: str
    queue: str
    args: bytes
    priority: int = DEFAULT_PRIORITY
    run_at: float = 0.0
    max_attempts: int | None = None  # None: retry without limit
    backoff: dict[str, Any] | None = None
    timeout: float | None = None
    unique_key: str | None = None


@dataclass(slots=True)  # per job: see the note on mutable records
class AddResult:
    """``created`` is False when the id already existed, or when ``unique_key``
    matched an active job; ``job_id`` is then the existing job's id."""

    job_id: str
    created: bool


@dataclass(slots=True)
class JobRecord:
    """A stored job. ``lease`` is the token of its current claim (running
    jobs only), ``worker`` the worker it was claimed for and ``broker`` the
    broker that handed it out; none of the three is shown to producers."""

    id: str
    name: str
    queue: str
    args: bytes
    priority: int
    state: str
    run_at: float
    attempts: int
    max_attempts: int | None
    backoff: dict[str, Any] | None
    timeout: float | None
    unique_key: str | None
    seq: int
    created_at: float
    updated_at: float
    lease_until: float | None = None
    worker: str | None = None
    result: bytes | None = None
    error: str | None = None
    lease: str | None = None
    broker: str | None = None

    def run_under(self, grant: Grant, now: float) -> None:
        """Claimed: running under ``grant``, its attempt counted. (The one
        change made to a record after construction, by the backend that
        claims it.)"""
        self.state = RUNNING
        self.attempts += 1
        self.lease, self.lease_until = grant.token, grant.until
        self.worker, self.broker = grant.worker, grant.broker
        self.updated_at = now

    def held(self) -> Lease:
        """The lease this running job is held under."""
        return Lease(self.id, self.lease or "")

    def copy(self) -> JobRecord:
        """A shallow copy: memory storage hands out copies so callers never
        change what it stores. Six times faster than ``dataclasses.replace``,
        and memory storage copies every job it dispatches."""
        return JobRecord(*_record_fields(self))


_record_fields = operator.attrgetter(*JobRecord.__dataclass_fields__)


@dataclass(slots=True)  # per job: see the note on mutable records
class Lease:
    """Names one claim of a running job: the fence of every report. With
    ``worker``, the claim must also have been made for that worker."""

    job_id: str
    token: str
    worker: str | None = None


@dataclass(frozen=True, slots=True)
class Grant:
    """What a claim hands out: the lease ``token`` (never reused, never
    guessable), how long it lasts, and for which worker through which broker."""

    token: str
    until: float
    worker: str
    broker: str


@dataclass(frozen=True, slots=True)
class AttemptError:
    """One failed attempt's error, kept for inspection of dead jobs."""

    attempt: int
    at: float
    error: str


@dataclass(slots=True)
class QueueStats:
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATES, 0))
    paused: bool = False
