"""Pluggable job storage: the contract and its backends, chosen by URL.

``memory://`` keeps jobs in the broker process; ``sqlite:///path``,
``postgresql://...`` and ``mysql+pymysql://...`` go through SQLAlchemy.
"""

from __future__ import annotations

from jobsd.storage.base import (
    ACTIVE_STATES,
    CANCELLED,
    DEAD,
    DEFAULT_PRIORITY,
    DONE,
    FINAL_STATES,
    MAX_PRIORITY,
    MIN_PRIORITY,
    READY,
    RUNNING,
    SCHEDULED,
    STATES,
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
    "ACTIVE_STATES",
    "CANCELLED",
    "DEAD",
    "DEFAULT_PRIORITY",
    "DEFAULT_URL",
    "DONE",
    "FINAL_STATES",
    "MAX_PRIORITY",
    "MIN_PRIORITY",
    "READY",
    "RUNNING",
    "SCHEDULED",
    "STATES",
    "AddResult",
    "AttemptError",
    "Completion",
    "Failure",
    "JobRecord",
    "Lease",
    "NewJob",
    "QueueStats",
    "SchemaError",
    "Storage",
    "StorageError",
    "open_storage",
]
