"""What the broker's commands and chores may use of the broker: its parts,
its clock, and how it sends and ends sessions. The loop (``loop.Broker``)
provides it; commands and timers depend on this, never on the loop."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from jobsd.broker.config import BrokerConfig
from jobsd.broker.cron import CronTable
from jobsd.broker.manager import JobManager, Outcome
from jobsd.broker.sessions import Sessions, WorkerSession
from jobsd.broker.waiters import Waiters
from jobsd.keys import KeyRing
from jobsd.storage import JobRecord


class BrokerCore(Protocol):
    config: BrokerConfig
    clock: Callable[[], float]
    manager: JobManager
    sessions: Sessions
    waiters: Waiters
    cron: CronTable
    #: The keys let in (None: a broker without keys, and without roles).
    keys: KeyRing | None
    #: Queues that may have ready jobs: the next dispatch looks at them.
    maybe_ready: set[str]
    #: When the earliest scheduled job is due (None: none is).
    next_due: float | None
    #: Messages refused since the last summary in the log, by error code.
    refused: Counter[str]

    def send(self, peer: bytes, command: bytes, body: Any) -> bool:
        """Send without blocking; False when the peer is gone."""

    def end_session(
        self,
        session: WorkerSession,
        reason: str,
        undelivered: Sequence[JobRecord] = (),
        gone: bool = False,
    ) -> None:
        """End a session and put back at once what it held."""

    def settle(self, outcomes: Sequence[Outcome]) -> None:
        """After jobs were put back outside a turn: dispatch and waiters."""
