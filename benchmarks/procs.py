"""Child processes that are always cleaned up: each runs in its own process
group (so forked and spawned grandchildren die with it), logs to a file, and is
killed on stop, on an error, at exit and on SIGTERM/SIGINT of the harness."""

from __future__ import annotations

import atexit
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

_LIVE: list[Proc] = []


class Proc:
    def __init__(
        self,
        name: str,
        argv: list[str],
        logdir: Path,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.argv = argv
        self.log_path = logdir / f"{name}.log"
        full_env = {**os.environ, **(env or {})}
        full_env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(REPO), full_env.get("PYTHONPATH")])
        )
        full_env["PYTHONUNBUFFERED"] = "1"
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            argv,
            cwd=REPO,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: killpg takes its children
        )
        _LIVE.append(self)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float, count: int = 1) -> re.Match[str]:
        """The ``count``-th match of ``pattern`` in the process's log."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            matches = list(regex.finditer(self.output()))
            if len(matches) >= count:
                return matches[count - 1]
            if not self.alive():
                raise RuntimeError(
                    f"{self.name} exited with {self.popen.returncode} before logging "
                    f"{pattern!r}:\n{self.tail()}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.name}: no {pattern!r} within {timeout} s:\n{self.tail()}"
                )
            time.sleep(0.02)

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    def stop(self, grace: float = 3.0) -> None:
        """SIGTERM to the whole group, SIGKILL to what is left after ``grace``."""
        if self.alive():
            _killpg(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        # The leader may be gone while children in its group live on.
        _killpg(self.pid, signal.SIGKILL)
        try:
            self.popen.wait(5.0)
        except subprocess.TimeoutExpired:
            pass
        if not self._log.closed:
            self._log.close()
        if self in _LIVE:
            _LIVE.remove(self)


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


def cleanup_all() -> None:
    for proc in list(_LIVE):
        proc.stop(grace=1.0)


def _on_signal(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def install_cleanup() -> None:
    """Kill every child at exit, and turn SIGTERM into the same unwinding as Ctrl-C."""
    atexit.register(cleanup_all)
    signal.signal(signal.SIGTERM, _on_signal)


def wait_until(predicate, timeout: float, what: str, interval: float = 0.005):  # type: ignore[no-untyped-def]
    """Poll ``predicate`` until it returns something truthy; raise on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
