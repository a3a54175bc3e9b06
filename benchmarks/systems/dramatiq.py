"""Dramatiq on RabbitMQ and on Redis: ``dramatiq --processes 2 --threads 8``
(Dramatiq's own defaults on a 2-core machine)."""

from __future__ import annotations

from collections.abc import Sequence

import dramatiq

from benchmarks.apps.dramatiq_app import QUEUE, declare, make_broker
from benchmarks.procs import Proc, python
from benchmarks.systems.base import BATCH, System


class _Dramatiq(System):
    family = "dramatiq"
    packages = ("dramatiq",)
    batch_api = f"group(...).run() of {BATCH} (no wire batch: one enqueue per job)"
    settings = "dramatiq --processes 2 --threads 8 (its defaults here), max_retries 0"
    kind = ""

    def prepare(self) -> None:
        self.broker = make_broker(self.kind)
        self.noop, self.lat = declare(self.broker)
        self.broker.flush_all()

    def start_workers(self) -> None:
        self.procs.append(
            Proc(
                f"{self.key}-worker",
                python(
                    "-m",
                    "dramatiq",
                    "benchmarks.apps.dramatiq_app",
                    "--processes",
                    "2",
                    "--threads",
                    "8",
                    "--queues",
                    QUEUE,
                ),
                self.workdir,
                {"BENCH_DRAMATIQ_BROKER": self.kind},
            )
        )

    def submit(self, tag: str, i: int) -> None:
        self.noop.send(tag, i)

    def submit_batch(self, tag: str, ids: Sequence[int]) -> None:
        dramatiq.group([self.noop.message(tag, i) for i in ids], broker=self.broker).run()

    def submit_latency(self, tag: str, i: int) -> None:
        self.lat.send(tag, i)

    def close(self) -> None:
        super().close()
        broker = getattr(self, "broker", None)
        if broker is not None:
            broker.close()


class DramatiqRabbit(_Dramatiq):
    key = "dramatiq-rabbitmq"
    backend = "RabbitMQ"
    kind = "rabbitmq"
    packages = ("dramatiq", "pika")


class DramatiqRedis(_Dramatiq):
    key = "dramatiq-redis"
    backend = "Redis"
    kind = "redis"
    packages = ("dramatiq", "redis")
