"""Bounds a broker keeps, whoever talks to it: a clear error each, nothing
changed, and the broker serving on."""

from __future__ import annotations

import threading
import time

import pytest

from jobsd.errors import BrokerError
from jobsd.protocol.framing import ERROR, HELLO
from jobsd.protocol.worker import Hello
from tests.conftest import Cluster
from tests.peers import RawPeer

PROBE = "apps.probe:jobs"


def test_args_over_the_payload_limit_are_refused_and_nothing_is_stored(cluster: Cluster) -> None:
    _, endpoint = cluster.broker("memory://", "--max-payload", "4096")
    client = cluster.client(endpoint)
    with pytest.raises(BrokerError) as refused:
        client.submit("noop", "x" * 5000)
    assert refused.value.code == "too_large"
    assert "4096" in refused.value.message
    assert client.stats()["queues"] == {}
    assert client.status(client.submit("noop", "x" * 100)) is not None


def test_a_result_over_the_payload_limit_ends_the_job_dead_and_clear(cluster: Cluster) -> None:
    _, endpoint = cluster.broker("memory://", "--max-payload", "65536")
    cluster.worker(endpoint, PROBE)
    client = cluster.client(endpoint)
    job_id = client.submit("big", 1)
    status = client.wait(job_id, timeout=15)
    assert status.state == "dead" and status.attempts == 1
    assert status.result is None
    assert "over this broker's limit of 65536" in (status.error or "")


def test_a_payload_limit_that_cannot_work_is_refused_at_start(cluster: Cluster) -> None:
    with pytest.raises(AssertionError, match="max payload must be"):
        cluster.broker("memory://", "--max-payload", "10")


def test_worker_connections_past_the_cap_are_refused(cluster: Cluster) -> None:
    _, endpoint = cluster.broker("memory://", "--max-workers", "1")
    first, second = RawPeer(endpoint), RawPeer(endpoint)
    try:
        first.hello("w1")
        second.send(HELLO, Hello("w2", ["default"], 1).to_wire())
        refused = second.recv(ERROR)
        assert refused["code"] == "limit_reached" and "--max-workers" in refused["message"]
        first.hello("w1")  # a HELLO again on a registered connection is no new one
    finally:
        first.close()
        second.close()
    assert [w["id"] for w in cluster.client(endpoint).stats()["workers"]] == ["w1"]


def test_producers_waiting_past_the_cap_are_refused(cluster: Cluster) -> None:
    _, endpoint = cluster.broker("memory://", "--max-waiters", "1")
    client = cluster.client(endpoint)
    job_id = client.submit("noop")  # no worker: it stays ready
    waiting = threading.Thread(target=lambda: client.wait(job_id, timeout=3), daemon=True)
    waiting.start()
    other = cluster.client(endpoint)
    deadline = time.monotonic() + 10
    while other.stats()["waiters"] < 1:  # the first WAIT is held (STATS says so)
        assert time.monotonic() < deadline, "the first WAIT was never held"
    with pytest.raises(BrokerError) as refused:
        other.wait(job_id, timeout=3)
    assert refused.value.code == "limit_reached"
    assert other.ping()
    waiting.join(10)
    assert not waiting.is_alive()
