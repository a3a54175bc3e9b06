"""The SQL jobsd runs, by name: each statement built once per shape and reused.

Building and keying a statement anew for every call cost as much as running
it, so the hot ones (a claim, the row locks, the fenced updates that end
attempts) are made once with bound parameters. Dialect differences in how a
statement is written live here too; what a statement is for, and under which
lock it runs, is the backend's (``backend.py``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TypeVar, cast

from sqlalchemy import Select, any_, bindparam, case, literal, select, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection
from sqlalchemy.sql import ClauseElement

from jobsd.storage.records import JobRecord
from jobsd.storage.sql.schema import jobs, paused_queues
from jobsd.vocabulary import READY, RUNNING

T = TypeVar("T")

#: Ids per IN list: far below SQLite's 32766 bound variables, few round trips.
CHUNK = 2000
#: Every JobRecord field, in declaration order: the columns a record is read from.
RECORD_COLUMNS = [jobs.c[field.name] for field in dataclasses.fields(JobRecord)]
PAUSED = select(paused_queues.c.queue)
#: Dispatch order among ready jobs.
ORDER = (jobs.c.priority, jobs.c.run_at, jobs.c.seq)


def chunks(values: list[T], size: int = CHUNK) -> Iterator[list[T]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def to_record(row: Sequence[Any]) -> JobRecord:
    """The record of a row of ``RECORD_COLUMNS``, which are its fields in order:
    positional, and the slots read back, is eight times faster than a keyword
    for each of the row's attributes (every claimed job is made here)."""
    record = JobRecord(*row)
    record.args = bytes(record.args)
    if record.backoff is not None:
        record.backoff = json.loads(cast(str, record.backoff))  # JSON text until here
    if record.result is not None:
        record.result = bytes(record.result)
    return record


class Statements:
    def __init__(self, dialect: str) -> None:
        self.dialect = dialect
        self.locks_rows = dialect in ("postgresql", "mysql", "mariadb")
        self._cache: dict[tuple[Any, ...], Any] = {}
        #: The ready jobs at the head of one queue, locked: every dispatch's.
        self.claim_head = self._head(*RECORD_COLUMNS)
        #: Their keys alone: a claim over several queues merges the heads.
        self.queue_head = self._head(jobs.c.seq, *ORDER[:2])
        #: Run the chosen jobs under a grant (by key alone: they are locked).
        self.claim = (
            update(jobs)
            .where(self.in_(jobs.c.seq, name="seqs"))
            .values(
                state=RUNNING,
                attempts=jobs.c.attempts + 1,
                lease=bindparam("token"),
                lease_until=bindparam("until"),
                worker=bindparam("worker"),
                broker=bindparam("broker"),
                updated_at=bindparam("now"),
            )
        )

    def locked(self, stmt: Select[Any], *, skip_locked: bool = False) -> Select[Any]:
        """Lock the selected rows until commit where the database has row locks
        (SQLite needs none: its write transactions run one at a time)."""
        if not self.locks_rows:
            return stmt
        return stmt.with_for_update(skip_locked=skip_locked)

    def in_(self, column: Any, values: list[Any] | None = None, name: str | None = None) -> Any:
        """``column IN values``, or ``IN :name`` for a statement built once, the
        list bound at each execution. On PostgreSQL ``column = ANY(array)``
        instead: one parameter, so psycopg's prepared statement is one for
        every batch size, and its generic plan reads the index (a generic plan
        for a long IN list of parameters can scan the whole table)."""
        if self.dialect == "postgresql":
            return column == any_(bindparam(name, values, type_=postgresql.ARRAY(column.type)))
        return column.in_(bindparam(name, values, type_=column.type, expanding=True))

    def _head(self, *columns: Any) -> Select[Any]:
        return self.locked(
            select(*columns)
            .where(jobs.c.queue == bindparam("queue"), jobs.c.state == READY)
            .order_by(*ORDER)
            .limit(bindparam("limit")),
            skip_locked=True,
        )

    def lock(self, conn: Connection, job_ids: Iterable[str], *columns: str) -> list[Any]:
        """``id`` and ``columns`` of the named jobs that exist, their rows locked
        until commit, so what the caller decides from them stays true.

        Selects by id alone: the statements that follow change these rows by id
        alone. A state test next to a long IN list can lead PostgreSQL, with
        stale statistics on a busy queue table, to scan the state index
        instead of the unique id index.
        """
        shape = ("lock", *columns)
        stmt = self._cache.get(shape)
        if stmt is None:
            stmt = self._cache[shape] = self.locked(
                select(jobs.c.id, *(jobs.c[name] for name in columns))
                .where(self.in_(jobs.c.id, name="ids"))
                .order_by(jobs.c.id)  # one lock order for everyone: no deadlocks
            )
        rows: list[Any] = []
        for chunk in chunks(list(dict.fromkeys(job_ids))):
            rows.extend(conn.execute(stmt, {"ids": chunk}))
        return rows

    def key_holders(self, conn: Connection, keys: Iterable[str | None]) -> dict[str, str]:
        """The active job holding each of these unique keys, where one does."""
        wanted = list(dict.fromkeys(key for key in keys if key is not None))
        holders: dict[str, str] = {}
        for chunk in chunks(wanted):
            stmt = select(jobs.c.active_key, jobs.c.id).where(self.in_(jobs.c.active_key, chunk))
            holders.update((key, job_id) for key, job_id in conn.execute(stmt))
        return holders

    def update_leased(
        self, conn: Connection, shape: tuple[Any, ...], rows: list[dict[str, Any]], **same: Any
    ) -> None:
        """Update running jobs, each named by ``id`` and its ``lease`` in
        ``rows`` (one or more) with its own values for the rows' other keys,
        and ``same`` for all (values or column expressions). ``shape`` is the
        caller's key for what decides the statement: the rows' keys, which of
        ``same`` are expressions. The WHERE clause fences on id, lease and
        state (the caller has checked them on locked rows already, to report
        per item).

        One executemany where the driver makes that cheap (sqlite3's loop in C,
        psycopg's pipeline). PyMySQL sends an UPDATE per row, so there one
        UPDATE carries the batch, choosing each row's values with CASE.
        """
        varying = [key for key in rows[0] if key not in ("id", "lease")]
        if self.dialect not in ("mysql", "mariadb"):
            cache_key = ("leased", *shape)
            stmt = self._cache.get(cache_key)
            if stmt is None:
                stmt = self._cache[cache_key] = (
                    update(jobs)
                    .where(
                        jobs.c.id == bindparam("b_id"),
                        jobs.c.lease == bindparam("b_lease"),
                        jobs.c.state == RUNNING,
                    )
                    .values(
                        **{name: _bound_or_expression(name, value) for name, value in same.items()},
                        **{name: bindparam(f"b_{name}") for name in varying},
                    )
                )
            shared = {f"s_{name}": value for name, value in same.items() if _is_value(value)}
            conn.execute(
                stmt, [{**shared, **{f"b_{k}": v for k, v in row.items()}} for row in rows]
            )
            return
        for chunk in chunks(rows, 500):
            values = dict(same)
            for key in varying:
                distinct = {row[key] for row in chunk}
                if len(distinct) == 1:
                    values[key] = distinct.pop()
                else:
                    column = jobs.c[key]
                    each = {row["id"]: literal(row[key], column.type) for row in chunk}
                    values[key] = case(each, value=jobs.c.id)
            leases = {row["id"]: row["lease"] for row in chunk}
            conn.execute(
                update(jobs)
                .where(
                    jobs.c.id.in_(list(leases)),
                    jobs.c.lease == case(leases, value=jobs.c.id),
                    jobs.c.state == RUNNING,
                )
                .values(**values)
            )


def _is_value(value: Any) -> bool:
    return not isinstance(value, ClauseElement)


def _bound_or_expression(name: str, value: Any) -> Any:
    """A value shared by every row is bound once per execution; a column
    expression (``attempts - 1``) is written into the statement."""
    return bindparam(f"s_{name}") if _is_value(value) else value
