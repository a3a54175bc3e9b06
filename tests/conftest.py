"""Fixtures that run the real programs: ``jobsd serve`` and ``jobsd worker``
processes on loopback, talking real ZeroMQ, watched through their logs."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobsd import Client

TESTS = Path(__file__).parent
REPO = TESTS.parent
START_TIMEOUT = 15.0


class Process:
    """A jobsd process whose output a thread reads line by line, so a test
    can await a log line (an event) instead of sleeping."""

    def __init__(self, args: list[str], env_extra: dict[str, str] | None = None) -> None:
        env = {**os.environ, **(env_extra or {})}
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(TESTS), str(REPO), env.get("PYTHONPATH")])
        )
        env["PYTHONUNBUFFERED"] = "1"
        self.args = args
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jobsd", "--log-level", "DEBUG", *args],
            cwd=TESTS,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(
        self, pattern: str, timeout: float = START_TIMEOUT, count: int = 1
    ) -> re.Match[str]:
        """The ``count``-th log line that matches ``pattern``, once it is there."""
        regex = re.compile(pattern)
        seen = 0
        matches: list[re.Match[str]] = []

        def found() -> re.Match[str] | None:
            nonlocal seen
            for line in self.lines[seen:]:
                match = regex.search(line)
                if match:
                    matches.append(match)
            seen = len(self.lines)
            return matches[count - 1] if len(matches) >= count else None

        with self._changed:
            match = self._changed.wait_for(
                lambda: found() or (self.proc.poll() is not None and not self._reader.is_alive()),
                timeout,
            )
        if not isinstance(match, re.Match):
            raise AssertionError(
                f"no log line matching {pattern!r} within {timeout} s "
                f"(exit code {self.proc.poll()}); output:\n" + "\n".join(self.lines[-60:])
            )
        return match

    def signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, then the exit code (SIGKILL if it does not stop in time)."""
        self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"{self.args[0]} did not stop within {timeout} s") from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def output(self) -> str:
        return "\n".join(self.lines)


class Cluster:
    """Brokers and workers a test starts; all stopped at its end."""

    def __init__(self) -> None:
        self.processes: list[Process] = []
        self.clients: list[Client] = []

    def broker(
        self, storage: str = "memory://", *extra: str, endpoint: str = "tcp://127.0.0.1:*"
    ) -> tuple[Process, str]:
        proc = Process(["serve", "--bind", endpoint, "--storage", storage, *extra])
        self.processes.append(proc)
        bound = proc.wait_for(r"broker serving on (\S+)").group(1)
        return proc, bound

    def worker(
        self,
        endpoint: str,
        app: str,
        *extra: str,
        wait: bool = True,
        env: dict[str, str] | None = None,
    ) -> Process:
        proc = Process(["worker", app, "--connect", endpoint, *extra], env)
        self.processes.append(proc)
        if wait:
            proc.wait_for("registered with the broker")
        return proc

    def client(self, endpoint: str, **options: float) -> Client:
        client = Client(endpoint, **options)  # type: ignore[arg-type]
        self.clients.append(client)
        return client

    def close(self) -> None:
        for client in self.clients:
            client.close()
        for proc in reversed(self.processes):
            if proc.proc.poll() is None:
                proc.signal(signal.SIGKILL)
                proc.proc.wait()


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    c = Cluster()
    try:
        yield c
    finally:
        c.close()
