"""The worker side of the protocol: what a DEALER socket sends and gets.

A running job's lease is a token the broker hands out with the job (``JOB``)
and never hands out again: every report (ACK, FAIL, RELEASE) and every
re-announcement after a reconnect (HELLO's ``running``) names the job by its
id and that token, and counts only while the job still runs under it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from jobsd.protocol.fields import Fields, check_number, items, name
from jobsd.protocol.framing import ProtocolError
from jobsd.protocol.options import JobOptions
from jobsd.vocabulary import MAX_ERROR_LENGTH, MAX_MESSAGE_BYTES, MAX_NAME_LENGTH, MAX_TIMESTAMP

#: The longest lease token; the broker's are 32 hex digits.
MAX_LEASE_LENGTH = 64
#: The largest encoded result one ACK can carry: a message frame's limit, less
#: room for the rest of the report.
MAX_RESULT_BYTES = MAX_MESSAGE_BYTES - 64 * 1024


class Claimed(Protocol):
    """What a JOB item is made from (the broker's claimed records)."""

    id: str
    name: str
    queue: str
    attempts: int
    args: bytes
    timeout: float | None
    lease: str | None


def lease_item(item: Any, what: str) -> tuple[str, str]:
    """A ``[job_id, lease]`` pair: a RELEASE item, a HELLO running item."""
    job_id, lease = items(item, what, (2,))
    return _job_id(job_id), _lease(lease)


def _job_id(value: Any) -> str:
    return name(value, "a job id")


def _lease(value: Any) -> str:
    return name(value, "a lease", MAX_LEASE_LENGTH)


def _time(value: Any, what: str) -> float | None:
    return None if value is None else check_number(value, what, high=MAX_TIMESTAMP)


@dataclass(frozen=True, slots=True)
class Schedule:
    """A periodic job a worker's application declares: run ``name`` with
    ``args`` at every time the cron expression ``cron`` names."""

    cron: str
    name: str
    args: bytes
    queue: str | None = None

    def to_wire(self) -> list[Any]:
        return [self.cron, self.name, self.args, self.queue]

    @classmethod
    def from_wire(cls, item: Any) -> Schedule:
        cron, job_name, args, queue = items(item, "HELLO schedule", (4,))
        name(cron, "a schedule's cron expression")
        if not isinstance(args, bytes):
            raise ProtocolError("a schedule's args must be binary")
        if queue is not None:
            name(queue, "a schedule's queue")
        return cls(cron, name(job_name, "a schedule's job name"), args, queue)


@dataclass(frozen=True, slots=True)
class Hello:
    """Registers a worker: what it serves, how many jobs it holds at most,
    its job types' defaults, its schedules, and the leases it still answers
    for from before a reconnect (jobs running, or finished but not yet
    confirmed)."""

    worker: str
    queues: list[str]
    capacity: int
    pid: int = 0
    host: str = ""
    job_types: dict[str, JobOptions] = field(default_factory=dict)
    running: list[tuple[str, str]] = field(default_factory=list)
    schedules: list[Schedule] = field(default_factory=list)

    def to_wire(self) -> dict[str, Any]:
        return {
            "worker": self.worker,
            "queues": self.queues,
            "capacity": self.capacity,
            "pid": self.pid,
            "host": self.host,
            "job_types": {name: t.to_wire() for name, t in self.job_types.items()},
            "running": [list(lease) for lease in self.running],
            "schedules": [s.to_wire() for s in self.schedules],
        }

    @classmethod
    def from_wire(cls, body: Any) -> Hello:
        f = Fields(body, "HELLO")
        types = f.mapping("job_types") or {}
        if len(types) > 10_000:
            raise ProtocolError("HELLO: too many job types")
        job_types = {
            name(type_name, "a job type's name"): JobOptions.from_wire(
                Fields(spec, "HELLO job type")
            ).type_defaults()
            for type_name, spec in types.items()
        }
        return cls(
            worker=f.text("worker"),
            queues=f.names("queues", max_len=1000),
            capacity=f.integer("capacity", low=1, high=100_000),
            pid=f.integer("pid", required=False) or 0,
            host=f.text("host", required=False, allow_empty=True) or "",
            job_types=job_types,
            running=[lease_item(i, "HELLO running item") for i in f.array("running", False)],
            schedules=[Schedule.from_wire(i) for i in f.array("schedules", required=False)],
        )


@dataclass(frozen=True, slots=True)
class Welcome:
    """The broker's answer to HELLO: the heartbeat the worker must keep."""

    heartbeat: float
    liveness: int

    def to_wire(self) -> dict[str, Any]:
        return {"heartbeat": self.heartbeat, "liveness": self.liveness}

    @classmethod
    def from_wire(cls, body: Any) -> Welcome:
        f = Fields(body, "WELCOME")
        return cls(f.number("heartbeat", low=0.001, high=3600.0), f.integer("liveness", low=1))


@dataclass(slots=True)  # per job: see the note on mutable records in jobsd/storage/records.py
class Dispatch:
    """One job in a JOB batch, broker -> worker. ``timeout`` None: no limit."""

    id: str
    name: str
    queue: str
    attempt: int
    args: bytes
    timeout: float | None
    lease: str

    def to_wire(self) -> list[Any]:
        return [self.id, self.name, self.queue, self.attempt, self.args, self.timeout, self.lease]

    @classmethod
    def of(cls, job: Claimed) -> Dispatch:
        return cls(
            job.id, job.name, job.queue, job.attempts, job.args, job.timeout, job.lease or ""
        )

    @classmethod
    def from_wire(cls, item: Any) -> Dispatch:
        job_id, job_name, queue, attempt, args, timeout, lease = items(item, "JOB item", (7,))
        if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
            raise ProtocolError("JOB item: attempt must be a positive integer")
        if not isinstance(args, bytes):
            raise ProtocolError("JOB item: args must be binary")
        return cls(
            _job_id(job_id),
            name(job_name, "JOB item: name"),
            name(queue, "JOB item: queue", MAX_NAME_LENGTH),
            attempt,
            args,
            _time(timeout, "JOB item: timeout") or None,
            _lease(lease),
        )


def decode_jobs(body: Any) -> list[Dispatch]:
    return [Dispatch.from_wire(item) for item in Fields(body, "JOB").array("jobs")]


@dataclass(slots=True)  # per job: see the note on mutable records in jobsd/storage/records.py
class Ack:
    """A successful attempt. ``result`` is msgpack bytes; with
    ``reschedule_at`` the job runs again then, as a fresh job."""

    job_id: str
    lease: str
    result: bytes | None = None
    reschedule_at: float | None = None

    def to_wire(self) -> list[Any]:
        if self.reschedule_at is None:
            return [self.job_id, self.lease, self.result]
        return [self.job_id, self.lease, self.result, self.reschedule_at]

    @classmethod
    def from_wire(cls, item: Any) -> Ack:
        values = items(item, "ACK item", (3, 4))
        result = values[2]
        if result is not None and not isinstance(result, bytes):
            raise ProtocolError("ACK item: result must be binary or nil")
        reschedule_at = _time(values[3], "ACK item: reschedule_at") if len(values) == 4 else None
        return cls(_job_id(values[0]), _lease(values[1]), result, reschedule_at)


#: How a worker says why an attempt failed (FAIL item's ``kind``).
FAIL_ERROR = "error"  # an exception: retry by the job's policy
FAIL_RETRY = "retry"  # the job asked to run again at retry_at, attempt counted
FAIL_FINAL = "final"  # no point retrying (unknown job name): dead at once
FAIL_CANCELLED = "cancelled"  # the handler honoured a cancel request
FAIL_TIMEOUT = "timeout"  # over its time limit: retry by policy
FAIL_KINDS = frozenset({FAIL_ERROR, FAIL_RETRY, FAIL_FINAL, FAIL_CANCELLED, FAIL_TIMEOUT})


@dataclass(slots=True)  # per job: see the note on mutable records in jobsd/storage/records.py
class Fail:
    """A failed attempt: ``error`` text (type, message, traceback) and why."""

    job_id: str
    lease: str
    error: str
    kind: str = FAIL_ERROR
    retry_at: float | None = None

    def to_wire(self) -> list[Any]:
        return [self.job_id, self.lease, self.error, self.kind, self.retry_at]

    @classmethod
    def from_wire(cls, item: Any) -> Fail:
        job_id, lease, error, kind, retry_at = items(item, "FAIL item", (5,))
        if not isinstance(error, str):
            raise ProtocolError("FAIL item: error must be a string")
        if not isinstance(kind, str) or kind not in FAIL_KINDS:
            raise ProtocolError(f"FAIL item: kind must be one of {sorted(FAIL_KINDS)}")
        return cls(
            _job_id(job_id),
            _lease(lease),
            error[:MAX_ERROR_LENGTH],
            kind,
            _time(retry_at, "FAIL item: retry_at"),
        )


def decode_acks(body: Any) -> list[Ack]:
    return [Ack.from_wire(item) for item in Fields(body, "ACK").array("acks")]


def decode_fails(body: Any) -> list[Fail]:
    return [Fail.from_wire(item) for item in Fields(body, "FAIL").array("fails")]


def decode_releases(body: Any) -> list[tuple[str, str]]:
    return [lease_item(item, "RELEASE item") for item in Fields(body, "RELEASE").array("jobs")]


def report_seq(body: Any) -> int | None:
    """The number a worker gave a report (ACK, FAIL, RELEASE) so the broker
    can CONFIRM it once stored; None when the worker asks for none."""
    seq: int | None = Fields(body, "report").integer("seq", required=False)
    return seq


def decode_cancel(body: Any) -> list[str]:
    """CANCEL, broker -> worker: the running jobs to ask to stop."""
    return Fields(body, "CANCEL").names("ids")
