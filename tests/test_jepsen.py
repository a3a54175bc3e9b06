"""A Jepsen-style check of jobsd's promise: at least once, nothing acknowledged lost.

Producers submit jobs on SQLite storage while a nemesis, driven by a seeded
random generator, kill -9s the broker (restarting it on the same database and
endpoint) and workers (starting replacements) at random moments. Every job
appends ``id attempt pid`` to one file as it starts (O_APPEND, one write), so
the checker reads the history of executions from outside the system.

The checker: every acknowledged submit (one that returned ids; a submit that
raised counts as not acknowledged, though it may have been stored) executed at
least once and ended done (lost = 0); executions beyond the first are
duplicates, reported and bounded by the jobs that can have been in flight at
the kills: a worker's capacity per worker kill, every worker's per broker kill.
"""

from __future__ import annotations

import collections
import random
import signal
import threading
import time
from pathlib import Path

from jobsd import Client, JobRequest, JobsdError
from tests.conftest import Cluster, Process

APP = "apps.faults:jobs"
SEED = 20261123
WORKERS = 3
CAPACITY = 4
PRODUCERS = 2
JOBS_PER_PRODUCER = 300
BATCH = 5
BROKER_KILLS = 3
WORKER_KILLS = 5
HB = "0.3"


def test_acknowledged_jobs_run_at_least_once_through_kill_9s(
    cluster: Cluster, tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    url = f"sqlite:///{tmp_path / 'jobs.sqlite3'}"
    runs_file = tmp_path / "runs"
    env = {"JOBSD_TEST_RUNS": str(runs_file)}
    broker_args = ("--heartbeat", HB, "--lease", "3")
    broker, endpoint = cluster.broker(url, *broker_args)

    def start_worker() -> Process:
        return cluster.worker(
            endpoint, APP, "-c", str(CAPACITY), "--heartbeat", HB, env=env, wait=False
        )

    workers = [start_worker() for _ in range(WORKERS)]
    for worker in workers:
        worker.wait_for("registered with the broker")

    acknowledged: list[str] = []
    refused = collections.Counter[str]()
    lock = threading.Lock()
    done = threading.Event()

    def produce(seed: int) -> None:
        prng = random.Random(seed)
        with Client(endpoint, timeout=1.0, retries=3) as client:
            submitted = 0
            while submitted < JOBS_PER_PRODUCER and not done.is_set():
                batch = [JobRequest("record", (prng.uniform(0.0, 0.05),)) for _ in range(BATCH)]
                submitted += BATCH
                try:
                    ids = [s.id for s in client.submit_many(batch)]
                except JobsdError as exc:  # not acknowledged: not counted
                    with lock:
                        refused[type(exc).__name__] += len(batch)
                    continue
                with lock:
                    acknowledged.extend(ids)
                done.wait(0.1)  # pace: the submits spread over the nemesis' run

    producers = [
        threading.Thread(target=produce, args=(rng.random(),), name=f"producer-{i}")
        for i in range(PRODUCERS)
    ]
    began = time.monotonic()
    for producer in producers:
        producer.start()

    # The nemesis: a bounded number of kills of each kind, in random order, at
    # random moments.
    kills = ["broker"] * BROKER_KILLS + ["worker"] * WORKER_KILLS
    rng.shuffle(kills)
    try:
        for target in kills:
            done.wait(rng.uniform(0.3, 0.9))
            if target == "broker":
                broker.signal(signal.SIGKILL)
                broker.proc.wait(10)
                broker, _ = cluster.broker(url, *broker_args, endpoint=endpoint)
            else:
                victim = workers.pop(rng.randrange(len(workers)))
                victim.signal(signal.SIGKILL)
                victim.proc.wait(10)
                workers.append(start_worker())
        for producer in producers:
            producer.join(30)
            assert not producer.is_alive(), "a producer hung"
    finally:
        done.set()
    chaos = time.monotonic() - began

    # The checker.
    deadline = time.monotonic() + 60
    with Client(endpoint, timeout=5.0) as client:
        states = collections.Counter(
            client.wait(job_id, timeout=max(0.0, deadline - time.monotonic())).state
            for job_id in acknowledged
        )
    lines = runs_file.read_text().splitlines()
    executions = collections.Counter(line.split()[0] for line in lines)
    lost = [job_id for job_id in acknowledged if job_id not in executions]
    duplicates = sum(n - 1 for n in executions.values())
    bound = WORKER_KILLS * CAPACITY + BROKER_KILLS * WORKERS * CAPACITY
    print(
        f"\njepsen: {len(acknowledged)} acknowledged jobs ({sum(refused.values())} not "
        f"acknowledged: {dict(refused)}), {BROKER_KILLS} broker and {WORKER_KILLS} worker "
        f"kill -9s in {chaos:.1f} s; {len(executions)} jobs executed {len(lines)} times; "
        f"lost {len(lost)}, duplicates {duplicates} (bound {bound}); states {dict(states)}; "
        f"all done {time.monotonic() - began:.1f} s after the start"
    )
    assert lost == []
    assert states == {"done": len(acknowledged)}
    assert duplicates <= bound
    assert len(acknowledged) >= PRODUCERS * JOBS_PER_PRODUCER // 2  # a real load went through
