"""Fencing that holds: a report counts only from the session that holds the
job's lease, a lease is never handed out twice, and however a worker session
ends (a failed send, a broker restart it does not come back from), what it
held runs elsewhere at once, never twice at the same time.

Each reproduction here failed on the broker before lease tokens: a forged ACK
became the job's result, and a resent RELEASE put another worker's running
job back to ready.
"""

from __future__ import annotations

import collections
import re
import time
from pathlib import Path

from jobsd import Client, JobRequest
from jobsd.protocol.framing import (
    ACK,
    BYE,
    CONFIRM,
    FAIL,
    GET,
    JOB,
    OK,
    PING,
    RECONNECT,
    RELEASE,
    pack,
)
from jobsd.protocol.worker import Dispatch
from tests.conftest import Cluster, Process
from tests.peers import RawPeer
from tests.test_faults import APP, HB, open_gate, started


def worker_of(client: Client, job_id: str) -> str:
    status = client.status(job_id)
    assert status is not None and status.worker is not None, status
    return status.worker


def one_running_job(cluster: Cluster, tmp_path: Path) -> tuple[str, Client, Process, str]:
    """A broker, a worker of one slot, and a gated job it runs."""
    _, endpoint = cluster.broker("memory://")
    worker = cluster.worker(endpoint, APP, "-c", "1")
    client = cluster.client(endpoint)
    job_id = client.submit("hold", str(tmp_path))
    started(worker, job_id, 1)
    return endpoint, client, worker, job_id


def test_a_forged_ack_from_a_connection_without_hello_changes_nothing(
    cluster: Cluster, tmp_path: Path
) -> None:
    endpoint, client, worker, job_id = one_running_job(cluster, tmp_path)
    forger = RawPeer(endpoint)
    try:
        # The right id and attempt, and any lease it may guess: never HELLO'd.
        forger.send(ACK, {"acks": [[job_id, "1", pack("forged")]], "seq": 1})
        forger.recv(RECONNECT)  # told to register; nothing confirmed
        forger.send(ACK, {"acks": [[job_id, "1", pack("forged")]], "seq": 2})
        forger.send(PING, {})  # a reply after the ACK: the broker read both
        forger.recv(OK)
    finally:
        forger.close()
    status = client.status(job_id)
    assert status is not None and status.state == "running"
    open_gate(tmp_path, job_id, 1)
    assert client.result(job_id, timeout=10) == {"pid": worker.pid, "attempt": 1}
    assert client.stats()["stale_reports"] == 0


def test_a_forged_report_from_a_registered_connection_is_stale(
    cluster: Cluster, tmp_path: Path
) -> None:
    endpoint, client, worker, job_id = one_running_job(cluster, tmp_path)
    victim = worker_of(client, job_id)
    forger = RawPeer(endpoint)
    try:
        forger.hello(victim, queues=("nothing",))  # even under the victim's worker id
        for command, body in [
            (ACK, {"acks": [[job_id, "guess", pack("forged")]], "seq": 1}),
            (FAIL, {"fails": [[job_id, "guess", "forged", "final", None]], "seq": 2}),
            (RELEASE, {"jobs": [[job_id, "guess"]], "seq": 3}),
        ]:
            forger.send(command, body)
            assert forger.recv(CONFIRM) == {"seq": body["seq"]}
    finally:
        forger.close()
    assert client.stats()["stale_reports"] == 3
    open_gate(tmp_path, job_id, 1)
    assert client.result(job_id, timeout=10) == {"pid": worker.pid, "attempt": 1}


def test_a_release_resent_after_a_reconnect_does_not_take_the_job_from_its_new_worker(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A scripted worker gets a job and hands it back (RELEASE); a real worker
    takes it, as the same attempt 1. The scripted worker reconnects and sends
    its RELEASE again, as the protocol says it must after a reconnect: the
    lease it names is not the job's any more, so the job stays where it runs."""
    broker, endpoint = cluster.broker("memory://")
    client = cluster.client(endpoint)
    busy = cluster.worker(endpoint, APP, "-c", "1", "--prefetch", "0")
    first = client.submit("hold", str(tmp_path))
    started(busy, first, 1)
    scripted = RawPeer(endpoint)
    scripted.hello("scripted")
    job_id = client.submit("hold", str(tmp_path))
    (item,) = scripted.recv(JOB)["jobs"]
    dispatched = Dispatch.from_wire(item)
    assert (dispatched.id, dispatched.attempt) == (job_id, 1)
    release = {"jobs": [[job_id, dispatched.lease]], "seq": 1}
    scripted.send(BYE, {})
    scripted.send(RELEASE, release)
    scripted.recv(CONFIRM)
    scripted.close()

    taker = cluster.worker(endpoint, APP, "-c", "1", "--prefetch", "0")
    started(taker, job_id, 1)  # the same attempt number, another lease
    open_gate(tmp_path, first, 1)
    assert client.result(first, timeout=10)["pid"] == busy.pid  # busy has a free slot now

    again = RawPeer(endpoint)
    try:  # it still answers for the lease its RELEASE names, as a worker says
        again.hello("scripted", running=((job_id, dispatched.lease),))
        again.send(BYE, {})
        again.send(RELEASE, release)
        again.recv(CONFIRM)
    finally:
        again.close()
    assert f":{taker.pid}:" in worker_of(client, job_id)
    assert client.stats()["stale_reports"] == 1
    open_gate(tmp_path, job_id, 1)
    assert client.result(job_id, timeout=10) == {"pid": taker.pid, "attempt": 1}
    assert f"job-started {job_id}" not in busy.output()


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def test_worker_processes_in_the_attached_form_start_exactly_that_many(
    cluster: Cluster,
) -> None:
    """``-p4`` once escaped the argument surgery that kept children from
    supervising children of their own: every child started four more."""
    _, endpoint = cluster.broker()
    supervisor = cluster.worker(endpoint, "apps.probe:jobs", "-p4", "-c", "1", wait=False)
    supervisor.wait_for("registered with the broker", count=4)
    kids = children(supervisor.pid)
    assert len(kids) == 4
    for kid in kids:
        assert children(kid) == []
        assert b"jobsd.workers" in Path(f"/proc/{kid}/cmdline").read_bytes()
    client = cluster.client(endpoint)
    assert len(client.stats()["workers"]) == 4


def test_a_killed_workers_jobs_run_elsewhere_once_a_send_to_it_fails(
    cluster: Cluster, tmp_path: Path
) -> None:
    """kill -9 of a worker running a job: the broker's next push or heartbeat
    to it fails, which ends its session; its job goes back one liveness
    period later unless the worker comes back on a new connection (it once
    forgot the job until its lease ran out, 30 s)."""
    heartbeat = 1.0
    broker, endpoint = cluster.broker("memory://", "--heartbeat", str(heartbeat), "--lease", "30")
    doomed = cluster.worker(endpoint, APP, "-c", "2", "--prefetch", "0")
    client = cluster.client(endpoint)
    job_id = client.submit("hold", str(tmp_path))
    started(doomed, job_id, 1)
    other = cluster.worker(endpoint, APP, "-c", "2", "--prefetch", "0")

    killed_at = time.time()
    doomed.kill()
    pushed = client.submit("hold", str(tmp_path))  # claimed for the dead worker's free slot
    again = started(other, job_id, 2)
    delay = again - killed_at
    bound = 3 * heartbeat + 1.0
    print(f"\nrequeue delay after kill -9, found by a failed send: {delay:.3f} s (bound {bound} s)")
    assert delay < bound
    broker.wait_for(rf"worker lost: could not send it (?:a heartbeat|jobs): \S+:{doomed.pid}:\w+")
    started(other, pushed, 1)
    for job, attempt in ((job_id, 2), (pushed, 1)):
        open_gate(tmp_path, job, attempt)
        assert client.result(job, timeout=10) == {"pid": other.pid, "attempt": attempt}


def starts(workers: list[Process]) -> collections.Counter[str]:
    return collections.Counter(
        line.split()[1]
        for worker in workers
        for line in worker.lines
        if line.startswith("job-started ")
    )


def test_a_broker_restart_under_busy_workers_runs_no_job_twice(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Three workers run six gated jobs (every slot) when the broker is
    killed and restarted on the same database. Each worker's HELLO (and the
    heartbeats and reports that cross the RECONNECT) must not cost a job its
    lease: every job finishes on its first attempt, where it began."""
    url = f"sqlite:///{tmp_path / 'jobs.sqlite3'}"
    args = ("--heartbeat", str(HB))
    broker, endpoint = cluster.broker(url, *args)
    workers = [cluster.worker(endpoint, APP, "-c", "2", "--prefetch", "0", *args) for _ in range(3)]
    client = cluster.client(endpoint)
    held = [s.id for s in client.submit_many([JobRequest("hold", (str(tmp_path),))] * 6)]
    owner = {}
    for worker in workers:
        for n in (1, 2):
            owner[worker.wait_for(r"job-started (\S+) attempt=1 ", count=n).group(1)] = worker

    broker.kill()
    broker, _ = cluster.broker(url, *args, endpoint=endpoint)
    for worker in workers:
        worker.wait_for("registered with the broker", count=2, timeout=30)
    for job_id in held[:3]:
        open_gate(tmp_path, job_id, 1)
    for job_id in held[3:]:
        open_gate(tmp_path, job_id, 1)
    for job_id in held:
        assert client.result(job_id, timeout=30) == {"pid": owner[job_id].pid, "attempt": 1}
        status = client.status(job_id)
        assert status is not None and status.attempts == 1
    assert set(starts(workers).values()) == {1}
    assert not re.search(r"[1-9]\d* job\(s\) go back", broker.output())


def test_after_a_broker_restart_jobs_of_a_worker_that_does_not_come_back_go_back_soon(
    cluster: Cluster, tmp_path: Path
) -> None:
    """The broker is killed, and so is one of its two workers while it is
    away. Restarted, the broker waits one liveness period for workers to come
    back, then puts the dead worker's job back: a few heartbeats, not the
    whole lease (30 s)."""
    url = f"sqlite:///{tmp_path / 'jobs.sqlite3'}"
    args = ("--heartbeat", str(HB))
    broker, endpoint = cluster.broker(url, *args, "--lease", "30")
    doomed = cluster.worker(endpoint, APP, "-c", "1", "--prefetch", "0", *args)
    client = cluster.client(endpoint)
    job_id = client.submit("hold", str(tmp_path))
    started(doomed, job_id, 1)
    survivor = cluster.worker(endpoint, APP, "-c", "1", "--prefetch", "0", *args)

    broker.kill()
    doomed.kill()
    broker, _ = cluster.broker(url, *args, "--lease", "30", endpoint=endpoint)
    serving_at = time.time()
    again = started(survivor, job_id, 2, timeout=30)
    delay = again - serving_at
    bound = 3 * HB + 1.0  # one liveness period for workers to come back
    print(
        f"\na dead worker's job ran again {delay:.2f} s after the broker restarted (bound {bound})"
    )
    assert delay < bound
    broker.wait_for(r"1 job\(s\) handed out before this broker started")
    open_gate(tmp_path, job_id, 2)
    assert client.result(job_id, timeout=10) == {"pid": survivor.pid, "attempt": 2}


def test_a_lease_is_sent_with_each_job_and_never_shown_to_producers(
    cluster: Cluster, tmp_path: Path
) -> None:
    broker, endpoint = cluster.broker("memory://")
    client = cluster.client(endpoint)
    scripted = RawPeer(endpoint)
    try:
        scripted.hello("scripted", capacity=2)
        ids = [client.submit("hold", str(tmp_path)) for _ in range(2)]
        leases = set()
        while len(leases) < 2:
            for item in scripted.recv(JOB)["jobs"]:
                leases.add(Dispatch.from_wire(item).lease)
        assert all(len(lease) == 32 for lease in leases)
        for view in client._request(GET, {"ids": ids})["jobs"]:
            assert "lease" not in view
            assert not leases & {value for value in view.values() if isinstance(value, str)}
    finally:
        scripted.close()
