"""Engines, dialects and transactions: everything about talking to a SQL database
that is not a job operation.

* ``sqlite:///path`` (``sqlite://`` for a throwaway in-memory database): WAL,
  ``synchronous=FULL`` (an acknowledged add survives power loss), foreign keys
  on. Write transactions begin ``IMMEDIATE``: two processes on one file queue
  for the write lock instead of deadlocking on a read-to-write upgrade.
* ``postgresql://`` (psycopg 3): every statement planned for its parameters.
* ``mysql://`` / ``mariadb://`` (PyMySQL; MariaDB 10.6+ or MySQL 8 for SKIP
  LOCKED): at READ COMMITTED, so locking reads see the newest rows.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.pool import StaticPool

from jobsd.storage.base import StorageError

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
#: The drivers that take a ``connect_timeout`` connect argument.
_TIMEOUT_DRIVERS = {"psycopg", "psycopg2", "pymysql", "mysqldb"}
#: Tries per call when a racing broker makes a transaction fail harmlessly
#: (a unique key taken meanwhile, a deadlock victim).
_TRIES = 3
#: Seconds to wait for a database server to answer a new connection.
DEFAULT_CONNECT_TIMEOUT = 10


class Database:
    """One SQL database: its engine, and transactions that turn every driver
    failure into ``StorageError``. Raises ``ValueError`` for a URL no backend
    understands and ``StorageError`` when its driver is missing."""

    def __init__(self, url: str, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT) -> None:
        sa_url = _parse_url(url)
        masked = sa_url.render_as_string(hide_password=True)
        try:
            self.engine = _make_engine(sa_url, connect_timeout)
        except ImportError as exc:
            extra = _EXTRAS.get(sa_url.get_backend_name(), "its driver")
            raise StorageError(
                f"cannot open storage {masked}: database driver missing ({exc}); install {extra}"
            ) from exc
        except ArgumentError as exc:
            raise ValueError(f"unsupported storage URL {masked}: {exc}") from exc
        self.url: str = self.engine.url.render_as_string(hide_password=True)
        self.dialect: str = self.engine.dialect.name
        self.errors: tuple[type[BaseException], ...] = (
            SQLAlchemyError,
            self.engine.dialect.loaded_dbapi.Error,  # raised from connect events
        )
        # Read-only calls: a plain (deferred) BEGIN on SQLite, so readers never
        # take the write lock. Shares the engine's pool and events.
        self.reader = self.engine.execution_options(jobsd_read_only=True)
        self._open: Connection | None = None  # the connection of transaction()
        self._open_failed = False

    def failure(self, exc: BaseException, doing: str = "storage") -> StorageError:
        """One line about a database error, without SQLAlchemy's statement dump."""
        orig = getattr(exc, "orig", None) or exc
        lines = [line.strip() for line in str(orig).splitlines() if line.strip()]
        text = lines[0] if lines else type(orig).__name__
        return StorageError(f"{doing} {self.url}: {type(orig).__name__}: {text}")

    def write(self, work: Callable[[Connection], T]) -> T:
        return self._run(self.engine, work)

    def read(self, work: Callable[[Connection], T]) -> T:
        return self._run(self.reader, work)

    def _run(self, engine: Engine, work: Callable[[Connection], T]) -> T:
        """Run ``work`` in one transaction; retry it when another broker's
        concurrent change made it fail, else turn the failure into StorageError."""
        if self._open is not None:  # inside transaction(): no retry, the block fails
            try:
                return work(self._open)
            except self.errors as exc:
                self._open_failed = True
                raise self.failure(exc) from exc
        for attempt in range(1, _TRIES + 1):
            try:
                with engine.begin() as conn:
                    return work(conn)
            except self.errors as exc:
                if attempt < _TRIES and self._lost_a_race(exc):
                    continue
                raise self.failure(exc) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """The calls inside share one transaction (see ``Storage.transaction``)."""
        if self._open is not None:
            yield
            return
        try:
            with self.engine.begin() as conn:
                self._open, self._open_failed = conn, False
                try:
                    yield
                finally:
                    self._open = None
                # A call that failed inside may have been caught by the caller;
                # PostgreSQL would then answer COMMIT with a silent ROLLBACK.
                if self._open_failed:
                    raise StorageError(f"storage {self.url}: a call in the transaction failed")
        except self.errors as exc:
            raise self.failure(exc) from exc

    def _lost_a_race(self, exc: BaseException) -> bool:
        """A failure another broker's concurrent change caused: a job id or
        unique key inserted meanwhile (the next try sees it and answers
        accordingly), a serialization failure or a deadlock."""
        if isinstance(exc, IntegrityError):
            return True
        orig = exc.orig if isinstance(exc, DBAPIError) else None
        if getattr(orig, "sqlstate", None) in ("40001", "40P01"):
            return True
        args: tuple[Any, ...] = getattr(orig, "args", ())
        return self.dialect in ("mysql", "mariadb") and bool(args) and args[0] == 1213


def _mask(url: str) -> str:
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)


def _parse_url(url: str) -> URL:
    try:
        sa_url = make_url(url)
        shown = sa_url.render_as_string(hide_password=True)
    except (ArgumentError, ValueError) as exc:
        raise ValueError(f"unsupported storage URL {_mask(url)!r}: use {_SUPPORTED}") from exc
    backend = sa_url.get_backend_name()
    if backend not in _DEFAULT_DRIVERS:
        raise ValueError(f"unsupported storage URL {shown!r}: use {_SUPPORTED}")
    if "+" not in sa_url.drivername:
        sa_url = sa_url.set(drivername=_DEFAULT_DRIVERS[backend])
    return sa_url


def _make_engine(url: URL, connect_timeout: float) -> Engine:
    backend = url.get_backend_name()
    kwargs: dict[str, Any] = {}
    connect_args: dict[str, Any] = {}
    in_memory = backend == "sqlite" and url.database in (None, "", ":memory:")
    if backend == "sqlite":
        connect_args["check_same_thread"] = False
        if in_memory:
            kwargs["poolclass"] = StaticPool  # one connection: one database
    elif backend != "postgresql":  # mysql, mariadb
        # Locking reads see the newest committed rows and lock no gaps.
        kwargs["isolation_level"] = "READ COMMITTED"
        kwargs["pool_recycle"] = 3600  # under the server's wait_timeout
    if url.get_driver_name() in _TIMEOUT_DRIVERS and "connect_timeout" not in url.query:
        connect_args["connect_timeout"] = max(1, round(connect_timeout))
    engine = create_engine(url, connect_args=connect_args, **kwargs)
    if backend == "sqlite":
        _tune_sqlite(engine, in_memory=in_memory)
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
        if not in_memory:
            dbapi_conn.execute("PRAGMA journal_mode=WAL")
        dbapi_conn.execute("PRAGMA synchronous=FULL")
        dbapi_conn.execute("PRAGMA busy_timeout=5000")
        dbapi_conn.execute("PRAGMA foreign_keys=ON")

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if conn.get_execution_options().get("jobsd_read_only"):
            conn.exec_driver_sql("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
