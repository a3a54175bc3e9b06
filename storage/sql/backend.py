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

from sqlalchemy import Row, func, select, update
from sqlalchemy.engine import Connection

from jobsd.storage.base import SchemaError, Storage, StorageError
from jobsd.storage.records import AddResult, Grant, JobRecord, Lease, NewJob
from jobsd.storage.rules import Transition, waiting
from jobsd.storage.sql.engine import DEFAULT_CONNECT_TIMEOUT, Database
from jobsd.storage.sql.operators import SQLOperators, changes
from jobsd.storage.sql.schema import check_version, job_errors, jobs, migrate, schema_version
from jobsd.storage.sql.statements import PAUSED, RECORD_COLUMNS, Statements, chunks, to_record
from jobsd.vocabulary import DONE, READY, RUNNING, SCHEDULED


class SQLStorage(SQLOperators, Storage):
    """The contract on a SQL database (``engine.py`` lists the URLs).

    ``create=True`` creates the schema on first open and upgrades an older one;
    ``create=False`` only checks it is not newer than this code, so a caller
    can :meth:`migrate` explicitly (``jobsd migrate URL``). Raises
    ``ValueError`` for a URL no backend understands, :class:`StorageError` when
    the database cannot be reached or written, :class:`SchemaError` when its
    schema is newer."""

    def __init__(
        self, url: str, *, create: bool = True, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
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
            self._db.engine.dispose()
            raise
        except self._db.errors as exc:
            self._db.engine.dispose()
            raise self._db.failure(exc, "cannot open storage") from exc

    # -- schema ----------------------------------------------------------------

    def migrate(self) -> tuple[int, int]:
        """Create or upgrade the schema: ``schema.migrate``."""
        try:
            return migrate(self._db.engine, self.url)
        except self._db.errors as exc:  # a SchemaError passes as it is
            raise self._db.failure(exc, "cannot migrate storage") from exc

    def schema_version(self) -> int:
        """The database's schema version (0: no jobsd schema)."""
        return self._db.read(schema_version)

    def close(self) -> None:
        self._db.engine.dispose()

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
        holders = self._sql.key_holders(conn, (new.unique_key for new in batch))
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
            rows.append(  # the columns not named (lease, worker, result...) start NULL
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
                }
            )
            results.append(AddResult(new.id, True))
        if rows:
            conn.execute(jobs.insert(), rows)
        return results

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
        records = [to_record(row) for row in rows]
        for record in records:
            record.run_under(grant, now)  # as the UPDATE made it
        return records

    def _merged_heads(self, conn: Connection, queues: list[str], limit: int) -> list[Row[Any]]:
        """Each queue's head straight off its index (one query over an IN list
        would sort every ready job of those queues), merged here; the few
        extra heads locked stay locked only until commit."""
        heads: list[Row[Any]] = []
        for queue in queues:
            heads.extend(conn.execute(self._sql.queue_head, {"queue": queue, "limit": limit}))
        heads.sort(key=lambda row: (row.priority, row.run_at, row.seq))
        rows: list[Row[Any]] = []
        for chunk in chunks([row.seq for row in heads[:limit]]):
            stmt = select(*RECORD_COLUMNS).where(self._sql.in_(jobs.c.seq, chunk))
            rows.extend(conn.execute(stmt))
        rows.sort(key=lambda row: (row.priority, row.run_at, row.seq))
        return rows

    def _held(self, conn: Connection, leases: Iterable[Lease]) -> dict[str, tuple[Any, ...]]:
        """The running jobs among those named, by id: (lease, worker, attempts), locked."""
        ids = (lease.job_id for lease in leases)
        rows = self._sql.lock(conn, ids, "state", "lease", "worker", "attempts")
        return {row[0]: tuple(row[2:]) for row in rows if row[1] == RUNNING}

    @staticmethod
    def _current(held: dict[str, tuple[Any, ...]], lease: Lease) -> bool:
        found = held.get(lease.job_id)
        if found is None or found[0] != lease.token:
            return False
        return lease.worker is None or found[1] == lease.worker

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
        for shape, rows in groups.items():
            keeps_key, attempts, clear_error, *_ = shape
            same = changes(keeps_key, attempts, clear_error, now)
            self._sql.update_leased(
                conn, shape, rows, lease=None, lease_until=None, worker=None, broker=None, **same
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
