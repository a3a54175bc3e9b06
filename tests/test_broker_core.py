"""The broker core in-process: a real ``Broker`` loop on an inproc ROUTER in a
thread, a clock the test turns, and workers the test plays on raw sockets.
What takes real processes seconds of heartbeats here takes a clock step."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import zmq

from jobsd.broker import Broker, BrokerConfig
from jobsd.protocol.framing import ACK, CONFIRM, HEARTBEAT, JOB, OK, PING, RECONNECT, SUBMIT, pack
from jobsd.protocol.producer import pack_args
from jobsd.protocol.worker import Ack, Dispatch
from jobsd.storage import Grant, NewJob, Storage
from jobsd.storage.memory import MemoryStorage
from tests.peers import RawPeer

START = 1_700_000_000.0
ARGS = pack_args([], {})
_names = itertools.count()


class Core:
    """A broker loop the test drives: ``advance`` moves its clock and waits
    until the loop has run its chores at the new time."""

    def __init__(self, storage: Storage, **settings: Any) -> None:
        self.now = START
        self.storage = storage
        self.context: zmq.Context[Any] = zmq.Context()
        config = BrokerConfig(name="core", **settings)
        endpoint = f"inproc://core-{next(_names)}"
        self.broker = Broker(
            storage, endpoint, config, clock=lambda: self.now, context=self.context
        )
        self.broker.bind()
        self.thread = threading.Thread(target=self.broker.run, daemon=True)
        self.thread.start()
        self.peers: list[RawPeer] = []
        self.producer = self.peer()

    def peer(self) -> RawPeer:
        peer = RawPeer(self.broker.endpoint, self.context)
        self.peers.append(peer)
        return peer

    def ping(self) -> None:
        self.producer.send(PING, {})
        self.producer.recv(OK)

    def advance(self, seconds: float, step: float = 0.5) -> None:
        """Move the clock by steps shorter than a heartbeat (a longer one is a
        stalled loop, which forgives every worker), each step ending with the
        chores due by then: two pings, the second answered after the first
        turn's chores ran."""
        target = self.now + seconds
        while self.now < target:
            self.now = min(self.now + step, target)
            self.ping()
            self.ping()

    def submit(self, *ids: str, queue: str = "default") -> None:
        jobs = [{"id": job_id, "name": "n", "args": ARGS, "queue": queue} for job_id in ids]
        self.producer.send(SUBMIT, {"jobs": jobs})
        self.producer.recv(OK)

    def job(self, job_id: str) -> Any:
        return self.storage.get([job_id])[job_id]

    def close(self) -> None:
        self.broker.stop()
        self.producer.send(PING, {})  # wakes the loop, if it waits
        self.thread.join(10)
        assert not self.thread.is_alive(), "the broker loop did not stop"
        for peer in self.peers:
            peer.close()
        self.context.term()


@pytest.fixture
def core() -> Iterator[Core]:
    c = Core(MemoryStorage(), heartbeat=1.0, liveness=3, lease=30.0)
    try:
        yield c
    finally:
        c.close()


def take(worker: RawPeer) -> Dispatch:
    (item,) = worker.recv(JOB)["jobs"]
    return Dispatch.from_wire(item)


def pushed(peer: RawPeer, count: int) -> dict[str, Dispatch]:
    """The first ``count`` jobs the broker pushes to ``peer``, by id."""
    jobs: dict[str, Dispatch] = {}
    while len(jobs) < count:
        for item in peer.recv(JOB)["jobs"]:
            dispatched = Dispatch.from_wire(item)
            jobs[dispatched.id] = dispatched
    return jobs


def test_a_silent_worker_is_lost_and_its_job_ready_again_with_the_attempt_counted(
    core: Core,
) -> None:
    worker = core.peer()
    worker.hello("w1")
    core.submit("a")
    assert take(worker).attempt == 1
    core.advance(2.9)
    assert core.job("a").state == "running"  # within its liveness
    core.advance(0.2)
    a = core.job("a")
    assert (a.state, a.attempts, a.error) == ("ready", 1, "worker lost: no heartbeat")
    worker.send(HEARTBEAT, {})
    worker.recv(RECONNECT)


def test_a_repeated_hello_keeps_the_jobs_of_its_session(core: Core) -> None:
    """A worker answers a RECONNECT that crossed its HELLO with another HELLO:
    its session stays, with the job pushed to it, whose report counts."""
    worker = core.peer()
    worker.hello("w1")
    core.submit("a")
    job = take(worker)
    worker.hello("w1")  # says nothing of the job: its JOB may still be in flight
    core.ping()
    assert core.job("a").state == "running"
    worker.send(ACK, {"acks": [Ack("a", job.lease, None).to_wire()], "seq": 1})
    worker.recv(CONFIRM)
    a = core.job("a")
    assert (a.state, a.attempts) == ("done", 1)


def test_an_unknown_connection_is_told_to_say_hello_once(core: Core) -> None:
    stranger = core.peer()
    for _ in range(3):
        stranger.send(HEARTBEAT, {})
    stranger.recv(RECONNECT)
    stranger.send(PING, {})
    stranger.recv(OK)  # no second RECONNECT came before it
    stranger.hello("w1")
    stranger.send(HEARTBEAT, {})
    core.ping()
    assert len(core.broker.sessions) == 1


def test_a_worker_that_reconnects_takes_its_running_jobs_to_the_new_session(core: Core) -> None:
    """The same worker on a new socket, its HELLO naming the lease: the job
    stays its own; what the old session held besides goes back once the
    broker finds the old connection gone."""
    old = core.peer()
    old.hello("w1", capacity=2)
    core.submit("a", "b")
    jobs = pushed(old, 2)
    old.close()
    core.peers.remove(old)
    new = core.peer()
    new.hello("w1", capacity=1, running=(("a", jobs["a"].lease),))
    for _ in range(12):  # until the broker finds the old connection gone (a failed
        # heartbeat to it, within 1 s) and the worker has not taken b back (3 s)
        if core.job("b").state == "ready":
            break
        new.send(HEARTBEAT, {})
        core.advance(0.5)
    a, b = core.job("a"), core.job("b")
    assert (a.state, a.attempts, a.lease) == ("running", 1, jobs["a"].lease)
    # b was the old connection's and the new HELLO does not name it: it goes back.
    assert (b.state, b.attempts) == ("ready", 1)
    assert len(core.broker.sessions) == 1


def test_after_a_restart_the_jobs_no_worker_came_back_for_go_back_after_one_liveness() -> None:
    storage = MemoryStorage()
    storage.add([NewJob(x, "n", "default", ARGS) for x in ("kept", "orphan", "other")], START)
    (kept,) = storage.claim(["default"], 1, START, Grant("t-kept", START + 30, "w1", "core"))
    storage.claim(["default"], 1, START, Grant("t-orphan", START + 30, "w2", "core"))
    storage.claim(["default"], 1, START, Grant("t-other", START + 30, "w3", "another-broker"))
    core = Core(storage, heartbeat=1.0, liveness=3, lease=30.0)
    try:
        worker = core.peer()
        worker.hello("w1", running=(("kept", "t-kept"),))

        def live(seconds: float) -> None:  # time passes; the worker heartbeats
            for _ in range(round(seconds / 0.5)):
                worker.send(HEARTBEAT, {})
                core.advance(0.5)

        live(2.5)
        assert core.job("orphan").state == "running"
        live(1.0)
        assert (core.job("kept").state, core.job("kept").broker) == ("running", "core")
        orphan = core.job("orphan")
        assert (orphan.state, orphan.error) == ("ready", "worker lost: broker restarted")
        assert core.job("other").state == "running"  # another broker's lease
        live(40.0)  # past the lease chore after expiry; it keeps the live worker's lease
        assert core.job("other").state == "ready"  # another broker's, once it expired
        assert (core.job("kept").state, core.job("kept").lease) == ("running", kept.lease)
    finally:
        core.close()


def test_a_report_for_a_job_no_session_holds_counts_only_from_its_worker() -> None:
    storage = MemoryStorage()
    storage.add([NewJob("a", "n", "default", ARGS)], START)
    storage.claim(["default"], 1, START, Grant("t-a", START + 30, "w1", "core"))
    core = Core(storage)
    try:
        impostor, real = core.peer(), core.peer()
        impostor.hello("w2", queues=("none",))
        real.hello("w1", queues=("none",))  # a HELLO that forgot the lease
        ack = {"acks": [Ack("a", "t-a", pack("r")).to_wire()], "seq": 1}
        impostor.send(ACK, ack)
        impostor.recv(CONFIRM)
        assert core.job("a").state == "running"
        real.send(ACK, ack)
        real.recv(CONFIRM)
        assert (core.job("a").state, core.job("a").result) == ("done", pack("r"))
        assert core.broker.manager.stale_reports == 1
    finally:
        core.close()


def test_jobs_of_a_vanished_connection_wait_one_liveness_for_their_worker(core: Core) -> None:
    """A send to a session fails (its socket is gone): its worker may be
    saying HELLO on a new one, as after a broker stall. A HELLO naming the
    lease within one liveness period takes the job over, attempt unchanged;
    a job nobody names goes back then."""
    old = core.peer()
    old.hello("w1", capacity=2)
    core.submit("a", "b")
    jobs = pushed(old, 2)
    old.close()
    core.peers.remove(old)
    core.advance(1.0)  # a heartbeat to it fails: its session ends
    assert len(core.broker.sessions) == 0
    assert core.job("a").state == core.job("b").state == "running"
    new = core.peer()
    new.hello("w1", capacity=1, running=(("a", jobs["a"].lease),))  # a fills it
    for _ in range(8):
        new.send(HEARTBEAT, {})
        core.advance(0.5)
    a, b = core.job("a"), core.job("b")
    assert (a.state, a.attempts, a.lease) == ("running", 1, jobs["a"].lease)
    assert (b.state, b.attempts, b.error) == ("ready", 1, "worker lost: it did not come back")
