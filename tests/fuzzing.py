"""What the fuzz tests throw at the broker: a valid body for every command,
and hypothesis strategies that break it (random frames and bodies, hostile
msgpack, one field of a valid body changed, hostile cron expressions).

Every strategy runs under ``FUZZ``: derandomized, so each run draws the same
examples and a failure is reproducible.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from jobsd.protocol.framing import (
    ACK,
    BYE,
    CANCEL,
    DELETE,
    FAIL,
    GET,
    HEARTBEAT,
    HELLO,
    LIST,
    PAUSE,
    PING,
    PRODUCER_COMMANDS,
    PURGE,
    RELEASE,
    RESUME,
    RETRY,
    STATS,
    SUBMIT,
    TAG,
    WAIT,
    WORKER_COMMANDS,
    pack,
)

FUZZ = settings(
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)

COMMANDS = sorted(PRODUCER_COMMANDS | WORKER_COMMANDS)
ARGS = pack([[], {}])

#: A valid body for every command, the starting point of the schema mutations.
VALID: dict[bytes, Any] = {
    SUBMIT: {
        "jobs": [
            {
                "id": "fuzz-1",
                "name": "fuzz",
                "args": ARGS,
                "queue": "fuzz",
                "priority": 7,
                "delay": 3600.0,
                "max_attempts": 1,
                "backoff": {"kind": "fixed", "delay": 1.0, "max": 9.0, "jitter": True},
                "timeout": 1.0,
                "unique_key": "fuzz-key",
            }
        ]
    },
    GET: {"ids": ["fuzz-1"], "errors": True},
    WAIT: {"id": "fuzz-1", "timeout": 0.0},
    CANCEL: {"ids": ["fuzz-cancel"]},
    RETRY: {"ids": ["fuzz-1"], "all_dead": True, "queue": "fuzz"},
    DELETE: {"ids": ["fuzz-delete"]},
    LIST: {"queue": "fuzz", "state": "scheduled", "limit": 5, "cursor": "s1000000"},
    STATS: {},
    PAUSE: {"queue": "fuzz-paused"},
    RESUME: {"queue": "fuzz-paused"},
    PURGE: {"states": ["dead"], "older_than": 1e9},
    PING: {},
    HELLO: {
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
        "running": [["fuzz-1", "fuzz-lease"]],
        "schedules": [["0 0 1 1 *", "fuzz", ARGS, "fuzz"]],
    },
    ACK: {"acks": [["fuzz-1", "l1", None], ["fuzz-2", "l2", b"\xc0", 4e9]], "seq": 1},
    FAIL: {"fails": [["fuzz-1", "l1", "boom", "error", None]], "seq": 2},
    RELEASE: {"jobs": [["fuzz-1", "l1"]], "seq": 3},
    HEARTBEAT: {},
    BYE: {},
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
    values.map(pack),
    st.builds(lambda v, cut: pack(v)[:cut], values, st.integers(0, 64)),
    hostile_msgpack,
    # big: megabytes of data, well-formed or not (the socket limit is 64 MiB)
    st.builds(lambda mb, byte: bytes([byte]) * (mb << 20), st.integers(1, 4), st.integers(0, 255)),
    st.builds(
        lambda mb: pack({"jobs": [{"id": "big", "name": "big", "args": bytes(mb << 20)}]}),
        st.integers(1, 4),
    ),
)
frame = st.one_of(
    st.binary(max_size=64),
    st.sampled_from([b"", TAG, b"JOBSD0", b"JOBSD2", b"jobsd1", *COMMANDS]),
    values.map(pack),
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
    attacks = mutated(VALID[command]).map(pack)
    if command == HELLO:
        cron = st.sampled_from(HOSTILE_CRON) | st.text(max_size=30)
        attacks |= cron.map(
            lambda c: pack({**VALID[command], "schedules": [[c, "fuzz", ARGS, "fuzz"]]})
        )
    return attacks


messages = st.one_of(
    # anything, any number of frames
    st.lists(frame, min_size=1, max_size=7),
    # the right frames around a random or hostile body
    st.builds(
        lambda command, body: [b"", TAG, command, body],
        st.sampled_from(COMMANDS) | st.binary(max_size=12),
        bodies,
    ),
)
