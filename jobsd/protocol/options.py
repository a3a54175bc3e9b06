"""The options of a job, checked once wherever they are made.

Producers (``Client.enqueue``, ``jobsd submit``), job types (``Registry.job``)
and the wire (a SUBMIT's job, a HELLO's job types) all build this one value,
so every range and every rule between options is written here and nowhere
else; the broker only merges a job type's defaults under a submit's options.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from jobsd.protocol.backoff import Backoff
from jobsd.protocol.fields import Fields, check_number, name
from jobsd.protocol.framing import ProtocolError
from jobsd.vocabulary import (
    MAX_ATTEMPTS_LIMIT,
    MAX_KEY_LENGTH,
    MAX_PRIORITY,
    MAX_TIMESTAMP,
    MIN_PRIORITY,
)


@dataclass(frozen=True, slots=True)
class JobOptions:
    """How a job runs. ``None`` leaves an option to the job type's default,
    then the broker's (queue ``default``, priority 32768, 25 attempts,
    exponential backoff with jitter, no time limit). ``max_attempts=0`` and
    ``timeout=0`` mean no limit. ``delay`` (seconds from the submit) and
    ``run_at`` (epoch seconds) exclude each other. ``ProtocolError`` (a
    ValueError) when an option is out of range."""

    queue: str | None = None
    priority: int | None = None
    max_attempts: int | None = None
    backoff: Backoff | None = None
    timeout: float | None = None
    delay: float | None = None
    run_at: float | None = None
    unique_key: str | None = None

    def __post_init__(self) -> None:
        if self.queue is not None:
            name(self.queue, "queue")
        _integer(self.priority, "priority", MIN_PRIORITY, MAX_PRIORITY)
        _integer(self.max_attempts, "max_attempts", 0, MAX_ATTEMPTS_LIMIT)
        if self.backoff is not None and not isinstance(self.backoff, Backoff):
            raise ProtocolError("backoff must be a jobsd.Backoff")
        for key in ("timeout", "delay", "run_at"):
            value = getattr(self, key)
            if value is not None:
                check_number(value, key, high=MAX_TIMESTAMP)
        if self.delay is not None and self.run_at is not None:
            raise ProtocolError("give delay or run_at, not both")
        if self.unique_key is not None:
            name(self.unique_key, "unique_key", MAX_KEY_LENGTH)

    def merged_over(self, defaults: JobOptions) -> JobOptions:
        """These options, with ``defaults`` for the ones left unset."""
        return JobOptions(
            **{
                key: getattr(defaults, key) if (value := getattr(self, key)) is None else value
                for key in OPTION_NAMES
            }
        )

    def type_defaults(self) -> JobOptions:
        """The options a job type may default: not the ones of one submit."""
        return JobOptions(self.queue, self.priority, self.max_attempts, self.backoff, self.timeout)

    def to_wire(self) -> dict[str, Any]:
        wire = {key: getattr(self, key) for key in OPTION_NAMES if getattr(self, key) is not None}
        if self.backoff is not None:
            wire["backoff"] = self.backoff.to_wire()
        return wire

    @classmethod
    def from_wire(cls, f: Fields) -> JobOptions:
        """The options in a job's map (a SUBMIT job or a HELLO job type)."""
        backoff = f.mapping("backoff")
        return cls(
            queue=f.text("queue", required=False),
            priority=f.integer("priority", required=False, low=MIN_PRIORITY, high=MAX_PRIORITY),
            max_attempts=f.integer("max_attempts", required=False, high=MAX_ATTEMPTS_LIMIT),
            backoff=None if backoff is None else Backoff.from_wire(backoff),
            timeout=f.number("timeout", required=False, high=MAX_TIMESTAMP),
            delay=f.number("delay", required=False, high=MAX_TIMESTAMP),
            run_at=f.number("run_at", required=False, high=MAX_TIMESTAMP),
            unique_key=f.text("unique_key", required=False, max_len=MAX_KEY_LENGTH),
        )


#: Every option's name: what ``Client.enqueue`` accepts as keywords.
OPTION_NAMES = tuple(field.name for field in fields(JobOptions))


def _integer(value: Any, key: str, low: int, high: int) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(f"{key} must be an integer, got {type(value).__name__}")
    if not low <= value <= high:
        raise ProtocolError(f"{key} must be in {low}..{high}")


NO_OPTIONS = JobOptions()
