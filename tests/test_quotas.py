"""Bounds a broker keeps, whoever talks to it: a clear error each, nothing
changed, and the broker serving on."""

from __future__ import annotations

import pytest

from jobsd.errors import BrokerError
from tests.conftest import Cluster

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
