"""Dramatiq workers: ``dramatiq benchmarks.apps.dramatiq_app``; the broker
(rabbitmq or redis) comes from ``BENCH_DRAMATIQ_BROKER``."""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker

from benchmarks import tasks

QUEUE = "bench_dramatiq"
RABBIT_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"


def make_broker(kind: str) -> dramatiq.Broker:
    if kind == "redis":
        return RedisBroker(url=tasks.REDIS_URL, namespace="bench_dramatiq")
    return RabbitmqBroker(url=RABBIT_URL)


def declare(broker: dramatiq.Broker) -> tuple[dramatiq.Actor, dramatiq.Actor]:
    """The two bench actors on ``broker`` (no retries: a failure must show)."""
    noop_actor = dramatiq.actor(
        tasks.noop, broker=broker, actor_name="bench_noop", queue_name=QUEUE, max_retries=0
    )
    lat_actor = dramatiq.actor(
        tasks.lat, broker=broker, actor_name="bench_lat", queue_name=QUEUE, max_retries=0
    )
    return noop_actor, lat_actor


broker = make_broker(os.environ.get("BENCH_DRAMATIQ_BROKER", "rabbitmq"))
dramatiq.set_broker(broker)
noop, lat = declare(broker)
