"""What every jobsd program does alike as a process: how it logs, and how it
stops (SIGTERM or SIGINT once asks for a graceful stop, a second time for an
immediate one). Shared by the broker, workers and the worker supervisor."""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

#: The pid tells the processes of a host apart.
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"


def on_stop_signals(first: Callable[[], None], again: Callable[[], None]) -> None:
    calls: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        calls.append(signum)
        (first if len(calls) == 1 else again)()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
