"""Nothing acknowledged is lost: kill -9 the broker during submission and during
processing on durable storage, share one PostgreSQL database between brokers,
and refuse storage that cannot work with a clear error at start."""

from __future__ import annotations

import collections
import random
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from jobsd import Client, JobRequest, JobsdError
from jobsd.storage.sql import SCHEMA_VERSION
from tests.conftest import REPO, Cluster

pytest_plugins = ["tests.storage_backends"]

APP = "apps.durability:jobs"
JOBS = 1000


def storage_url(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.sqlite3'}"
    from tests.storage_backends import drop_jobsd_tables

    url: str = request.getfixturevalue("postgres_url")
    drop_jobsd_tables(url)
    return url


def runs(path: Path) -> collections.Counter[str]:
    return collections.Counter(line.split()[0] for line in path.read_text().splitlines())


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_acknowledged_jobs_survive_kill_9_of_the_broker(
    cluster: Cluster, kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = storage_url(kind, request, tmp_path)
    rng = random.Random(20261123)
    broker_args = ("--lease", "3", "--heartbeat", "0.5")
    broker, endpoint = cluster.broker(url, *broker_args)
    acknowledged: list[str] = []

    # 1. kill -9 during submission: a timer kills the broker a random moment
    #    after a random number of acknowledged submits; later ones fail.
    client = Client(endpoint, timeout=1.0, retries=1)
    kill_at = rng.randrange(100, 600)
    unacknowledged = 0
    for i in range(JOBS):
        if i == kill_at:
            threading.Timer(rng.uniform(0, 0.01), broker.signal, [signal.SIGKILL]).start()
        try:
            acknowledged.append(client.submit("record"))
        except JobsdError:
            unacknowledged += 1
            break
    client.close()
    assert broker.proc.wait(10) == -signal.SIGKILL and unacknowledged == 1

    broker, _ = cluster.broker(url, *broker_args, endpoint=endpoint)
    client = cluster.client(endpoint)
    rest = JOBS - len(acknowledged)
    acknowledged += [s.id for s in client.submit_many([JobRequest("record")] * rest)]

    # 2. kill -9 during processing, once a third of the jobs ran.
    runs_file = tmp_path / "runs"
    env = {"JOBSD_TEST_RUNS": str(runs_file)}
    worker = cluster.worker(endpoint, APP, "-c", "8", "--heartbeat", "0.5", env=env)
    client.result(acknowledged[JOBS // 3], timeout=60)
    broker.signal(signal.SIGKILL)
    broker.proc.wait(10)
    broker, _ = cluster.broker(url, *broker_args, endpoint=endpoint)
    worker.wait_for("registered with the broker", count=2, timeout=20)

    for job_id in acknowledged:
        assert client.wait(job_id, timeout=60).state == "done", job_id
    ran = runs(runs_file)
    lost = [job_id for job_id in acknowledged if job_id not in ran]
    duplicates = sum(count - 1 for count in ran.values())
    assert lost == []
    assert duplicates <= 8  # at most the jobs in flight at the kill


@pytest.mark.postgres
def test_two_brokers_share_one_postgres_database(
    cluster: Cluster, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = storage_url("postgres", request, tmp_path)
    runs_file = tmp_path / "runs"
    env = {"JOBSD_TEST_RUNS": str(runs_file)}
    endpoints = [cluster.broker(url)[1] for _ in range(2)]
    for endpoint in endpoints:
        cluster.worker(endpoint, APP, "-c", "8", env=env)
    clients = [cluster.client(endpoint) for endpoint in endpoints]
    submitted = [
        (client, s.id)
        for client in clients
        for s in client.submit_many([JobRequest("record")] * (JOBS // 2))
    ]
    for client, job_id in submitted:
        assert client.wait(job_id, timeout=60).state == "done"
    ran = runs(runs_file)
    assert sorted(ran) == sorted(job_id for _, job_id in submitted)
    assert set(ran.values()) == {1}  # none twice


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("bogus://nowhere", "unsupported storage URL"),
        ("postgresql://postgres@127.0.0.1:1/test", "cannot open storage"),
        ("mysql+pymysql://root@127.0.0.1:1/test", "cannot open storage"),
        ("sqlite:////nonexistent/dir/jobs.sqlite3", "cannot open storage"),
        ("sqlite:////proc/jobs.sqlite3", "cannot open storage"),  # a read-only file system
    ],
)
def test_unusable_storage_is_refused_at_start(url: str, message: str) -> None:
    started = subprocess.run(
        [sys.executable, "-m", "jobsd", "serve", "--bind", "tcp://127.0.0.1:*", "--storage", url],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=30,
    )
    assert started.returncode != 0
    assert message in started.stderr
    assert "Traceback" not in started.stderr


def test_migrate_then_refuse_a_newer_schema(tmp_path: Path) -> None:
    import sqlite3

    db = tmp_path / "jobs.sqlite3"
    jobsd = [sys.executable, "-m", "jobsd"]
    migrated = subprocess.run(
        [*jobsd, "migrate", f"sqlite:///{db}"], capture_output=True, text=True, cwd=REPO, timeout=30
    )
    expected = f"schema at version {SCHEMA_VERSION} (was 0)"
    assert (migrated.returncode, migrated.stdout.strip()) == (0, expected)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE jobsd_meta SET value = '99' WHERE key = 'schema_version'")
    started = subprocess.run(
        [*jobsd, "serve", "--bind", "tcp://127.0.0.1:*", "--storage", f"sqlite:///{db}"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=30,
    )
    assert started.returncode != 0
    assert "is version 99" in started.stderr and "upgrade jobsd" in started.stderr
