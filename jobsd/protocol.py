"""The jobsd wire protocol: the only module that knows how messages look on the wire.

Every message is a ZeroMQ multipart message ``[b"", TAG, COMMAND, BODY]``: an
empty delimiter (REQ sockets add it themselves; DEALER workers send it), the
protocol tag, the command name and one msgpack body. The broker's ROUTER sees
the peer identity in front. ``PROTOCOL.md`` is the specification for writers of
clients in other languages; this module implements it and is checked against it.

Decoding is strict and never trusts its input: anything malformed raises
``ProtocolError`` with a stable code, and the broker answers with ERROR.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import zmq

TAG = b"JOBSD1"

#: The broker refuses bigger messages at the socket (ZMQ_MAXMSGSIZE).
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
#: The most jobs in one SUBMIT, JOB, ACK or FAIL batch.
MAX_BATCH = 10_000
MAX_NAME_LENGTH = 200
MAX_ERROR_LENGTH = 64 * 1024

# producer -> broker
SUBMIT = b"SUBMIT"
GET = b"GET"
WAIT = b"WAIT"
CANCEL = b"CANCEL"
RETRY = b"RETRY"
DELETE = b"DELETE"
LIST = b"LIST"
STATS = b"STATS"
PAUSE = b"PAUSE"
RESUME = b"RESUME"
PURGE = b"PURGE"
PING = b"PING"
# worker -> broker
HELLO = b"HELLO"
ACK = b"ACK"
FAIL = b"FAIL"
RELEASE = b"RELEASE"
HEARTBEAT = b"HEARTBEAT"
BYE = b"BYE"
# broker -> worker
WELCOME = b"WELCOME"
JOB = b"JOB"
CONFIRM = b"CONFIRM"
RECONNECT = b"RECONNECT"
# (HEARTBEAT and CANCEL also go broker -> worker)
# replies
OK = b"OK"
ERROR = b"ERROR"

PRODUCER_COMMANDS = frozenset(
    {SUBMIT, GET, WAIT, CANCEL, RETRY, DELETE, LIST, STATS, PAUSE, RESUME, PURGE, PING}
)
WORKER_COMMANDS = frozenset({HELLO, ACK, FAIL, RELEASE, HEARTBEAT, BYE})


class ProtocolError(Exception):
    """A message that does not follow the protocol. ``code`` is stable and goes
    to the peer in the ERROR reply."""

    def __init__(self, message: str, code: str = "bad_request") -> None:
        super().__init__(message)
        self.code = code


# -- bodies --------------------------------------------------------------------


def pack(body: Any) -> bytes:
    return msgpack.packb(body, use_bin_type=True)


def unpack(data: bytes) -> Any:
    """Decode exactly one msgpack value: no extension types, string keys only,
    and (msgpack's default for ``unpackb``) no length claimed beyond the data."""
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True, ext_hook=_refuse_ext)
    except ProtocolError:
        raise
    # msgpack signals bad input with ValueError subclasses (ExtraData,
    # FormatError, StackError, limits, bad UTF-8) and TypeError (unhashable keys).
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise ProtocolError(f"body is not valid msgpack: {exc}") from None


def _refuse_ext(code: int, data: bytes) -> Any:
    raise ProtocolError(f"msgpack extension type {code} is not allowed")


def encode(command: bytes, body: Any) -> list[bytes]:
    """Frames for a message from a REQ or DEALER peer, or (behind the peer's
    identity) from the broker."""
    return [b"", TAG, command, pack(body)]


_MORE = int(zmq.SNDMORE)


def send(sock: zmq.Socket[Any], frames: Sequence[bytes], flags: int = 0) -> None:
    """``sock.send_multipart(frames, flags)`` for frames known to be bytes,
    without its per-frame type checks and its arithmetic on enum flags: every
    message of every peer goes through here."""
    more = _MORE | int(flags)
    for frame in frames[:-1]:
        sock.send(frame, more)
    sock.send(frames[-1], flags)


def recv(sock: zmq.Socket[Any], flags: int = 0) -> list[bytes]:
    """``sock.recv_multipart(flags)``, cheaper: pyzmq's asks the socket
    whether more frames follow (``RCVMORE``), which converts the option to an
    enum on every frame; a frame received without copying knows it itself.
    Raises ``zmq.Again`` as ``recv_multipart`` does."""
    frame = sock.recv(flags, copy=False)
    frames = [frame.bytes]
    while frame.more:
        frame = sock.recv(flags, copy=False)
        frames.append(frame.bytes)
    return frames


_NOBLOCK = int(zmq.NOBLOCK)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)


def recv_waiting(sock: zmq.Socket[Any], limit: int) -> Iterator[list[bytes]]:
    """The messages already waiting on ``sock``, at most ``limit``, without
    blocking. Whether another waits is asked of the socket (``EVENTS``), not
    learnt from a failed receive: pyzmq raises ``zmq.Again`` for that, and
    building the exception cost more than receiving a one-message burst."""
    for _ in range(limit):
        try:
            yield recv(sock, _NOBLOCK)
        except zmq.Again:
            return
        if not int(sock.get(_EVENTS)) & _POLLIN:
            return


def decode(frames: Sequence[bytes]) -> tuple[bytes, Any]:
    """``(command, body)`` of a message as received on a REQ or DEALER socket,
    or on the broker's ROUTER with the identity already taken off."""
    if len(frames) != 4 or frames[0] != b"":
        raise ProtocolError(f"expected 4 frames [empty, tag, command, body], got {len(frames)}")
    _, tag, command, body = frames
    if tag != TAG:
        raise ProtocolError(
            f"unsupported protocol tag {bytes(tag)[:16]!r}, this broker speaks {TAG!r}",
            code="unsupported_version",
        )
    return bytes(command), unpack(body)


# -- field checks ----------------------------------------------------------------


class Fields:
    """Typed access to a message body: every getter checks presence, type and
    range, and raises ``ProtocolError`` naming the field."""

    def __init__(self, body: Any, what: str = "body") -> None:
        if not isinstance(body, dict):
            raise ProtocolError(f"{what} must be a map, got {type(body).__name__}")
        self._body = body
        self._what = what

    def _get(self, key: str, required: bool) -> Any:
        value = self._body.get(key)
        if value is None and required:
            raise ProtocolError(f"{self._what}: field '{key}' is required")
        return value

    def _wrong(self, key: str, expected: str, value: Any) -> ProtocolError:
        return ProtocolError(
            f"{self._what}: field '{key}' must be {expected}, got {type(value).__name__}"
        )

    def text(self, key: str, required: bool = True, max_len: int = MAX_NAME_LENGTH) -> Any:
        value = self._get(key, required)
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            raise self._wrong(key, "a non-empty string", value)
        if len(value) > max_len:
            raise ProtocolError(f"{self._what}: field '{key}' is longer than {max_len}")
        return value

    def integer(self, key: str, required: bool = True, low: int = 0, high: int = 2**63 - 1) -> Any:
        value = self._get(key, required)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._wrong(key, "an integer", value)
        if not low <= value <= high:
            raise ProtocolError(f"{self._what}: field '{key}' must be in {low}..{high}")
        return value

    def number(self, key: str, required: bool = True, low: float = 0.0) -> Any:
        value = self._get(key, required)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self._wrong(key, "a number", value)
        if not math.isfinite(value) or value < low:
            raise ProtocolError(f"{self._what}: field '{key}' must be a finite number >= {low}")
        return float(value)

    def flag(self, key: str) -> bool:
        value = self._body.get(key, False)
        if not isinstance(value, bool):
            raise self._wrong(key, "a boolean", value)
        return value

    def binary(self, key: str, required: bool = True) -> Any:
        value = self._get(key, required)
        if value is None:
            return None
        if not isinstance(value, bytes):
            raise self._wrong(key, "binary (msgpack bin)", value)
        return value

    def mapping(self, key: str, required: bool = False) -> Any:
        value = self._get(key, required)
        if value is not None and not isinstance(value, dict):
            raise self._wrong(key, "a map", value)
        return value

    def array(self, key: str, required: bool = True, max_len: int = MAX_BATCH) -> list[Any]:
        value = self._get(key, required)
        if value is None:
            return []
        if not isinstance(value, list):
            raise self._wrong(key, "an array", value)
        if len(value) > max_len:
            raise ProtocolError(f"{self._what}: '{key}' holds more than {max_len} items")
        return value

    def names(self, key: str, required: bool = True, max_len: int = MAX_BATCH) -> list[str]:
        items = self.array(key, required, max_len)
        for item in items:
            if not isinstance(item, str) or not item or len(item) > MAX_NAME_LENGTH:
                raise ProtocolError(f"{self._what}: '{key}' must hold non-empty short strings")
        return items


def _tuple(item: Any, what: str, lengths: tuple[int, ...]) -> list[Any]:
    if not isinstance(item, list) or len(item) not in lengths:
        raise ProtocolError(f"{what} must be an array of {' or '.join(map(str, lengths))} items")
    return item


# -- messages ----------------------------------------------------------------------


# Records marked "per job" are not frozen, for speed: see the note on mutable
# records in jobsd/storage/base.py.
@dataclass(slots=True)  # per job: see the note on mutable records
class JobSubmission:
    """One job in a SUBMIT. ``None`` options take the job type's defaults."""

    id: str
    name: str
    args: bytes
    queue: str | None = None
    priority: int | None = None
    run_at: float | None = None
    delay: float | None = None
    max_attempts: int | None = None  # 0: no limit
    backoff: dict[str, Any] | None = None
    timeout: float | None = None
    unique_key: str | None = None

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"id": self.id, "name": self.name, "args": self.args}
        for key in (
            "queue",
            "priority",
            "run_at",
            "delay",
            "max_attempts",
            "backoff",
            "timeout",
            "unique_key",
        ):
            value = getattr(self, key)
            if value is not None:
                wire[key] = value
        return wire

    @classmethod
    def from_wire(cls, item: Any) -> JobSubmission:
        f = Fields(item, "job")
        job_id, name, args = f.text("id"), f.text("name"), f.binary("args")
        if len(item) == 3:  # those three alone, as most submits: no options to check
            return cls(job_id, name, args)
        return cls(
            id=job_id,
            name=name,
            args=args,
            queue=f.text("queue", required=False),
            priority=f.integer("priority", required=False, high=65535),
            run_at=f.number("run_at", required=False),
            delay=f.number("delay", required=False),
            max_attempts=f.integer("max_attempts", required=False, high=1_000_000),
            backoff=f.mapping("backoff"),
            timeout=f.number("timeout", required=False),
            unique_key=f.text("unique_key", required=False, max_len=512),
        )


def decode_submit(body: Any) -> list[JobSubmission]:
    return [JobSubmission.from_wire(item) for item in Fields(body).array("jobs")]


@dataclass(frozen=True, slots=True)
class JobType:
    """Defaults a worker announces for one job name it can run."""

    queue: str | None = None
    priority: int | None = None
    max_attempts: int | None = None
    backoff: dict[str, Any] | None = None
    timeout: float | None = None

    def to_wire(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__ if getattr(self, k) is not None}

    @classmethod
    def from_wire(cls, item: Any) -> JobType:
        f = Fields(item, "job type")
        return cls(
            queue=f.text("queue", required=False),
            priority=f.integer("priority", required=False, high=65535),
            max_attempts=f.integer("max_attempts", required=False, high=1_000_000),
            backoff=f.mapping("backoff"),
            timeout=f.number("timeout", required=False),
        )


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
        cron, name, args, queue = _tuple(item, "HELLO schedule", (4,))
        if not isinstance(cron, str) or not cron or len(cron) > MAX_NAME_LENGTH:
            raise ProtocolError("a schedule's cron expression must be a short string")
        if not isinstance(args, bytes):
            raise ProtocolError("a schedule's args must be binary")
        if queue is not None:
            queue = _name(queue)
        return cls(cron, _name(name), args, queue)


@dataclass(frozen=True, slots=True)
class Hello:
    worker: str
    queues: list[str]
    capacity: int
    pid: int = 0
    host: str = ""
    job_types: dict[str, JobType] = field(default_factory=dict)
    running: list[tuple[str, int]] = field(default_factory=list)
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
        if len(types) > MAX_BATCH:
            raise ProtocolError("HELLO: too many job types")
        running = []
        for item in f.array("running", required=False):
            job_id, attempt = _tuple(item, "HELLO running item", (2,))
            running.append(_lease(job_id, attempt))
        return cls(
            worker=f.text("worker"),
            queues=f.names("queues", max_len=1000),
            capacity=f.integer("capacity", low=1, high=100_000),
            pid=f.integer("pid", required=False) or 0,
            host=f.text("host", required=False) or "",
            job_types={_name(name): JobType.from_wire(spec) for name, spec in types.items()},
            running=running,
            schedules=[Schedule.from_wire(item) for item in f.array("schedules", required=False)],
        )


def _name(value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_NAME_LENGTH:
        raise ProtocolError("a job name must be a non-empty string of at most 200 characters")
    return value


def _lease(job_id: Any, attempt: Any) -> tuple[str, int]:
    if not isinstance(job_id, str) or not job_id or len(job_id) > MAX_NAME_LENGTH:
        raise ProtocolError("a job id must be a non-empty short string")
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
        raise ProtocolError("an attempt must be a positive integer")
    return job_id, attempt


@dataclass(slots=True)  # per job: see the note on mutable records
class Dispatch:
    """One job in a JOB batch, broker -> worker."""

    id: str
    name: str
    queue: str
    attempt: int
    args: bytes
    timeout: float | None

    def to_wire(self) -> list[Any]:
        return [self.id, self.name, self.queue, self.attempt, self.args, self.timeout]

    @classmethod
    def from_wire(cls, item: Any) -> Dispatch:
        job_id, name, queue, attempt, args, timeout = _tuple(item, "JOB item", (6,))
        _lease(job_id, attempt)
        if not isinstance(args, bytes) or not isinstance(name, str) or not isinstance(queue, str):
            raise ProtocolError("JOB item has fields of the wrong type")
        return cls(job_id, name, queue, attempt, args, timeout)


def decode_jobs(body: Any) -> list[Dispatch]:
    return [Dispatch.from_wire(item) for item in Fields(body, "JOB").array("jobs")]


@dataclass(slots=True)  # per job: see the note on mutable records
class Ack:
    """A successful attempt, worker -> broker. ``result`` is msgpack bytes."""

    job_id: str
    attempt: int
    result: bytes | None = None
    reschedule_at: float | None = None

    def to_wire(self) -> list[Any]:
        if self.reschedule_at is None:
            return [self.job_id, self.attempt, self.result]
        return [self.job_id, self.attempt, self.result, self.reschedule_at]

    @classmethod
    def from_wire(cls, item: Any) -> Ack:
        fields = _tuple(item, "ACK item", (3, 4))
        job_id, attempt = _lease(fields[0], fields[1])
        result = fields[2]
        if result is not None and not isinstance(result, bytes):
            raise ProtocolError("ACK item: result must be binary or nil")
        reschedule_at = fields[3] if len(fields) == 4 else None
        if reschedule_at is not None:
            reschedule_at = Fields({"reschedule_at": reschedule_at}, "ACK").number("reschedule_at")
        return cls(job_id, attempt, result, reschedule_at)


#: How a worker says why an attempt failed (FAIL item's ``kind``).
FAIL_ERROR = "error"  # an exception: retry by the job's policy
FAIL_RETRY = "retry"  # the job asked to run again at retry_at, attempt counted
FAIL_FINAL = "final"  # no point retrying (unknown job name): dead at once
FAIL_CANCELLED = "cancelled"  # the handler honoured a cancel request
FAIL_TIMEOUT = "timeout"  # over its time limit: retry by policy
FAIL_KINDS = frozenset({FAIL_ERROR, FAIL_RETRY, FAIL_FINAL, FAIL_CANCELLED, FAIL_TIMEOUT})


@dataclass(slots=True)  # per job: see the note on mutable records
class Fail:
    job_id: str
    attempt: int
    error: str
    kind: str = FAIL_ERROR
    retry_at: float | None = None

    def to_wire(self) -> list[Any]:
        return [self.job_id, self.attempt, self.error, self.kind, self.retry_at]

    @classmethod
    def from_wire(cls, item: Any) -> Fail:
        job_id, attempt, error, kind, retry_at = _tuple(item, "FAIL item", (5,))
        job_id, attempt = _lease(job_id, attempt)
        if not isinstance(error, str):
            raise ProtocolError("FAIL item: error must be a string")
        if kind not in FAIL_KINDS:
            raise ProtocolError(f"FAIL item: kind must be one of {sorted(FAIL_KINDS)}")
        if retry_at is not None:
            retry_at = Fields({"retry_at": retry_at}, "FAIL").number("retry_at")
        return cls(job_id, attempt, error[:MAX_ERROR_LENGTH], kind, retry_at)


def decode_acks(body: Any) -> list[Ack]:
    return [Ack.from_wire(item) for item in Fields(body, "ACK").array("acks")]


def decode_fails(body: Any) -> list[Fail]:
    return [Fail.from_wire(item) for item in Fields(body, "FAIL").array("fails")]


def report_seq(body: Any) -> int | None:
    """The sequence number a worker gave a report (ACK, FAIL, RELEASE) so the
    broker can CONFIRM it once stored; None when the worker asks for none."""
    return Fields(body, "report").integer("seq", required=False)


def decode_leases(body: Any, command: str) -> list[tuple[str, int]]:
    leases = []
    for item in Fields(body, command).array("jobs"):
        job_id, attempt = _tuple(item, f"{command} item", (2,))
        leases.append(_lease(job_id, attempt))
    return leases


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"code": code, "message": message, **extra}
