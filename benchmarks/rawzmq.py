"""What the sockets alone can do on this machine, for the ratio targets:
REQ/REP round trips per second (one producer, one echoing process) and
DEALER->ROUTER messages per second (one sender process, one receiver), with
frames shaped like jobsd's (a tag, a command and a small msgpack body).

The peer side runs in its own process: ``python -m benchmarks.rawzmq rep`` or
``python -m benchmarks.rawzmq dealer ENDPOINT COUNT``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import msgpack
import zmq

from benchmarks.procs import Proc, python
from benchmarks.report import percentiles

TAG = b"JOBSD1"
REQUEST = [
    TAG,
    b"SUBMIT",
    msgpack.packb(
        {"jobs": [{"id": "0" * 32, "name": "noop", "args": msgpack.packb([["tag", 1], {}])}]}
    ),
]
REPLY = [TAG, b"OK", msgpack.packb({"ids": ["0" * 32], "created": [True]})]
REPORT = [b"", TAG, b"ACK", msgpack.packb({"acks": [["0" * 32, 1, None]]})]
SINGLE = [b"".join(REPORT)]


def _rep_server() -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.REP)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind("tcp://127.0.0.1:*")
    print("bound", sock.getsockopt_string(zmq.LAST_ENDPOINT), flush=True)
    while True:
        frames = sock.recv_multipart()
        if frames[-1] == b"END":
            sock.send_multipart([b"bye"])
            return
        sock.send_multipart(REPLY)


def _dealer(endpoint: str, count: int, frames: int) -> None:
    message = REPORT if frames == len(REPORT) else SINGLE
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 5000)
    sock.connect(endpoint)
    for _ in range(count):
        sock.send_multipart(message)
    sock.send_multipart([b"", b"END"])
    sock.close()
    ctx.term()


def req_rep(workdir: Path, count: int, gap: float = 0.0) -> dict[str, float]:
    """Round trips per second and their p50/p99 (ms) through one REQ socket.

    With ``gap``, both sides idle that long before each round trip, as in the
    latency workload: the floor under any enqueue-to-start latency over
    ZeroMQ here, since that path is at least one client->broker and one
    broker->worker hop, each from idle (rate: round trips per busy second)."""
    server = Proc("raw-rep", python("-m", "benchmarks.rawzmq", "rep"), workdir)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        endpoint = server.wait_for(r"bound (\S+)", 15.0).group(1)
        sock.connect(endpoint)
        for _ in range(200):  # connect and warm up
            _round_trip(sock)
        times = []
        start = time.perf_counter()
        for _ in range(count):
            if gap:
                time.sleep(gap)
            t0 = time.perf_counter()
            _round_trip(sock)
            times.append(time.perf_counter() - t0)
        elapsed = sum(times) if gap else time.perf_counter() - start
        sock.send_multipart([b"END"])
        sock.poll(1000)
        return {"jobs_per_s": count / elapsed, **percentiles(times), "n": count, "seconds": elapsed}
    finally:
        sock.close(0)
        ctx.term()
        server.stop(grace=1.0)


def _round_trip(sock: zmq.Socket) -> None:  # type: ignore[type-arg]
    sock.send_multipart(REQUEST)
    if not sock.poll(5000):
        raise TimeoutError("raw REP server did not answer within 5 s")
    sock.recv_multipart()


def dealer_router(workdir: Path, count: int, frames: int = len(REPORT)) -> dict[str, float]:
    """Messages per second from one DEALER process into one ROUTER: jobsd's
    4-frame messages, or (``frames=1``) the same bytes in one frame."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind("tcp://127.0.0.1:*")
    endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
    sender = Proc(
        "raw-dealer",
        python("-m", "benchmarks.rawzmq", "dealer", endpoint, str(count), str(frames)),
        workdir,
    )
    try:
        if not sock.poll(15000):
            raise TimeoutError("raw DEALER sent nothing within 15 s")
        start = time.perf_counter()
        got = 0
        while True:
            if not sock.poll(5000):
                raise TimeoutError(f"raw DEALER stalled after {got} messages")
            frames = sock.recv_multipart()
            if frames[-1] == b"END":
                break
            got += 1
        elapsed = time.perf_counter() - start
        if got != count:
            raise AssertionError(f"ROUTER got {got} of {count} messages")
        return {"jobs_per_s": count / elapsed, "n": count, "seconds": elapsed}
    finally:
        sock.close(0)
        ctx.term()
        sender.stop(grace=1.0)


if __name__ == "__main__":
    if sys.argv[1] == "rep":
        _rep_server()
    else:
        _dealer(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
