"""Stopping for real: SIGTERM and a second SIGTERM on busy workers, jobs that
reach a worker after its BYE, and a stop while the worker waits for a broker
that is gone. Steered by gate files, as in ``test_faults``."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import zmq

from jobsd import JobRequest
from jobsd.protocol.framing import (
    ACK,
    BYE,
    CONFIRM,
    HEARTBEAT,
    HELLO,
    JOB,
    RELEASE,
    WELCOME,
    decode,
    encode,
    pack,
)
from jobsd.protocol.worker import Dispatch
from tests.conftest import Cluster
from tests.test_faults import APP, HB, open_gate, started


def test_sigterm_on_a_busy_worker_lets_running_jobs_finish_and_exits_0(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A worker with two slots runs two gated jobs, two more wait in the
    queue. After SIGTERM it takes no more work (not even into the slot its
    first finished job frees), finishes both, and exits 0 within its grace
    period; the waiting jobs run on another worker."""
    grace = 10.0
    broker, endpoint = cluster.broker("memory://", "--heartbeat", str(HB))
    busy = cluster.worker(endpoint, APP, "-c", "2", "--heartbeat", str(HB), "--grace", str(grace))
    client = cluster.client(endpoint)
    running = [client.submit("hold", str(tmp_path)) for _ in range(2)]
    for job_id in running:
        started(busy, job_id, 1)
    waiting = [s.id for s in client.submit_many([JobRequest("hold", (str(tmp_path),))] * 2)]

    stopped_at = time.monotonic()
    busy.signal(signal.SIGTERM)
    busy.wait_for(r"stopping: 2 job\(s\) running")
    broker.wait_for(rf"worker \S+:{busy.pid}:\w+ is stopping")
    open_gate(tmp_path, running[0], 1)
    assert client.result(running[0], timeout=10) == {"pid": busy.pid, "attempt": 1}

    other = cluster.worker(endpoint, APP, "-c", "2", "--heartbeat", str(HB))
    for job_id in waiting:
        started(other, job_id, 1)
        open_gate(tmp_path, job_id, 1)
    last_done_at = time.monotonic()
    open_gate(tmp_path, running[1], 1)
    assert busy.proc.wait(grace) == 0
    took, tail = time.monotonic() - stopped_at, time.monotonic() - last_done_at
    print(
        f"\nbusy worker exited 0 {took:.2f} s after SIGTERM (grace {grace:.0f} s), "
        f"{tail:.2f} s after its last job could end"
    )
    assert client.result(running[1], timeout=10) == {"pid": busy.pid, "attempt": 1}
    for job_id in waiting:
        assert client.result(job_id, timeout=10) == {"pid": other.pid, "attempt": 1}
    assert not any(f"job-started {job_id}" in busy.output() for job_id in waiting)


class ScriptedBroker:
    """The test plays the broker on a raw ROUTER socket, to put a worker in a
    state a real broker reaches only by a race: a JOB arriving after the
    worker said BYE. HEARTBEATs are answered on the way."""

    def __init__(self) -> None:
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind("tcp://127.0.0.1:*")
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.peer = b""

    def recv(self, expected: bytes, timeout: float = 10.0) -> Any:
        deadline = time.monotonic() + timeout
        while self.socket.poll(max(0, int((deadline - time.monotonic()) * 1000))):
            peer, *frames = self.socket.recv_multipart()
            command, body = decode(frames)
            if command == HEARTBEAT:
                self.send(HEARTBEAT, {}, peer)
                continue
            assert command == expected, (command, body)
            self.peer = peer
            return body
        raise AssertionError(f"no {expected!r} from the worker within {timeout} s")

    def send(self, command: bytes, body: Any, peer: bytes | None = None) -> None:
        self.socket.send_multipart([peer or self.peer, *encode(command, body)])

    def close(self) -> None:
        self.socket.close(linger=0)
        self.context.term()


def test_a_stopping_worker_hands_back_jobs_it_has_not_started(
    cluster: Cluster, tmp_path: Path
) -> None:
    """After SIGTERM (and its BYE), a JOB still reaches the worker (the broker
    sent it before it had the BYE): the worker does not start it but hands it
    back with RELEASE, finishes its running job, and exits 0 once the broker
    confirmed both reports."""
    broker = ScriptedBroker()
    try:
        busy = cluster.worker(
            broker.endpoint, APP, "-c", "4", "--prefetch", "0", "--heartbeat", "1", wait=False
        )
        hello = broker.recv(HELLO)
        assert hello["capacity"] == 4 and hello["running"] == []
        broker.send(WELCOME, {"heartbeat": 1.0, "liveness": 3})
        args = pack([[str(tmp_path)], {}])
        running = Dispatch("running-job", "hold", "default", 1, args, None, "lease-1")
        late = Dispatch("late-job", "hold", "default", 3, args, None, "lease-2")
        broker.send(JOB, {"jobs": [running.to_wire()]})
        started(busy, running.id, 1)

        busy.signal(signal.SIGTERM)
        broker.recv(BYE)
        broker.send(JOB, {"jobs": [late.to_wire()]})
        release = broker.recv(RELEASE)
        assert release["jobs"] == [[late.id, late.lease]]
        broker.send(CONFIRM, {"seq": release["seq"]})
        busy.wait_for(r"handing back 1 job\(s\) not started")

        open_gate(tmp_path, running.id, 1)
        ack = broker.recv(ACK)
        assert [item[:2] for item in ack["acks"]] == [[running.id, running.lease]]
        broker.send(CONFIRM, {"seq": ack["seq"]})
        assert busy.proc.wait(10) == 0
        assert f"job-started {late.id}" not in busy.output()
    finally:
        broker.close()


def test_a_second_sigterm_stops_a_worker_at_once_and_hands_its_jobs_back(
    cluster: Cluster, tmp_path: Path
) -> None:
    broker, endpoint = cluster.broker("memory://", "--heartbeat", str(HB))
    busy = cluster.worker(endpoint, APP, "-c", "2", "--grace", "60")
    client = cluster.client(endpoint)
    job_id = client.submit("hold", str(tmp_path))
    started(busy, job_id, 1)
    busy.signal(signal.SIGTERM)
    busy.wait_for(r"stopping: 1 job\(s\) running")
    second_at = time.monotonic()
    busy.signal(signal.SIGTERM)
    assert busy.proc.wait(5) == 0
    took = time.monotonic() - second_at
    print(f"\nworker exited {took:.2f} s after the second SIGTERM (default heartbeat 1 s)")
    assert took < 0.5
    busy.wait_for(r"handing back 1 unfinished job")

    other = cluster.worker(endpoint, APP, "-c", "1", "--heartbeat", str(HB))
    started(other, job_id, 1)  # handed back: the interrupted attempt does not count
    open_gate(tmp_path, job_id, 1)
    assert client.result(job_id, timeout=10) == {"pid": other.pid, "attempt": 1}


def test_a_worker_backing_off_from_a_dead_broker_stops_at_once(cluster: Cluster) -> None:
    """With its broker gone, a worker waits longer and longer between tries to
    reconnect; a stop signal ends that wait at once, not after it."""
    broker, endpoint = cluster.broker("memory://", "--heartbeat", "0.1")
    idle = cluster.worker(endpoint, APP, "--heartbeat", "0.1")
    broker.kill()
    # The fourth try waits 0.8 s (0.1 s doubling) before reconnecting.
    idle.wait_for(r"broker silent for .* reconnecting", count=4, timeout=10)
    signalled_at = time.monotonic()
    idle.signal(signal.SIGTERM)
    assert idle.proc.wait(5) == 0
    took = time.monotonic() - signalled_at
    print(f"\nworker in reconnect back-off exited {took:.2f} s after SIGTERM (back-off 0.8 s)")
    assert took < 0.5
