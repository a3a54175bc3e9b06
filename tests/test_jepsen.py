"""A Jepsen-style check of jobsd's promise: at least once, nothing acknowledged
lost, and what a dead worker held running elsewhere within its liveness.

Producers submit jobs on SQLite storage while a nemesis, driven by a seeded
random generator, kill -9s the broker (restarting it on the same database and
endpoint), workers (starting replacements), and both at once (a worker dies
while the broker is down and never comes back). Every job appends ``id
attempt pid time`` to one file as it starts (O_APPEND, one write), so the
checker reads the history of executions from outside the system.

The checker: every acknowledged submit (one that returned ids; a submit that
raised counts as not acknowledged, though it may have been stored) executed at
least once and ended done (lost = 0); executions beyond the first are
duplicates, bounded by the jobs that can have been in flight at the kills.
Redelivery: a job a killed worker was running starts again elsewhere within
heartbeat x liveness + 1 s of the kill (the broker is up); when the worker
died while the broker was down, its jobs go back a liveness period after the
broker's restart, long before their leases end.
"""

from __future__ import annotations

import collections
import random
import statistics
import threading
import time
from dataclasses import dataclass
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
BROKER_KILLS = 2
WORKER_KILLS = 5
BOTH_KILLS = 2
HB, LIVENESS, LEASE = 0.3, 3, 10.0
SILENCE = HB * LIVENESS


@dataclass
class Run:
    job_id: str
    pid: int
    at: float


@dataclass
class Kill:
    what: str  # "broker", "worker" or "both"
    at: float  # when the worker died (or the broker, for "broker")
    pid: int = 0  # the worker's
    back_at: float = 0.0  # when the broker served again, for "both"


def job_seconds(rng: random.Random) -> float:
    return 0.5 if rng.random() < 0.1 else rng.uniform(0.0, 0.05)


def redeliveries(runs: list[Run], kill: Kill, since: float) -> list[float]:
    """For each job the killed worker had started last before it died: how
    long after ``since`` it started again on another worker."""
    last: dict[str, Run] = {}
    for run in runs:
        if run.at < kill.at:
            last[run.job_id] = run
    delays = []
    for job_id, run in last.items():
        if run.pid != kill.pid:
            continue
        later = [r.at for r in runs if r.job_id == job_id and r.at > kill.at]
        if later:
            delays.append(min(later) - since)
    return delays


def test_acknowledged_jobs_run_at_least_once_through_kill_9s(
    cluster: Cluster, tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    url = f"sqlite:///{tmp_path / 'jobs.sqlite3'}"
    runs_file = tmp_path / "runs"
    env = {"JOBSD_TEST_RUNS": str(runs_file)}
    broker_args = ("--heartbeat", str(HB), "--liveness", str(LIVENESS), "--lease", str(LEASE))
    broker, endpoint = cluster.broker(url, *broker_args)

    def start_worker() -> Process:
        return cluster.worker(endpoint, APP, "-c", str(CAPACITY), env=env, wait=False)

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
                # Mostly short jobs, some long ones, so kills find jobs running.
                batch = [JobRequest("record", (job_seconds(prng),)) for _ in range(BATCH)]
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

    # The nemesis: a bounded number of kills of each kind, in random order,
    # at random moments.
    plan = ["broker"] * BROKER_KILLS + ["worker"] * WORKER_KILLS + ["both"] * BOTH_KILLS
    rng.shuffle(plan)
    kills: list[Kill] = []
    try:
        for what in plan:
            done.wait(rng.uniform(0.5, 1.0))
            if what in ("broker", "both"):
                broker.kill()
                kill = Kill(what, time.time())
                if what == "both":
                    victim = workers.pop(rng.randrange(len(workers)))
                    victim.kill()
                    kill = Kill(what, time.time(), victim.pid)
                broker, _ = cluster.broker(url, *broker_args, endpoint=endpoint)
                kill.back_at = time.time()
                if what == "both":
                    workers.append(start_worker())
            else:
                victim = workers.pop(rng.randrange(len(workers)))
                victim.kill()
                kill = Kill(what, time.time(), victim.pid)
                workers.append(start_worker())
            kills.append(kill)
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
    runs = [Run(job, int(pid), float(at)) for job, _, pid, at in (line.split() for line in lines)]
    executions = collections.Counter(run.job_id for run in runs)
    lost = [job_id for job_id in acknowledged if job_id not in executions]
    duplicates = sum(n - 1 for n in executions.values())
    bound = (WORKER_KILLS + BOTH_KILLS) * 2 * CAPACITY + (
        BROKER_KILLS + BOTH_KILLS
    ) * WORKERS * 2 * CAPACITY

    # A worker killed while the broker is up: a redelivery counts unless the
    # broker was killed again before it, within its bound (then it cannot be
    # told what was late); one missing past the bound is a failure.
    broker_kills = [k.at for k in kills if k.what != "worker"]
    after_kill = []
    for kill in (k for k in kills if k.what == "worker"):
        next_down = min((t for t in broker_kills if t > kill.at), default=float("inf"))
        for delay in redeliveries(runs, kill, since=kill.at):
            if kill.at + delay < next_down or next_down > kill.at + SILENCE + 1.0:
                after_kill.append(delay)
    after_restart = [d for k in kills if k.what == "both" for d in redeliveries(runs, k, k.back_at)]

    def summary(delays: list[float]) -> str:
        if not delays:
            return "none caught running"
        return f"n={len(delays)} p50 {statistics.median(delays):.2f} s, max {max(delays):.2f} s"

    print(
        f"\njepsen: {len(acknowledged)} acknowledged jobs ({sum(refused.values())} not "
        f"acknowledged: {dict(refused)}), kill -9s: {collections.Counter(k.what for k in kills)} "
        f"in {chaos:.1f} s; {len(executions)} jobs executed {len(runs)} times; lost {len(lost)}, "
        f"duplicates {duplicates} (bound {bound}); states {dict(states)}; all done "
        f"{time.monotonic() - began:.1f} s after the start\n"
        f"redelivery after a worker kill, broker up: {summary(after_kill)} "
        f"(bound {SILENCE + 1.0:.1f} s)\n"
        f"after a broker restart, of a worker that did not come back: {summary(after_restart)} "
        f"(they go back {SILENCE:.1f} s after it; the lease is {LEASE:.0f} s)"
    )
    assert lost == []
    assert states == {"done": len(acknowledged)}
    assert duplicates <= bound
    assert len(acknowledged) >= PRODUCERS * JOBS_PER_PRODUCER // 2  # a real load went through
    assert all(d <= SILENCE + 1.0 for d in after_kill)
    # They go back one liveness period after the restart; running again takes
    # a free slot too. Well before the lease ran out is what this asserts.
    assert all(d < LEASE / 2 for d in after_restart)
