"""What every part of the contract suite shares: the storage under test and
small builders of jobs, grants and transitions."""

from __future__ import annotations

import itertools
from typing import Any

from jobsd.storage.base import Storage
from jobsd.storage.records import Grant, JobRecord, Lease, NewJob
from jobsd.storage.rules import Transition, again, done, ended, released
from jobsd.vocabulary import DEAD

# An epoch with a fraction, to catch backends that round timestamps.
NOW = 1_700_000_000.123456
LEASE = NOW + 30.0
ARGS = bytes(range(256)) + b"\x00\x81\xa1a\x01"
BROKER = "broker-1"

_tokens = itertools.count(1)


def job(job_id: str, queue: str = "q", **fields: Any) -> NewJob:
    return NewJob(id=job_id, name=f"task.{job_id}", queue=queue, args=ARGS, **fields)


def grant(worker: str = "w1", until: float = LEASE, broker: str = BROKER) -> Grant:
    """A grant with a token no other grant of the suite has."""
    return Grant(f"token-{next(_tokens):06}", until, worker, broker)


def skip(reason: str) -> None:
    import pytest  # only when a backend lacks what a test needs

    pytest.skip(reason)


class ContractBase:
    """The storage under test: ``make_storage`` gives a fresh, empty one per
    test; for a ``shared`` backend, ``open_again`` gives another handle on the
    same database (another broker's). The storage is opened at a test's first
    use of it, so a backend's own fixtures (a server URL) are ready by then."""

    _opened: list[Storage]

    def make_storage(self) -> Storage:
        raise NotImplementedError("a backend's contract test defines make_storage()")

    def open_again(self) -> Storage:
        raise NotImplementedError("a shared backend's contract test defines open_again()")

    def setup_method(self, method: object = None) -> None:
        self._opened = []

    def teardown_method(self, method: object = None) -> None:
        for storage in self._opened:
            storage.close()
        self._opened = []

    @property
    def storage(self) -> Storage:
        if not self._opened:
            self._opened.append(self.make_storage())
        return self._opened[0]

    def another(self) -> Storage:
        """A second broker's handle on the same storage (shared backends)."""
        if not self.storage.shared:
            skip(f"{type(self.storage).__name__} is not shared by brokers")
        storage = self.open_again()
        self._opened.append(storage)
        return storage

    # -- small steps ---------------------------------------------------------------

    def claim(
        self, queues: list[str], limit: int = 100, now: float = NOW, **grant_fields: Any
    ) -> list[JobRecord]:
        return self.storage.claim(queues, limit, now, grant(**grant_fields))

    def claim_ids(self, queues: list[str], limit: int = 100, now: float = NOW) -> list[str]:
        return [j.id for j in self.claim(queues, limit, now)]

    def run(self, job_id: str, queue: str = "q", **grant_fields: Any) -> JobRecord:
        """Claim ``job_id`` (it must be the only ready job of ``queue``)."""
        (claimed,) = self.claim([queue], 1, **grant_fields)
        assert claimed.id == job_id
        return claimed

    def state_of(self, job_id: str) -> str:
        return self.storage.get([job_id])[job_id].state

    def end(self, held: JobRecord | Lease, to: Transition, now: float = NOW) -> bool:
        lease = held.held() if isinstance(held, JobRecord) else held
        (ok,) = self.storage.finish([(lease, to)], now)
        return ok

    def complete(self, held: JobRecord | Lease, result: bytes | None = None) -> bool:
        return self.end(held, done(result))

    def fail(
        self, held: JobRecord | Lease, error: str = "boom", retry_at: float | None = None
    ) -> bool:
        to = ended(DEAD, error) if retry_at is None else again(retry_at, NOW, error)
        return self.end(held, to)

    def release(self, held: JobRecord | Lease) -> bool:
        return self.end(held, released())
