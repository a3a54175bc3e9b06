"""SQL storage: the contract's operations, each one transaction of a few statements.

A batch costs a handful of statements whatever its size (IN lists,
executemany, bulk UPDATE), so the broker's group commit stays cheap. Each
operation reads as "lock these rows, check them against the rule, apply the
transition": the statements are in ``statements.py``, the rules in
``jobsd.storage.rules``, the engine and its transactions in ``engine.py``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import Row, delete, func, select, update
from sqlalchemy.engine import Connection

from jobsd.storage.base import SchemaError, Storage, StorageError
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
from jobsd.storage.sql.engine import DEFAULT_CONNECT_TIMEOUT, Database
from jobsd.storage.sql.schema import (
    check_version,
    job_errors,
    jobs,
    migrate,
    paused_queues,
    schema_version,
)
from jobsd.storage.sql.statements import (
    PAUSED,
    RECORD_COLUMNS,
    Statements,
    chunks,
    to_record,
)
from jobsd.vocabulary import ACTIVE_STATES, DONE, READY, RUNNING, SCHEDULED


class SQLStorage(Storage):
    """The contract on a SQL database (``engine.py`` lists the URLs).

    ``create=True`` (the default) creates the schema on first open and upgrades
    an older one; ``create=False`` only checks it is not newer than this code,
    so a caller can :meth:`migrate` explicitly (``jobsd migrate URL``). Raises
    ``ValueError`` for a URL no backend understands, :class:`StorageError`
    when the database cannot be reached or written, :class:`SchemaError` when
    its schema is newer.
    """

    def __init__(
        self,
        url: str,
        *,
        create: bool = True,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    ) -> None:
        self._db = Database(url, connect_timeout)
        self.url = self._db.url
        self.concurrent = self._db.dialect != "sqlite"
        self._sql = Statements(self._db.dialect)
        try:
            if create:
                migrate(self._db.engine, self.url)
            else:
                with self._db.reader.begin() as conn:
                    check_version(schema_version(conn), self.url)
        except SchemaError:
            self._db.dispose()
            raise
        except self._db.errors as exc:
            self._db.dispose()
            raise self._db.failure(exc, "cannot open storage") from exc

    # -- schema ----------------------------------------------------------------

    def migrate(self) -> tuple[int, int]:
        """Create or upgrade the schema; return ``(from_version, to_version)``
        (``from_version`` is 0 for a database without a jobsd schema)."""
        try:
            return migrate(self._db.engine, self.url)
        except SchemaError:
            raise
        except self._db.errors as exc:
            raise self._db.failure(exc, "cannot migrate storage") from exc

    def schema_version(self) -> int:
        """The database's schema version (0: no jobsd schema)."""
        return self._db.read(schema_version)

    def close(self) -> None:
        self._db.dispose()

    def __repr__(self) -> str:
        return f"SQLStorage({self.url!r})"

    def transaction(self) -> AbstractContextManager[None]:
        return self._db.transaction()

    # -- producers -----------------------------------------------------------

    def add(self, jobs: Sequence[NewJob], now: float) -> list[AddResult]:
        if not jobs:
            return []
        return self._db.write(lambda conn: self._add(conn, jobs, now))

    def _add(self, conn: Connection, batch: Sequence[NewJob], now: float) -> list[AddResult]:
        known: set[str] = set()
        for chunk in chunks(list(dict.fromkeys(new.id for new in batch))):
            known.update(conn.scalars(select(jobs.c.id).where(self._sql.in_(jobs.c.id, chunk))))
        holders = self._key_holders(conn, (new.unique_key for new in batch))
        rows: list[dict[str, Any]] = []
        results: list[AddResult] = []
        for new in batch:
            if new.id in known:
                results.append(AddResult(new.id, False))
                continue
            if new.unique_key is not None:
                holder = holders.get(new.unique_key)
                if holder is not None:
                    results.append(AddResult(holder, False))
                    continue
                holders[new.unique_key] = new.id
            known.add(new.id)
            rows.append(
                {
                    "id": new.id,
                    "name": new.name,
                    "queue": new.queue,
                    "args": new.args,
                    "priority": new.priority,
                    "state": waiting(new.run_at, now),
                    "run_at": new.run_at,
                    "attempts": 0,
                    "max_attempts": new.max_attempts,
                    "backoff": None if new.backoff is None else json.dumps(new.backoff),
                    "timeout": new.timeout,
                    "unique_key": new.unique_key,
                    "active_key": new.unique_key,
                    "created_at": now,
                    "updated_at": now,
                    "lease_until": None,
                    "worker": None,
                    "result": None,
                    "error": None,
                    "lease": None,
                    "broker": None,
                }
            )
            results.append(AddResult(new.id, True))
        if rows:
            conn.execute(jobs.insert(), rows)
        return results

    def _key_holders(self, conn: Connection, keys: Iterable[str | None]) -> dict[str, str]:
        """The active job holding each of these unique keys, where one does."""
        wanted = list(dict.fromkeys(key for key in keys if key is not None))
        holders: dict[str, str] = {}
        for chunk in chunks(wanted):
            stmt = select(jobs.c.active_key, jobs.c.id).where(
                self._sql.in_(jobs.c.active_key, chunk)
            )
            holders.update((key, job_id) for key, job_id in conn.execute(stmt))
        return holders

    # -- running jobs --------------------------------------------------------

    def claim(self, queues: Sequence[str], limit: int, now: float, grant: Grant) -> list[JobRecord]:
        wanted = list(dict.fromkeys(queues))
        if limit <= 0 or not wanted:
            return []
        return self._db.write(lambda conn: self._claim(conn, wanted, limit, now, grant))

    def _claim(
        self, conn: Connection, queues: list[str], limit: int, now: float, grant: Grant
    ) -> list[JobRecord]:
        paused = set(conn.scalars(PAUSED))
        queues = [queue for queue in queues if queue not in paused]
        if not queues:
            return []
        if len(queues) == 1:
            # The common case: one index range scan, already in dispatch order.
            rows = list(conn.execute(self._sql.claim_head, {"queue": queues[0], "limit": limit}))
        else:
            rows = self._merged_heads(conn, queues, limit)
        if not rows:
            return []
        claimed = 0
        for chunk in chunks([row.seq for row in rows]):
            claimed += conn.execute(
                self._sql.claim,
                {
                    "seqs": chunk,
                    "token": grant.token,
                    "until": grant.until,
                    "worker": grant.worker,
                    "broker": grant.broker,
                    "now": now,
                },
            ).rowcount
        if claimed != len(rows):  # locked rows cannot vanish: a bug if they did
            raise StorageError(f"storage {self.url}: claimed {claimed} of {len(rows)} jobs")
        records = []
        for row in rows:
            record = to_record(row)
            record.state = RUNNING
            record.attempts += 1
            record.lease = grant.token
            record.lease_until = grant.until
            record.worker = grant.worker
            record.broker = grant.broker
            record.updated_at = now
            records.append(record)
        return records

    def _merged_heads(self, conn: Connection, queues: list[str], limit: int) -> list[Row[Any]]:
        """Each queue's head straight off its index (one query over an IN list
        would sort every ready job of those queues), merged here; the few
        extra heads locked stay locked only until commit."""
        heads: list[Row[Any]] = []
        for queue in queues:
            heads.extend(conn.execute(self._sql.queue_head(queue, limit)))
        heads.sort(key=lambda row: (row.priority, row.run_at, row.seq))
        rows: list[Row[Any]] = []
        for chunk in chunks([row.seq for row in heads[:limit]]):
            stmt = select(*RECORD_COLUMNS).where(self._sql.in_(jobs.c.seq, chunk))
            rows.extend(conn.execute(stmt))
        rows.sort(key=lambda row: (row.priority, row.run_at, row.seq))
        return rows

    def _held(self, conn: Connection, leases: Iterable[Lease]) -> dict[str, tuple[Any, ...]]:
        """The running jobs among those named, by id: (lease, worker, attempts), locked."""
        rows = self._sql.lock(
            conn,
            (lease.job_id for lease in leases),
            jobs.c.state,
            jobs.c.lease,
            jobs.c.worker,
            jobs.c.attempts,
        )
        return {row[0]: tuple(row[2:]) for row in rows if row[1] == RUNNING}

    @staticmethod
    def _current(held: dict[str, tuple[Any, ...]], lease: Lease) -> bool:
        found = held.get(lease.job_id)
        return (
            found is not None
            and found[0] == lease.token
            and (lease.worker is None or found[1] == lease.worker)
        )

    def finish(self, ends: Sequence[tuple[Lease, Transition]], now: float) -> list[bool]:
        if not ends:
            return []
        return self._db.write(lambda conn: self._finish(conn, ends, now))

    def _finish(
        self, conn: Connection, ends: Sequence[tuple[Lease, Transition]], now: float
    ) -> list[bool]:
        held = self._held(conn, (lease for lease, _ in ends))
        results: list[bool] = []
        history: list[dict[str, Any]] = []
        # Rows that change alike, by shape: one statement each.
        groups: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
        for lease, to in ends:
            ok = self._current(held, lease)
            results.append(ok)
            if not ok:
                continue
            attempt = held.pop(lease.job_id)[2]  # a lease named again later is stale
            row: dict[str, Any] = {"id": lease.job_id, "lease": lease.token, "state": to.state}
            if to.error is not None:
                history.append(
                    {"job_id": lease.job_id, "attempt": attempt, "at": now, "error": to.error}
                )
                row["error"] = to.error
            if to.state == DONE:
                row["result"] = to.result
            if to.run_at is not None:
                row["run_at"] = to.run_at
            groups[(to.keeps_key, to.attempts, to.clear_error, *row)].append(row)
        if history:
            conn.execute(job_errors.insert(), history)
        for (keeps_key, attempts, clear_error, *_), rows in groups.items():
            same = _changes(keeps_key, attempts, clear_error, now)
            self._sql.update_leased(
                conn, rows, lease=None, lease_until=None, worker=None, broker=None, **same
            )
        return results

    def extend_leases(self, leases: Sequence[Lease], until: float, broker: str) -> list[bool]:
        if not leases:
            return []

        def work(conn: Connection) -> list[bool]:
            held = self._held(conn, leases)
            results = [self._current(held, lease) for lease in leases]
            current = [lease.job_id for lease, ok in zip(leases, results, strict=True) if ok]
            for chunk in chunks(list(dict.fromkeys(current))):
                conn.execute(
                    update(jobs)
                    .where(self._sql.in_(jobs.c.id, chunk))  # fenced above, on locked rows
                    .values(lease_until=until, broker=broker)
                )
            return results

        return self._db.write(work)

    def _running_where(self, condition: Any, order: tuple[Any, ...], limit: int) -> list[JobRecord]:
        if limit <= 0:
            return []
        stmt = (
            select(*RECORD_COLUMNS)
            .where(jobs.c.state == RUNNING, condition)
            .order_by(*order)
            .limit(limit)
        )
        return self._db.read(lambda conn: [to_record(row) for row in conn.execute(stmt)])

    def expired(self, now: float, limit: int = 1000) -> list[JobRecord]:
        return self._running_where(
            jobs.c.lease_until < now, (jobs.c.lease_until, jobs.c.seq), limit
        )

    def running(self, broker: str, limit: int = 1000) -> list[JobRecord]:
        return self._running_where(jobs.c.broker == broker, (jobs.c.seq,), limit)

    def promote(self, now: float) -> int:
        stmt = (
            update(jobs)
            .where(jobs.c.state == SCHEDULED, jobs.c.run_at <= now)
            .values(state=READY, updated_at=now)
        )
        return self._db.write(lambda conn: conn.execute(stmt).rowcount)

    def next_run_at(self) -> float | None:
        stmt = select(func.min(jobs.c.run_at)).where(jobs.c.state == SCHEDULED)
        found = self._db.read(lambda conn: conn.scalar(stmt))
        return None if found is None else float(found)

    # -- operators -----------------------------------------------------------

    def move(
        self, job_ids: Sequence[str], accepts: frozenset[str], to: Transition, now: float
    ) -> list[bool]:
        if not job_ids:
            return []

        def work(conn: Connection) -> list[bool]:
            found = {
                job_id: (state, key)
                for job_id, state, key in self._sql.lock(
                    conn, job_ids, jobs.c.state, jobs.c.unique_key
                )
            }
            takes_back = [
                key
                for state, key in found.values()
                if to.keeps_key and state in accepts and state not in ACTIVE_STATES
            ]
            held = set(self._key_holders(conn, takes_back))
            results = []
            for job_id in job_ids:
                state, key = found.get(job_id, ("", None))
                ok = state in accepts
                if ok and key is not None and to.keeps_key and state not in ACTIVE_STATES:
                    ok = key not in held
                    held.add(key)
                if ok:
                    found[job_id] = (to.state, key)  # a second mention moves once
                results.append(ok)
            moved = [job_id for job_id, ok in zip(job_ids, results, strict=True) if ok]
            values = _changes(to.keeps_key, to.attempts, to.clear_error, now)
            values["state"] = to.state
            if to.run_at is not None:
                values["run_at"] = to.run_at
            if to.keeps_key:
                values["active_key"] = jobs.c.unique_key
            for chunk in chunks(moved):
                # checked above, on locked rows
                conn.execute(update(jobs).where(self._sql.in_(jobs.c.id, chunk)).values(**values))
            return results

        return self._db.write(work)

    def delete(self, job_ids: Sequence[str]) -> int:
        if not job_ids:
            return 0

        def work(conn: Connection) -> int:
            rows = self._sql.lock(conn, job_ids, jobs.c.state)
            final = [job_id for job_id, state in rows if state in DELETABLE]
            for chunk in chunks(final):
                # The error history goes with its job (ON DELETE CASCADE).
                conn.execute(delete(jobs).where(self._sql.in_(jobs.c.id, chunk)))
            return len(final)

        return self._db.write(work)

    def purge(self, states: Iterable[str], finished_before: float) -> int:
        wanted = sorted(set(states) & DELETABLE)
        if not wanted:
            return 0
        stmt = delete(jobs).where(jobs.c.state.in_(wanted), jobs.c.updated_at < finished_before)
        return self._db.write(lambda conn: conn.execute(stmt).rowcount)

    def set_paused(self, queue: str, paused: bool) -> None:
        def work(conn: Connection) -> None:
            if not paused:
                conn.execute(delete(paused_queues).where(paused_queues.c.queue == queue))
                return
            there = conn.scalar(select(paused_queues.c.queue).where(paused_queues.c.queue == queue))
            if there is None:  # a race with another broker: IntegrityError, then retried
                conn.execute(paused_queues.insert().values(queue=queue))

        self._db.write(work)

    # -- queries -------------------------------------------------------------

    def get(self, job_ids: Sequence[str]) -> dict[str, JobRecord]:
        if not job_ids:
            return {}

        def work(conn: Connection) -> dict[str, JobRecord]:
            found: dict[str, JobRecord] = {}
            wanted = list(dict.fromkeys(job_ids))
            for chunk in chunks(wanted):
                stmt = select(*RECORD_COLUMNS).where(self._sql.in_(jobs.c.id, chunk))
                found.update((row.id, to_record(row)) for row in conn.execute(stmt))
            return {job_id: found[job_id] for job_id in wanted if job_id in found}  # asked order

        return self._db.read(work)

    def errors(self, job_id: str) -> list[AttemptError]:
        stmt = (
            select(job_errors.c.attempt, job_errors.c.at, job_errors.c.error)
            .where(job_errors.c.job_id == job_id)
            .order_by(job_errors.c.seq)
        )
        return self._db.read(lambda conn: [AttemptError(*row) for row in conn.execute(stmt)])

    def list_jobs(
        self,
        queue: str | None = None,
        state: str | None = None,
        limit: int = 100,
        before_seq: int | None = None,
    ) -> list[JobRecord]:
        if limit <= 0:
            return []
        stmt = select(*RECORD_COLUMNS).order_by(jobs.c.seq.desc()).limit(limit)
        if queue is not None:
            stmt = stmt.where(jobs.c.queue == queue)
        if state is not None:
            stmt = stmt.where(jobs.c.state == state)
        if before_seq is not None:
            stmt = stmt.where(jobs.c.seq < before_seq)
        return self._db.read(lambda conn: [to_record(row) for row in conn.execute(stmt)])

    def stats(self) -> dict[str, QueueStats]:
        def work(conn: Connection) -> dict[str, QueueStats]:
            stats: dict[str, QueueStats] = {}
            counts = select(jobs.c.queue, jobs.c.state, func.count()).group_by(
                jobs.c.queue, jobs.c.state
            )
            for queue, state, count in conn.execute(counts):
                stats.setdefault(queue, QueueStats()).counts[state] = int(count)
            for queue in conn.scalars(PAUSED):
                stats.setdefault(queue, QueueStats()).paused = True
            return stats

        return self._db.read(work)

    def paused_queues(self) -> set[str]:
        return self._db.read(lambda conn: set(conn.scalars(PAUSED)))


def _changes(keeps_key: bool, attempts: str, clear_error: bool, now: float) -> dict[str, Any]:
    """The columns a transition changes besides its state and values: the
    unique key, the attempts and the last error, by the rules."""
    values: dict[str, Any] = {"updated_at": now}
    if not keeps_key:
        values["active_key"] = None
    if attempts == RESET:
        values["attempts"] = 0
    elif attempts == GIVE_BACK:
        values["attempts"] = jobs.c.attempts - 1
    if clear_error:
        values["error"] = None
    return values
