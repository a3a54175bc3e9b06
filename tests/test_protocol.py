"""The protocol's decoders alone: what they accept, what they refuse, and that
they refuse with ``ProtocolError`` only (the broker answers it with ERROR)."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from jobsd import JobOptions, JobRequest
from jobsd.protocol import framing
from jobsd.protocol.backoff import Backoff
from jobsd.protocol.framing import ProtocolError, pack, unpack
from jobsd.protocol.options import OPTION_NAMES
from jobsd.protocol.producer import (
    JobSubmission,
    ListRequest,
    WaitRequest,
    check_empty,
    make_cursor,
    pack_args,
    read_cursor,
)
from jobsd.protocol.roles import permits, role_of
from jobsd.protocol.worker import (
    Ack,
    Dispatch,
    Hello,
    decode_acks,
    decode_fails,
    decode_jobs,
    decode_releases,
)
from tests.fuzzing import _nested

ARGS = pack_args([1], {})


def test_hostile_msgpack_raises_protocol_error_only() -> None:
    """Hostile msgpack raises ProtocolError, nothing else, and never
    allocates what the data only claims."""
    for data in [_nested(100_000, "array"), _nested(100_000, "map"), b"\xdd\xff\xff\xff\xff"]:
        with pytest.raises(ProtocolError):
            unpack(data)
    with pytest.raises(ProtocolError):
        unpack(msgpack.packb(msgpack.ExtType(1, b"x")))


def test_a_submission_of_three_fields_takes_defaults_and_options_are_still_checked() -> None:
    """The decoder's quick path for the common submit (id, name, args and
    nothing else) must not let a submit with options skip their checks."""
    plain = JobSubmission.from_wire({"id": "a", "name": "n", "args": ARGS})
    assert plain == JobSubmission("a", "n", ARGS)
    with_options = {"id": "a", "name": "n", "args": ARGS, "queue": "q", "priority": 7}
    options = JobSubmission.from_wire(with_options).options
    assert options == JobOptions(queue="q", priority=7)
    bad = [
        ({"priority": 65536}, "priority"),
        ({"queue": ""}, "queue"),
        ({"delay": -1}, "delay"),
        ({"backoff": "fast"}, "backoff"),
        ({"run_at": 1e300}, "run_at"),
        ({"run_at": float("nan")}, "run_at"),
        ({"delay": 5.0, "run_at": 1e9}, "delay or run_at"),
        ({"unique_key": "k" * 256}, "unique_key"),
        ({"max_attempts": 1_000_001}, "max_attempts"),
    ]
    for option, field in bad:
        with pytest.raises(ProtocolError, match=field):
            JobSubmission.from_wire({"id": "a", "name": "n", "args": ARGS, **option})
    for missing in ("id", "name", "args"):
        item = {"id": "a", "name": "n", "args": ARGS, "extra": 1}
        del item[missing]
        with pytest.raises(ProtocolError, match=missing):
            JobSubmission.from_wire(item)


@pytest.mark.parametrize("args", [b"", b"\xc0", pack([1, 2]), pack([[], []]), pack({"a": 1})])
def test_args_that_are_not_the_envelope_are_refused_at_submit(args: bytes) -> None:
    with pytest.raises(ProtocolError, match="args"):
        JobSubmission.from_wire({"id": "a", "name": "n", "args": args})


def test_one_options_check_serves_every_entry_point() -> None:
    """The wire, the client's requests and a job type's defaults all build
    the same JobOptions, so each refuses the same values with the same words."""
    for make in (
        lambda: JobOptions(priority=-1),
        lambda: JobRequest("n", priority=-1),
        lambda: JobSubmission.from_wire({"id": "a", "name": "n", "args": ARGS, "priority": -1}),
    ):
        with pytest.raises(ValueError, match="priority"):
            make()
    with pytest.raises(TypeError):
        JobRequest("n", colour="red")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="backoff"):
        Backoff.fixed(-1.0)
    assert OPTION_NAMES == tuple(JobOptions.__dataclass_fields__)


def test_options_merge_over_a_job_types_defaults() -> None:
    kind = JobOptions(queue="emails", max_attempts=5, timeout=30.0)
    merged = JobOptions(priority=1, timeout=0).merged_over(kind)
    assert merged == JobOptions(queue="emails", priority=1, max_attempts=5, timeout=0)
    assert JobOptions(delay=9, unique_key="k", queue="q").type_defaults() == JobOptions(queue="q")


def test_a_fail_whose_kind_is_not_a_string_is_a_bad_request() -> None:
    """An unhashable kind once answered internal_error."""
    for kind in (["error"], {"a": 1}, 7, None):
        with pytest.raises(ProtocolError, match="kind"):
            decode_fails({"fails": [["j", "lease", "boom", kind, None]]})


def test_a_hello_round_trips_through_its_own_decoder() -> None:
    """Its defaults (an empty host) once failed its own decoder."""
    hello = Hello("w1", ["q"], 4)
    assert Hello.from_wire(hello.to_wire()) == hello
    typed = Hello(
        "w1", ["q"], 4, job_types={"send": JobOptions(queue="q", backoff=Backoff.fixed(2.0))}
    )
    assert Hello.from_wire(typed.to_wire()) == typed


def test_a_jobs_timeout_is_checked_and_zero_means_no_limit() -> None:
    def job(timeout: Any) -> list[Any]:
        return Dispatch("j", "n", "q", 1, ARGS, timeout, "lease").to_wire()

    assert decode_jobs({"jobs": [job(2)]})[0].timeout == 2.0
    assert decode_jobs({"jobs": [job(0)]})[0].timeout is None
    assert decode_jobs({"jobs": [job(None)]})[0].timeout is None
    for bad in (-1, "1", float("inf"), float("nan")):
        with pytest.raises(ProtocolError, match="timeout"):
            decode_jobs({"jobs": [job(bad)]})


def test_reports_name_a_lease() -> None:
    ack = Ack("j", "lease-token", pack(3))
    assert decode_acks({"acks": [ack.to_wire()]}) == [ack]
    for lease in ("", 1, None, "x" * 65):
        with pytest.raises(ProtocolError, match="lease"):
            decode_acks({"acks": [["j", lease, None]]})
        with pytest.raises(ProtocolError):
            decode_releases({"jobs": [["j", lease]]})


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"id": "j", "timeout": 24 * 3600.0 + 1}, "timeout"),
        ({"id": "j", "timeout": -1}, "timeout"),
        ({"id": "j"}, "timeout"),
    ],
)
def test_wait_refuses_what_it_cannot_hold(body: dict[str, Any], error: str) -> None:
    with pytest.raises(ProtocolError, match=error):
        WaitRequest.from_wire(body)


def test_list_pages_with_the_cursor_its_reply_gave() -> None:
    assert read_cursor(make_cursor(42)) == 42
    assert ListRequest.from_wire({"cursor": "s42"}).cursor == "s42"
    for cursor in ("42", "s", "s-1", "sx"):
        with pytest.raises(ProtocolError, match="cursor"):
            ListRequest.from_wire({"cursor": cursor})


@pytest.mark.parametrize("body", [[], "", 0, None, b"x"])
def test_ping_and_stats_take_a_map(body: Any) -> None:
    with pytest.raises(ProtocolError, match="map"):
        check_empty(body, "PING")


def test_a_signed_sender_without_an_identity_may_send_nothing() -> None:
    """Under keys a message whose sender the ZAP handler named no one comes
    with the User-Id "": no role, so no command, never the keyless None."""
    commands = framing.PRODUCER_COMMANDS | framing.WORKER_COMMANDS
    assert not any(permits(role_of(""), command) for command in commands)
    assert all(permits(role_of(None), command) for command in commands)
