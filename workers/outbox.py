"""A worker's reports to the broker, kept until the broker confirms them stored.

Each report message (ACK, FAIL, RELEASE) gets a sequence number; the broker
answers CONFIRM once the report is in storage. Until then the worker keeps
it, sends it again after it registers anew (a broker that died before storing
it, a reconnect), and tells the broker in its HELLO that it still answers for
those leases, so they are not given to another worker meanwhile. Reports go
out in messages that stay under the broker's message limit, however many
results a batch carries.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

from jobsd.protocol.framing import ACK, FAIL, RELEASE
from jobsd.protocol.worker import Ack, Fail, report_seq
from jobsd.vocabulary import MAX_BATCH, MAX_MESSAGE_BYTES

#: Room in every message for what is not the reports' payloads.
_HEADROOM = 64 * 1024
#: What an item costs beside its result or error, at most.
_ITEM_BYTES = 512

Send = Callable[[bytes, dict[str, Any]], None]


class Outbox:
    def __init__(self) -> None:
        self._unconfirmed: dict[int, tuple[bytes, dict[str, Any]]] = {}
        self._seq = itertools.count(1)

    def __len__(self) -> int:
        return len(self._unconfirmed)

    def acks(self, acks: list[Ack], send: Send | None) -> None:
        self._add(ACK, "acks", [(a.to_wire(), len(a.result or b"")) for a in acks], send)

    def fails(self, fails: list[Fail], send: Send | None) -> None:
        self._add(FAIL, "fails", [(f.to_wire(), 4 * len(f.error)) for f in fails], send)

    def releases(self, leases: list[tuple[str, str]], send: Send | None) -> None:
        self._add(RELEASE, "jobs", [([job_id, lease], 0) for job_id, lease in leases], send)

    def _add(
        self, command: bytes, key: str, items: list[tuple[list[Any], int]], send: Send | None
    ) -> None:
        """Keep the items as messages of at most MAX_BATCH items and, with
        their results, under the message limit; send them when ``send`` is
        given (a worker not registered sends them once it is)."""
        batch: list[list[Any]] = []
        size = 0
        for item, payload in items:
            cost = payload + _ITEM_BYTES
            if batch and (len(batch) == MAX_BATCH or size + cost > MAX_MESSAGE_BYTES - _HEADROOM):
                self._keep(command, {key: batch}, send)
                batch, size = [], 0
            batch.append(item)
            size += cost
        if batch:
            self._keep(command, {key: batch}, send)

    def _keep(self, command: bytes, body: dict[str, Any], send: Send | None) -> None:
        body["seq"] = seq = next(self._seq)
        self._unconfirmed[seq] = (command, body)
        if send is not None:
            send(command, body)

    def confirmed(self, body: Any) -> None:
        self._unconfirmed.pop(report_seq(body) or 0, None)

    def unconfirmed(self) -> Iterator[tuple[bytes, dict[str, Any]]]:
        return iter(list(self._unconfirmed.values()))

    def leases(self) -> list[tuple[str, str]]:
        """Every lease an unconfirmed report names: still this worker's to answer for."""
        return [
            (item[0], item[1])
            for _, body in self._unconfirmed.values()
            for key in ("acks", "fails", "jobs")
            for item in body.get(key, ())
        ]
