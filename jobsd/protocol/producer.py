"""The producer side of the protocol: what a REQ socket sends and gets back.

Each request body is a small value with ``to_wire`` (the client) and
``from_wire`` (the broker, which checks every field on arrival); each reply
is built here from what the broker decided and read here by the client. A
job's arguments travel as one msgpack ``[positional array, keyword map]``
envelope, packed and checked here alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from jobsd.protocol.fields import Fields
from jobsd.protocol.framing import ProtocolError, pack, unpack
from jobsd.protocol.options import JobOptions
from jobsd.vocabulary import (
    FINAL_STATES,
    MAX_ATTEMPTS_LIMIT,
    MAX_BATCH,
    MAX_KEY_LENGTH,
    MAX_TIMESTAMP,
    MAX_WAIT,
    STATES,
)


def pack_args(args: Sequence[Any], kwargs: Mapping[str, Any]) -> bytes:
    """A job's arguments as the protocol carries them: msgpack [args, kwargs]."""
    return pack([list(args), dict(kwargs)])


def unpack_args(data: bytes) -> tuple[list[Any], dict[str, Any]]:
    """The positional and keyword arguments of a job; ``ProtocolError`` when
    ``data`` is not the [array, map] envelope."""
    try:
        payload = unpack(data)
    except ProtocolError as exc:
        raise ProtocolError(f"job args: {exc}") from None
    if (
        not isinstance(payload, list)
        or len(payload) != 2
        or not isinstance(payload[0], list)
        or not isinstance(payload[1], dict)
    ):
        raise ProtocolError("job args must be msgpack [positional array, keyword map]")
    return payload[0], payload[1]


@dataclass(slots=True)  # per job: see the note on mutable records in jobsd/storage/records.py
class JobSubmission:
    """One job in a SUBMIT. ``options`` None: all the job type's defaults."""

    id: str
    name: str
    args: bytes
    options: JobOptions | None = None

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"id": self.id, "name": self.name, "args": self.args}
        if self.options is not None:
            wire.update(self.options.to_wire())
        return wire

    @classmethod
    def from_wire(cls, item: Any) -> JobSubmission:
        f = Fields(item, "job")
        job_id, job_name, args = f.text("id"), f.text("name"), f.binary("args")
        unpack_args(args)
        if len(item) == 3:  # those three alone, as most submits: no options to check
            return cls(job_id, job_name, args)
        return cls(job_id, job_name, args, JobOptions.from_wire(f))


def decode_submit(body: Any) -> list[JobSubmission]:
    return [JobSubmission.from_wire(item) for item in Fields(body, "SUBMIT").array("jobs")]


def submit_reply(results: Sequence[tuple[str, bool]]) -> dict[str, Any]:
    """``OK`` to a SUBMIT: each job's id (the existing job's when not
    created) and whether it was created."""
    return {"ids": [job_id for job_id, _ in results], "created": [c for _, c in results]}


def read_submit_reply(body: Any, expected: int) -> list[tuple[str, bool]]:
    f = Fields(body, "SUBMIT reply")
    ids, created = f.names("ids"), f.array("created")
    if len(ids) != expected or len(created) != expected:
        raise ProtocolError(f"SUBMIT reply: expected {expected} results")
    return list(zip(ids, (bool(c) for c in created), strict=True))


class StoredJob(Protocol):
    """What a job view is made from (the broker's stored records)."""

    id: str
    name: str
    queue: str
    state: str
    priority: int
    attempts: int
    max_attempts: int | None
    run_at: float
    created_at: float
    updated_at: float
    timeout: float | None
    unique_key: str | None
    args: bytes
    result: bytes | None
    error: str | None
    worker: str | None


def job_view(job: StoredJob, errors: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A job as producers see it (PROTOCOL.md, "Job view"); never its lease."""
    view = {
        "id": job.id,
        "name": job.name,
        "queue": job.queue,
        "state": job.state,
        "priority": job.priority,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts or 0,
        "run_at": job.run_at,
        "created_at": job.created_at,
        "updated_at": job.updated_at,
        "timeout": job.timeout,
        "unique_key": job.unique_key,
        "args": job.args,
        "result": job.result,
        "error": job.error,
        "worker": job.worker,
    }
    if errors is not None:
        view["errors"] = errors
    return view


@dataclass(frozen=True, slots=True)
class JobStatus:
    """A job as the broker reports it, arguments and result decoded."""

    id: str
    name: str
    queue: str
    state: str
    priority: int
    attempts: int
    max_attempts: int  # 0: no limit
    run_at: float
    created_at: float
    updated_at: float
    timeout: float | None
    unique_key: str | None
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    result: Any
    error: str | None
    worker: str | None = None
    #: Every failed attempt's ``{"attempt", "at", "error"}``, oldest first
    #: (asked for with ``Client.status(job_id, errors=True)``).
    errors: tuple[dict[str, Any], ...] = ()

    @property
    def finished(self) -> bool:
        return self.state in FINAL_STATES

    @classmethod
    def from_wire(cls, view: Any) -> JobStatus:
        f = Fields(view, "job view")
        args, kwargs = unpack_args(f.binary("args"))
        result = f.binary("result", required=False)
        return cls(
            id=f.text("id"),
            name=f.text("name"),
            queue=f.text("queue"),
            state=f.text("state"),
            priority=f.integer("priority"),
            attempts=f.integer("attempts"),
            max_attempts=f.integer("max_attempts"),
            run_at=f.number("run_at", high=MAX_TIMESTAMP),
            created_at=f.number("created_at"),
            updated_at=f.number("updated_at"),
            timeout=f.number("timeout", required=False, high=MAX_TIMESTAMP),
            unique_key=f.text("unique_key", required=False, max_len=MAX_KEY_LENGTH),
            args=tuple(args),
            kwargs=kwargs,
            result=None if result is None else unpack(result),
            error=view.get("error"),
            worker=view.get("worker"),
            errors=tuple(f.array("errors", required=False, max_len=MAX_ATTEMPTS_LIMIT)),
        )


def read_get_reply(body: Any, expected: int) -> list[JobStatus | None]:
    views = Fields(body, "GET reply").array("jobs")
    if len(views) != expected:
        raise ProtocolError(f"GET reply: expected {expected} jobs")
    return [None if view is None else JobStatus.from_wire(view) for view in views]


def read_wait_reply(body: Any) -> JobStatus | None:
    view = Fields(body, "WAIT reply").mapping("job")
    return None if view is None else JobStatus.from_wire(view)


class Request:
    """A request body: on the wire, a map of its set fields (nil is absent)."""

    __slots__ = ()

    def to_wire(self) -> dict[str, Any]:
        fields = (f.name for f in dataclasses.fields(self))  # type: ignore[arg-type]
        return {k: v for k in fields if (v := getattr(self, k)) is not None}


@dataclass(frozen=True, slots=True)
class GetRequest(Request):
    """GET: jobs by id; with ``errors`` every failed attempt's error too."""

    ids: list[str]
    errors: bool = False

    @classmethod
    def from_wire(cls, body: Any) -> GetRequest:
        f = Fields(body, "GET")
        return cls(f.names("ids"), f.flag("errors"))


@dataclass(frozen=True, slots=True)
class WaitRequest(Request):
    """WAIT: hold the reply until the job is finished or ``timeout`` passes."""

    id: str
    timeout: float

    @classmethod
    def from_wire(cls, body: Any) -> WaitRequest:
        f = Fields(body, "WAIT")
        return cls(f.text("id"), f.number("timeout", high=MAX_WAIT))


@dataclass(frozen=True, slots=True)
class ListRequest(Request):
    """LIST: jobs newest first, a page at a time. ``cursor`` is the ``next``
    of the previous page's reply (opaque)."""

    queue: str | None = None
    state: str | None = None
    limit: int = 100
    cursor: str | None = None

    @classmethod
    def from_wire(cls, body: Any) -> ListRequest:
        f = Fields(body, "LIST")
        state = f.text("state", required=False)
        if state is not None and state not in STATES:
            raise ProtocolError(f"LIST: state must be one of {', '.join(STATES)}")
        cursor = f.text("cursor", required=False)
        if cursor is not None:
            read_cursor(cursor)
        limit = f.integer("limit", required=False, low=1, high=MAX_BATCH)
        return cls(f.text("queue", required=False), state, limit or 100, cursor)


def make_cursor(seq: int) -> str:
    """The cursor of the page after the job numbered ``seq`` (opaque to clients)."""
    return f"s{seq}"


def read_cursor(cursor: str) -> int:
    if not (cursor.startswith("s") and cursor[1:].isdigit()):
        raise ProtocolError("LIST: cursor is not one a LIST reply gave")
    return int(cursor[1:])


def read_list_reply(body: Any) -> tuple[list[JobStatus], str | None]:
    f = Fields(body, "LIST reply")
    jobs = [JobStatus.from_wire(view) for view in f.array("jobs")]
    return jobs, f.text("next", required=False)


@dataclass(frozen=True, slots=True)
class IdsRequest(Request):
    """CANCEL and DELETE: jobs by id."""

    ids: list[str]

    @classmethod
    def from_wire(cls, body: Any, what: str) -> IdsRequest:
        return cls(Fields(body, what).names("ids"))


@dataclass(frozen=True, slots=True)
class RetryRequest(Request):
    """RETRY: jobs by id, and with ``all_dead`` every dead job (of ``queue``)."""

    ids: list[str]
    all_dead: bool = False
    queue: str | None = None

    @classmethod
    def from_wire(cls, body: Any) -> RetryRequest:
        f = Fields(body, "RETRY")
        return cls(f.names("ids", required=False), f.flag("all_dead"), f.text("queue", False))


@dataclass(frozen=True, slots=True)
class QueueRequest(Request):
    """PAUSE and RESUME: one queue."""

    queue: str

    @classmethod
    def from_wire(cls, body: Any, what: str) -> QueueRequest:
        return cls(Fields(body, what).text("queue"))


@dataclass(frozen=True, slots=True)
class PurgeRequest(Request):
    """PURGE: finished jobs in ``states`` (all three by default) last changed
    more than ``older_than`` seconds ago."""

    states: list[str]
    older_than: float = 0.0

    @classmethod
    def from_wire(cls, body: Any) -> PurgeRequest:
        f = Fields(body, "PURGE")
        states = f.names("states", required=False) or sorted(FINAL_STATES)
        if not set(states) <= FINAL_STATES:
            raise ProtocolError(f"PURGE: states must be among {sorted(FINAL_STATES)}")
        return cls(states, f.number("older_than", required=False, high=MAX_TIMESTAMP) or 0.0)


def check_empty(body: Any, what: str) -> None:
    """PING and STATS take an empty map (any map: keys are ignored)."""
    Fields(body, what)
