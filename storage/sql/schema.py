"""The SQL schema of jobsd's storage, and how a database gets to its current version.

Every table is named ``jobsd_*`` so jobsd can share a database with an
application; ``jobsd_meta`` holds ``schema_version``. Adding version N + 1:
change the tables below (``create_all`` makes a fresh database at the newest
version straight away), write ``_vN_to_vN1(conn)`` that alters a version-N
database into the same shape, register it in ``STEPS`` and raise
``SCHEMA_VERSION``. Each step runs in one transaction with its version bump
(MySQL and MariaDB commit DDL implicitly, so a step there must be safe to run
again). Version 2 added a running job's lease token and its broker.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.schema import CreateColumn

from jobsd.storage.base import SchemaError
from jobsd.vocabulary import MAX_KEY_LENGTH

#: The schema version this code reads and writes.
SCHEMA_VERSION = 2


_MYSQL_TABLE: dict[str, Any] = {
    "mysql_engine": "InnoDB",
    "mysql_charset": "utf8mb4",
    # Binary collation: ids, queues and unique keys compare exactly, as they do
    # in every other backend (the default collation ignores case).
    "mysql_collate": "utf8mb4_bin",
}

#: An autoincrementing BIGINT that SQLite accepts as its rowid alias.
_SeqType = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
#: Opaque bytes of any size (MySQL's BLOB stops at 64 KiB).
_Blob = sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")
#: Text of any size (tracebacks can be long; MySQL's TEXT stops at 64 KiB).
_LongText = sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")
#: Ids, names, queues, keys: every one stored whole (see ``Storage``).
_Key = sa.String(MAX_KEY_LENGTH)


metadata = sa.MetaData()

jobs = sa.Table(
    "jobsd_jobs",
    metadata,
    # Submission order, and the clustered key on InnoDB: inserts append.
    sa.Column("seq", _SeqType, primary_key=True, autoincrement=True),
    sa.Column("id", _Key, nullable=False),
    sa.Column("name", _Key, nullable=False),
    sa.Column("queue", _Key, nullable=False),
    sa.Column("args", _Blob, nullable=False),
    sa.Column("priority", sa.Integer, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("run_at", sa.Double, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("max_attempts", sa.Integer, nullable=True),
    sa.Column("backoff", sa.Text, nullable=True),  # JSON
    sa.Column("timeout", sa.Double, nullable=True),
    sa.Column("unique_key", _Key, nullable=True),
    # unique_key while the job is scheduled, ready or running, else NULL: a
    # plain UNIQUE index then enforces "one active job per key" everywhere
    # (MariaDB has no partial indexes; NULLs never collide).
    sa.Column("active_key", _Key, nullable=True),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("updated_at", sa.Double, nullable=False),
    sa.Column("lease_until", sa.Double, nullable=True),
    sa.Column("worker", _Key, nullable=True),
    sa.Column("result", _Blob, nullable=True),
    sa.Column("error", _LongText, nullable=True),
    # The running job's lease token: a report counts only if it names it.
    sa.Column("lease", sa.String(64), nullable=True),
    # The broker that handed the lease out (a broker that restarts takes
    # back its own leases that no worker came back for).
    sa.Column("broker", _Key, nullable=True),
    sa.Index("ux_jobsd_jobs_id", "id", unique=True),
    sa.Index("ux_jobsd_jobs_active_key", "active_key", unique=True),
    # claim: one queue's ready jobs in dispatch order, read straight off the index
    # (and stats: counts by queue and state from the index alone).
    sa.Index("ix_jobsd_jobs_claim", "queue", "state", "priority", "run_at", "seq"),
    # promote and next_run_at
    sa.Index("ix_jobsd_jobs_state_run_at", "state", "run_at"),
    # expired
    sa.Index("ix_jobsd_jobs_state_lease", "state", "lease_until"),
    # purge
    sa.Index("ix_jobsd_jobs_state_updated", "state", "updated_at"),
    **_MYSQL_TABLE,
)

job_errors = sa.Table(
    "jobsd_job_errors",
    metadata,
    sa.Column("seq", _SeqType, primary_key=True, autoincrement=True),
    sa.Column(
        "job_id",
        _Key,
        sa.ForeignKey("jobsd_jobs.id", ondelete="CASCADE", name="fk_jobsd_job_errors_job"),
        nullable=False,
    ),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("at", sa.Double, nullable=False),
    sa.Column("error", _LongText, nullable=False),
    sa.Index("ix_jobsd_job_errors_job", "job_id", "seq"),
    **_MYSQL_TABLE,
)

paused_queues = sa.Table(
    "jobsd_paused_queues",
    metadata,
    sa.Column("queue", _Key, primary_key=True),
    **_MYSQL_TABLE,
)

meta = sa.Table(
    "jobsd_meta",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(255), nullable=False),
    **_MYSQL_TABLE,
)


def _v1_to_v2(conn: sa.Connection) -> None:
    """Lease tokens and their brokers. Jobs running when the database is
    upgraded have no token: no report can name them, and they are retried
    when their leases expire (stop the old broker's workers first)."""
    present = {column["name"] for column in sa.inspect(conn).get_columns(jobs.name)}
    for name in ("lease", "broker"):
        if name not in present:  # MySQL commits DDL at once: a rerun skips it
            column = CreateColumn(jobs.c[name]).compile(dialect=conn.dialect)
            conn.execute(sa.text(f"ALTER TABLE {jobs.name} ADD COLUMN {column}"))


#: ``STEPS[n]`` upgrades a version-``n`` database to version ``n + 1``.
STEPS: dict[int, Callable[[sa.Connection], None]] = {1: _v1_to_v2}


def schema_version(conn: sa.Connection) -> int:
    """The database's schema version; 0 when it has no jobsd schema yet."""
    if not sa.inspect(conn).has_table(meta.name):
        return 0
    value = conn.scalar(sa.select(meta.c.value).where(meta.c.key == "schema_version"))
    if value is None:
        return 0
    try:
        return int(value)
    except ValueError:
        raise SchemaError(f"jobsd_meta.schema_version is not a number: {value!r}") from None


def check_version(version: int, where: str) -> None:
    if version > SCHEMA_VERSION:
        raise SchemaError(
            f"the jobsd schema at {where} is version {version}, but this jobsd only "
            f"knows versions up to {SCHEMA_VERSION}: upgrade jobsd to use this database"
        )


def _set_version(conn: sa.Connection, version: int) -> None:
    updated = conn.execute(
        meta.update().where(meta.c.key == "schema_version").values(value=str(version))
    )
    if updated.rowcount == 0:
        conn.execute(meta.insert().values(key="schema_version", value=str(version)))


@contextmanager
def _migration_lock(engine: sa.Engine) -> Iterator[None]:
    """Keep two processes from migrating one database at once.

    SQLite serialises writers already (transactions begin IMMEDIATE); PostgreSQL
    takes a transaction-level advisory lock inside each step; MySQL and MariaDB
    hold a named lock on a connection of its own for the whole migration.
    """
    if engine.dialect.name not in ("mysql", "mariadb"):
        yield
        return
    with engine.connect() as lock_conn:
        got = lock_conn.scalar(sa.text("SELECT GET_LOCK('jobsd_migrate', 60)"))
        lock_conn.commit()
        if got != 1:
            raise SchemaError("another process holds the jobsd migration lock")
        try:
            yield
        finally:
            lock_conn.execute(sa.text("SELECT RELEASE_LOCK('jobsd_migrate')"))
            lock_conn.commit()


def _lock_step(conn: sa.Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext('jobsd_migrate'))"))


def migrate(engine: sa.Engine, where: str | None = None) -> tuple[int, int]:
    """Create the schema, or upgrade it one step at a time to :data:`SCHEMA_VERSION`.

    Returns ``(from_version, to_version)``; they are equal when there was
    nothing to do, and ``from_version`` is 0 for a database without a jobsd
    schema. Raises :class:`SchemaError` for a schema newer than this code.
    Safe to run from several processes at once.
    """
    where = where or engine.url.render_as_string(hide_password=True)
    start: int | None = None
    with _migration_lock(engine):
        while True:
            with engine.begin() as conn:
                _lock_step(conn)
                version = schema_version(conn)  # read again: another process may be ahead
                check_version(version, where)
                start = version if start is None else start
                if version == SCHEMA_VERSION:
                    return start, version
                if version == 0:  # a fresh database goes straight to the newest version
                    metadata.create_all(conn, checkfirst=True)
                    _set_version(conn, SCHEMA_VERSION)
                    return 0, SCHEMA_VERSION
                if version not in STEPS:
                    raise SchemaError(f"no migration from schema version {version} at {where}")
                STEPS[version](conn)
                _set_version(conn, version + 1)
