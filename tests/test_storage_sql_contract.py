"""The storage contract held against SQLite, PostgreSQL and MariaDB.

Server backends skip when their server is missing, and fail under CI.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from jobsd.storage import Storage
from jobsd.storage.contract import StorageContract
from jobsd.storage.sql import SQLStorage
from tests.storage_backends import drop_jobsd_tables

pytest_plugins = ["tests.storage_backends"]


class SQLContract(StorageContract):
    url = ""

    def make_storage(self) -> Storage:
        return SQLStorage(self.url)

    def open_again(self) -> Storage:
        return SQLStorage(self.url)


class TestSQLiteStorage(SQLContract):
    @pytest.fixture(autouse=True)
    def _database(self, tmp_path: Path) -> None:
        self.url = f"sqlite:///{tmp_path / 'jobs.sqlite3'}"


@pytest.mark.postgres
class TestPostgresStorage(SQLContract):
    @pytest.fixture(autouse=True)
    def _database(self, postgres_url: str) -> None:
        drop_jobsd_tables(postgres_url)
        self.url = postgres_url


@pytest.mark.mysql
class TestMariaDBStorage(SQLContract):
    @pytest.fixture(autouse=True)
    def _database(self, mysql_url: str) -> None:
        drop_jobsd_tables(mysql_url)
        self.url = mysql_url
