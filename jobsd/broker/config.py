"""The broker's settings, with their defaults in one place (``jobsd serve``
takes its option defaults from here)."""

from __future__ import annotations

import socket
from dataclasses import dataclass

from jobsd.vocabulary import DEFAULT_MAX_PAYLOAD, MAX_MESSAGE_BYTES

DAY = 86400.0


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    #: Seconds between heartbeats, both ways (workers take it from WELCOME).
    heartbeat: float = 1.0
    #: Heartbeats a worker may miss before it is declared lost.
    liveness: int = 3
    #: How long a claim lasts without its worker's heartbeats extending it.
    lease: float = 30.0
    #: How often to look for work other brokers on the database made ready.
    poll_interval: float = 1.0
    max_message_bytes: int = MAX_MESSAGE_BYTES
    #: The largest args or result of one job, in bytes (msgpack-encoded).
    max_payload: int = DEFAULT_MAX_PAYLOAD
    #: Worker connections and producers blocked in WAIT held at once, at most:
    #: past them a HELLO or a WAIT is refused, not a broker grown without end.
    max_workers: int = 10_000
    max_waiters: int = 10_000
    #: How long finished jobs (and their results) are kept, by state; None: forever.
    keep_done: float | None = 7 * DAY
    keep_dead: float | None = 30 * DAY
    keep_cancelled: float | None = 7 * DAY
    retention_interval: float = 60.0
    #: The name storage records with the leases this broker hands out, so that
    #: after a restart it takes back its own and no other broker's. Stable
    #: across restarts: by default the host and the endpoint bound.
    name: str = ""

    @property
    def silence(self) -> float:
        """How long a worker may be silent before it is declared lost."""
        return self.heartbeat * self.liveness

    def validate(self) -> None:
        """``ValueError`` naming the first setting that cannot work."""
        if not self.heartbeat >= 0.01:
            raise ValueError("heartbeat must be at least 0.01 s (a smaller one spins the loop)")
        if self.liveness < 1:
            raise ValueError("liveness must be at least 1 heartbeat")
        if not self.lease >= 0.1:
            raise ValueError("lease must be at least 0.1 s")
        if not 1024 <= self.max_payload <= self.max_message_bytes - 64 * 1024:
            raise ValueError(
                "max payload must be at least 1024 bytes and leave 64 KiB of a message frame"
            )
        if self.max_workers < 1 or self.max_waiters < 1:
            raise ValueError("max workers and max waiters must be at least 1")
        if not self.poll_interval > 0 or not self.retention_interval > 0:
            raise ValueError("poll and retention intervals must be positive")

    def named_for(self, endpoint: str) -> BrokerConfig:
        """These settings, with the default name for a broker bound to ``endpoint``."""
        if self.name:
            return self
        from dataclasses import replace

        return replace(self, name=f"{socket.gethostname()}/{endpoint}")
