"""RQ on Redis: two ``rq worker`` processes, each running one job at a time,
with the default forking ``Worker`` (a fork per job) or ``SimpleWorker``."""

from __future__ import annotations

from collections.abc import Sequence

import redis
from rq import Queue

from benchmarks.procs import Proc, python
from benchmarks.systems.base import BATCH, System
from benchmarks.tasks import REDIS_URL

QUEUE = "bench_rq"
NOOP = "benchmarks.tasks.noop"
LAT = "benchmarks.tasks.lat"


class _RQ(System):
    family = "rq"
    backend = "Redis"
    batch_api = f"Queue.enqueue_many (one pipeline per {BATCH} jobs)"
    packages = ("rq", "redis")
    worker_class = ""

    def prepare(self) -> None:
        self.queue = Queue(QUEUE, connection=redis.Redis.from_url(REDIS_URL))
        self.queue.empty()

    def start_workers(self) -> None:
        env = {"BENCH_RECORD_DIRECT": "1"} if self.worker_class == "rq.worker.Worker" else {}
        for n in range(2):
            self.procs.append(
                Proc(
                    f"{self.key}-worker{n}",
                    python(
                        "-m",
                        "rq.cli",
                        "worker",
                        "-u",
                        REDIS_URL,
                        "-w",
                        self.worker_class,
                        "-q",
                        "--disable-job-desc-logging",
                        QUEUE,
                    ),
                    self.workdir,
                    env,
                )
            )

    def submit(self, tag: str, i: int) -> None:
        self.queue.enqueue(NOOP, tag, i)

    def submit_batch(self, tag: str, ids: Sequence[int]) -> None:
        self.queue.enqueue_many([Queue.prepare_data(NOOP, (tag, i)) for i in ids])

    def submit_latency(self, tag: str, i: int) -> None:
        self.queue.enqueue(LAT, tag, i)

    def queued(self) -> int | None:
        return self.queue.count


class RQFork(_RQ):
    key = "rq-fork"
    worker_class = "rq.worker.Worker"
    settings = "2 x `rq worker` (default Worker: forks a work horse per job), -q"
    max_n = 2000
    max_n_quick = 200


class RQSimple(_RQ):
    key = "rq-simple"
    worker_class = "rq.worker.SimpleWorker"
    settings = "2 x `rq worker -w SimpleWorker` (jobs in the worker process), -q"
