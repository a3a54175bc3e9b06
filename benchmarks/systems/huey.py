"""Huey on Redis (blocking BRPOP) and on SQLite (polled):
``huey_consumer -k process -w 2``. Huey has no batch enqueue."""

from __future__ import annotations

from benchmarks.apps.huey_app import make_huey
from benchmarks.procs import Proc, python
from benchmarks.systems.base import System

CONSUMER = "huey.bin.huey_consumer"


class _Huey(System):
    family = "huey"
    packages = ("huey",)
    batch_api = None
    kind = ""
    poll_flags: tuple[str, ...] = ()

    def sqlite_path(self) -> str:
        return str(self.workdir / "huey-bench.sqlite3")

    def prepare(self) -> None:
        self.huey, self.noop, self.lat = make_huey(self.kind, self.sqlite_path())
        self.huey.flush()

    def start_workers(self) -> None:
        self.procs.append(
            Proc(
                f"{self.key}-worker",
                python(
                    "-m",
                    CONSUMER,
                    "benchmarks.apps.huey_app.huey",
                    "-k",
                    "process",
                    "-w",
                    "2",
                    "-q",
                    *self.poll_flags,
                ),
                self.workdir,
                {"BENCH_HUEY": self.kind, "BENCH_HUEY_SQLITE": self.sqlite_path()},
            )
        )

    def submit(self, tag: str, i: int) -> None:
        self.noop(tag, i)

    def submit_latency(self, tag: str, i: int) -> None:
        self.lat(tag, i)

    def queued(self) -> int | None:
        return int(self.huey.pending_count())


class HueyRedis(_Huey):
    key = "huey-redis"
    backend = "Redis"
    kind = "redis"
    packages = ("huey", "redis")
    settings = "huey_consumer -k process -w 2 -q (RedisHuey: blocking BRPOP)"


class HueySQLite(_Huey):
    key = "huey-sqlite"
    backend = "SQLite (WAL)"
    kind = "sqlite"
    # Polled storage: the default backoff grows an idle poll to 10 s, which
    # would make the latency workload measure only that; poll every 1-50 ms.
    poll_flags = ("-d", "0.001", "-m", "0.05")
    settings = "huey_consumer -k process -w 2 -q -d 0.001 -m 0.05 (SqliteHuey polls)"
