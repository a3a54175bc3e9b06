"""How every jobsd message looks on the wire: frames, commands, msgpack bodies.

Every message is a ZeroMQ multipart message ``[b"", TAG, COMMAND, BODY]``: an
empty delimiter (REQ sockets add it themselves; DEALER workers send it), the
protocol tag, the command name and one msgpack body. The broker's ROUTER sees
the peer identity in front. ``PROTOCOL.md`` is the specification for writers of
clients in other languages; this package implements it.

Decoding never trusts its input: anything malformed raises ``ProtocolError``
with a stable code, and the broker answers with ERROR.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import msgpack
import zmq

T = TypeVar("T")

TAG = b"JOBSD1"

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
# broker -> worker (HEARTBEAT and CANCEL go this way too)
WELCOME = b"WELCOME"
JOB = b"JOB"
CONFIRM = b"CONFIRM"
RECONNECT = b"RECONNECT"
# replies
OK = b"OK"
ERROR = b"ERROR"

PRODUCER_COMMANDS = frozenset(
    {SUBMIT, GET, WAIT, CANCEL, RETRY, DELETE, LIST, STATS, PAUSE, RESUME, PURGE, PING}
)
WORKER_COMMANDS = frozenset({HELLO, ACK, FAIL, RELEASE, HEARTBEAT, BYE})

# The stable codes of ERROR replies (PROTOCOL.md, "Replies").
BAD_REQUEST = "bad_request"
UNKNOWN_COMMAND = "unknown_command"
UNSUPPORTED_VERSION = "unsupported_version"
NOT_FOUND = "not_found"
STORAGE_ERROR = "storage_error"
INTERNAL_ERROR = "internal_error"
FORBIDDEN = "forbidden"
TOO_LARGE = "too_large"
LIMIT_REACHED = "limit_reached"


class ProtocolError(ValueError):
    """A message, or a value meant for one, that does not follow the protocol.
    ``code`` is stable and goes to the peer in the ERROR reply. A ValueError,
    so that a bad option given to the client API is the error Python code
    expects."""

    def __init__(self, message: str, code: str = BAD_REQUEST) -> None:
        super().__init__(message)
        self.code = code


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"code": code, "message": message}


def pack(body: Any) -> bytes:
    data: bytes = msgpack.packb(body, use_bin_type=True)
    return data


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


def decode(frames: Sequence[bytes]) -> tuple[bytes, Any]:
    """``(command, body)`` of a message as received on a REQ or DEALER socket,
    or on the broker's ROUTER with the identity already taken off."""
    if len(frames) != 4 or frames[0] != b"":
        raise ProtocolError(f"expected 4 frames [empty, tag, command, body], got {len(frames)}")
    _, tag, command, body = frames
    if tag != TAG:
        raise ProtocolError(
            f"unsupported protocol tag {bytes(tag)[:16]!r}, this broker speaks {TAG!r}",
            code=UNSUPPORTED_VERSION,
        )
    return bytes(command), unpack(body)


_MORE = int(zmq.SNDMORE)
_NOBLOCK = int(zmq.NOBLOCK)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)


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
    return _receive(sock, flags)[0]


def recv_signed(sock: zmq.Socket[Any], flags: int = 0) -> tuple[list[bytes], str | None]:
    """:func:`recv` on a socket with authentication (CURVE, checked by a ZAP
    handler), and the User-Id the handler gave its sender: never None, which
    means a broker without keys and so no roles at all; a sender the handler
    named no one (a key removed between its two questions) is "", no role."""
    frames, last = _receive(sock, flags)
    user = last.get("User-Id")
    return frames, user if isinstance(user, str) else ""


def recv_unsigned(sock: zmq.Socket[Any], flags: int = 0) -> tuple[list[bytes], str | None]:
    """:func:`recv_signed` for a socket without authentication: no User-Id."""
    return _receive(sock, flags)[0], None


def _receive(sock: zmq.Socket[Any], flags: int) -> tuple[list[bytes], zmq.Frame]:
    frame = sock.recv(flags, copy=False)
    frames = [frame.bytes]
    while frame.more:
        frame = sock.recv(flags, copy=False)
        frames.append(frame.bytes)
    return frames, frame


def recv_waiting(
    sock: zmq.Socket[Any], limit: int, receive: Callable[[zmq.Socket[Any], int], T]
) -> Iterator[T]:
    """The messages already waiting on ``sock``, at most ``limit``, each as
    ``receive`` gives it, without blocking. Whether another waits is asked of
    the socket (``EVENTS``), not learnt from a failed receive: pyzmq raises
    ``zmq.Again`` for that, and building the exception cost more than
    receiving a one-message burst."""
    for _ in range(limit):
        try:
            yield receive(sock, _NOBLOCK)
        except zmq.Again:
            return
        if not int(sock.get(_EVENTS)) & _POLLIN:
            return
