"""The Storage contract: what the broker may ask of a backend, and what it may rely on.

The broker is the only caller. It runs one thread, so a backend is never used
concurrently from one broker; several brokers may share one SQL database, so SQL
backends must be safe across processes (that is what ``claim`` must get right).

Rules every backend keeps, and the shared contract suite checks:

* **Batch-first, atomic per call.** Each method takes a batch and either applies
  all of it or raises and applies none. The broker calls each method once per
  loop turn with everything that arrived in that turn (group commit).
* **Durable on return.** When ``add`` returns, the jobs survive a crash of the
  broker (for SQL backends: the transaction has committed).
* **Several calls, one commit.** Inside ``with storage.transaction():`` the
  calls share one transaction and are durable when the block ends; if anything
  inside raises, none of them applies (memory storage applies each call at
  once: it has nothing to commit and no call of it fails midway).
* **Time is a parameter.** Every method that looks at the clock takes ``now``
  (seconds since the epoch, float), so tests control time.
* **Fencing by attempt.** A running job's lease is named by ``(job_id, attempt)``.
  ``complete``, ``fail``, ``release`` and ``extend_leases`` act only when the job
  is still running under that attempt; otherwise they change nothing and report
  ``False`` for that item (a stale report from a worker that lost its lease).
* **Order.** Among ready jobs of the claimed queues: lower ``priority`` first,
  then earlier ``run_at``, then submission order (``seq``).
* **Unique keys.** While a job holding a ``unique_key`` is scheduled, ready or
  running, adding another job with that key adds nothing and returns the
  existing job's id. Finishing (done, dead, cancelled) frees the key.
* **Lengths.** Ids, names, queues, unique keys and worker ids are at most
  ``MAX_KEY_LENGTH`` characters; ``add`` raises ``ValueError`` beyond that (the
  protocol refuses such submits before they get here).
* **Unknown outcome on error.** When a call raises ``StorageError`` while
  committing, it may or may not have been applied. ``add`` is idempotent, so a
  resend is safe; attempts counted by a ``claim`` whose jobs were never
  delivered come back when their leases expire.
* **Several brokers.** ``claim`` may return fewer jobs than are ready (others
  are locked by another broker's claim) and nothing tells one broker of jobs
  another added: brokers that share a database also claim on a timer.
* **Edges.** ``expired`` and ``purge`` compare strictly (``<``). A lease named
  twice in one batch succeeds once for ``complete``, ``fail`` and ``release``.
  ``retry`` keeps the last error; a reschedule clears it. ``get`` returns jobs
  in the order asked.
"""

from __future__ import annotations

import abc
import contextlib
import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

SCHEDULED = "scheduled"
READY = "ready"
RUNNING = "running"
DONE = "done"
DEAD = "dead"
CANCELLED = "cancelled"

#: Every state a job can be in, in the order of a job's life.
STATES = (SCHEDULED, READY, RUNNING, DONE, DEAD, CANCELLED)
#: States in which a job still holds its unique key and may yet run.
ACTIVE_STATES = frozenset({SCHEDULED, READY, RUNNING})
#: States a job leaves only by an explicit retry or purge.
FINAL_STATES = frozenset({DONE, DEAD, CANCELLED})

DEFAULT_PRIORITY = 32768
#: The longest id, name, queue, unique key or worker id (an indexed VARCHAR in
#: SQL must stay within MySQL's index key limit).
MAX_KEY_LENGTH = 255
MIN_PRIORITY = 0
MAX_PRIORITY = 65535


class StorageError(Exception):
    """The backend could not do what was asked (connection lost, disk full...).

    The broker treats it as transient for the loop turn: nothing of the batch
    was applied, and nothing is acknowledged to clients.
    """


class SchemaError(StorageError):
    """The database schema is newer than this code, or otherwise unusable."""


# A note on mutable records: the types marked "per job" (here, in protocol.py
# and in manager.py) are made for every job on the hot paths, so they are not
# frozen. A frozen dataclass's __init__ sets each field through
# object.__setattr__: 1.3 us against 0.2 us for ten fields here, a tenth of the
# broker's work per submitted job. Nothing changes them after construction:
# treat them as values.
@dataclass(slots=True)  # per job: see the note on mutable records
class NewJob:
    """A job as submitted. ``args`` is opaque msgpack: storage never decodes it."""

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

    def check(self) -> None:
        """``ValueError`` when a key field is longer than storage keeps."""
        if (  # every job passes through here: the quick yes first
            len(self.id or "") <= MAX_KEY_LENGTH
            and len(self.name or "") <= MAX_KEY_LENGTH
            and len(self.queue or "") <= MAX_KEY_LENGTH
            and len(self.unique_key or "") <= MAX_KEY_LENGTH
        ):
            return
        for name in ("id", "name", "queue", "unique_key"):
            value = getattr(self, name)
            if value is not None and len(value) > MAX_KEY_LENGTH:
                raise ValueError(
                    f"job {name} longer than {MAX_KEY_LENGTH} characters: {value[:40]!r}..."
                )


@dataclass(slots=True)  # per job: see the note on mutable records
class AddResult:
    """``created`` is False when the id already existed, or when ``unique_key``
    matched an active job; ``job_id`` is then the existing job's id."""

    job_id: str
    created: bool


@dataclass(slots=True)
class JobRecord:
    """A stored job, as the broker and the CLI see it."""

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

    def lease(self) -> Lease:
        return Lease(self.id, self.attempts)

    def copy(self) -> JobRecord:
        """A shallow copy: memory storage hands out copies so callers never
        change what it stores. Six times faster than ``dataclasses.replace``,
        and memory storage copies every job it dispatches."""
        return JobRecord(*_record_fields(self))


_record_fields = operator.attrgetter(*JobRecord.__dataclass_fields__)


@dataclass(slots=True)  # per job: see the note on mutable records
class Lease:
    """Names one attempt of a running job: the fencing token."""

    job_id: str
    attempt: int


@dataclass(slots=True)  # per job: see the note on mutable records
class Completion:
    """A successful attempt. With ``reschedule_at`` the job is not done but runs
    again at that time as a fresh job (attempts reset), keeping its id."""

    job_id: str
    attempt: int
    result: bytes | None = None
    reschedule_at: float | None = None


@dataclass(slots=True)  # per job: see the note on mutable records
class Failure:
    """A failed attempt, with the broker's decision: run again at ``retry_at``,
    or, when ``retry_at`` is None, end in ``final_state``: DEAD or CANCELLED,
    nothing else."""

    job_id: str
    attempt: int
    error: str
    retry_at: float | None = None
    final_state: str = DEAD


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


class Storage(abc.ABC):
    """The contract. Docstrings here are the specification; the shared suite in
    ``tests/test_storage_contract.py`` holds every backend to it."""

    #: The URL the backend was opened with, secrets masked (for logs).
    url: str

    def transaction(self) -> contextlib.AbstractContextManager[None]:
        """Group the calls made inside into one transaction: the broker applies
        a turn's reports and claims the jobs they free room for with one
        commit (one fsync on SQLite) instead of one per call. Raises
        ``StorageError`` at the end when the commit fails. Nested blocks join
        the outer one. This default, for storage whose every call is applied
        at once, is a no-op (and cheaper than a generator: one per turn)."""
        return contextlib.nullcontext()

    # -- producers -----------------------------------------------------------

    @abc.abstractmethod
    def add(self, jobs: Sequence[NewJob], now: float) -> list[AddResult]:
        """Store new jobs: ``ready`` when ``run_at <= now``, else ``scheduled``.

        Idempotent on job id (a resent submit stores nothing twice) and on active
        unique keys; also within one batch. Results come in the input's order.
        Durable when it returns.
        """

    # -- dispatch ------------------------------------------------------------

    @abc.abstractmethod
    def claim(
        self, queues: Sequence[str], limit: int, now: float, lease_until: float, worker: str
    ) -> list[JobRecord]:
        """Move up to ``limit`` ready jobs of ``queues`` (skipping paused queues)
        to ``running``: count the attempt, set the lease and the worker.

        Order: priority, run_at, seq. Two brokers claiming at once on one
        database never get the same job. Returns the jobs as claimed.
        """

    @abc.abstractmethod
    def complete(self, completions: Sequence[Completion], now: float) -> list[bool]:
        """Finish attempts successfully: ``done`` with the result, or, with
        ``reschedule_at``, back to scheduled/ready with attempts reset.
        False for a stale lease (nothing changed)."""

    @abc.abstractmethod
    def fail(self, failures: Sequence[Failure], now: float) -> list[bool]:
        """Record failed attempts: keep the error (last one on the job, every one
        in its history), then schedule the retry or end the job. False for a
        stale lease (nothing changed)."""

    @abc.abstractmethod
    def release(self, leases: Sequence[Lease], now: float) -> list[bool]:
        """Hand running jobs back unstarted: ``ready`` again, the attempt not
        counted (a worker stopping before it began them)."""

    @abc.abstractmethod
    def extend_leases(self, leases: Sequence[Lease], until: float) -> list[bool]:
        """Push current leases to ``until``; False for leases no longer current."""

    @abc.abstractmethod
    def expired(self, now: float, limit: int = 1000) -> list[JobRecord]:
        """Running jobs whose lease ended before ``now``: their worker is gone.
        The caller decides each one's fate through ``fail``."""

    @abc.abstractmethod
    def promote(self, now: float) -> int:
        """Make scheduled jobs whose ``run_at <= now`` ready; return how many."""

    @abc.abstractmethod
    def next_run_at(self) -> float | None:
        """The earliest ``run_at`` among scheduled jobs: when to promote next."""

    # -- inspection and administration ---------------------------------------

    @abc.abstractmethod
    def get(self, job_ids: Sequence[str]) -> dict[str, JobRecord]:
        """The named jobs that exist, by id."""

    @abc.abstractmethod
    def errors(self, job_id: str) -> list[AttemptError]:
        """Every failed attempt's error of one job, oldest first."""

    @abc.abstractmethod
    def list_jobs(
        self,
        queue: str | None = None,
        state: str | None = None,
        limit: int = 100,
        before_seq: int | None = None,
    ) -> list[JobRecord]:
        """Jobs, newest first (descending seq); ``before_seq`` pages on."""

    @abc.abstractmethod
    def stats(self) -> dict[str, QueueStats]:
        """Counts per state for every queue that has jobs or is paused."""

    @abc.abstractmethod
    def cancel(self, job_ids: Sequence[str], now: float) -> list[bool]:
        """Cancel scheduled or ready jobs. False for any other state (a running
        job is cancelled cooperatively by its worker, through ``fail``)."""

    @abc.abstractmethod
    def retry(self, job_ids: Sequence[str], now: float) -> list[bool]:
        """Run dead or cancelled jobs again: ready, attempts reset, unique key
        taken back. False when the job is in another state, or when another
        active job holds its unique key now."""

    @abc.abstractmethod
    def delete(self, job_ids: Sequence[str]) -> int:
        """Delete jobs in final states (with their error history); return how
        many. Active jobs are never deleted: cancel them first."""

    @abc.abstractmethod
    def purge(self, states: Iterable[str], finished_before: float) -> int:
        """Delete jobs in the given final states last changed before
        ``finished_before``; return how many (retention)."""

    @abc.abstractmethod
    def set_paused(self, queue: str, paused: bool) -> None:
        """Pause or resume dispatch from a queue. Submits are still accepted.
        Durable and shared by every broker on the database."""

    @abc.abstractmethod
    def paused_queues(self) -> set[str]:
        """The queues now paused."""

    def close(self) -> None:  # noqa: B027 - optional for backends with nothing to free
        """Free connections and files."""
