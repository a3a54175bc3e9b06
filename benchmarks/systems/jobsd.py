"""jobsd on memory, SQLite and PostgreSQL storage: a broker process per run,
``jobsd worker --processes 2 -c 8``, producers through ``jobsd.Client``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from benchmarks.procs import Proc, python
from benchmarks.systems.base import System
from jobsd import Client, JobRequest

APP = "benchmarks.apps.jobsd_app:jobs"
QUEUE = "default"  # the broker and its storage are the benchmark's own
CONCURRENCY = 8
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
PG_BENCH_DB = "jobsd_bench"
START_TIMEOUT = 30.0


class Jobsd(System):
    family = "jobsd"
    peer = False
    batch_api = "Client.submit_many (one SUBMIT per 1000 jobs)"
    settings = f"jobsd worker --processes 2 -c {CONCURRENCY} (threads), credit-based push"
    packages = ("jobsd", "pyzmq", "msgpack")
    storage_kind = "memory"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.broker: Proc | None = None
        self.endpoint = ""
        self.client: Client | None = None

    def storage_url(self) -> str:
        raise NotImplementedError

    def serve_args(self) -> tuple[str, ...]:
        """What else ``jobsd serve`` is given (keys, for a secured broker)."""
        return ()

    def key_args(self, role: str) -> dict[str, str]:
        """The client keys of a peer of ``role`` (none on a broker without keys)."""
        return {}

    def prepare(self) -> None:
        self.broker = Proc(
            f"{self.key}-broker",
            python(
                "-m",
                "jobsd",
                "serve",
                "--bind",
                "tcp://127.0.0.1:*",
                "--storage",
                self.storage_url(),
                *self.serve_args(),
            ),
            self.workdir,
        )
        self.endpoint = self.broker.wait_for(r"broker serving on (\S+)", START_TIMEOUT).group(1)
        self.client = Client(self.endpoint, timeout=30.0, **self.key_args("admins"))

    def start_workers(self) -> None:
        self.procs.append(
            Proc(
                f"{self.key}-workers",
                python(
                    "-m",
                    "jobsd",
                    "worker",
                    APP,
                    "--connect",
                    self.endpoint,
                    "-q",
                    QUEUE,
                    "-c",
                    str(CONCURRENCY),
                    "--processes",
                    "2",
                    *(f"--{k.replace('_', '-')}={v}" for k, v in self.key_args("workers").items()),
                ),
                self.workdir,
            )
        )

    def wait_ready(self, timeout: float) -> None:
        self.procs[0].wait_for("registered with the broker", timeout, count=2)

    def close(self) -> None:
        super().close()
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.broker is not None:
            self.broker.stop()
            self.broker = None

    def submit(self, tag: str, i: int) -> None:
        assert self.client is not None
        self.client.submit("noop", tag, i)

    def submit_batch(self, tag: str, ids: Sequence[int]) -> None:
        assert self.client is not None
        self.client.submit_many([JobRequest("noop", (tag, i)) for i in ids])

    def submit_latency(self, tag: str, i: int) -> None:
        assert self.client is not None
        self.client.submit("lat", tag, i)

    def _counts(self) -> dict[str, int]:
        assert self.client is not None
        queue = self.client.stats()["queues"].get(QUEUE) or {}
        return dict(queue.get("counts") or {})

    def queued(self) -> int | None:
        return self._counts().get("ready", 0)

    def broker_done(self) -> int | None:
        return self._counts().get("done", 0)

    def extra_pids(self) -> dict[str, int]:
        pids = {"broker": self.broker.pid} if self.broker else {}
        if self.procs:
            pids["workers"] = self.procs[0].pid
        return pids


class JobsdMemory(Jobsd):
    key = "jobsd-memory"
    backend = "memory"

    def storage_url(self) -> str:
        return "memory://"


class JobsdCurve(JobsdMemory):
    """jobsd-memory with every connection encrypted and authenticated (CURVE
    keys, a role per key): what security costs, beside the same run plain."""

    key = "jobsd-memory-curve"
    backend = "memory, CURVE keys"

    def serve_args(self) -> tuple[str, ...]:
        from jobsd.keys import keygen

        keys = self.workdir / "jobsd-bench-keys"
        if not (keys / "broker.key_secret").exists():
            keygen(keys, "broker")
            keygen(keys / "admins", "bench")
            keygen(keys / "workers", "bench")
        return ("--keys", str(keys))

    def key_args(self, role: str) -> dict[str, str]:
        keys = self.workdir / "jobsd-bench-keys"
        return {
            "server_key": str(keys / "broker.key"),
            "key": str(keys / role / "bench.key_secret"),
        }


class JobsdSQLite(Jobsd):
    key = "jobsd-sqlite"
    backend = "SQLite (WAL, synchronous=FULL)"

    def storage_url(self) -> str:
        path = self.workdir / "jobsd-bench.sqlite3"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        return f"sqlite:///{path}"


class JobsdPostgres(Jobsd):
    key = "jobsd-postgres"
    backend = "PostgreSQL"
    packages = (*Jobsd.packages, "sqlalchemy", "psycopg")

    def storage_url(self) -> str:
        """A database of its own, emptied: nothing else's tables are touched."""
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=10) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (PG_BENCH_DB,)
            ).fetchone()
            if not exists:
                conn.execute(f"CREATE DATABASE {PG_BENCH_DB}")
        url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{PG_BENCH_DB}"
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
            conn.execute("DROP SCHEMA IF EXISTS public CASCADE")
            conn.execute("CREATE SCHEMA public")
        return url
