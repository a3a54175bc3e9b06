"""What only SQL storage has: its schema and migrations, URLs and drivers,
database errors, SQLite's settings, and rows locked by another broker."""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import inspect, select, text, update

from jobsd.storage import NewJob, SchemaError, StorageError, open_storage
from jobsd.storage.contract import ARGS, NOW, grant, job
from jobsd.storage.rules import again, done
from jobsd.storage.sql import SCHEMA_VERSION, SQLStorage
from jobsd.storage.sql import schema as schema_module
from jobsd.storage.sql.schema import jobs, meta

if TYPE_CHECKING:
    from tests.storage_backends import Backend

pytest_plugins = ["tests.storage_backends"]


def claim_ids(storage: SQLStorage, queues: list[str]) -> list[str]:
    return [j.id for j in storage.claim(queues, 100, NOW, grant())]


def test_schema_version_is_recorded(sql_backend: Backend) -> None:
    storage = sql_backend.open()
    assert isinstance(storage, SQLStorage)
    assert storage.schema_version() == SCHEMA_VERSION
    engine = sql_backend.engine()
    with engine.connect() as conn:
        value = conn.scalar(meta.select().with_only_columns(meta.c.value))
    engine.dispose()
    assert value == str(SCHEMA_VERSION)
    assert storage.migrate() == (SCHEMA_VERSION, SCHEMA_VERSION)
    storage.add([job("a")], NOW)
    assert sql_backend.open().get(["a"])["a"].args == ARGS  # opening again keeps the data


def test_a_version_1_database_is_upgraded_with_its_jobs(sql_backend: Backend) -> None:
    """Version 2 adds lease tokens. A job running under a version-1 lease
    has none: no report can name it, and its lease expiry retries it."""
    storage = sql_backend.open()
    storage.add([job("waiting"), job("running", queue="r")], NOW)
    storage.claim(["r"], 1, NOW, grant())
    storage.close()
    engine = sql_backend.engine()
    with engine.begin() as conn:
        for column in ("lease", "broker"):  # back to version 1's table
            conn.execute(text(f"ALTER TABLE jobsd_jobs DROP COLUMN {column}"))
        conn.execute(update(meta).values(value="1"))
    engine.dispose()
    with pytest.raises(StorageError):
        sql_backend.open(create=False).get(["waiting"])
    upgraded = sql_backend.open()
    assert isinstance(upgraded, SQLStorage)
    assert upgraded.schema_version() == SCHEMA_VERSION
    running = upgraded.get(["running"])["running"]
    assert (running.state, running.lease) == ("running", None)
    assert [j.id for j in upgraded.expired(NOW + 31)] == ["running"]
    assert claim_ids(upgraded, ["q"]) == ["waiting"]
    engine = sql_backend.engine()
    columns = {c["name"] for c in inspect(engine).get_columns("jobsd_jobs")}
    engine.dispose()
    assert {"lease", "broker"} <= columns


def test_newer_schema_is_refused(sql_backend: Backend) -> None:
    sql_backend.open().close()
    engine = sql_backend.engine()
    with engine.begin() as conn:
        conn.execute(update(meta).values(value=str(SCHEMA_VERSION + 1)))
    engine.dispose()
    for create in (True, False):
        with pytest.raises(SchemaError, match="upgrade jobsd"):
            sql_backend.open(create=create)


def test_create_false_leaves_the_database_alone_until_migrate(sql_backend: Backend) -> None:
    storage = sql_backend.open(create=False)
    assert isinstance(storage, SQLStorage)
    assert storage.schema_version() == 0
    with pytest.raises(StorageError):
        storage.add([job("a")], NOW)
    assert storage.migrate() == (0, SCHEMA_VERSION)
    assert storage.add([job("a")], NOW)[0].created


def test_migrate_runs_each_step_once(sql_backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = sql_backend.open()
    assert isinstance(storage, SQLStorage)
    storage.add([job("a")], NOW)
    steps: list[int] = []
    monkeypatch.setattr(schema_module, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    monkeypatch.setitem(schema_module.STEPS, SCHEMA_VERSION, lambda conn: steps.append(1))
    assert storage.migrate() == (SCHEMA_VERSION, SCHEMA_VERSION + 1)
    assert storage.migrate() == (SCHEMA_VERSION + 1, SCHEMA_VERSION + 1)
    assert steps == [1]
    assert storage.schema_version() == SCHEMA_VERSION + 1
    assert storage.get(["a"])["a"].state == "ready"


def test_a_failed_call_applies_nothing(sql_backend: Backend) -> None:
    storage = sql_backend.open()
    storage.add([job("a"), job("b")], NOW)
    a, _ = storage.claim(["q"], 2, NOW, grant())
    engine = sql_backend.engine()
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE jobsd_job_errors"))
    engine.dispose()
    with pytest.raises(StorageError, match="jobsd_job_errors"):
        storage.finish([(a.held(), again(NOW, NOW, "x"))], NOW)
    assert storage.get(["a"])["a"].state == "running"
    # A batch with one bad job stores none of it.
    bad = NewJob(id="bad", name=None, queue="q", args=b"")  # type: ignore[arg-type]
    with pytest.raises(StorageError):
        storage.add([job("c"), bad], NOW)
    assert storage.get(["c", "bad"]) == {}


def test_a_call_the_database_refused_fails_its_transaction(sql_backend: Backend) -> None:
    """A failure the caller caught inside ``transaction()`` still fails the
    block (PostgreSQL would answer COMMIT with a silent ROLLBACK)."""
    storage = sql_backend.open()
    assert isinstance(storage, SQLStorage)
    storage.add([job("a")], NOW)
    (a,) = storage.claim(["q"], 1, NOW, grant())
    with pytest.raises(StorageError), storage.transaction():
        assert storage.finish([(a.held(), done(b"r"))], NOW) == [True]
        with pytest.raises(StorageError):
            storage._db.write(lambda conn: conn.exec_driver_sql("SELECT * FROM no_such_table"))
    assert storage.get(["a"])["a"].state == "running"
    assert storage.finish([(a.held(), done(b"r"))], NOW) == [True]


def test_claim_skips_jobs_another_broker_has_locked(server_backend: Backend) -> None:
    storage = server_backend.open()
    assert isinstance(storage, SQLStorage)
    storage.add([job("a"), job("b")], NOW)
    engine = server_backend.engine()
    try:
        with engine.begin() as other:  # another broker, mid-claim on "a"
            other.execute(select(jobs.c.id).where(jobs.c.id == "a").with_for_update())
            started = time.monotonic()
            assert claim_ids(storage, ["q"]) == ["b"]
            assert claim_ids(storage, ["q", "other"]) == []
            assert time.monotonic() - started < 5, "claim waited for a lock"
    finally:
        engine.dispose()
    assert claim_ids(storage, ["q"]) == ["a"]


def test_open_storage_picks_sql_by_url(sql_backend: Backend) -> None:
    storage = open_storage(sql_backend.url)
    sql_backend.opened.append(storage)
    assert isinstance(storage, SQLStorage)
    scheme = storage.url.split("://")[0]
    assert scheme in ("sqlite", "postgresql+psycopg", "mysql+pymysql", "mariadb+pymysql")


@pytest.mark.parametrize(
    "url", ["redis://localhost:6379/0", "oracle://scott:tiger@db/orcl", "not a url", "jobs.db"]
)
def test_unsupported_url_is_a_value_error(url: str) -> None:
    with pytest.raises(ValueError, match="unsupported storage URL") as caught:
        SQLStorage(url)
    assert "tiger" not in str(caught.value)
    assert "sqlite:///" in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("postgresql://postgres:secret@127.0.0.1:1/test", marks=pytest.mark.postgres),
        pytest.param("mysql://root:secret@127.0.0.1:1/test", marks=pytest.mark.mysql),
    ],
)
def test_unreachable_server_is_a_storage_error(url: str) -> None:
    started = time.monotonic()
    with pytest.raises(StorageError) as caught:
        SQLStorage(url, connect_timeout=2)
    assert time.monotonic() - started < 10
    message = str(caught.value)
    assert "127.0.0.1:1" in message
    assert "secret" not in message
    assert "\n" not in message


@pytest.mark.postgres
def test_url_is_masked_and_bare_schemes_get_jobsd_drivers(postgres_url: str) -> None:
    from sqlalchemy.engine import make_url

    url = make_url(postgres_url).set(drivername="postgresql", password="hidden")
    storage = SQLStorage(url.render_as_string(hide_password=False))
    try:
        assert storage.url.startswith("postgresql+psycopg://postgres:***@")
        assert "hidden" not in repr(storage)
    finally:
        storage.close()


def test_missing_driver_is_a_storage_error() -> None:
    candidates = {
        "pg8000": "postgresql+pg8000://u:pw@127.0.0.1/db",
        "MySQLdb": "mysql+mysqldb://u:pw@127.0.0.1/db",
        "psycopg2": "postgresql+psycopg2://u:pw@127.0.0.1/db",
    }
    missing = [url for module, url in candidates.items() if not importlib.util.find_spec(module)]
    if not missing:
        pytest.skip("every alternative driver is installed")
    with pytest.raises(StorageError, match="driver") as caught:
        SQLStorage(missing[0])
    assert "pw" not in str(caught.value)


def test_unwritable_sqlite_location_is_a_storage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    places = [
        "/proc/jobsd-cannot-exist/jobs.sqlite3",  # a read-only file system, even for root
        str(tmp_path / "missing-dir" / "jobs.sqlite3"),
        str(blocker / "jobs.sqlite3"),
    ]
    if os.geteuid() != 0:  # root writes through permission bits
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        places.append(str(locked / "jobs.sqlite3"))
    for place in places:
        with pytest.raises(StorageError, match="cannot open storage sqlite"):
            SQLStorage(f"sqlite:///{place}")


def test_read_only_sqlite_database_is_a_storage_error(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    SQLStorage(f"sqlite:///{path}").close()
    with pytest.raises(StorageError, match="readonly"):
        # Refused when opening (the schema check begins a write transaction),
        # or at the latest by the first write.
        storage = SQLStorage(f"sqlite:///file:{path}?mode=ro&uri=true")
        try:
            storage.add([job("a")], NOW)
        finally:
            storage.close()


def test_in_memory_sqlite_works() -> None:
    for url in ("sqlite://", "sqlite:///:memory:"):
        storage = SQLStorage(url)
        try:
            storage.add([job("a")], NOW)
            assert claim_ids(storage, ["q"]) == ["a"]
        finally:
            storage.close()


def test_sqlite_survives_reopening(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.sqlite3'}"
    first = SQLStorage(url)
    first.add([job("a"), job("b", unique_key="k")], NOW)
    (claimed,) = first.claim(["q"], 1, NOW, grant())
    first.set_paused("q", True)
    first.close()
    second = SQLStorage(url)
    try:
        records = second.get(["a", "b"])
        assert (records["a"].state, records["b"].state) == ("running", "ready")
        assert records["a"].lease == claimed.lease
        assert second.paused_queues() == {"q"}
        assert not second.add([job("c", unique_key="k")], NOW)[0].created
    finally:
        second.close()


def test_sqlite_pragmas(tmp_path: Path) -> None:
    storage = SQLStorage(f"sqlite:///{tmp_path / 'jobs.sqlite3'}")
    try:
        with storage._db.engine.connect() as conn:
            pragmas = {
                name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
                for name in ("journal_mode", "synchronous", "busy_timeout", "foreign_keys")
            }
    finally:
        storage.close()
    assert pragmas == {
        "journal_mode": "wal",
        "synchronous": 2,
        "busy_timeout": 5000,
        "foreign_keys": 1,
    }


def test_sqlite_processes_sharing_a_file_never_claim_one_job_twice(tmp_path: Path) -> None:
    from collections import Counter

    from jobsd.storage.contract import together

    url = f"sqlite:///{tmp_path / 'shared.sqlite3'}"
    brokers = [SQLStorage(url), SQLStorage(url)]
    try:
        brokers[0].add([job(f"j{i:04}") for i in range(300)], NOW)
        claimed: list[list[str]] = [[], []]

        def worker(index: int) -> None:
            while batch := brokers[index].claim(["q"], 5, NOW, grant(f"b{index}")):
                claimed[index].extend(j.id for j in batch)
                assert all(brokers[index].finish([(j.held(), done(None)) for j in batch], NOW))

        together(lambda: worker(0), lambda: worker(1))
        everything = Counter(claimed[0] + claimed[1])
        assert len(everything) == 300 and set(everything.values()) == {1}
    finally:
        for storage in brokers:
            storage.close()
