"""Celery on RabbitMQ and on Redis, prefork pool with 2 child processes,
either acks_late with prefetch 1 or Celery's defaults (early ack, prefetch 4)."""

from __future__ import annotations

from collections.abc import Sequence

from celery import group

from benchmarks.apps.celery_app import QUEUE, make_app
from benchmarks.procs import Proc, python
from benchmarks.systems.base import BATCH, System
from benchmarks.tasks import REDIS_URL

RABBIT_URL = "amqp://guest:guest@127.0.0.1:5672//"
WORKER_FLAGS = ("--without-gossip", "--without-mingle", "--without-heartbeat")


class _Celery(System):
    family = "celery"
    packages = ("celery", "kombu")
    batch_api = f"group(...).apply_async() of {BATCH} (one publish per job, one connection)"
    broker_url = ""
    acks_late = False

    def prepare(self) -> None:
        self.app = make_app(self.broker_url, self.acks_late)
        self.noop = self.app.signature("bench.noop", queue=QUEUE)
        with self.app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=3)
            queue = self.app.amqp.queues[QUEUE]
            queue(conn.default_channel).declare()
            queue(conn.default_channel).purge()

    def start_workers(self) -> None:
        env = {
            "BENCH_CELERY_BROKER": self.broker_url,
            "BENCH_CELERY_ACKS_LATE": "1" if self.acks_late else "0",
        }
        self.procs.append(
            Proc(
                f"{self.key}-worker",
                python(
                    "-m",
                    "celery",
                    "-A",
                    "benchmarks.apps.celery_app",
                    "worker",
                    "-Q",
                    QUEUE,
                    "-P",
                    "prefork",
                    "-c",
                    "2",
                    "-l",
                    "warning",
                    *WORKER_FLAGS,
                ),
                self.workdir,
                env,
            )
        )

    def submit(self, tag: str, i: int) -> None:
        self.app.send_task("bench.noop", (tag, i), queue=QUEUE)

    def submit_batch(self, tag: str, ids: Sequence[int]) -> None:
        group(self.noop.clone((tag, i)) for i in ids).apply_async()

    def submit_latency(self, tag: str, i: int) -> None:
        self.app.send_task("bench.lat", (tag, i), queue=QUEUE)

    def queued(self) -> int | None:
        with self.app.connection_for_write() as conn:
            return int(
                self.app.amqp.queues[QUEUE](conn.default_channel)
                .queue_declare(passive=True)
                .message_count
            )

    def close(self) -> None:
        super().close()
        app = getattr(self, "app", None)
        if app is not None:
            app.close()


def _variant(name: str, url: str, backend: str, late: bool) -> type[_Celery]:
    settings = (
        "celery worker -P prefork -c 2 "
        + ("task_acks_late, prefetch_multiplier 1" if late else "defaults (early ack, prefetch 4)")
        + ", without gossip/mingle/heartbeat, -l warning"
    )
    return type(
        name,
        (_Celery,),
        {
            "key": f"celery-{backend.lower()}-{'late' if late else 'default'}",
            "backend": backend,
            "broker_url": url,
            "acks_late": late,
            "settings": settings,
        },
    )


CeleryRabbitLate = _variant("CeleryRabbitLate", RABBIT_URL, "RabbitMQ", True)
CeleryRabbitDefault = _variant("CeleryRabbitDefault", RABBIT_URL, "RabbitMQ", False)
CeleryRedisLate = _variant("CeleryRedisLate", REDIS_URL, "Redis", True)
CeleryRedisDefault = _variant("CeleryRedisDefault", REDIS_URL, "Redis", False)
