"""A producer, a broker and workers as separate processes: what a user runs."""

from __future__ import annotations

import os
import select
import subprocess
import sys
from pathlib import Path

import pytest

from jobsd import JobFailed, JobRequest
from tests.conftest import REPO, Cluster


def test_submit_run_result(cluster: Cluster) -> None:
    _, endpoint = cluster.broker()
    cluster.worker(endpoint, "apps.probe:jobs")
    client = cluster.client(endpoint)
    job_id = client.submit("echo", 1, "two", three=3)
    assert client.result(job_id, timeout=10) == {"args": [1, "two"], "kwargs": {"three": 3}}
    status = client.status(job_id)
    assert status is not None
    assert (status.name, status.queue, status.state, status.attempts) == (
        "echo",
        "default",
        "done",
        1,
    )


def test_async_handlers_run_on_the_event_loop(cluster: Cluster) -> None:
    _, endpoint = cluster.broker()
    cluster.worker(endpoint, "apps.probe:jobs", "-c", "4")
    client = cluster.client(endpoint)
    ids = [client.submit("async_echo", i, 0.05) for i in range(8)]
    assert [client.result(i, timeout=10) for i in ids] == list(range(8))


def test_each_queue_goes_only_to_its_workers(cluster: Cluster) -> None:
    _, endpoint = cluster.broker()
    default_worker = cluster.worker(endpoint, "apps.probe:jobs", "-q", "default")
    other_worker = cluster.worker(endpoint, "apps.probe:jobs", "-q", "other")
    client = cluster.client(endpoint)
    results = client.submit_many(
        [JobRequest("whoami") for _ in range(20)] + [JobRequest("other_whoami") for _ in range(20)]
    )
    ran = [client.result(r.id, timeout=10) for r in results]
    assert {r["pid"] for r in ran[:20]} == {default_worker.pid}
    assert {r["pid"] for r in ran[20:]} == {other_worker.pid}
    assert {r["queue"] for r in ran[20:]} == {"other"}


def test_state_is_built_once_per_worker_process(cluster: Cluster) -> None:
    _, endpoint = cluster.broker()
    first = cluster.worker(endpoint, "apps.probe:jobs", "-c", "4")
    second = cluster.worker(endpoint, "apps.probe:jobs", "-c", "4")
    client = cluster.client(endpoint)
    ids = [client.submit("whoami", i) for i in range(60)]
    ran = [client.result(i, timeout=10) for i in ids]
    by_pid: dict[int, set[int]] = {}
    for r in ran:
        assert r["builds"] == 1
        by_pid.setdefault(r["pid"], set()).add(r["state"])
    assert set(by_pid) <= {first.pid, second.pid}
    assert all(len(states) == 1 for states in by_pid.values())


def test_worker_processes_option_starts_independent_processes(cluster: Cluster) -> None:
    _, endpoint = cluster.broker()
    supervisor = cluster.worker(
        endpoint, "apps.probe:jobs", "--processes", "2", "-c", "2", "--prefetch", "0", wait=False
    )
    client = cluster.client(endpoint)
    supervisor.wait_for("registered with the broker", count=2)
    # Four jobs in pairs that wait for each other: each process's two slots
    # take one pair, so both processes run jobs, at once.
    batch = [JobRequest("together", (2, 10.0), max_attempts=1) for _ in range(4)]
    ran = [client.result(r.id, timeout=30) for r in client.submit_many(batch)]
    assert {r["peak"] for r in ran} == {2}
    assert len({r["pid"] for r in ran}) == 2 and supervisor.pid not in {r["pid"] for r in ran}
    assert supervisor.stop() == 0


@pytest.mark.parametrize("concurrency", [1, 4, 16])
def test_concurrency_n_runs_n_jobs_at_once(cluster: Cluster, concurrency: int) -> None:
    _, endpoint = cluster.broker()
    cluster.worker(endpoint, "apps.probe:jobs", "-c", str(concurrency))
    client = cluster.client(endpoint)
    ids = [
        client.enqueue("together", [concurrency, 10.0], max_attempts=1).id
        for _ in range(concurrency * 2)
    ]
    peaks = [client.result(i, timeout=30)["peak"] for i in ids]
    # Every job met `concurrency` others at its barrier, and never more ran.
    assert max(peaks) == concurrency


def test_unknown_job_name_fails_clearly(cluster: Cluster) -> None:
    _, endpoint = cluster.broker()
    cluster.worker(endpoint, "apps.probe:jobs")
    client = cluster.client(endpoint)
    job_id = client.submit("no_such_job", 1)
    with pytest.raises(JobFailed) as failed:
        client.result(job_id, timeout=10)
    assert "no job named 'no_such_job'" in str(failed.value.error)
    status = client.status(job_id)
    assert status is not None and status.state == "dead" and status.attempts == 1


def test_cli_submit_wait_prints_the_result(cluster: Cluster) -> None:
    _, endpoint = cluster.broker()
    cluster.worker(endpoint, "examples.divide:jobs")
    cli = [sys.executable, "-m", "jobsd", "submit", "--connect", endpoint]
    done = subprocess.run(
        [*cli, "divide", "[7, 2]", "--wait"], capture_output=True, text=True, cwd=REPO, timeout=30
    )
    assert (done.returncode, done.stdout.strip()) == (0, "3")
    failed = subprocess.run(
        [*cli, "divide", "[7, 0]", "--wait"], capture_output=True, text=True, cwd=REPO, timeout=30
    )
    assert failed.returncode == 1
    assert "ZeroDivisionError: cannot divide 7 by zero" in failed.stderr


def test_cli_status_shows_the_job(cluster: Cluster) -> None:
    _, endpoint = cluster.broker()
    cluster.worker(endpoint, "examples.divide:jobs")
    client = cluster.client(endpoint)
    job_id = client.submit("divide", 9, 3)
    client.result(job_id, timeout=10)
    shown = subprocess.run(
        [sys.executable, "-m", "jobsd", "status", job_id, "--json", "--connect", endpoint],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=30,
    )
    assert shown.returncode == 0, shown.stderr
    assert '"state": "done"' in shown.stdout and '"result": 3' in shown.stdout


@pytest.mark.parametrize(
    "argv",
    [
        ["serve", "--lease", "0"],
        ["serve", "--heartbeat", "-1"],
        ["serve", "--liveness", "0"],
        ["worker", "examples.divide:jobs", "--heartbeat", "0"],
        ["worker", "examples.divide:jobs", "--liveness", "0"],
        ["worker", "examples.divide:jobs", "--prefetch", "-1"],
    ],
)
def test_timing_options_out_of_range_are_refused_before_starting(argv: list[str]) -> None:
    """A zero heartbeat would spin, a zero lease expire every job at once:
    refused with the option named, exit code 2, nothing started."""
    ran = subprocess.run(
        [sys.executable, "-m", "jobsd", *argv],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=30,
    )
    assert ran.returncode == 2
    assert f"Invalid value for '{argv[-2]}'" in ran.stderr
    assert "Traceback" not in ran.stderr


def test_a_result_too_large_for_a_report_fails_the_job_at_once(cluster: Cluster) -> None:
    """Over the broker's 64 MiB frame limit a report would be dropped unread
    and the job left running; the worker refuses to send it and says why."""
    _, endpoint = cluster.broker()
    cluster.worker(endpoint, "apps.probe:jobs", "-c", "1")
    client = cluster.client(endpoint)
    job_id = client.submit("big", 65)
    with pytest.raises(JobFailed, match="ResultTooLarge"):
        client.result(job_id, timeout=30)
    status = client.status(job_id)
    assert status is not None and (status.state, status.attempts) == ("dead", 1)
    assert client.result(client.submit("big", 1), timeout=30) == b"\0" * (1 << 20)


def test_a_worker_keeps_the_heartbeat_its_broker_asks_for(cluster: Cluster) -> None:
    """A worker started with a slower heartbeat than its broker's takes the
    broker's from WELCOME, so the broker never declares it lost."""
    broker, endpoint = cluster.broker("memory://", "--heartbeat", "0.2")
    worker = cluster.worker(endpoint, "apps.probe:jobs", "--heartbeat", "5")
    client = cluster.client(endpoint)
    job_id = client.submit("sleep", 2.0)  # ten of the broker's heartbeat intervals
    assert client.result(job_id, timeout=30) == 2.0
    assert client.status(job_id).attempts == 1  # type: ignore[union-attr]
    assert "worker lost" not in broker.output()
    assert worker.proc.poll() is None


def test_worker_processes_stop_when_their_supervisor_is_killed(cluster: Cluster) -> None:
    """kill -9 of the supervisor reaches no child: each sees it gone and
    stops as on SIGTERM, rather than running on unsupervised."""
    _, endpoint = cluster.broker()
    supervisor = cluster.worker(endpoint, "apps.probe:jobs", "-p", "2", wait=False)
    supervisor.wait_for("registered with the broker", count=2)
    children = [
        os.pidfd_open(int(pid))
        for task in Path(f"/proc/{supervisor.pid}/task").iterdir()
        for pid in (task / "children").read_text().split()
    ]
    assert len(children) == 2
    try:
        supervisor.kill()
        supervisor.wait_for("the worker supervisor .* is gone: stopping", count=2)
        for child in children:  # a pidfd turns readable when its process exits
            assert select.select([child], [], [], 15)[0], "a child outlived its supervisor"
    finally:
        for child in children:
            os.close(child)
