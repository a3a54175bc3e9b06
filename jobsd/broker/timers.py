"""The broker's recurring chores, each a small object with a name, an interval
and one step, picked from one heap by the loop between turns.

A chore decides nothing itself: it asks the worker sessions who is silent or
what leases they hold, and the job manager what those mean.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from typing import Protocol

from jobsd.broker.core import BrokerCore
from jobsd.protocol.framing import HEARTBEAT

log = logging.getLogger("jobsd.broker")

#: Seconds between two log lines about refused keys.
REFUSALS_INTERVAL = 60.0


class Chore(Protocol):
    name: str
    #: Seconds between runs; None: once.
    interval: float | None

    def run(self, now: float) -> None: ...


class Timers:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Chore]] = []
        self._seq = itertools.count()

    def at(self, when: float, chore: Chore) -> None:
        heapq.heappush(self._heap, (when, next(self._seq), chore))

    def next_at(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def run_due(self, now: float) -> None:
        while self._heap and self._heap[0][0] <= now:
            _, _, chore = heapq.heappop(self._heap)
            if chore.interval is not None:  # first: a chore that fails runs again
                self.at(now + chore.interval, chore)
            chore.run(now)


class Heartbeats:
    """Heartbeat every worker; declare lost those silent too long."""

    name = "heartbeat"

    def __init__(self, broker: BrokerCore) -> None:
        self.broker = broker
        self.interval: float | None = broker.config.heartbeat
        self._last: float | None = None

    def run(self, now: float) -> None:
        broker = self.broker
        last, self._last = self._last, now
        if last is not None and now - last > 2 * broker.config.heartbeat:
            # This loop did not run for a while (the process was stopped, the
            # machine paused, storage hung): the workers' heartbeats may wait
            # unread in the socket. Judge no one on that: every worker gets a
            # fresh liveness period (and a reconnected one the time to say
            # HELLO and take its running jobs over).
            log.warning("broker loop stalled for %.1f s: workers get a fresh liveness", now - last)
            broker.sessions.forgive(now)
        for session in broker.sessions.silent_since(now - broker.config.silence):
            broker.end_session(session, "worker lost: no heartbeat")
        for session in broker.sessions:
            if not broker.send(session.peer, HEARTBEAT, {}):  # its connection is gone
                broker.end_session(session, "worker lost: could not send it a heartbeat", gone=True)


class Leases:
    """Keep live workers' leases ahead of expiry; take back expired ones."""

    name = "leases"

    def __init__(self, broker: BrokerCore) -> None:
        self.broker = broker
        self.interval: float | None = broker.config.lease / 3

    def run(self, now: float) -> None:
        broker = self.broker
        broker.manager.keep_alive(broker.sessions.leases(), now)
        expired = [
            job for job in broker.manager.expired(now) if broker.sessions.owner(job.id) is None
        ]
        if expired:
            log.warning("%d job lease(s) expired: their worker is gone", len(expired))
            broker.settle(broker.manager.lost(expired, "lease expired: worker gone", now))


class Orphans:
    """Once, a liveness period after start: the jobs this broker handed out
    before it restarted whose workers did not come back go back now, not at
    the end of their leases."""

    name = "orphans"
    interval: float | None = None  # once

    def __init__(self, broker: BrokerCore) -> None:
        self.broker = broker

    def run(self, now: float) -> None:
        broker = self.broker
        orphans = [job for job in broker.manager.orphans() if not broker.sessions.accounted(job.id)]
        if orphans:
            log.warning(
                "%d job(s) handed out before this broker started: their workers did not come "
                "back, they go back",
                len(orphans),
            )
            broker.settle(broker.manager.lost(orphans, "worker lost: broker restarted", now))


class Retention:
    name = "retention"

    def __init__(self, broker: BrokerCore) -> None:
        self.broker = broker
        self.interval: float | None = broker.config.retention_interval

    def run(self, now: float) -> None:
        self.broker.manager.retention(now)


class Poll:
    """Catch what other brokers on a shared database did: new ready jobs, due
    jobs, finished jobs that producers here wait for."""

    name = "poll"

    def __init__(self, broker: BrokerCore) -> None:
        self.broker = broker
        self.interval: float | None = broker.config.poll_interval

    def run(self, now: float) -> None:
        broker = self.broker
        broker.maybe_ready.update(broker.sessions.queues())
        broker.next_due = broker.manager.next_run_at()
        broker.waiters.finished(broker.waiters.waited(), only_final=True)


class Refusals:
    """Say once an interval how many handshakes the keys refused, and how
    many messages were refused past the first of each kind (which the loop
    logs in full): a flood of bad or forbidden messages, or an attacker's
    reconnect loop, must not write a log line each."""

    name = "refusals"

    def __init__(self, broker: BrokerCore) -> None:
        self.broker = broker
        self.interval: float | None = REFUSALS_INTERVAL
        self._logged = 0

    def run(self, now: float) -> None:
        keys = self.broker.keys
        if keys is not None and keys.refused > self._logged:
            log.warning(
                "refused %d connection attempt(s) with keys not in %s in the last %.0f s",
                keys.refused - self._logged,
                keys.directory,
                REFUSALS_INTERVAL,
            )
            self._logged = keys.refused
        refused = self.broker.refused
        more = {code: n - 1 for code, n in sorted(refused.items()) if n > 1}
        if more:
            log.warning(
                "refused %d more message(s) in the last %.0f s: %s",
                sum(more.values()),
                REFUSALS_INTERVAL,
                ", ".join(f"{code} {n}" for code, n in more.items()),
            )
        refused.clear()
