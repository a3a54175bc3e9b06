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
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

from jobsd.protocol.framing import (
    BYE,
    ERROR,
    OK,
    PING,
    PRODUCER_COMMANDS,
    TAG,
    WAIT,
    ProtocolError,
    decode,
    encode,
)
from jobsd.vocabulary import MAX_MESSAGE_BYTES
from tests.conftest import Cluster
from tests.fuzzing import COMMANDS, FUZZ, bodies, messages, schema_attacks

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
        command, body = decode(frames)
        if command == ERROR:
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
        command, _ = decode(frames)
    except ProtocolError:
        return True
    return command not in (BYE, WAIT)


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    cluster = Cluster()
    try:
        target = Target(cluster, tmp_path_factory.mktemp("fuzz"))
        yield target
        target.context.term()
    finally:
        cluster.close()


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
        target.attack([b"", TAG, command, body])

    attack()
    target.check_after(f"{command.decode()} fields", examples, began)


REQUESTS = sorted(PRODUCER_COMMANDS - {WAIT})


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
            sock.send_multipart([TAG, command, body])
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
        oversized = b"\0" * (MAX_MESSAGE_BYTES + 1)
        sock.send_multipart([b"", TAG, PING, oversized])
        del oversized
        assert not sock.poll(500)
        target.alive()
        sock.send_multipart(encode(PING, {}))  # libzmq reconnected it
        assert sock.poll(REPLY_TIMEOUT_MS)
        assert decode(sock.recv_multipart())[0] == OK
    finally:
        sock.close(linger=0)
    target.check_after("a message over 64 MiB", 1, began)
