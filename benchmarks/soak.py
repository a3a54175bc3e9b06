"""The soak: many jobs through one jobsd broker (memory storage by default)
and its 2 worker processes, with the broker's resident memory sampled, to see
whether it stays flat.

Jobs go in batches of 1000 with at most ``WINDOW`` jobs submitted but not yet
run, so the queue itself does not grow. Finished jobs are kept by the broker
for its retention time; the soak runs the broker with a short one (``--keep-done
1 --retention-interval 2`` unless told otherwise), else memory storage holds
every done job for 7 days by design and cannot be flat.
"""

from __future__ import annotations

import shlex
import threading
import time
from pathlib import Path

import psutil

from benchmarks.report import Record
from benchmarks.systems.base import BATCH
from benchmarks.systems.jobsd import JobsdMemory
from benchmarks.tally import Tally

WINDOW = 20_000
DEFAULT_BROKER_ARGS = "--keep-done 1 --retention-interval 2"


def run_soak(
    workdir: Path,
    tally: Tally,
    n: int,
    broker_args: str = DEFAULT_BROKER_ARGS,
    interval: float = 1.0,
    stall: float = 60.0,
) -> Record:
    from benchmarks.procs import Proc, python
    from jobsd import Client, JobRequest

    system = JobsdMemory(workdir)
    samples: list[tuple[float, int, float]] = []  # (seconds, jobs run, rss MB)
    stop = threading.Event()
    tally.flush()
    tag = tally.new_tag("jobsd-memory", "soak")
    broker = Proc(
        "soak-broker",
        python(
            "-m",
            "jobsd",
            "serve",
            "--bind",
            "tcp://127.0.0.1:*",
            "--storage",
            "memory://",
            *shlex.split(broker_args),
        ),
        workdir,
    )
    try:
        system.broker = broker
        system.endpoint = broker.wait_for(r"broker serving on (\S+)", 30.0).group(1)
        system.client = client = Client(system.endpoint, timeout=30.0)
        system.start_workers()
        system.wait_ready(60.0)
        process = psutil.Process(broker.pid)
        start = time.monotonic()

        def sample() -> None:
            while not stop.is_set():
                samples.append(
                    (time.monotonic() - start, tally.count(tag), process.memory_info().rss / 2**20)
                )
                stop.wait(interval)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        sent = 0
        last_progress, last_count = time.monotonic(), -1
        while sent < n:
            done = tally.count(tag)
            if done != last_count:
                last_progress, last_count = time.monotonic(), done
            elif time.monotonic() - last_progress > stall:
                raise TimeoutError(f"soak stalled at {done}/{n} jobs")
            if sent - done > WINDOW:
                time.sleep(0.002)
                continue
            size = min(BATCH, n - sent)
            client.submit_many([JobRequest("noop", (tag, i)) for i in range(sent, sent + size)])
            sent += size
        tally.wait_count(tag, n, stall=stall)
        elapsed = time.monotonic() - start
        time.sleep(max(3.0, 2 * interval))  # a retention sweep after the last job
        stop.set()
        sampler.join(5.0)
        samples.append(
            (time.monotonic() - start, tally.count(tag), process.memory_info().rss / 2**20)
        )
        runs, unique = tally.count(tag), tally.unique(tag)
        verified = runs == n and unique == n
        return Record(
            "jobsd-memory",
            "jobsd",
            "memory",
            "soak",
            n,
            jobs_per_s=n / elapsed,
            seconds=elapsed,
            versions=system.versions(),
            settings=f"{system.settings}; broker {broker_args}",
            note="" if verified else f"{runs} runs of {unique} distinct jobs",
            verified=verified,
            extra=flatness(samples),
        )
    finally:
        stop.set()
        system.close()
        broker.stop()


def flatness(samples: list[tuple[float, int, float]]) -> dict[str, object]:
    """Flat: from the first quarter of the jobs to the end, RSS grew by less
    than 5% (and 10 MB) — warm-up (heaps, pools, the first retention window)
    is allowed, steady growth is not."""
    total = samples[-1][1] or 1
    settled = next((s for s in samples if s[1] >= total / 4), samples[0])
    end, peak = samples[-1][2], max(s[2] for s in samples)
    growth = end - settled[2]
    return {
        "rss_start_mb": samples[0][2],
        "rss_settled_mb": settled[2],
        "rss_end_mb": end,
        "rss_peak_mb": peak,
        "growth_after_warmup_mb": growth,
        "flat": growth < max(0.05 * settled[2], 10.0),
        "samples": [{"t": round(t, 2), "jobs": j, "rss_mb": round(m, 1)} for t, j, m in samples],
    }
