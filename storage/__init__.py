"""Pluggable job storage: the contract, its rules and its backends, chosen by URL.

``memory://`` keeps jobs in the broker process; ``sqlite:///path``,
``postgresql://...`` and ``mysql+pymysql://...`` go through SQLAlchemy
(``jobsd.storage.sql``). ``base`` is the contract, ``records`` the values
that cross it, ``rules`` where a job goes, ``contract`` the suite that holds a
backend to it.
"""

from __future__ import annotations

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
from jobsd.storage.rules import Transition

#: Where ``jobsd serve`` keeps jobs when no storage URL is given: durable, and
#: nothing to install.
DEFAULT_URL = "sqlite:///jobsd.sqlite3"


def open_storage(url: str) -> Storage:
    """Open the backend that ``url`` names, creating its schema if needed.

    Raises ``ValueError`` for a URL no backend understands and ``StorageError``
    when the backend cannot be reached or used.
    """
    if url == "memory://" or url.startswith("memory:"):
        from jobsd.storage.memory import MemoryStorage

        return MemoryStorage()
    from jobsd.storage.sql import SQLStorage

    return SQLStorage(url)


__all__ = [
    "DEFAULT_URL",
    "AddResult",
    "AttemptError",
    "Grant",
    "JobRecord",
    "Lease",
    "NewJob",
    "QueueStats",
    "SchemaError",
    "Storage",
    "StorageError",
    "Transition",
    "open_storage",
]
