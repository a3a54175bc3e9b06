"""A job's life end to end: retries and backoff, dead and retried, delays,
priorities, unique keys, cron, results, cancel, pause, timeouts, retention."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from jobsd import Client, JobFailed, JobRequest, ResultTimeout
from tests.conftest import Cluster

APP = "apps.lifecycle:jobs"


@pytest.fixture(params=["memory", "sqlite"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'jobs.sqlite3'}"


@pytest.fixture
def client(cluster: Cluster, storage_url: str) -> Client:
    _, endpoint = cluster.broker(storage_url)
    cluster.worker(endpoint, APP, "-c", "4")
    return cluster.client(endpoint)


def test_failing_twice_then_succeeding_follows_the_backoff(client: Client) -> None:
    job_id = client.submit("flaky", 2)
    assert client.result(job_id, timeout=15) == 3
    job = client.status(job_id, errors=True)
    assert job is not None and job.attempts == 3
    assert [e["attempt"] for e in job.errors] == [1, 2]
    assert all("attempt" in e["error"] and "RuntimeError" in e["error"] for e in job.errors)
    # exponential 0.3 s, factor 2, no jitter: 0.3 s after the first failure,
    # 0.6 s after the second (plus dispatch and run time, well under 0.25 s).
    first_gap = job.errors[1]["at"] - job.errors[0]["at"]
    second_gap = job.updated_at - job.errors[1]["at"]
    assert 0.3 <= first_gap < 0.55
    assert 0.6 <= second_gap < 0.85


def test_dead_after_max_attempts_then_retried_to_success(client: Client, tmp_path: Path) -> None:
    marker = tmp_path / "ready"
    job_id = client.submit("needs_file", str(marker))
    with pytest.raises(JobFailed) as failed:
        client.result(job_id, timeout=10)
    assert failed.value.job.state == "dead" and failed.value.job.attempts == 2
    assert "FileNotFoundError" in str(failed.value.error)
    assert [j.id for j in client.list_jobs(state="dead")] == [job_id]
    marker.write_text("made it")
    assert client.retry(job_id)
    assert client.result(job_id, timeout=10) == "made it"
    job = client.status(job_id, errors=True)
    assert job is not None and job.state == "done" and job.attempts == 1
    assert len(job.errors) == 2  # the history of the dead run is kept


def test_retry_all_dead_and_delete(client: Client, tmp_path: Path) -> None:
    ids = [client.submit("needs_file", str(tmp_path / f"none-{i}")) for i in range(3)]
    for job_id in ids:
        with pytest.raises(JobFailed):
            client.result(job_id, timeout=10)
    assert client.delete(ids[:1]) == 1
    assert client.status(ids[0]) is None
    assert client.retry_dead() == 2


def test_delayed_job_runs_on_time(client: Client) -> None:
    run_at = time.time() + 1.0
    sub = client.enqueue("started_at", run_at=run_at)
    status = client.status(sub.id)
    assert status is not None and status.state == "scheduled"
    started = client.result(sub.id, timeout=10)["at"]
    assert run_at <= started < run_at + 0.05


def test_delay_option_counts_from_submit(client: Client) -> None:
    before = time.time()
    sub = client.enqueue("started_at", delay=0.5)
    started = client.result(sub.id, timeout=10)["at"]
    assert before + 0.5 <= started < time.time()


def test_priorities_lower_first_fifo_within_one(cluster: Cluster, storage_url: str) -> None:
    _, endpoint = cluster.broker(storage_url)
    client = cluster.client(endpoint)
    client.pause("default")
    priorities = [500, 10, 65535, 10, 0, 32768, 500, 10]
    subs = client.submit_many(
        [JobRequest("started_at", (i,), priority=p) for i, p in enumerate(priorities)]
    )
    cluster.worker(endpoint, APP, "-c", "1")
    client.resume("default")
    started = [client.result(s.id, timeout=10) for s in subs]
    order = [r["tag"] for r in sorted(started, key=lambda r: r["at"])]
    expected = sorted(range(len(priorities)), key=lambda i: (priorities[i], i))
    assert order == expected


def test_paused_queue_accepts_but_does_not_dispatch(client: Client) -> None:
    client.pause("default")
    job_id = client.submit("started_at")
    assert client.wait(job_id, timeout=0.5).state == "ready"
    assert client.stats()["queues"]["default"]["paused"] is True
    client.resume("default")
    assert client.result(job_id, timeout=10)["at"] > 0


def test_unique_key_returns_the_first_job(client: Client) -> None:
    client.pause("default")
    first = client.enqueue("started_at", unique_key="report-2026")
    second = client.enqueue("started_at", ["other args"], unique_key="report-2026")
    assert first.created and not second.created and second.id == first.id
    client.resume("default")
    client.result(first.id, timeout=10)
    third = client.enqueue("started_at", unique_key="report-2026")  # the key is free again
    assert third.created and third.id != first.id


def test_result_times_out_cleanly(client: Client) -> None:
    job_id = client.submit("sleep", 2.0)
    began = time.monotonic()
    with pytest.raises(ResultTimeout):
        client.result(job_id, timeout=0.3)
    assert time.monotonic() - began < 1.5
    assert client.result(job_id, timeout=10) == 2.0


def test_cancel_queued_and_running_jobs(client: Client) -> None:
    client.pause("default")
    queued = client.submit("started_at")
    assert client.cancel(queued)
    assert client.wait(queued, timeout=1).state == "cancelled"
    client.resume("default")
    running = client.submit("until_cancelled", 30.0)
    assert client.wait(running, timeout=0.5).state == "running"
    assert not client.cancel(running)  # not queued: its worker is asked instead
    with pytest.raises(JobFailed) as failed:
        client.result(running, timeout=10)
    assert failed.value.job.state == "cancelled"


def test_retry_signal_and_reschedule(client: Client, tmp_path: Path) -> None:
    job_id = client.submit("retry_later", 0.3, str(tmp_path / "asked"))
    attempt, after = client.result(job_id, timeout=10)
    assert attempt == 2 and after >= 0.3
    job = client.status(job_id, errors=True)
    assert job is not None and "retry requested" in job.errors[0]["error"]
    again = client.submit("reschedule_once", str(tmp_path / "marker"), 0.3)
    assert client.wait(again, timeout=0.2).state in ("scheduled", "ready", "running")
    assert client.result(again, timeout=10) == "second run"


def test_job_over_its_time_limit_fails(client: Client) -> None:
    job_id = client.submit("overrun", 5.0)
    began = time.monotonic()
    with pytest.raises(JobFailed) as failed:
        client.result(job_id, timeout=10)
    assert time.monotonic() - began < 3.0
    assert "JobTimeout" in str(failed.value.error)


def test_retention_purges_finished_jobs(cluster: Cluster, storage_url: str) -> None:
    broker, endpoint = cluster.broker(
        storage_url, "--keep-done", "0", "--retention-interval", "0.2"
    )
    cluster.worker(endpoint, APP)
    client = cluster.client(endpoint)
    job_id = client.submit("started_at")
    client.result(job_id, timeout=10)
    broker.wait_for(r"retention: purged 1 done job")
    assert client.status(job_id) is None


def test_cron_fires_once_per_period_across_a_broker_restart(
    cluster: Cluster, tmp_path: Path
) -> None:
    db = f"sqlite:///{tmp_path / 'cron.sqlite3'}"
    ticks = tmp_path / "ticks"
    broker, endpoint = cluster.broker(db)
    worker = cluster.worker(endpoint, "apps.cron:jobs", env={"JOBSD_TEST_TICKS": str(ticks)})
    fires = [broker.wait_for(r"cron: tick enqueued as (\S+)", count=n).group(1) for n in (1, 2)]
    assert broker.stop() == 0
    broker, _ = cluster.broker(db, endpoint=endpoint)
    worker.wait_for("registered with the broker", count=2)
    fires += [broker.wait_for(r"cron: tick enqueued as (\S+)", count=n).group(1) for n in (1, 2)]
    client = cluster.client(endpoint)
    for fire in fires:
        client.result(fire, timeout=10)
    lines = ticks.read_text().splitlines()
    ran = [line.split()[0] for line in lines]
    assert len(ran) == len(set(ran))  # no fire ran twice
    assert set(fires) <= set(ran) and len(set(fires)) == 4
    assert all(line.endswith(" 1") for line in lines)  # each on its first attempt
