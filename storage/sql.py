"""SQL storage through SQLAlchemy Core: SQLite, PostgreSQL, MySQL/MariaDB.

One contract call is one transaction, and a batch costs a handful of statements
whatever its size (IN lists, executemany, bulk UPDATE), so the broker's group
commit stays cheap. The schema lives in :mod:`jobsd.storage.schema`.

* ``sqlite:///path`` (``sqlite://`` for a throwaway in-memory database): WAL,
  ``synchronous=FULL`` (an acknowledged add survives power loss), foreign keys
  on. Write transactions begin ``IMMEDIATE``: two processes on one file queue
  for the write lock instead of deadlocking on a read-to-write upgrade.
* ``postgresql://`` (psycopg 3): several brokers may share the database;
  ``claim`` locks with ``FOR UPDATE SKIP LOCKED``.
* ``mysql://`` / ``mariadb://`` (PyMySQL; MariaDB 10.6+ or MySQL 8 for SKIP
  LOCKED): as PostgreSQL, at READ COMMITTED.

Opening creates the schema, or upgrades an older one; ``create=False`` leaves
the schema alone, which is what ``jobsd migrate URL`` wants::

    storage = SQLStorage(url, create=False)
    try:
        old, new = storage.migrate()   # (0, 1) for a new database
    finally:
        storage.close()
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

from sqlalchemy import (
    Engine,
    Row,
    Select,
    any_,
    bindparam,
    case,
    create_engine,
    delete,
    event,
    func,
    literal,
    select,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.pool import StaticPool

from jobsd.storage.base import (
    CANCELLED,
    DEAD,
    DONE,
    FINAL_STATES,
    READY,
    RUNNING,
    SCHEDULED,
    AddResult,
    AttemptError,
    Completion,
    Failure,
    JobRecord,
    Lease,
    NewJob,
    QueueStats,
    SchemaError,
    Storage,
    StorageError,
)
from jobsd.storage.schema import (
    SCHEMA_VERSION,
    check_version,
    job_errors,
    jobs,
    migrate,
    paused_queues,
    schema_version,
)

__all__ = ["SCHEMA_VERSION", "SQLStorage", "SchemaError"]

T = TypeVar("T")

#: URL schemes (before any ``+driver``) and the driver a bare scheme means.
_DEFAULT_DRIVERS = {
    "sqlite": "sqlite",
    "postgresql": "postgresql+psycopg",
    "postgres": "postgresql+psycopg",
    "mysql": "mysql+pymysql",
    "mariadb": "mariadb+pymysql",
}
_SUPPORTED = (
    "memory://, sqlite:///PATH, postgresql://USER@HOST/DB (psycopg), "
    "mysql://USER@HOST/DB or mariadb://USER@HOST/DB (pymysql)"
)
_EXTRAS = {"postgresql": "jobsd[postgres]", "mysql": "jobsd[mysql]", "mariadb": "jobsd[mysql]"}

#: Ids per IN list: far below SQLite's 32766 bound variables, few round trips.
_CHUNK = 2000
#: Tries per call when a racing broker makes a transaction fail harmlessly
#: (a unique key taken meanwhile, a deadlock victim).
_TRIES = 3
#: Seconds to wait for a database server to answer a new connection.
DEFAULT_CONNECT_TIMEOUT = 10

# Every JobRecord field, in declaration order: the columns a record is read from.
_RECORD_COLUMNS = [jobs.c[field.name] for field in dataclasses.fields(JobRecord)]
_PAUSED = select(paused_queues.c.queue)


class SQLStorage(Storage):
    """The contract on a SQL database; see the module docstring for the URLs.

    ``create=True`` (the default) creates the schema on first open and upgrades
    an older one; ``create=False`` only checks it is not newer than this code,
    so a caller can :meth:`migrate` explicitly. Raises ``ValueError`` for a URL
    no backend understands, :class:`StorageError` when the database cannot be
    reached or written, :class:`SchemaError` when its schema is newer.
    """

    def __init__(
        self,
        url: str,
        *,
        create: bool = True,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    ) -> None:
        sa_url = _parse_url(url)
        masked = sa_url.render_as_string(hide_password=True)
        try:
            self._engine = _make_engine(sa_url, connect_timeout)
        except ImportError as exc:
            extra = _EXTRAS.get(sa_url.get_backend_name(), "its driver")
            raise StorageError(
                f"cannot open storage {masked}: database driver missing ({exc}); install {extra}"
            ) from exc
        except ArgumentError as exc:
            raise ValueError(f"unsupported storage URL {masked}: {exc}") from exc
        self.url: str = self._engine.url.render_as_string(hide_password=True)
        self._dialect: str = self._engine.dialect.name
        self._locks_rows = self._dialect in ("postgresql", "mysql", "mariadb")
        # Read-only calls: a plain (deferred) BEGIN on SQLite, so readers never
        # take the write lock. Shares the engine's pool and events.
        self._reader = self._engine.execution_options(jobsd_read_only=True)
        self._open: Connection | None = None  # the connection of transaction()
        self._open_failed = False
        self._claim_head, self._claim_update = self._claim_statements()
        # Hot statements built once and reused, by shape: building and keying
        # a statement anew for every call cost as much as running it.
        self._statements: dict[tuple[str, ...], Any] = {}
        try:
            if create:
                migrate(self._engine, self.url)
            else:
                with self._reader.begin() as conn:
                    check_version(schema_version(conn), self.url)
        except SchemaError:
            self._engine.dispose()
            raise
        except (SQLAlchemyError, self._engine.dialect.loaded_dbapi.Error) as exc:
            self._engine.dispose()
            raise StorageError(f"cannot open storage {self.url}: {_describe(exc)}") from exc

    # -- schema --------------------------------------------------------------

    def migrate(self) -> tuple[int, int]:
        """Create or upgrade the schema; return ``(from_version, to_version)``
        (``from_version`` is 0 for a database without a jobsd schema)."""
        try:
            return migrate(self._engine, self.url)
        except SchemaError:
            raise
        except (SQLAlchemyError, self._engine.dialect.loaded_dbapi.Error) as exc:
            raise StorageError(f"cannot migrate storage {self.url}: {_describe(exc)}") from exc

    def schema_version(self) -> int:
        """The database's schema version (0: no jobsd schema)."""
        return self._read(schema_version)

    def close(self) -> None:
        self._engine.dispose()

    def __repr__(self) -> str:
        return f"SQLStorage({self.url!r})"

    # -- transactions ----------------------------------------------------------

    def _write(self, work: Callable[[Connection], T]) -> T:
        return self._run(self._engine, work)

    def _read(self, work: Callable[[Connection], T]) -> T:
        return self._run(self._reader, work)

    def _run(self, engine: Engine, work: Callable[[Connection], T]) -> T:
        """Run ``work`` in one transaction; retry it when another broker's
        concurrent change made it fail, else turn the failure into StorageError."""
        dbapi_error = self._engine.dialect.loaded_dbapi.Error
        if self._open is not None:  # inside transaction(): no retry, the block fails
            try:
                return work(self._open)
            except (SQLAlchemyError, dbapi_error) as exc:
                self._open_failed = True
                raise StorageError(f"storage {self.url}: {_describe(exc)}") from exc
        for attempt in range(1, _TRIES + 1):
            try:
                with engine.begin() as conn:
                    return work(conn)
            except IntegrityError as exc:
                # A job id or unique key inserted meanwhile by another broker:
                # the next try sees it and answers accordingly.
                if attempt < _TRIES:
                    continue
                raise StorageError(f"storage {self.url}: {_describe(exc)}") from exc
            except DBAPIError as exc:
                if attempt < _TRIES and self._is_retryable(exc):
                    continue
                raise StorageError(f"storage {self.url}: {_describe(exc)}") from exc
            except (SQLAlchemyError, dbapi_error) as exc:  # dbapi_error: from connect events
                raise StorageError(f"storage {self.url}: {_describe(exc)}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        if self._open is not None:
            yield
            return
        dbapi_error = self._engine.dialect.loaded_dbapi.Error
        try:
            with self._engine.begin() as conn:
                self._open, self._open_failed = conn, False
                try:
                    yield
                finally:
                    self._open = None
                # A call that failed inside may have been caught by the caller;
                # PostgreSQL would then answer COMMIT with a silent ROLLBACK.
                if self._open_failed:
                    raise StorageError(f"storage {self.url}: a call in the transaction failed")
        except (SQLAlchemyError, dbapi_error) as exc:
            raise StorageError(f"storage {self.url}: {_describe(exc)}") from exc

    def _is_retryable(self, exc: DBAPIError) -> bool:
        orig = exc.orig
        if getattr(orig, "sqlstate", None) in ("40001", "40P01"):  # serialization, deadlock
            return True
        args: tuple[Any, ...] = getattr(orig, "args", ())
        return self._dialect in ("mysql", "mariadb") and bool(args) and args[0] == 1213

    def _locked(self, stmt: Select[Any], *, skip_locked: bool = False) -> Select[Any]:
        """Lock the selected rows until commit where the database has row locks
        (SQLite needs none: its write transactions run one at a time)."""
        if not self._locks_rows:
            return stmt
        return stmt.with_for_update(skip_locked=skip_locked)

    def _in(self, column: Any, values: list[Any]) -> Any:
        """``column IN values``. On PostgreSQL ``column = ANY(array)`` instead:
        one parameter, so psycopg's prepared statement is one for every batch
        size, and its generic plan reads the index (a generic plan for a long
        IN list of parameters can scan the whole table)."""
        if self._dialect == "postgresql":
            return column == any_(bindparam(None, values, type_=postgresql.ARRAY(column.type)))
        return column.in_(values)

    def _in_param(self, column: Any, name: str) -> Any:
        """``column IN :name`` for a statement built once, its list bound at
        each execution (``= ANY(:name)`` on PostgreSQL, as in ``_in``)."""
        if self._dialect == "postgresql":
            return column == any_(bindparam(name, type_=postgresql.ARRAY(column.type)))
        return column.in_(bindparam(name, expanding=True))

    def _claim_statements(self) -> tuple[Any, Any]:
        """The statements of the one-queue claim, every dispatch's: built once,
        because building and keying them anew cost a third of each claim."""
        head = self._locked(
            select(*_RECORD_COLUMNS)
            .where(jobs.c.queue == bindparam("queue"), jobs.c.state == READY)
            .order_by(jobs.c.priority, jobs.c.run_at, jobs.c.seq)
            .limit(bindparam("limit")),
            skip_locked=True,
        )
        claim = (
            update(jobs)
            .where(self._in_param(jobs.c.seq, "seqs"))
            .values(
                state=RUNNING,
                attempts=jobs.c.attempts + 1,
                lease_until=bindparam("lease_until"),
                worker=bindparam("worker"),
                updated_at=bindparam("now"),
            )
        )
        return head, claim

    def _lock(self, conn: Connection, job_ids: Iterable[str], *columns: Any) -> list[Any]:
        """``id`` and ``columns`` of the named jobs that exist, their rows locked
        until commit, so what the caller decides from them stays true.

        Selects by id alone: the statements that follow change these rows by id
        alone (``id IN (...)``). A state test next to a long IN list can lead
        PostgreSQL, with stale statistics on a busy queue table, to scan the
        state index instead of the unique id index.
        """
        shape = ("lock", *(column.name for column in columns))
        stmt = self._statements.get(shape)
        if stmt is None:
            stmt = self._statements[shape] = self._locked(
                select(jobs.c.id, *columns)
                .where(self._in_param(jobs.c.id, "ids"))
                .order_by(jobs.c.id)  # one lock order for everyone: no deadlocks
            )
        rows: list[Any] = []
        for chunk in _chunks(list(dict.fromkeys(job_ids))):
            rows.extend(conn.execute(stmt, {"ids": chunk}))
        return rows

    def _running(self, conn: Connection, job_ids: Iterable[str]) -> dict[str, int]:
        """Running jobs among ``job_ids`` and their current attempt, locked."""
        rows = self._lock(conn, job_ids, jobs.c.state, jobs.c.attempts)
        return {job_id: attempts for job_id, state, attempts in rows if state == RUNNING}

    @staticmethod
    def _fence(
        current: dict[str, int], leases: Iterable[tuple[str, int]], *, ends: bool = True
    ) -> list[bool]:
        """Which leases are current. When acting ``ends`` the attempt (complete,
        fail, release), a lease named again later in the batch is stale."""
        results = []
        for job_id, attempt in leases:
            ok = current.get(job_id) == attempt
            if ok and ends:
                del current[job_id]
            results.append(ok)
        return results

    def _update_attempts(self, conn: Connection, rows: list[dict[str, Any]], **same: Any) -> None:
        """Update running attempts, each named by ``id`` and ``attempt`` in
        ``rows`` with its own values for the rows' other keys, and ``same``
        for all. The WHERE clause fences on id, attempt and state (the caller
        has checked them on locked rows already, to report per item).

        One executemany where the driver makes that cheap (sqlite3's loop in C,
        psycopg's pipeline). PyMySQL sends an UPDATE per row, so there one
        UPDATE carries the batch, choosing each row's values with CASE.
        """
        if not rows:
            return
        varying = [key for key in rows[0] if key not in ("id", "attempt")]
        if self._dialect not in ("mysql", "mariadb"):
            shape = ("update", *sorted(same), "|", *varying)
            stmt = self._statements.get(shape)
            if stmt is None:
                stmt = self._statements[shape] = (
                    update(jobs)
                    .where(
                        jobs.c.id == bindparam("b_id"),
                        jobs.c.attempts == bindparam("b_attempt"),
                        jobs.c.state == RUNNING,
                    )
                    .values(
                        **{name: bindparam(f"s_{name}") for name in same},
                        **{name: bindparam(f"b_{name}") for name in varying},
                    )
                )
            shared = {f"s_{name}": value for name, value in same.items()}
            conn.execute(
                stmt, [{**shared, **{f"b_{k}": v for k, v in row.items()}} for row in rows]
            )
            return
        for chunk in _chunks(rows, 500):
            values = dict(same)
            for key in varying:
                distinct = {row[key] for row in chunk}
                if len(distinct) == 1:
                    values[key] = distinct.pop()
                else:
                    column = jobs.c[key]
                    each = {row["id"]: literal(row[key], column.type) for row in chunk}
                    values[key] = case(each, value=jobs.c.id)
            attempts = {row["id"]: row["attempt"] for row in chunk}
            conn.execute(
                update(jobs)
                .where(
                    jobs.c.id.in_(list(attempts)),
                    jobs.c.attempts == case(attempts, value=jobs.c.id),
                    jobs.c.state == RUNNING,
                )
                .values(**values)
            )

    # -- producers -----------------------------------------------------------

    def add(self, jobs: Sequence[NewJob], now: float) -> list[AddResult]:
        if not jobs:
            return []
        for new in jobs:
            new.check()
        return self._write(lambda conn: self._add(conn, jobs, now))

    def _add(self, conn: Connection, batch: Sequence[NewJob], now: float) -> list[AddResult]:
        known: set[str] = set()
        for chunk in _chunks(list(dict.fromkeys(new.id for new in batch))):
            known.update(conn.scalars(select(jobs.c.id).where(self._in(jobs.c.id, chunk))))
        holders: dict[str, str] = {}
        keys = list(dict.fromkeys(new.unique_key for new in batch if new.unique_key is not None))
        for chunk in _chunks(keys):
            stmt = select(jobs.c.active_key, jobs.c.id).where(self._in(jobs.c.active_key, chunk))
            holders.update(conn.execute(stmt).all())

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
                    "state": READY if new.run_at <= now else SCHEDULED,
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
                }
            )
            results.append(AddResult(new.id, True))
        if rows:
            conn.execute(jobs.insert(), rows)
        return results

    # -- dispatch ------------------------------------------------------------

    def claim(
        self, queues: Sequence[str], limit: int, now: float, lease_until: float, worker: str
    ) -> list[JobRecord]:
        wanted = list(dict.fromkeys(queues))
        if limit <= 0 or not wanted:
            return []
        return self._write(lambda conn: self._claim(conn, wanted, limit, now, lease_until, worker))

    def _claim(
        self,
        conn: Connection,
        queues: list[str],
        limit: int,
        now: float,
        lease_until: float,
        worker: str,
    ) -> list[JobRecord]:
        paused = set(conn.scalars(_PAUSED))
        queues = [queue for queue in queues if queue not in paused]
        if not queues:
            return []
        order = (jobs.c.priority, jobs.c.run_at, jobs.c.seq)
        if len(queues) == 1:
            # The common case: one index range scan, already in dispatch order.
            rows = list(conn.execute(self._claim_head, {"queue": queues[0], "limit": limit}))
        else:
            # Each queue's head straight off its index (a single query over an IN
            # list would sort every ready job of those queues), merged here; the
            # few extra heads locked stay locked only until commit.
            heads: list[Row[Any]] = []
            for queue in queues:
                stmt = (
                    select(jobs.c.seq, *order[:2])
                    .where(jobs.c.queue == queue, jobs.c.state == READY)
                    .order_by(*order)
                    .limit(limit)
                )
                heads.extend(conn.execute(self._locked(stmt, skip_locked=True)))
            heads.sort(key=lambda row: (row.priority, row.run_at, row.seq))
            chosen = [row.seq for row in heads[:limit]]
            rows = []
            for chunk in _chunks(chosen):
                stmt = select(*_RECORD_COLUMNS).where(self._in(jobs.c.seq, chunk))
                rows.extend(conn.execute(stmt))
            rows.sort(key=lambda row: (row.priority, row.run_at, row.seq))
        if not rows:
            return []
        claimed = 0
        for chunk in _chunks([row.seq for row in rows]):
            # By key alone (see _lock): the rows are locked and known ready.
            claimed += conn.execute(
                self._claim_update,
                {"seqs": chunk, "lease_until": lease_until, "worker": worker, "now": now},
            ).rowcount
        if claimed != len(rows):  # locked rows cannot vanish: a bug if they did
            raise StorageError(f"storage {self.url}: claimed {claimed} of {len(rows)} jobs")
        records = []
        for row in rows:
            record = _record(row)
            record.state = RUNNING
            record.attempts += 1
            record.lease_until = lease_until
            record.worker = worker
            record.updated_at = now
            records.append(record)
        return records

    def complete(self, completions: Sequence[Completion], now: float) -> list[bool]:
        if not completions:
            return []
        return self._write(lambda conn: self._complete(conn, completions, now))

    def _complete(
        self, conn: Connection, completions: Sequence[Completion], now: float
    ) -> list[bool]:
        current = self._running(conn, (c.job_id for c in completions))
        results = self._fence(current, ((c.job_id, c.attempt) for c in completions))
        done: list[dict[str, Any]] = []
        again: list[dict[str, Any]] = []
        for item, ok in zip(completions, results, strict=True):
            if not ok:
                continue
            lease = {"id": item.job_id, "attempt": item.attempt}
            if item.reschedule_at is None:
                done.append({**lease, "result": item.result})
            else:
                state = READY if item.reschedule_at <= now else SCHEDULED
                again.append({**lease, "state": state, "run_at": item.reschedule_at})
        self._update_attempts(
            conn,
            done,
            state=DONE,
            active_key=None,
            lease_until=None,
            worker=None,
            updated_at=now,
        )
        self._update_attempts(
            conn,
            again,
            attempts=0,
            error=None,
            lease_until=None,
            worker=None,
            updated_at=now,
        )
        return results

    def fail(self, failures: Sequence[Failure], now: float) -> list[bool]:
        if not failures:
            return []
        return self._write(lambda conn: self._fail(conn, failures, now))

    def _fail(self, conn: Connection, failures: Sequence[Failure], now: float) -> list[bool]:
        current = self._running(conn, (f.job_id for f in failures))
        results = self._fence(current, ((f.job_id, f.attempt) for f in failures))
        history: list[dict[str, Any]] = []
        retried: list[dict[str, Any]] = []
        ended: list[dict[str, Any]] = []
        for item, ok in zip(failures, results, strict=True):
            if not ok:
                continue
            history.append(
                {"job_id": item.job_id, "attempt": item.attempt, "at": now, "error": item.error}
            )
            lease = {"id": item.job_id, "attempt": item.attempt, "error": item.error}
            if item.retry_at is not None:
                state = READY if item.retry_at <= now else SCHEDULED
                retried.append({**lease, "state": state, "run_at": item.retry_at})
            else:
                ended.append({**lease, "state": item.final_state})
        if history:
            conn.execute(job_errors.insert(), history)
        self._update_attempts(conn, retried, lease_until=None, worker=None, updated_at=now)
        self._update_attempts(
            conn, ended, active_key=None, lease_until=None, worker=None, updated_at=now
        )
        return results

    def release(self, leases: Sequence[Lease], now: float) -> list[bool]:
        if not leases:
            return []
        return self._write(lambda conn: self._release(conn, leases, now))

    def _release(self, conn: Connection, leases: Sequence[Lease], now: float) -> list[bool]:
        current = self._running(conn, (lease.job_id for lease in leases))
        results = self._fence(current, ((lease.job_id, lease.attempt) for lease in leases))
        ids = [lease.job_id for lease, ok in zip(leases, results, strict=True) if ok]
        for chunk in _chunks(ids):
            conn.execute(
                update(jobs)
                .where(self._in(jobs.c.id, chunk))  # fenced above, on locked rows
                .values(
                    state=READY,
                    attempts=jobs.c.attempts - 1,
                    lease_until=None,
                    worker=None,
                    updated_at=now,
                )
            )
        return results

    def extend_leases(self, leases: Sequence[Lease], until: float) -> list[bool]:
        if not leases:
            return []
        return self._write(lambda conn: self._extend(conn, leases, until))

    def _extend(self, conn: Connection, leases: Sequence[Lease], until: float) -> list[bool]:
        current = self._running(conn, (lease.job_id for lease in leases))
        results = self._fence(
            current, ((lease.job_id, lease.attempt) for lease in leases), ends=False
        )
        ids = [lease.job_id for lease, ok in zip(leases, results, strict=True) if ok]
        ids = list(dict.fromkeys(ids))
        for chunk in _chunks(ids):
            conn.execute(
                update(jobs)
                .where(self._in(jobs.c.id, chunk))  # fenced above, on locked rows
                .values(lease_until=until)
            )
        return results

    def expired(self, now: float, limit: int = 1000) -> list[JobRecord]:
        if limit <= 0:
            return []
        stmt = (
            select(*_RECORD_COLUMNS)
            .where(jobs.c.state == RUNNING, jobs.c.lease_until < now)
            .order_by(jobs.c.lease_until, jobs.c.seq)
            .limit(limit)
        )
        return self._read(lambda conn: [_record(row) for row in conn.execute(stmt)])

    def promote(self, now: float) -> int:
        stmt = (
            update(jobs)
            .where(jobs.c.state == SCHEDULED, jobs.c.run_at <= now)
            .values(state=READY, updated_at=now)
        )
        return self._write(lambda conn: conn.execute(stmt).rowcount)

    def next_run_at(self) -> float | None:
        stmt = select(func.min(jobs.c.run_at)).where(jobs.c.state == SCHEDULED)
        found = self._read(lambda conn: conn.scalar(stmt))
        return None if found is None else float(found)

    # -- inspection and administration ---------------------------------------

    def get(self, job_ids: Sequence[str]) -> dict[str, JobRecord]:
        if not job_ids:
            return {}

        def work(conn: Connection) -> dict[str, JobRecord]:
            found: dict[str, JobRecord] = {}
            wanted = list(dict.fromkeys(job_ids))
            for chunk in _chunks(wanted):
                stmt = select(*_RECORD_COLUMNS).where(self._in(jobs.c.id, chunk))
                found.update((row.id, _record(row)) for row in conn.execute(stmt))
            return {job_id: found[job_id] for job_id in wanted if job_id in found}  # asked order

        return self._read(work)

    def errors(self, job_id: str) -> list[AttemptError]:
        stmt = (
            select(job_errors.c.attempt, job_errors.c.at, job_errors.c.error)
            .where(job_errors.c.job_id == job_id)
            .order_by(job_errors.c.seq)
        )
        return self._read(lambda conn: [AttemptError(*row) for row in conn.execute(stmt)])

    def list_jobs(
        self,
        queue: str | None = None,
        state: str | None = None,
        limit: int = 100,
        before_seq: int | None = None,
    ) -> list[JobRecord]:
        if limit <= 0:
            return []
        stmt = select(*_RECORD_COLUMNS).order_by(jobs.c.seq.desc()).limit(limit)
        if queue is not None:
            stmt = stmt.where(jobs.c.queue == queue)
        if state is not None:
            stmt = stmt.where(jobs.c.state == state)
        if before_seq is not None:
            stmt = stmt.where(jobs.c.seq < before_seq)
        return self._read(lambda conn: [_record(row) for row in conn.execute(stmt)])

    def stats(self) -> dict[str, QueueStats]:
        def work(conn: Connection) -> dict[str, QueueStats]:
            stats: dict[str, QueueStats] = {}
            counts = select(jobs.c.queue, jobs.c.state, func.count()).group_by(
                jobs.c.queue, jobs.c.state
            )
            for queue, state, count in conn.execute(counts):
                stats.setdefault(queue, QueueStats()).counts[state] = int(count)
            for queue in conn.scalars(select(paused_queues.c.queue)):
                stats.setdefault(queue, QueueStats()).paused = True
            return stats

        return self._read(work)

    def cancel(self, job_ids: Sequence[str], now: float) -> list[bool]:
        if not job_ids:
            return []

        def work(conn: Connection) -> list[bool]:
            states: dict[str, str] = dict(self._lock(conn, job_ids, jobs.c.state))
            results = []
            for job_id in job_ids:
                ok = states.get(job_id) in (SCHEDULED, READY)
                if ok:
                    states[job_id] = CANCELLED  # a second mention in the batch fails
                results.append(ok)
            ids = [job_id for job_id, ok in zip(job_ids, results, strict=True) if ok]
            for chunk in _chunks(ids):
                conn.execute(
                    update(jobs)
                    .where(self._in(jobs.c.id, chunk))  # checked above, on locked rows
                    .values(state=CANCELLED, active_key=None, updated_at=now)
                )
            return results

        return self._write(work)

    def retry(self, job_ids: Sequence[str], now: float) -> list[bool]:
        if not job_ids:
            return []

        def work(conn: Connection) -> list[bool]:
            found: dict[str, tuple[str, str | None]] = {
                job_id: (state, key)
                for job_id, state, key in self._lock(conn, job_ids, jobs.c.state, jobs.c.unique_key)
            }
            keys = list({key for state, key in found.values() if key is not None})
            held: set[str] = set()
            for chunk in _chunks(keys):
                stmt = select(jobs.c.active_key).where(self._in(jobs.c.active_key, chunk))
                held.update(conn.scalars(stmt))
            results = []
            for job_id in job_ids:
                state, key = found.get(job_id, ("", None))
                ok = state in (DEAD, CANCELLED) and (key is None or key not in held)
                if ok:
                    found[job_id] = (READY, key)  # a second mention in the batch fails
                    if key is not None:
                        held.add(key)
                results.append(ok)
            ids = [job_id for job_id, ok in zip(job_ids, results, strict=True) if ok]
            for chunk in _chunks(ids):
                conn.execute(
                    update(jobs)
                    .where(self._in(jobs.c.id, chunk))  # checked above, on locked rows
                    .values(
                        state=READY,
                        attempts=0,
                        run_at=now,
                        active_key=jobs.c.unique_key,
                        updated_at=now,
                    )
                )
            return results

        return self._write(work)

    def delete(self, job_ids: Sequence[str]) -> int:
        if not job_ids:
            return 0

        def work(conn: Connection) -> int:
            rows = self._lock(conn, job_ids, jobs.c.state)
            final = [job_id for job_id, state in rows if state in FINAL_STATES]
            for chunk in _chunks(final):
                # The error history goes with its job (ON DELETE CASCADE).
                conn.execute(delete(jobs).where(self._in(jobs.c.id, chunk)))
            return len(final)

        return self._write(work)

    def purge(self, states: Iterable[str], finished_before: float) -> int:
        wanted = sorted(set(states) & FINAL_STATES)
        if not wanted:
            return 0
        stmt = delete(jobs).where(jobs.c.state.in_(wanted), jobs.c.updated_at < finished_before)
        return self._write(lambda conn: conn.execute(stmt).rowcount)

    def set_paused(self, queue: str, paused: bool) -> None:
        def work(conn: Connection) -> None:
            if not paused:
                conn.execute(delete(paused_queues).where(paused_queues.c.queue == queue))
                return
            there = conn.scalar(select(paused_queues.c.queue).where(paused_queues.c.queue == queue))
            if there is None:  # a race with another broker: IntegrityError, then retried
                conn.execute(paused_queues.insert().values(queue=queue))

        self._write(work)

    def paused_queues(self) -> set[str]:
        return self._read(lambda conn: set(conn.scalars(select(paused_queues.c.queue))))


# -- helpers -------------------------------------------------------------------


def _chunks(values: list[T], size: int = _CHUNK) -> Iterator[list[T]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _record(row: Row[Any]) -> JobRecord:
    backoff = row.backoff
    return JobRecord(
        id=row.id,
        name=row.name,
        queue=row.queue,
        args=bytes(row.args),
        priority=row.priority,
        state=row.state,
        run_at=row.run_at,
        attempts=row.attempts,
        max_attempts=row.max_attempts,
        backoff=None if backoff is None else json.loads(backoff),
        timeout=row.timeout,
        unique_key=row.unique_key,
        seq=row.seq,
        created_at=row.created_at,
        updated_at=row.updated_at,
        lease_until=row.lease_until,
        worker=row.worker,
        result=None if row.result is None else bytes(row.result),
        error=row.error,
    )


def _describe(exc: BaseException) -> str:
    """One line about a database error, without SQLAlchemy's statement dump."""
    orig = getattr(exc, "orig", None) or exc
    lines = [line.strip() for line in str(orig).splitlines() if line.strip()]
    text = lines[0] if lines else type(orig).__name__
    return f"{type(orig).__name__}: {text}"


def _mask(url: str) -> str:
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)


def _parse_url(url: str) -> URL:
    try:
        sa_url = make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise ValueError(f"unsupported storage URL {_mask(url)!r}: use {_SUPPORTED}") from exc
    backend = sa_url.get_backend_name()
    if backend not in _DEFAULT_DRIVERS:
        raise ValueError(
            f"unsupported storage URL {sa_url.render_as_string(hide_password=True)!r}: "
            f"use {_SUPPORTED}"
        )
    if "+" not in sa_url.drivername:
        sa_url = sa_url.set(drivername=_DEFAULT_DRIVERS[backend])
    return sa_url


def _make_engine(url: URL, connect_timeout: float) -> Engine:
    backend = url.get_backend_name()
    driver = url.get_driver_name()
    kwargs: dict[str, Any] = {}
    connect_args: dict[str, Any] = {}
    if backend == "sqlite":
        connect_args["check_same_thread"] = False
        in_memory = url.database in (None, "", ":memory:")
        if in_memory:
            kwargs["poolclass"] = StaticPool  # one connection: one database
    elif backend == "postgresql":
        if driver in ("psycopg", "psycopg2") and "connect_timeout" not in url.query:
            connect_args["connect_timeout"] = max(1, round(connect_timeout))
    else:  # mysql, mariadb
        # Locking reads see the newest committed rows and lock no gaps.
        kwargs["isolation_level"] = "READ COMMITTED"
        kwargs["pool_recycle"] = 3600  # under the server's wait_timeout
        if driver in ("pymysql", "mysqldb") and "connect_timeout" not in url.query:
            connect_args["connect_timeout"] = max(1, round(connect_timeout))
    engine = create_engine(url, connect_args=connect_args, **kwargs)
    if backend == "sqlite":
        _tune_sqlite(engine, in_memory=url.database in (None, "", ":memory:"))
    elif backend == "postgresql":
        _plan_per_call(engine)
    return engine


def _plan_per_call(engine: Engine) -> None:
    """Plan every statement for its own parameters on PostgreSQL.

    psycopg prepares statements it sees often, and PostgreSQL may then keep a
    generic plan made while the table was still empty: the id check of ``add``
    (``id = ANY(array)``) became a sequential scan, 0.9 s per batch at 30k rows,
    where the index answers in 0.2 ms. Custom plans cost a little planning per
    call and keep every lookup on its index as the table grows.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        with dbapi_conn.cursor() as cursor:
            cursor.execute("SET plan_cache_mode = force_custom_plan")
        dbapi_conn.commit()


def _tune_sqlite(engine: Engine, *, in_memory: bool) -> None:
    """PRAGMAs on every connection, and BEGIN under SQLAlchemy's control.

    pysqlite's own transaction handling begins late (at the first write) and
    never for SELECTs; with ``isolation_level = None`` it stays out of the way
    and the "begin" hook below starts every transaction itself.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        try:
            if not in_memory:
                cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA busy_timeout=5000")
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if conn.get_execution_options().get("jobsd_read_only"):
            conn.exec_driver_sql("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
