"""Periodic jobs: the schedules workers announce, and the jobs their fires make.

Each fire becomes a job whose id is derived from the schedule and the fire
time. Storage adds a job id once, so a fire is enqueued exactly once even when
several workers announce the same schedule, several brokers share a database,
or a broker restarts in the middle of a period. Fires that fall while no broker
runs are skipped, not caught up (a burst of stale runs after an outage helps no
one); the next fire after start runs as usual.

A schedule lives while a connected worker declares it: when the last worker
session that declared it ends (BYE, lost, replaced), it stops firing, and a
broker that restarts learns its schedules anew from the workers' HELLOs.
"""

from __future__ import annotations

import hashlib
import logging

from croniter import CroniterError, croniter

from jobsd.protocol.framing import ProtocolError, pack
from jobsd.protocol.options import JobOptions
from jobsd.protocol.producer import JobSubmission
from jobsd.protocol.worker import Schedule

log = logging.getLogger("jobsd.cron")


class CronTable:
    def __init__(self) -> None:
        self._next: dict[str, float] = {}
        self._schedules: dict[str, Schedule] = {}
        self._declared_by: dict[str, set[bytes]] = {}

    @staticmethod
    def key(schedule: Schedule) -> str:
        digest = hashlib.sha256(pack(schedule.to_wire())).hexdigest()
        return digest[:20]

    @staticmethod
    def check(schedules: list[Schedule]) -> None:
        """``ProtocolError`` for an invalid cron expression among them."""
        for schedule in schedules:
            if not croniter.is_valid(schedule.cron):
                raise ProtocolError(f"invalid cron expression {schedule.cron!r}")

    def add(self, schedules: list[Schedule], now: float, by: bytes = b"") -> None:
        """Adopt schedules that the worker session ``by`` declares (known ones
        are kept as they are). ``ProtocolError`` for an invalid cron
        expression (then none is adopted). A valid one that never fires after
        ``now`` (February 30th, a year gone by) is kept, without a next fire."""
        self.check(schedules)
        for schedule in schedules:
            key = self.key(schedule)
            self._declared_by.setdefault(key, set()).add(by)
            if key not in self._schedules:
                self._schedules[key] = schedule
                at = _following(croniter(schedule.cron, now))
                if at is None:
                    log.warning("cron: %r (%s) never fires after now", schedule.cron, schedule.name)
                else:
                    self._next[key] = at

    def forget(self, by: bytes) -> None:
        """The session ``by`` ended: its schedules no other session declares stop."""
        for key, sessions in list(self._declared_by.items()):
            sessions.discard(by)
            if not sessions:
                schedule = self._schedules.pop(key)
                del self._declared_by[key]
                self._next.pop(key, None)
                log.info("cron: %r (%s) is declared by no worker now", schedule.cron, schedule.name)

    def __len__(self) -> int:
        return len(self._schedules)

    def next_fire(self) -> float | None:
        return min(self._next.values(), default=None)

    def due(self, now: float) -> list[JobSubmission]:
        """The fires due by ``now``, as submissions (one per schedule: a broker
        that slept through several fires runs the latest once)."""
        fires = []
        for key, at in list(self._next.items()):
            if at > now:
                continue
            schedule = self._schedules[key]
            # Straight to the fires around now: after a long stall, stepping
            # through every missed fire of a per-second schedule took seconds.
            following = _following(croniter(schedule.cron, now))
            latest = max(at, _latest(schedule.cron, now))
            if following is None:
                log.info("cron: %r (%s) fires for the last time", schedule.cron, schedule.name)
                del self._next[key]
            else:
                self._next[key] = following
            fires.append(
                JobSubmission(
                    f"cron-{key}-{int(latest)}",
                    schedule.name,
                    schedule.args,
                    JobOptions(queue=schedule.queue, run_at=latest),
                )
            )
        return fires


def _latest(cron: str, now: float) -> float:
    """The last fire at or before ``now`` (0.0 when croniter finds none)."""
    try:
        # A millisecond past now, so that a fire exactly at now counts.
        return float(croniter(cron, now + 0.001).get_prev(float))
    except CroniterError:
        return 0.0


def _following(times: croniter) -> float | None:
    """The next time of a cron iterator; None when there is none (croniter
    gives up after years without a match)."""
    try:
        return float(times.get_next(float))
    except CroniterError:
        return None
