"""Nobody gets in: CURVE keys per role, checked by the broker's ZAP handler.

Every test here runs a real ``jobsd serve --keys`` and plays its peers with
real CURVE sockets: keys the broker knows in each role folder, and a
stranger's key it does not.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from jobsd import Client
from jobsd.errors import BrokerError, BrokerUnavailable
from jobsd.keys import keygen
from jobsd.protocol.framing import (
    ACK,
    CONFIRM,
    ERROR,
    FAIL,
    HELLO,
    LIST,
    OK,
    PING,
    RECONNECT,
    SUBMIT,
    pack,
)
from jobsd.protocol.producer import JobSubmission, pack_args
from jobsd.protocol.worker import Hello
from tests.conftest import REPO, TESTS, Cluster
from tests.peers import RawPeer
from tests.test_faults import APP, open_gate, started


class Keys:
    """A keys directory with one key of each role, and a stranger's key."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "keys"
        keygen(self.dir, "broker")
        for folder, name in [
            ("producers", "web"),
            ("workers", "w1"),
            ("workers", "w2"),
            ("observers", "grafana"),
            ("admins", "ops"),
        ]:
            keygen(self.dir / folder, name)
        keygen(root / "elsewhere", "stranger")
        self.stranger = str(root / "elsewhere" / "stranger.key_secret")
        self.server = str(self.dir / "broker.key")

    def secret(self, folder: str, name: str) -> str:
        return str(self.dir / folder / f"{name}.key_secret")

    def client(self, cluster: Cluster, endpoint: str, folder: str, name: str) -> Client:
        client = Client(
            endpoint, server_key=self.server, key=self.secret(folder, name), timeout=5.0
        )
        cluster.clients.append(client)
        return client

    def peer(self, endpoint: str, key: str) -> RawPeer:
        return RawPeer(endpoint, server_key=self.server, key=key)

    def worker_args(self, name: str) -> tuple[str, ...]:
        return ("--server-key", self.server, "--key", self.secret("workers", name))


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return Keys(tmp_path)


def secured(cluster: Cluster, keys: Keys, storage: str = "memory://") -> str:
    _, endpoint = cluster.broker(storage, "--keys", str(keys.dir))
    return endpoint


def submission(name: str = "hold", *args: Any) -> dict[str, Any]:
    return {"jobs": [JobSubmission("j-" + name, name, pack_args(args, {})).to_wire()]}


def test_an_unknown_key_gets_no_message_through(
    cluster: Cluster, keys: Keys, tmp_path: Path
) -> None:
    endpoint = secured(cluster, keys)
    stranger = keys.peer(endpoint, keys.stranger)
    try:
        stranger.send(SUBMIT, submission("hold", str(tmp_path)))
        stranger.send(LIST, {})
        stranger.send(HELLO, Hello("intruder", ["default"], 100).to_wire())
        assert stranger.silent_for(1.0)
    finally:
        stranger.close()
    stats = keys.client(cluster, endpoint, "observers", "grafana").stats()
    assert stats["queues"] == {} and stats["workers"] == []
    assert stats["refused_keys"] >= 1


def test_each_role_may_send_its_commands_only(cluster: Cluster, keys: Keys) -> None:
    endpoint = secured(cluster, keys)
    producer = keys.client(cluster, endpoint, "producers", "web")
    job_id = producer.enqueue("noop", queue="nowhere").id
    assert producer.status(job_id) is not None
    for call in (
        lambda: producer.cancel(job_id),
        lambda: producer.purge(),
        lambda: producer.pause("nowhere"),
        lambda: producer.list_jobs(),
        lambda: producer.stats(),
    ):
        with pytest.raises(BrokerError) as refused:
            call()
        assert refused.value.code == "forbidden"
    observer = keys.client(cluster, endpoint, "observers", "grafana")
    assert [job.id for job in observer.list_jobs()] == [job_id]
    assert observer.stats()["queues"]["nowhere"]["counts"]["ready"] == 1
    with pytest.raises(BrokerError, match="forbidden"):
        observer.cancel(job_id)
    with pytest.raises(BrokerError, match="forbidden"):
        observer.submit("noop")
    admin = keys.client(cluster, endpoint, "admins", "ops")
    admin.pause("nowhere")
    assert admin.cancel(job_id) is True
    assert observer.status(job_id).state == "cancelled"  # type: ignore[union-attr]


def test_only_a_worker_key_gets_jobs(cluster: Cluster, keys: Keys, tmp_path: Path) -> None:
    endpoint = secured(cluster, keys)
    producer = keys.client(cluster, endpoint, "producers", "web")
    job_id = producer.submit("hold", str(tmp_path))
    posing = keys.peer(endpoint, keys.secret("producers", "web"))
    try:
        posing.send(HELLO, Hello("posing", ["default"], 10).to_wire())
        assert posing.recv(ERROR)["code"] == "forbidden"
        posing.send(PING, {})
        posing.recv(OK)
        assert producer.status(job_id).state == "ready"  # type: ignore[union-attr]
    finally:
        posing.close()
    worker = cluster.worker(endpoint, APP, "-c", "1", *keys.worker_args("w1"))
    started(worker, job_id, 1)
    open_gate(tmp_path, job_id, 1)
    assert producer.result(job_id, timeout=10) == {"pid": worker.pid, "attempt": 1}


def test_a_worker_without_a_key_never_registers(cluster: Cluster, keys: Keys) -> None:
    endpoint = secured(cluster, keys)
    worker = cluster.worker(endpoint, APP, "-c", "1", wait=False)
    observer = keys.client(cluster, endpoint, "observers", "grafana")
    observer.ping()
    assert observer.stats()["workers"] == []
    assert worker.proc.poll() is None  # it keeps trying, it is not let in
    assert "registered with the broker" not in worker.output()


def test_another_worker_key_cannot_report_for_a_running_job(
    cluster: Cluster, keys: Keys, tmp_path: Path
) -> None:
    endpoint = secured(cluster, keys)
    worker = cluster.worker(endpoint, APP, "-c", "1", *keys.worker_args("w1"))
    producer = keys.client(cluster, endpoint, "producers", "web")
    job_id = producer.submit("hold", str(tmp_path))
    started(worker, job_id, 1)
    victim = keys.client(cluster, endpoint, "admins", "ops").status(job_id).worker  # type: ignore[union-attr]
    assert victim is not None and victim.startswith("w1/")
    forger = keys.peer(endpoint, keys.secret("workers", "w2"))
    try:
        forger.send(ACK, {"acks": [[job_id, "guess", pack("forged")]], "seq": 1})
        forger.recv(RECONNECT)  # no HELLO yet: nothing applied
        # Under the victim's worker id: still w2's, so none of w1's leases.
        forger.hello(victim.split("/", 1)[1], queues=("nothing",), running=((job_id, "guess"),))
        forger.send(FAIL, {"fails": [[job_id, "guess", "forged", "final", None]], "seq": 2})
        assert forger.recv(CONFIRM) == {"seq": 2}
    finally:
        forger.close()
    open_gate(tmp_path, job_id, 1)
    assert producer.result(job_id, timeout=10) == {"pid": worker.pid, "attempt": 1}


def test_a_report_held_over_a_broker_restart_still_counts(
    cluster: Cluster, keys: Keys, tmp_path: Path
) -> None:
    storage = f"sqlite:///{tmp_path}/jobs.db"
    broker, endpoint = cluster.broker(storage, "--keys", str(keys.dir), "--name", "b1")
    worker = cluster.worker(endpoint, APP, "-c", "1", *keys.worker_args("w1"))
    producer = keys.client(cluster, endpoint, "producers", "web")
    job_id = producer.submit("hold", str(tmp_path))
    started(worker, job_id, 1)
    broker.kill()
    cluster.broker(storage, "--keys", str(keys.dir), "--name", "b1", endpoint=endpoint)
    worker.wait_for("registered with the broker", count=2)
    open_gate(tmp_path, job_id, 1)
    assert producer.result(job_id, timeout=15) == {"pid": worker.pid, "attempt": 1}


def test_a_key_added_takes_effect_on_sighup(cluster: Cluster, keys: Keys) -> None:
    broker, endpoint = cluster.broker("memory://", "--keys", str(keys.dir))
    keygen(keys.dir / "producers", "late")
    late = keys.client(cluster, endpoint, "producers", "late")
    late.timeout, late.retries = 0.5, 1  # type: ignore[attr-defined]
    with pytest.raises(BrokerUnavailable):
        late.submit("noop")
    broker.signal(signal.SIGHUP)
    broker.wait_for(r"keys from .*: 2 producers")
    late.timeout, late.retries = 5.0, 3  # type: ignore[attr-defined]
    assert late.submit("noop")


def test_keygen_writes_a_pair_and_never_overwrites_one(tmp_path: Path) -> None:
    def keygen_cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "jobsd", "keygen", "--dir", str(tmp_path / "k"), *args],
            cwd=TESTS,
            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=30,
        )

    made = keygen_cli("broker")
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "k" / "broker.key").exists()
    assert (tmp_path / "k" / "broker.key_secret").stat().st_mode & 0o077 == 0
    again = keygen_cli("broker")
    assert again.returncode != 0 and "exists" in again.stderr


@pytest.mark.parametrize("insecure", [False, True])
def test_a_network_bind_without_keys_needs_insecure(cluster: Cluster, insecure: bool) -> None:
    args = ["--insecure"] if insecure else []
    if insecure:
        broker, _ = cluster.broker("memory://", *args, endpoint="tcp://0.0.0.0:*")
        broker.wait_for("WITHOUT KEYS")
        return
    refused = subprocess.run(
        [sys.executable, "-m", "jobsd", "serve", "--bind", "tcp://0.0.0.0:5555", *args],
        cwd=TESTS,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert refused.returncode != 0
    assert "jobsd keygen" in refused.stderr and "--insecure" in refused.stderr


def test_jobs_and_stats_stay_readable_under_keys(cluster: Cluster, keys: Keys) -> None:
    """The CLI's producer commands take the keys too."""
    endpoint = secured(cluster, keys)
    keys.client(cluster, endpoint, "producers", "web").enqueue("noop", queue="q1")
    listed = subprocess.run(
        [
            sys.executable,
            "-m",
            "jobsd",
            "jobs",
            "--connect",
            endpoint,
            "--server-key",
            keys.server,
            "--key",
            keys.secret("observers", "grafana"),
        ],
        cwd=TESTS,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert listed.returncode == 0, listed.stderr
    assert "noop" in listed.stdout and "q1" in listed.stdout
    with pytest.raises(BrokerError, match="forbidden"):
        keys.client(cluster, endpoint, "workers", "w1").list_jobs()
