"""The storage contract held against memory storage."""

from __future__ import annotations

from jobsd.storage import Storage
from jobsd.storage.contract import StorageContract
from jobsd.storage.memory import MemoryStorage


class TestMemoryStorage(StorageContract):
    def make_storage(self) -> Storage:
        return MemoryStorage()
