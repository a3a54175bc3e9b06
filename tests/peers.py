"""Peers a test plays itself on raw sockets: a worker that says exactly what
the test wants (or forges what a real one never would)."""

from __future__ import annotations

import time
from typing import Any

import zmq

from jobsd.keys import ClientKeys
from jobsd.protocol.framing import HELLO, WELCOME, decode, encode
from jobsd.protocol.worker import Hello


class RawPeer:
    """One DEALER connection to a broker, speaking the protocol by hand."""

    def __init__(
        self,
        endpoint: str,
        context: zmq.Context[Any] | None = None,
        server_key: str | None = None,
        key: str | None = None,
    ) -> None:
        self._own_context = context is None
        self.context = context or zmq.Context()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        if (keys := ClientKeys.load(server_key, key)) is not None:
            keys.apply(self.socket)
        self.socket.connect(endpoint)

    def send(self, command: bytes, body: Any) -> None:
        self.socket.send_multipart(encode(command, body))

    def recv(self, expected: bytes, timeout: float = 10.0) -> Any:
        """The body of the next ``expected`` message; others (heartbeats) are skipped."""
        deadline = time.monotonic() + timeout
        while self.socket.poll(max(0, int((deadline - time.monotonic()) * 1000))):
            command, body = decode(self.socket.recv_multipart())
            if command == expected:
                return body
        raise AssertionError(f"no {expected!r} from the broker within {timeout} s")

    def silent_for(self, seconds: float) -> bool:
        """Whether nothing at all arrives for ``seconds`` (what a peer the
        broker does not let in sees)."""
        return not self.socket.poll(int(seconds * 1000))

    def hello(
        self,
        worker: str,
        capacity: int = 1,
        queues: tuple[str, ...] = ("default",),
        running: tuple[tuple[str, str], ...] = (),
    ) -> None:
        hello = Hello(worker, list(queues), capacity, running=list(running))
        self.send(HELLO, hello.to_wire())
        self.recv(WELCOME)

    def close(self) -> None:
        self.socket.close(linger=0)
        if self._own_context:
            self.context.term()
