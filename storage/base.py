"""The Storage contract: what the broker may ask of a backend, and what it may rely on.

The broker's job manager is the only caller, from one thread: one broker never
uses a backend concurrently. Several brokers may share one SQL database, so SQL
backends must be safe across processes. ``jobsd.storage.contract`` checks every
rule:

* **Batch-first, atomic per call.** Each method takes a batch and either
  applies all of it or raises and applies none. The broker calls each method
  once per loop turn with everything that arrived in that turn (group commit).
* **Durable on return.** When ``add`` returns, the jobs survive a crash of the
  broker (SQL: the transaction has committed).
* **Several calls, one commit.** Inside ``with storage.transaction():`` the
  calls share one transaction and are durable when the block ends; if anything
  inside raises, none of them applies (memory storage applies each call at
  once: it has nothing to commit and no call of it fails midway).
* **Time is a parameter.** Every method that looks at the clock takes ``now``
  (seconds since the epoch, float), so tests control time.
* **Fencing by lease.** A claim gives each job the ``Grant``'s token. ``finish``
  and ``extend_leases`` act on a job only while it runs under that token (and,
  for a ``Lease`` that names a worker, was claimed for that worker); otherwise
  they change nothing and report ``False`` for that item.
* **The state rules are not the backend's.** A backend applies the
  ``Transition`` given (``jobsd.storage.rules``) as given, frees a job's unique
  key when it leaves the active states and takes it back when it enters them.
* **Order.** Among ready jobs of the claimed queues: lower ``priority`` first,
  then earlier ``run_at``, then submission order (``seq``).
* **Unique keys.** While a job holding a ``unique_key`` is scheduled, ready or
  running, adding another job with that key adds nothing and returns the
  existing job's id.
* **Lengths.** Ids, names, queues, unique keys, worker and broker names are at
  most ``MAX_KEY_LENGTH`` characters and lease tokens at most 64: callers keep
  to that (the protocol refuses longer); a backend stores each whole and
  compares it exactly.
* **Unknown outcome on error.** A call that raises ``StorageError`` while
  committing may or may not have been applied. ``add`` is idempotent, so a
  resend is safe; attempts counted by a ``claim`` whose jobs were never
  delivered come back when their leases expire.
* **Several brokers** (backends with ``shared``). ``claim`` may return fewer
  jobs than are ready (another broker's claim has locked some) and no broker
  hears of jobs another added: brokers that share a database also claim on a
  timer.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Iterable, Sequence

from jobsd.storage.records import (
    AddResult,
    AttemptError,
    Grant,
    JobRecord,
    Lease,
    NewJob,
    QueueStats,
)
from jobsd.storage.rules import Transition


class StorageError(Exception):
    """The backend could not do what was asked (connection lost, disk full...).
    The broker treats it as transient for the loop turn: nothing of the batch
    was applied, and nothing is acknowledged to clients."""


class SchemaError(StorageError):
    """The database schema is newer than this code, or otherwise unusable."""


class Storage(abc.ABC):
    """The contract: its docstrings are the specification."""

    #: The URL the backend was opened with, secrets masked (for logs).
    url: str
    #: A failed ``transaction()`` applies none of its calls.
    transactional: bool = True
    #: Several brokers (and processes) may use the same storage at once.
    shared: bool = True
    #: Claims of several brokers proceed at the same time (row locks), not one
    #: after another (SQLite has one writer at a time).
    concurrent: bool = True

    def transaction(self) -> contextlib.AbstractContextManager[None]:
        """Group the calls made inside into one transaction: a broker turn's
        submits, reports and the claims they free room for take one commit (one
        fsync on SQLite), not one each. Raises ``StorageError`` at the end when
        the commit fails; nested blocks join the outer one. This default, for
        storage that applies every call at once, is a no-op (a nullcontext:
        cheaper than a generator, and made once per turn)."""
        return contextlib.nullcontext()

    # -- producers -----------------------------------------------------------

    @abc.abstractmethod
    def add(self, jobs: Sequence[NewJob], now: float) -> list[AddResult]:
        """Store new jobs: ``ready`` when ``run_at <= now``, else ``scheduled``.
        Idempotent on job id (a resent submit stores nothing twice) and on active
        unique keys, within one batch too. Results come in the input's order."""

    # -- running jobs --------------------------------------------------------

    @abc.abstractmethod
    def claim(self, queues: Sequence[str], limit: int, now: float, grant: Grant) -> list[JobRecord]:
        """Move up to ``limit`` ready jobs of ``queues`` (skipping paused queues),
        in dispatch order, to ``running`` under ``grant``: count the attempt, set
        the lease token, its end, the worker and the broker. Returns the jobs as
        claimed. Two brokers claiming at once never get the same job."""

    @abc.abstractmethod
    def finish(self, ends: Sequence[tuple[Lease, Transition]], now: float) -> list[bool]:
        """End attempts: apply each transition to its job if the job still runs
        under that lease, and leave running (the lease, its worker and broker
        cleared). False for a stale lease: nothing changed. A lease named twice
        in one batch succeeds once."""

    @abc.abstractmethod
    def extend_leases(self, leases: Sequence[Lease], until: float, broker: str) -> list[bool]:
        """Push current leases to ``until``, held through ``broker`` from now
        on; False for leases no longer current."""

    @abc.abstractmethod
    def expired(self, now: float, limit: int = 1000) -> list[JobRecord]:
        """Running jobs whose lease ended strictly before ``now``: their worker
        is gone."""

    @abc.abstractmethod
    def running(self, broker: str, limit: int = 1000) -> list[JobRecord]:
        """Running jobs whose lease is held through ``broker``: what a broker
        that restarted looks for once its workers had the time to come back."""

    @abc.abstractmethod
    def promote(self, now: float) -> int:
        """Make scheduled jobs whose ``run_at <= now`` ready; return how many."""

    @abc.abstractmethod
    def next_run_at(self) -> float | None:
        """The earliest ``run_at`` among scheduled jobs: when to promote next."""

    # -- operators -----------------------------------------------------------

    @abc.abstractmethod
    def move(
        self, job_ids: Sequence[str], accepts: frozenset[str], to: Transition, now: float
    ) -> list[bool]:
        """Apply ``to`` to each named job that is in one of the ``accepts``
        states (a cancel, a retry). False for a job in another state, and for
        one that would take back a unique key another active job holds now. A
        job named twice moves once."""

    @abc.abstractmethod
    def delete(self, job_ids: Sequence[str]) -> int:
        """Delete jobs in final states (with their error history); return how
        many. Active jobs are never deleted."""

    @abc.abstractmethod
    def purge(self, states: Iterable[str], finished_before: float) -> int:
        """Delete jobs in the given final states last changed strictly before
        ``finished_before``; return how many (retention)."""

    @abc.abstractmethod
    def set_paused(self, queue: str, paused: bool) -> None:
        """Pause or resume dispatch from a queue. Submits are still accepted.
        Durable and shared by every broker on the database."""

    # -- queries -------------------------------------------------------------

    @abc.abstractmethod
    def get(self, job_ids: Sequence[str]) -> dict[str, JobRecord]:
        """The named jobs that exist, by id, in the order asked."""

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
    def paused_queues(self) -> set[str]:
        """The queues now paused."""

    def close(self) -> None:  # noqa: B027 - optional for backends with nothing to free
        """Free connections and files."""
