"""Fuzz the broker's one socket: whatever arrives, it keeps serving.

Hypothesis throws random frames, wrong frame counts and tags, random,
truncated, huge, deeply nested and lying msgpack, and every command's body
with one field changed to a value of the wrong type (or removed, or added) at a
real ``jobsd serve`` process, from raw DEALER sockets (and REQ sockets for the
producer commands) with poll timeouts, a fresh socket per example so that a
held reply (WAIT) never blocks the next. The checks: the broker never crashes,
never answers ``internal_error`` (an exception the protocol layer let through),
answers every producer request, keeps its memory bounded, and afterwards
serves a real producer as before.
"""

from __future__ import annotations

import collections
import datetime
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobsd import protocol
from jobsd.cron import CronTable
from tests.conftest import Cluster

#: The codes PROTOCOL.md lists; anything else is a bug showing through.
ERROR_CODES = {
    "bad_request",
    "unknown_command",
    "unsupported_version",
    "not_found",
    "storage_error",
}
REPLY_TIMEOUT_MS = 5000
RSS_GROWTH_LIMIT = 128 * 1024 * 1024  # bytes: the big bodies alone add up to far more

COMMANDS = sorted(protocol.PRODUCER_COMMANDS | protocol.WORKER_COMMANDS)
ARGS = protocol.pack([[], {}])

#: A valid body for every command, the starting point of the schema mutations.
VALID: dict[bytes, Any] = {
    protocol.SUBMIT: {
        "jobs": [
            {
                "id": "fuzz-1",
                "name": "fuzz",
                "args": ARGS,
                "queue": "fuzz",
                "priority": 7,
                "delay": 3600.0,
                "run_at": 4e9,
                "max_attempts": 1,
                "backoff": {"kind": "fixed", "delay": 1.0, "max": 9.0, "jitter": True},
                "timeout": 1.0,
                "unique_key": "fuzz-key",
            }
        ]
    },
    protocol.GET: {"ids": ["fuzz-1"], "errors": True},
    protocol.WAIT: {"id": "fuzz-1", "timeout": 0.0},
    protocol.CANCEL: {"ids": ["fuzz-cancel"]},
    protocol.RETRY: {"ids": ["fuzz-1"], "all_dead": True, "queue": "fuzz"},
    protocol.DELETE: {"ids": ["fuzz-delete"]},
    protocol.LIST: {"queue": "fuzz", "state": "scheduled", "limit": 5, "before_seq": 10**6},
    protocol.STATS: {},
    protocol.PAUSE: {"queue": "fuzz-paused"},
    protocol.RESUME: {"queue": "fuzz-paused"},
    protocol.PURGE: {"states": ["dead"], "older_than": 1e9},
    protocol.PING: {},
    protocol.HELLO: {
        "worker": "fuzz-worker",
        "queues": ["fuzz-nothing"],
        "capacity": 1,
        "pid": 1,
        "host": "fuzz",
        "job_types": {
            "fuzz": {
                "queue": "fuzz",
                "priority": 7,
                "max_attempts": 1,
                "backoff": {"kind": "linear"},
                "timeout": 1.0,
            }
        },
        "running": [["fuzz-1", 1]],
        "schedules": [["0 0 1 1 *", "fuzz", ARGS, "fuzz"]],
    },
    protocol.ACK: {"acks": [["fuzz-1", 1, None], ["fuzz-2", 3, b"\xc0", 4e9]], "seq": 1},
    protocol.FAIL: {"fails": [["fuzz-1", 1, "boom", "error", None]], "seq": 2},
    protocol.RELEASE: {"jobs": [["fuzz-1", 1]], "seq": 3},
    protocol.HEARTBEAT: {},
    protocol.BYE: {},
}

# -- strategies ----------------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(),  # NaN and infinities included
    st.text(max_size=40),
    st.binary(max_size=40),
    st.sampled_from(["", "x" * 201, "x" * 600, "default", "ready", "0 0 31 2 *", "* * * * * *"]),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8) | st.binary(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def _nested(depth: int, kind: str) -> bytes:
    return (b"\x91" if kind == "array" else b"\x81\xa1k") * depth + b"\xc0"


#: msgpack that lies or attacks: deep nesting, lengths far beyond the data,
#: extension types, non-string keys, trailing data, invalid UTF-8.
hostile_msgpack = st.one_of(
    st.builds(_nested, st.integers(1, 100_000), st.sampled_from(["array", "map"])),
    st.sampled_from(
        [
            b"\xdd\xff\xff\xff\xff",  # array of 4 G items
            b"\xdf\xff\xff\xff\xff",  # map of 4 G pairs
            b"\xdb\xff\xff\xff\xff" + b"x" * 8,  # str of 4 GB
            b"\xc6\xff\xff\xff\xff" + b"x" * 8,  # bin of 4 GB
            b"\xc7\x01\x05x",  # extension type
            b"\xd4\xff\x00",  # timestamp-like extension
            b"\x81\x01\x02",  # int map key
            b"\x81\xc0\x02",  # nil map key
            b"\x81\x91\x01\x02",  # array map key
            b"\xa2\xff\xfe",  # invalid UTF-8
            b"\x80\x80",  # trailing data
            b"\xc1",  # never used
            b"",  # nothing
        ]
    ),
)
bodies = st.one_of(
    st.binary(max_size=256),
    values.map(protocol.pack),
    st.builds(lambda v, cut: protocol.pack(v)[:cut], values, st.integers(0, 64)),
    hostile_msgpack,
    # big: megabytes of data, well-formed or not (the socket limit is 64 MiB)
    st.builds(lambda mb, byte: bytes([byte]) * (mb << 20), st.integers(1, 4), st.integers(0, 255)),
    st.builds(
        lambda mb: protocol.pack({"jobs": [{"id": "big", "name": "big", "args": bytes(mb << 20)}]}),
        st.integers(1, 4),
    ),
)
frame = st.one_of(
    st.binary(max_size=64),
    st.sampled_from([b"", protocol.TAG, b"JOBSD0", b"JOBSD2", b"jobsd1", *COMMANDS]),
    values.map(protocol.pack),
)


@st.composite
def mutated(draw: st.DrawFn, body: Any, top: bool = True) -> Any:
    """``body`` with one place changed: a value replaced by a random one (most
    often of the wrong type), a key or item removed or added, a batch made
    long; or (sometimes) left valid."""
    if not top and draw(st.integers(0, 2)) == 0:
        return draw(values)  # replace this value, whatever it is
    if isinstance(body, dict) and body:
        key = draw(st.sampled_from(sorted(body)))
        action = draw(st.sampled_from(["descend", "descend", "replace", "remove", "add", "keep"]))
        if action == "descend":
            return {**body, key: draw(mutated(body[key], top=False))}
        if action == "replace":
            return {**body, key: draw(values)}
        if action == "remove":
            return {k: v for k, v in body.items() if k != key}
        if action == "add":
            return {**body, draw(st.text(max_size=8)): draw(values)}
        return body
    if isinstance(body, list) and body:
        i = draw(st.integers(0, len(body) - 1))
        action = draw(st.sampled_from(["descend", "descend", "replace", "remove", "add", "repeat"]))
        if action == "descend":
            return [*body[:i], draw(mutated(body[i], top=False)), *body[i + 1 :]]
        if action == "replace":
            return [*body[:i], draw(values), *body[i + 1 :]]
        if action == "remove":
            return body[:i] + body[i + 1 :]
        if action == "add":
            return [*body, draw(values)]
        return body * draw(st.integers(2, 20_000))  # a long batch, maybe over the limit
    return draw(values)


#: Schedules a worker may announce that are not what they seem: a valid
#: expression that never fires, out-of-range fields, too many fields.
HOSTILE_CRON = [
    "0 0 31 2 *",
    "0 0 30 2 *",
    "*/0 * * * *",
    "61 * * * *",
    "* * * * * * * *",
    "0 0 1 1 * 1970",
    "@reboot",
    "@yearly",
    "",
    "x" * 300,
    "0 0 29 2 1",
    "* * * * * *",
]


def schema_attacks(command: bytes) -> st.SearchStrategy[bytes]:
    """Bodies of ``command``: its valid body with one place changed, or (for
    HELLO) with a hostile schedule."""
    attacks = mutated(VALID[command]).map(protocol.pack)
    if command == protocol.HELLO:
        cron = st.sampled_from(HOSTILE_CRON) | st.text(max_size=30)
        attacks |= cron.map(
            lambda c: protocol.pack({**VALID[command], "schedules": [[c, "fuzz", ARGS, "fuzz"]]})
        )
    return attacks


messages = st.one_of(
    # anything, any number of frames
    st.lists(frame, min_size=1, max_size=7),
    # the right frames around a random or hostile body
    st.builds(
        lambda command, body: [b"", protocol.TAG, command, body],
        st.sampled_from(COMMANDS) | st.binary(max_size=12),
        bodies,
    ),
)

# -- the broker under test -------------------------------------------------------------


def rss_bytes(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    assert match, status
    return int(match.group(1)) * 1024


class Target:
    """One broker for the whole module: it takes every attack in turn, as a
    broker in service would, and its memory is compared with its start."""

    def __init__(self, cluster: Cluster, tmp_path: Path) -> None:
        self.broker, self.endpoint = cluster.broker(f"sqlite:///{tmp_path / 'fuzz.sqlite3'}")
        self.context = zmq.Context()
        self.client = cluster.client(self.endpoint)
        self.replies: collections.Counter[str] = collections.Counter()
        self.warm_up()
        self.rss_start = rss_bytes(self.broker.pid)
        self.log_mark = 0

    def warm_up(self) -> None:
        """Use the common paths once, so that the baseline memory includes the
        code and caches any traffic loads."""
        assert self.client.ping()
        job_id = self.client.submit("warm-up")
        assert self.client.status(job_id, errors=True) is not None
        self.client.stats()
        self.client.list_jobs(limit=5)

    def socket(self, kind: int) -> zmq.Socket[Any]:
        sock = self.context.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.endpoint)
        return sock

    def alive(self) -> None:
        assert self.broker.proc.poll() is None, "the broker died:\n" + self.broker.output()[-5000:]

    def note(self, frames: list[bytes]) -> None:
        """Check one reply (well formed, and no ERROR code outside the
        protocol's); count it by kind."""
        command, body = protocol.decode(frames)
        if command == protocol.ERROR:
            assert isinstance(body, dict) and body.get("code") in ERROR_CODES, body
            self.replies[f"ERROR {body['code']}"] += 1
        else:
            self.replies[command.decode()] += 1

    def attack(self, frames: list[bytes]) -> None:
        """Send from a fresh DEALER; read what comes back (every reply the
        protocol promises must come)."""
        sock = self.socket(zmq.DEALER)
        try:
            sock.send_multipart(frames)
            promised = expects_reply(frames)
            wait, got = (REPLY_TIMEOUT_MS if promised else 50), False
            while sock.poll(wait):
                self.note(sock.recv_multipart())
                got, wait = True, 10
            self.alive()
            assert got or not promised, f"no reply to {frames!r:.300}"
        finally:
            sock.close(linger=0)

    def check_after(self, what: str, examples: int, began: float) -> None:
        """The broker still serves a producer, logged no traceback, and its
        memory stayed bounded."""
        self.alive()
        rss = rss_bytes(self.broker.pid)
        print(
            f"\n{what}: {examples} examples in {time.monotonic() - began:.1f} s; broker RSS "
            f"{self.rss_start / 2**20:.1f} MiB at start, {rss / 2**20:.1f} MiB now; "
            f"replies so far {dict(self.replies)}"
        )
        assert rss - self.rss_start < RSS_GROWTH_LIMIT
        assert self.client.ping()
        # A queue of its own: no fuzzed HELLO registered a worker for it.
        job_id = self.client.enqueue("after-fuzz", [1], {"two": 2}, queue="after-fuzz").id
        status = self.client.status(job_id)
        assert status is not None and status.state == "ready"
        assert (status.args, status.kwargs) == ((1,), {"two": 2})
        bugs = [
            line
            for line in self.broker.lines[self.log_mark :]
            if "Traceback" in line or "failed to handle" in line or "internal_error" in line
        ]
        self.log_mark = len(self.broker.lines)
        assert not bugs, "\n".join(bugs)


def expects_reply(frames: list[bytes]) -> bool:
    """Whether the protocol promises an answer (to a new connection, as each
    attack is): to every malformed message, producer request, HELLO, and
    worker report or HEARTBEAT (RECONNECT: the broker does not know it). Not
    to a well-formed BYE, nor to a WAIT (held until its job ends)."""
    try:
        command, _ = protocol.decode(frames)
    except protocol.ProtocolError:
        return True
    return command not in (protocol.BYE, protocol.WAIT)


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    cluster = Cluster()
    try:
        target = Target(cluster, tmp_path_factory.mktemp("fuzz"))
        yield target
        target.context.term()
    finally:
        cluster.close()


FUZZ = settings(
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)


def test_fuzz_frames_and_bodies(target: Target) -> None:
    began, examples = time.monotonic(), 0

    @settings(FUZZ, max_examples=300)
    @given(messages)
    def attack(frames: list[bytes]) -> None:
        nonlocal examples
        examples += 1
        target.attack(frames)

    attack()
    target.check_after("random frames and bodies", examples, began)


@pytest.mark.parametrize("command", COMMANDS, ids=[c.decode() for c in COMMANDS])
def test_fuzz_command_fields(target: Target, command: bytes) -> None:
    began, examples = time.monotonic(), 0

    @settings(FUZZ, max_examples=30)
    @given(schema_attacks(command))
    def attack(body: bytes) -> None:
        nonlocal examples
        examples += 1
        target.attack([b"", protocol.TAG, command, body])

    attack()
    target.check_after(f"{command.decode()} fields", examples, began)


REQUESTS = sorted(protocol.PRODUCER_COMMANDS - {protocol.WAIT})


def test_fuzz_producer_requests_on_req_sockets(target: Target) -> None:
    """As a client library sends them: each gets exactly one reply, so a REQ
    socket is never left stuck."""
    began, examples = time.monotonic(), 0
    requests = st.sampled_from(REQUESTS).flatmap(
        lambda command: st.tuples(st.just(command), schema_attacks(command) | bodies)
    )

    @settings(FUZZ, max_examples=150)
    @given(requests)
    def attack(request: tuple[bytes, bytes]) -> None:
        nonlocal examples
        examples += 1
        command, body = request
        sock = target.socket(zmq.REQ)
        try:
            sock.send_multipart([protocol.TAG, command, body])
            assert sock.poll(REPLY_TIMEOUT_MS), f"no reply to {command!r} {body!r:.300}"
            target.note([b"", *sock.recv_multipart()])
            target.alive()
        finally:
            sock.close(linger=0)

    attack()
    target.check_after("producer requests on REQ sockets", examples, began)


def test_a_message_over_the_size_limit_costs_only_its_connection(target: Target) -> None:
    """Over 64 MiB, libzmq drops the connection before the broker sees the
    message (and before it allocates it): no reply, no crash, and the same
    socket, reconnected, is served."""
    began = time.monotonic()
    sock = target.socket(zmq.DEALER)
    try:
        oversized = b"\0" * (protocol.MAX_MESSAGE_BYTES + 1)
        sock.send_multipart([b"", protocol.TAG, protocol.PING, oversized])
        del oversized
        assert not sock.poll(500)
        target.alive()
        sock.send_multipart(protocol.encode(protocol.PING, {}))  # libzmq reconnected it
        assert sock.poll(REPLY_TIMEOUT_MS)
        assert protocol.decode(sock.recv_multipart())[0] == protocol.OK
    finally:
        sock.close(linger=0)
    target.check_after("a message over 64 MiB", 1, began)


def test_hostile_msgpack_raises_protocol_error_only() -> None:
    """The decoder alone: hostile msgpack raises ProtocolError, nothing else,
    and never allocates what the data only claims."""
    for data in [_nested(100_000, "array"), _nested(100_000, "map"), b"\xdd\xff\xff\xff\xff"]:
        with pytest.raises(protocol.ProtocolError):
            protocol.unpack(data)
    with pytest.raises(protocol.ProtocolError):
        protocol.unpack(msgpack.packb(msgpack.ExtType(1, b"x")))


def test_a_submission_of_three_fields_takes_defaults_and_options_are_still_checked() -> None:
    """The decoder's quick path for the common submit (id, name, args and
    nothing else) must not let a submit with options skip their checks."""
    args = protocol.pack([[1], {}])
    plain = protocol.JobSubmission.from_wire({"id": "a", "name": "n", "args": args})
    assert plain == protocol.JobSubmission("a", "n", args)
    with_options = {"id": "a", "name": "n", "args": args, "queue": "q", "priority": 7}
    assert protocol.JobSubmission.from_wire(with_options).priority == 7
    bad = [
        ({"priority": 65536}, "priority"),
        ({"queue": ""}, "queue"),
        ({"delay": -1}, "delay"),
        ({"backoff": "fast"}, "backoff"),
    ]
    for option, field in bad:
        with pytest.raises(protocol.ProtocolError, match=field):
            protocol.JobSubmission.from_wire({"id": "a", "name": "n", "args": args, **option})
    for missing in ("id", "name", "args"):
        item = {"id": "a", "name": "n", "args": args, "extra": 1}
        del item[missing]
        with pytest.raises(protocol.ProtocolError, match=missing):
            protocol.JobSubmission.from_wire(item)


cron_fields = st.sampled_from(["*", "0", "1", "59", "*/7", "1-5", "30", "31", "2", "1970", "2027"])
cron_expressions = st.one_of(
    st.sampled_from(HOSTILE_CRON),
    st.lists(cron_fields, min_size=5, max_size=7).map(" ".join),
    st.text(max_size=40),
)
#: Around the ends of years, where schedules with a year field run out.
YEAR_ENDS = [
    datetime.datetime(year, 12, 31, 23, 58, tzinfo=datetime.timezone.utc).timestamp()
    for year in (1970, 2026, 2027)
]


@settings(FUZZ, max_examples=300)
@given(
    cron=cron_expressions,
    start=st.builds(float.__add__, st.sampled_from(YEAR_ENDS), st.floats(-86400, 86400)),
    steps=st.lists(st.floats(0, 600), min_size=1, max_size=4),
)
def test_schedules_refuse_or_fire_but_never_raise(
    cron: str, start: float, steps: list[float]
) -> None:
    """A worker's schedule is refused (invalid) or adopted; then the broker's
    timer asks for due fires as time passes: it never raises (an exception
    there would stop the broker), even once the schedule has no fire left."""
    table = CronTable()
    try:
        table.add([protocol.Schedule(cron, "tick", ARGS, None)], start)
    except protocol.ProtocolError:
        return
    now = start
    for step in steps:
        now += step
        for fire in table.due(now):
            assert fire.run_at is not None and fire.run_at <= now
        upcoming = table.next_fire()
        assert upcoming is None or upcoming > now


@pytest.mark.parametrize(
    ("cron", "gap", "expected_latest"),
    [
        ("* * * * * *", 7 * 86400.0 + 0.5, 7 * 86400.0),  # every second, a week asleep
        ("*/5 * * * *", 3 * 3600.0 + 60.0, 3 * 3600.0),  # every 5 minutes
        ("0 0 1 1 *", 400 * 86400.0, 365 * 86400.0),  # yearly: the latest New Year
    ],
)
def test_a_broker_that_slept_through_many_fires_runs_the_latest_once(
    cron: str, gap: float, expected_latest: float
) -> None:
    """One fire, the latest, whatever the gap; found without stepping through
    every missed fire (a week of a per-second schedule took seconds)."""
    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc).timestamp()
    table = CronTable()
    table.add([protocol.Schedule(cron, "tick", ARGS, None)], start - 0.5)
    (fire,) = table.due(start + gap)
    assert fire.run_at == start + expected_latest
    assert fire.id.endswith(f"-{int(fire.run_at)}")
    upcoming = table.next_fire()
    assert upcoming is not None and upcoming > start + gap
    assert table.due(start + gap) == []  # once
