"""Celery workers: ``celery -A benchmarks.apps.celery_app worker``; the broker
URL and the acks_late variant come from the environment."""

from __future__ import annotations

import os

from celery import Celery

from benchmarks import tasks

QUEUE = "bench_celery"


def make_app(broker_url: str, acks_late: bool) -> Celery:
    app = Celery("bench", broker=broker_url)
    app.conf.update(
        task_default_queue=QUEUE,
        task_ignore_result=True,  # no result backend: nothing waits on results
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    if acks_late:
        app.conf.update(task_acks_late=True, worker_prefetch_multiplier=1)
    return app


app = make_app(
    os.environ.get("BENCH_CELERY_BROKER", "amqp://guest:guest@127.0.0.1:5672//"),
    os.environ.get("BENCH_CELERY_ACKS_LATE") == "1",
)


@app.task(name="bench.noop")
def noop(tag: str, i: int) -> None:
    tasks.noop(tag, i)


@app.task(name="bench.lat")
def lat(tag: str, i: int) -> None:
    tasks.lat(tag, i)
