"""The workloads, run on one system in this order (one set of workers, started
once, so every system pays the same start-up once):

1. enqueue: N/2 jobs one by one, then N/2 with the batch API (one by one,
   untimed, where there is none), into a queue no worker serves yet;
2. drain: start the 2 worker processes; time from the first job run to the
   last; every one of the N queued jobs must have run exactly once (this also
   proves the enqueue workload stored them all);
3. latency: one job at a time to the idle workers; enqueue-to-start;
4. end-to-end: N jobs submitted one by one to the idle workers, first submit
   to last completion, each run exactly once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from benchmarks.report import Record, percentiles
from benchmarks.systems.base import BATCH, System
from benchmarks.tally import CountError, Tally


@dataclass
class Plan:
    n: int = 20_000  # jobs queued for drain (enqueue: half one by one, half batched)
    n_e2e: int = 20_000
    latency_samples: int = 1000
    latency_gap: float = 0.005  # seconds of idle between latency jobs
    stall: float = 30.0  # a system that runs no job for this long has failed
    start_timeout: float = 60.0
    quick: bool = False
    profiler: Any = None  # benchmarks.profile.Profiles, or None
    notes: list[str] = field(default_factory=list)


def run_system(system: System, plan: Plan, tally: Tally) -> list[Record]:
    """All workloads on one system; the system's processes are stopped after."""
    cap = system.max_n_quick if plan.quick else system.max_n
    n = min(plan.n, cap) if cap else plan.n
    n_e2e = min(plan.n_e2e, cap) if cap else plan.n_e2e
    samples = min(plan.latency_samples, max(20, n // 10)) if cap else plan.latency_samples
    versions = system.versions()
    records: list[Record] = []

    def record(workload: str, count: int, **values: Any) -> None:
        records.append(
            Record(
                system.key,
                system.family,
                system.backend,
                workload,
                count,
                versions=versions,
                settings=system.settings,
                **values,
            )
        )

    tally.flush()
    system.prepare()
    # 1. enqueue, no workers running
    queued_tag = tally.new_tag(system.key, "drain")
    half = n // 2
    profiling = plan.profiler.start(system, "client") if plan.profiler else None
    times = []
    start = time.perf_counter()
    for i in range(half):
        t0 = time.perf_counter()
        system.submit(queued_tag, i)
        times.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - start
    record("enqueue_one", half, jobs_per_s=half / elapsed, seconds=elapsed, **percentiles(times))
    rest = range(half, n)
    if system.batch_api:
        start = time.perf_counter()
        for chunk in range(half, n, BATCH):
            system.submit_batch(queued_tag, rest[chunk - half : chunk - half + BATCH])
        elapsed = time.perf_counter() - start
        record(
            "enqueue_batch",
            len(rest),
            jobs_per_s=len(rest) / elapsed,
            seconds=elapsed,
            note=system.batch_api,
        )
    else:
        for i in rest:
            system.submit(queued_tag, i)
        record("enqueue_batch", len(rest), note="no batch API")
    if profiling:
        plan.profiler.stop(profiling)
    _check_queued(system, n)

    # 2. drain: start the workers on the full queue
    launched = time.monotonic()
    system.start_workers()
    profiling = plan.profiler.start(system, "servers") if plan.profiler else None
    tally.wait_count(queued_tag, n, stall=max(plan.stall, plan.start_timeout))
    if profiling:
        plan.profiler.stop(profiling)
    first, last = tally.window(queued_tag)
    tally.verify(queued_tag, n)
    record(
        "drain",
        n,
        jobs_per_s=n / (last - first),
        seconds=last - first,
        extra={"startup_s": first - launched},
    )
    system.wait_ready(plan.start_timeout)

    # 3. latency: one job at a time to idle workers
    time.sleep(0.2)
    lat_tag = tally.new_tag(system.key, "latency")
    delays = []
    for i in range(samples):
        t0 = time.monotonic()
        system.submit_latency(lat_tag, i)
        number, started = tally.next_start(lat_tag, timeout=plan.stall)
        if number != i:
            raise CountError(f"{system.key}: latency job {number} started, expected {i}")
        delays.append(started - t0)
        time.sleep(plan.latency_gap)
    tally.wait_count(lat_tag, samples, stall=plan.stall)
    tally.verify(lat_tag, samples)
    record("latency", samples, **percentiles(delays))

    # 4. end-to-end: idle workers, N submitted one by one
    time.sleep(0.2)
    e2e_tag = tally.new_tag(system.key, "e2e")
    profiling = plan.profiler.start(system, "e2e") if plan.profiler else None
    start = time.monotonic()
    for i in range(n_e2e):
        system.submit(e2e_tag, i)
    submitted = time.monotonic()
    tally.wait_count(e2e_tag, n_e2e, stall=plan.stall)
    if profiling:
        plan.profiler.stop(profiling)
    _, last = tally.window(e2e_tag)
    tally.verify(e2e_tag, n_e2e)
    record(
        "e2e",
        n_e2e,
        jobs_per_s=n_e2e / (last - start),
        seconds=last - start,
        extra={"submit_s": submitted - start},
    )

    # Late duplicates (a redelivery after the count was reached) would show now.
    time.sleep(0.5)
    for tag, count in ((queued_tag, n), (lat_tag, samples), (e2e_tag, n_e2e)):
        tally.verify(tag, count)
    done = system.broker_done()
    if done is not None and done != n + samples + n_e2e:
        raise CountError(f"{system.key}: broker counts {done} done, expected {n + samples + n_e2e}")
    for r in records:
        r.verified = True
    return records


def _check_queued(system: System, n: int, timeout: float = 10.0) -> None:
    """The queue holds all N jobs (a broker such as RabbitMQ may still be
    routing the last publishes: give it a moment, never more than N)."""
    deadline = time.monotonic() + timeout
    while True:
        queued = system.queued()
        if queued is None or queued == n:
            return
        if queued > n or time.monotonic() > deadline:
            raise CountError(f"{system.key}: {queued} jobs queued after enqueueing {n}")
        time.sleep(0.05)
