"""Faults for real: kill -9, SIGSTOP and SIGTERM on broker and worker processes.

Heartbeats are short (0.2 s) so that "a few heartbeat intervals" is quick.
Every wait is on an event (a log line, a job's start line, a result, a process
exit) with a timeout; jobs are steered by gate files (``apps.faults``), so the
test decides when each attempt ends.
"""

from __future__ import annotations

import collections
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from jobsd import BrokerError, Client, JobRequest
from tests.apps.faults import gate
from tests.conftest import Cluster, Process

APP = "apps.faults:jobs"
HB = 0.2  # heartbeat interval of broker and workers in these tests
LIVENESS = 3  # the default: a peer is lost after HB * LIVENESS of silence


def open_gate(gates: Path, job_id: str, attempt: int) -> None:
    gate(gates, job_id, attempt).touch()


def started(worker: Process, job_id: str, attempt: int, timeout: float = 15.0) -> float:
    """Await the worker's line saying it started this attempt; its start time."""
    line = worker.wait_for(rf"job-started {job_id} attempt={attempt} pid=\d+ at=(\S+)", timeout)
    return float(line.group(1))


def worker_stats(client: Client, pid: int) -> dict[str, Any]:
    [found] = [w for w in client.stats()["workers"] if w["pid"] == pid]
    return found


def lost_line(worker: Process, jobs: int) -> str:
    """The broker's log line when it declares ``worker`` lost: silent (a
    stopped process), or its connection gone (a killed one)."""
    reason = r"(no heartbeat|could not send it (?:a heartbeat|jobs))"
    return rf"worker lost: {reason}: \S+:{worker.pid}:\w+, {jobs} job\(s\) go back"


def test_worker_kill_9_mid_job_runs_it_again_elsewhere_within_3_heartbeats_and_1_s(
    cluster: Cluster, tmp_path: Path
) -> None:
    broker, endpoint = cluster.broker("memory://", "--heartbeat", str(HB))
    first = cluster.worker(endpoint, APP, "-c", "1", "--heartbeat", str(HB))
    client = cluster.client(endpoint)
    job_id = client.submit("hold", str(tmp_path))
    started(first, job_id, 1)
    second = cluster.worker(endpoint, APP, "-c", "1", "--heartbeat", str(HB))

    killed_at = time.time()
    first.signal(signal.SIGKILL)
    again = started(second, job_id, 2)
    delay = again - killed_at
    print(f"\nrequeue delay after kill -9: {delay:.3f} s (bound {LIVENESS * HB + 1.0:.1f} s)")
    assert delay < LIVENESS * HB + 1.0
    broker.wait_for(lost_line(first, 1))

    open_gate(tmp_path, job_id, 2)
    assert client.result(job_id, timeout=10) == {"pid": second.pid, "attempt": 2}


def test_worker_paused_past_its_liveness_loses_the_job_and_its_late_ack_is_refused(
    cluster: Cluster, tmp_path: Path
) -> None:
    lease = 1.0
    broker, endpoint = cluster.broker("memory://", "--heartbeat", str(HB), "--lease", str(lease))
    first = cluster.worker(endpoint, APP, "-c", "1", "--heartbeat", str(HB))
    client = cluster.client(endpoint)
    job_id = client.submit("hold", str(tmp_path))
    started(first, job_id, 1)

    paused_at = time.monotonic()
    first.signal(signal.SIGSTOP)
    try:
        second = cluster.worker(endpoint, APP, "-c", "1", "--heartbeat", str(HB))
        broker.wait_for(lost_line(first, 1))
        started(second, job_id, 2)
    finally:
        first.signal(signal.SIGCONT)
    print(f"\nworker paused for {time.monotonic() - paused_at:.2f} s")

    # The paused worker wakes up and rejoins by itself; then it finishes its
    # (old) attempt and reports it: the broker refuses the report, the job
    # stays with the second worker. (Rejoined first, the worker sends the
    # report once: one sent before and again after registering would count
    # twice.)
    first.wait_for("registered with the broker", count=2)
    open_gate(tmp_path, job_id, 1)
    first.wait_for(rf"job-finished {job_id} attempt=1 ")
    broker.wait_for(r"ignored 1 stale report")
    assert worker_stats(client, second.pid)["running"] == 1
    # Longer than the lease: the second worker's lease is kept alive, the job
    # is not taken from it.
    status = client.wait(job_id, timeout=3 * lease)
    assert (status.state, status.attempts) == ("running", 2)

    open_gate(tmp_path, job_id, 2)
    assert client.result(job_id, timeout=10) == {"pid": second.pid, "attempt": 2}
    assert client.stats()["stale_reports"] == 1
    status = client.status(job_id)
    assert status is not None and status.attempts == 2


def test_a_rejoining_worker_gets_no_job_while_its_threads_run_jobs_taken_from_it(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A worker paused past its liveness rejoins still running a job that now
    runs elsewhere. That job holds its only thread, so the broker must not
    count the slot free: a new job waits for a worker that can start it,
    rather than queueing behind the stale run."""
    broker, endpoint = cluster.broker("memory://", "--heartbeat", str(HB))
    one_slot = ("-c", "1", "--prefetch", "0", "--heartbeat", str(HB))
    first = cluster.worker(endpoint, APP, *one_slot)
    client = cluster.client(endpoint)
    taken = client.submit("hold", str(tmp_path))
    started(first, taken, 1)

    first.signal(signal.SIGSTOP)
    try:
        second = cluster.worker(endpoint, APP, *one_slot)
        broker.wait_for(lost_line(first, 1))
        started(second, taken, 2)
    finally:
        first.signal(signal.SIGCONT)
    first.wait_for("registered with the broker", count=2)
    broker.wait_for(r"still runs 1 job\(s\) now run elsewhere")

    waiting = client.submit("hold", str(tmp_path))
    open_gate(tmp_path, taken, 2)  # the second worker frees its slot
    started(second, waiting, 1)
    assert worker_stats(client, first.pid)["running"] == 0

    open_gate(tmp_path, taken, 1)  # the stale run ends: refused, the slot is free
    broker.wait_for(r"ignored 1 stale report")
    open_gate(tmp_path, waiting, 1)
    assert client.result(waiting, timeout=10) == {"pid": second.pid, "attempt": 1}
    assert client.result(taken, timeout=10) == {"pid": second.pid, "attempt": 2}
    assert [w["running"] for w in client.stats()["workers"]] == [0, 0]


def test_a_worker_given_back_the_job_it_still_runs_finishes_it_once(
    cluster: Cluster, tmp_path: Path
) -> None:
    """The only worker is paused past its liveness: the broker takes its job
    back (attempt 1 counted) and, when the worker rejoins, gives it the job
    again as attempt 2. The run in progress takes attempt 2 over: the job runs
    once, its report is accepted, and it does not hang as running."""
    broker, endpoint = cluster.broker("memory://", "--heartbeat", str(HB))
    worker = cluster.worker(endpoint, APP, "-c", "1", "--heartbeat", str(HB))
    client = cluster.client(endpoint)
    job_id = client.submit("hold", str(tmp_path))
    started(worker, job_id, 1)
    worker.signal(signal.SIGSTOP)
    try:
        broker.wait_for(lost_line(worker, 1))
    finally:
        worker.signal(signal.SIGCONT)
    worker.wait_for("registered with the broker", count=2)
    worker.wait_for(rf"job {job_id} is ours again as attempt 2")

    open_gate(tmp_path, job_id, 1)
    assert client.result(job_id, timeout=10) == {"pid": worker.pid, "attempt": 1}
    status = client.status(job_id)
    assert status is not None and (status.state, status.attempts) == ("done", 2)
    assert client.stats()["stale_reports"] == 0
    assert worker.output().count(f"job-started {job_id}") == 1


def runs(path: Path) -> collections.Counter[str]:
    if not path.exists():
        return collections.Counter()
    return collections.Counter(line.split()[0] for line in path.read_text().splitlines())


@pytest.mark.parametrize("fault", ["sigstop", "kill-9"])
def test_workers_rejoin_a_paused_or_restarted_broker_by_themselves(
    cluster: Cluster, tmp_path: Path, fault: str
) -> None:
    """Two workers run four gated jobs (every slot) while twenty short jobs
    wait. The broker is paused longer than the workers' liveness (they give
    up on it and reconnect) or killed and restarted on the same database and
    endpoint. Two gated jobs end while it is away, two after. All jobs finish;
    the gated ones on their first attempt, on the worker that started them
    (the workers' HELLO hands their running jobs over, the reports they could
    not deliver are sent again), and none runs twice."""
    url = f"sqlite:///{tmp_path / 'jobs.sqlite3'}"
    gates = tmp_path / "gates"
    gates.mkdir()
    runs_file = tmp_path / "runs"
    broker_args = ("--heartbeat", str(HB))
    broker, endpoint = cluster.broker(url, *broker_args)
    env = {"JOBSD_TEST_RUNS": str(runs_file)}
    workers = [
        cluster.worker(endpoint, APP, "-c", "2", "--prefetch", "0", "--heartbeat", str(HB), env=env)
        for _ in range(2)
    ]
    client = cluster.client(endpoint)
    held = [s.id for s in client.submit_many([JobRequest("hold", (str(gates),))] * 4)]
    records = [s.id for s in client.submit_many([JobRequest("record", (0.01,))] * 20)]
    owner: dict[str, Process] = {}  # the four gated jobs fill both workers' slots
    for worker in workers:
        for n in (1, 2):
            owner[worker.wait_for(r"job-started (\S+) attempt=1 ", count=n).group(1)] = worker
    assert sorted(owner) == sorted(held)

    away_at = time.monotonic()
    if fault == "sigstop":
        broker.signal(signal.SIGSTOP)
    else:
        broker.kill()
    try:
        for job_id in held[:2]:
            open_gate(gates, job_id, 1)
            owner[job_id].wait_for(rf"job-finished {job_id} attempt=1 ")
        for worker in workers:  # each gave up on the broker twice (backing off)
            worker.wait_for(r"broker silent for .* reconnecting", count=2)
    finally:
        if fault == "sigstop":
            broker.signal(signal.SIGCONT)
    if fault == "kill-9":
        broker, _ = cluster.broker(url, *broker_args, endpoint=endpoint)
    away = time.monotonic() - away_at
    for worker in workers:
        worker.wait_for("registered with the broker", count=2, timeout=30)
    rejoined = time.monotonic() - away_at

    for job_id in held[2:]:
        open_gate(gates, job_id, 1)
    for job_id in held:
        assert client.result(job_id, timeout=30) == {"pid": owner[job_id].pid, "attempt": 1}
    for job_id in records:
        assert client.wait(job_id, timeout=30).state == "done"
    ran = runs(runs_file)
    assert set(ran) == set(records)
    duplicates = sum(n - 1 for n in ran.values())
    print(
        f"\nbroker {fault}: away {away:.2f} s, both workers registered again "
        f"{rejoined:.2f} s after the fault; {duplicates} duplicate execution(s)"
    )
    assert duplicates == 0  # none of them was running at the fault


def test_a_storage_outage_refuses_submits_clearly_and_keeps_every_report(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Another process holds SQLite's write lock past the broker's busy timeout:
    the turn's one transaction fails as a whole. The submit in it gets a
    ``storage_error`` and is not stored; the worker's ack in it is kept and
    recorded once the lock is gone; the broker serves on."""
    database = tmp_path / "jobs.sqlite3"
    broker, endpoint = cluster.broker(f"sqlite:///{database}")
    worker = cluster.worker(endpoint, APP, "-c", "1")
    client = cluster.client(endpoint, timeout=30.0)
    gates = tmp_path / "gates"
    gates.mkdir()
    job_id = client.submit("hold", str(gates))
    started(worker, job_id, 1)

    blocker = sqlite3.connect(database, isolation_level=None)
    try:
        blocker.execute("BEGIN EXCLUSIVE")
        open_gate(gates, job_id, 1)
        broker.wait_for(r"storage failed: 0 submitted job\(s\) refused, 1 report\(s\) to retry")
        with pytest.raises(BrokerError) as refused:
            client.enqueue("hold", [str(gates)], job_id="refused")
        assert refused.value.code == "storage_error"
    finally:
        blocker.rollback()
        blocker.close()

    assert client.result(job_id, timeout=30) == {"pid": worker.pid, "attempt": 1}
    assert client.status("refused") is None
    assert client.enqueue("hold", [str(gates)], job_id="refused").created
