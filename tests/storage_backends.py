"""Storage backends for tests: where the test servers are, and one isolated place
on each per test run.

A test module gets the fixtures (``backend``, ``sql_backend``,
``server_backend``, ``postgres_url``, ``mysql_url``) with
``pytest_plugins = ["tests.storage_backends"]``.

* ``JOBSD_TEST_POSTGRES_URL`` / ``JOBSD_TEST_MYSQL_URL`` name the servers
  (defaults: the local ones). A run makes its own schema (PostgreSQL) or
  database (MariaDB) there and drops it at the end; tests run serially inside
  it and start from empty tables.
* A server that cannot be reached skips its tests, except when ``CI`` is set:
  then it fails them, so a broken CI service is never mistaken for a pass.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from jobsd.storage import Storage
from jobsd.storage.memory import MemoryStorage
from jobsd.storage.sql import SQLStorage
from jobsd.storage.sql.schema import metadata

POSTGRES_URL = os.environ.get(
    "JOBSD_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
MYSQL_URL = os.environ.get("JOBSD_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test")


def unavailable(reason: str) -> None:
    """Skip the test, or fail it when running in CI."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so a missing server is a failure)", pytrace=False)
    pytest.skip(reason)


_DRIVERS = {
    "postgresql": "postgresql+psycopg",
    "mysql": "mysql+pymysql",
    "mariadb": "mariadb+pymysql",
}


def _engine(url: str, **options: object) -> Engine:
    """An engine on ``url`` through the drivers jobsd maps bare schemes to."""
    sa_url = make_url(url)
    sa_url = sa_url.set(drivername=_DRIVERS.get(sa_url.drivername, sa_url.drivername))
    if sa_url.get_backend_name() != "sqlite":
        options.setdefault("connect_args", {"connect_timeout": 3})
    return create_engine(sa_url, **options)


def _isolated(base: str, kind: str) -> Iterator[str]:
    """Yield a URL of a schema/database of this run's own on the server at ``base``."""
    name = f"jobsd_test_{uuid.uuid4().hex[:10]}"
    admin = _engine(base)
    try:
        with admin.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any failure means: no server here
        admin.dispose()
        unavailable(f"{kind} server not reachable at {base}: {type(exc).__name__}")
    url = make_url(base)
    try:
        with admin.begin() as conn:
            if kind == "postgres":
                conn.execute(text(f"CREATE SCHEMA {name}"))
                url = url.update_query_dict({"options": f"-csearch_path={name}"})
            else:
                conn.execute(text(f"CREATE DATABASE {name} CHARACTER SET utf8mb4"))
                url = url.set(database=name)
    except Exception:  # noqa: BLE001 - no rights to make one: share the given database
        name = ""
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        if name:
            with admin.begin() as conn:
                if kind == "postgres":
                    conn.execute(text(f"DROP SCHEMA IF EXISTS {name} CASCADE"))
                else:
                    conn.execute(text(f"DROP DATABASE IF EXISTS {name}"))
        admin.dispose()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    yield from _isolated(POSTGRES_URL, "postgres")


@pytest.fixture(scope="session")
def mysql_url() -> Iterator[str]:
    yield from _isolated(MYSQL_URL, "mysql")


def drop_jobsd_tables(url: str) -> None:
    engine = _engine(url)
    try:
        metadata.drop_all(engine)
    finally:
        engine.dispose()


@dataclass
class Backend:
    """One kind of storage for a test: open as many instances of it as needed
    (all on the same database); they are closed when the test ends."""

    kind: str  # memory, sqlite, postgres, mysql
    url: str
    opened: list[Storage] = field(default_factory=list)

    @property
    def is_sql(self) -> bool:
        return self.kind != "memory"

    def open(self, **options: object) -> Storage:
        storage: Storage = (
            MemoryStorage()
            if self.kind == "memory"
            else SQLStorage(
                self.url,
                **options,  # type: ignore[arg-type]
            )
        )
        self.opened.append(storage)
        return storage

    def engine(self) -> Engine:
        """A plain SQLAlchemy engine on the same database (SQL backends)."""
        return _engine(self.url)

    def close_all(self) -> None:
        for storage in self.opened:
            storage.close()
        self.opened.clear()


BACKENDS = [
    "memory",
    "sqlite",
    pytest.param("postgres", marks=pytest.mark.postgres),
    pytest.param("mysql", marks=pytest.mark.mysql),
]
SQL_BACKENDS = BACKENDS[1:]
SERVER_BACKENDS = BACKENDS[2:]


def make_backend(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if kind == "memory":
        return Backend(kind, "memory://")
    if kind == "sqlite":
        return Backend(kind, f"sqlite:///{tmp_path / 'jobs.sqlite3'}")
    url = request.getfixturevalue("postgres_url" if kind == "postgres" else "mysql_url")
    drop_jobsd_tables(url)
    return Backend(kind, url)


def backend_fixture(name: str, params: Sequence[object]) -> Callable[..., Iterator[Backend]]:
    """A fixture called ``name`` giving a :class:`Backend` of each kind in ``params``."""

    @pytest.fixture(name=name, params=params)
    def fixture(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
        backend = make_backend(request.param, request, tmp_path)
        try:
            yield backend
        finally:
            backend.close_all()

    return fixture


backend = backend_fixture("backend", BACKENDS)
sql_backend = backend_fixture("sql_backend", SQL_BACKENDS)
server_backend = backend_fixture("server_backend", SERVER_BACKENDS)
