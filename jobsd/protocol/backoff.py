"""Retry backoff policies: how long a failed job waits before its next attempt.

Part of the protocol: a policy travels with the job as a small map, and
PROTOCOL.md gives its formula, so producers in any language can set one and
the broker, which schedules retries, computes it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from jobsd.protocol.fields import Fields, check_number
from jobsd.protocol.framing import ProtocolError

FIXED = "fixed"
LINEAR = "linear"
EXPONENTIAL = "exponential"
KINDS = (FIXED, LINEAR, EXPONENTIAL)


@dataclass(frozen=True, slots=True)
class Backoff:
    """``delay`` seconds after the first failure, then growing by ``kind``:

    * fixed: ``delay`` every time;
    * linear: ``delay * n`` after the n-th failure;
    * exponential: ``delay * factor ** (n - 1)``;

    never more than ``max_delay``. With ``jitter`` the wait is drawn uniformly
    from its upper half ("equal jitter"): retries of jobs that failed together
    spread out, yet none comes back sooner than half its nominal delay.
    """

    kind: str = EXPONENTIAL
    delay: float = 1.0
    factor: float = 2.0
    max_delay: float = 3600.0
    jitter: bool = True

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ProtocolError(f"backoff: kind must be one of {', '.join(KINDS)}")
        check_number(self.delay, "backoff: delay")
        check_number(self.factor, "backoff: factor", low=1.0)
        check_number(self.max_delay, "backoff: max")

    @classmethod
    def fixed(cls, delay: float, *, jitter: bool = False) -> Backoff:
        return cls(FIXED, delay, 1.0, delay, jitter)

    @classmethod
    def linear(cls, delay: float, *, max_delay: float = 3600.0, jitter: bool = False) -> Backoff:
        return cls(LINEAR, delay, 1.0, max_delay, jitter)

    @classmethod
    def exponential(
        cls,
        delay: float = 1.0,
        *,
        factor: float = 2.0,
        max_delay: float = 3600.0,
        jitter: bool = True,
    ) -> Backoff:
        return cls(EXPONENTIAL, delay, factor, max_delay, jitter)

    def seconds(self, failures: int, rng: random.Random | None = None) -> float:
        """The wait after the ``failures``-th failed attempt (1 for the first)."""
        n = max(failures, 1)
        if self.kind == FIXED:
            wait = self.delay
        elif self.kind == LINEAR:
            wait = self.delay * n
        else:
            # Bound the exponent so a job with thousands of attempts cannot overflow.
            wait = self.delay * self.factor ** min(n - 1, 256)
        wait = min(wait, self.max_delay)
        if self.jitter and wait > 0:
            wait = wait / 2 + (rng or random).uniform(0, wait / 2)
        return wait

    def to_wire(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "delay": self.delay,
            "factor": self.factor,
            "max": self.max_delay,
            "jitter": self.jitter,
        }

    @classmethod
    def from_wire(cls, body: Any) -> Backoff:
        f = Fields(body, "backoff")
        kind = f.text("kind", required=False) or EXPONENTIAL
        delay = f.number("delay", required=False)
        factor = f.number("factor", required=False)
        max_delay = f.number("max", required=False)
        return cls(
            kind=kind,
            delay=1.0 if delay is None else delay,
            factor=2.0 if factor is None else max(factor, 1.0),
            max_delay=3600.0 if max_delay is None else max_delay,
            jitter=f.flag("jitter") if "jitter" in f else kind == EXPONENTIAL,
        )
