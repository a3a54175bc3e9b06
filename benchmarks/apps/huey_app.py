"""Huey workers: ``huey_consumer benchmarks.apps.huey_app.huey``; the storage
(redis or sqlite) comes from ``BENCH_HUEY`` (and ``BENCH_HUEY_SQLITE``)."""

from __future__ import annotations

import os
from typing import Any

from huey import Huey, RedisHuey, SqliteHuey

from benchmarks import tasks

NAME = "bench_huey"


def make_huey(kind: str, sqlite_path: str | None = None) -> tuple[Huey, Any, Any]:
    """The Huey instance and its two bench tasks (named explicitly, so the
    producer and the consumer agree on them)."""
    if kind == "sqlite":
        huey: Huey = SqliteHuey(NAME, filename=sqlite_path or "huey-bench.sqlite3")
    else:
        huey = RedisHuey(NAME, url=tasks.REDIS_URL)
    noop_task = huey.task(name="bench_noop")(tasks.noop)
    lat_task = huey.task(name="bench_lat")(tasks.lat)
    return huey, noop_task, lat_task


huey, noop, lat = make_huey(
    os.environ.get("BENCH_HUEY", "redis"), os.environ.get("BENCH_HUEY_SQLITE")
)
