"""Job definitions: what an application declares, once, for workers and producers.

A ``Registry`` collects job functions by name with their defaults (queue,
priority, attempts, backoff, timeout, unique key) and the factory of the
application state workers share. Producer code that imports the same module
submits the functions themselves; producers that cannot import it submit by
name, and the broker applies the defaults workers announced.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, ParamSpec, TypeVar

from jobsd.protocol.backoff import Backoff
from jobsd.protocol.framing import pack
from jobsd.protocol.options import NO_OPTIONS, JobOptions
from jobsd.protocol.producer import pack_args
from jobsd.protocol.worker import Schedule
from jobsd.vocabulary import DEFAULT_QUEUE

P = ParamSpec("P")
R = TypeVar("R")


class Retry(Exception):  # noqa: N818 - it names what the job asks for, not an error
    """Raise in a job to run it again later: after ``delay`` seconds or at the
    epoch time ``at``. The attempt counts toward ``max_attempts``."""

    def __init__(self, delay: float | None = None, *, at: float | None = None) -> None:
        super().__init__(f"retry requested (delay={delay}, at={at})")
        self.delay = delay
        self.at = at


class JobCancelled(Exception):  # noqa: N818 - the job's end, as a user would say it
    """Raise in a job (or call ``JobContext.raise_if_cancelled``) to end it as
    cancelled after a cancel request: it is not retried."""


@dataclass(frozen=True, slots=True)
class Reschedule:
    """Return this from a job to finish the run and have the same job run again
    at ``at`` (epoch seconds) or after ``delay`` seconds, with fresh attempts."""

    delay: float | None = None
    at: float | None = None


@dataclass(frozen=True, slots=True, init=False)
class JobRequest:
    """One job to submit: a name, arguments, its options and, to make a
    resubmit recognisable, an id of the caller's choosing.

    Options are given as keywords (``JobRequest("report", (2026,),
    priority=10)``: any field of ``JobOptions``) over ``options``; a value
    out of range raises ``ProtocolError`` (a ValueError) here, an unknown
    option TypeError."""

    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    options: JobOptions
    job_id: str | None

    def __init__(
        self,
        name: str,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        options: JobOptions = NO_OPTIONS,
        job_id: str | None = None,
        **option_values: Any,
    ) -> None:
        if option_values:
            options = JobOptions(**option_values).merged_over(options)
        for key, value in (
            ("name", name),
            ("args", tuple(args)),
            ("kwargs", dict(kwargs or {})),
            ("options", options),
            ("job_id", job_id),
        ):
            object.__setattr__(self, key, value)


class JobDefinition(Generic[P, R]):
    """A registered job function. Calling it runs the function in-process
    (handy in tests); ``request`` builds a submission with the type's defaults."""

    def __init__(
        self,
        func: Callable[..., Any],
        name: str,
        options: JobOptions,
        unique: Callable[..., str] | None,
        pass_context: bool,
    ) -> None:
        self.func = func
        self.name = name
        self.options = options
        self.unique = unique
        self.pass_context = pass_context
        self.is_async = inspect.iscoroutinefunction(func)
        self.__doc__ = func.__doc__
        self.__wrapped__ = func

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.func(*args, **kwargs)  # type: ignore[no-any-return]

    def request(self, *args: P.args, **kwargs: P.kwargs) -> JobRequest:
        options = self.options
        if self.unique is not None:
            options = JobOptions(unique_key=self.unique(*args, **kwargs)).merged_over(options)
        return JobRequest(self.name, tuple(args), dict(kwargs), options=options)

    def __repr__(self) -> str:
        return f"<job {self.name!r} {self.options}>"


def args_key(name: str) -> Callable[..., str]:
    """A unique key from the job's name and arguments: equal calls are one job."""

    def key(*args: Any, **kwargs: Any) -> str:
        digest = hashlib.sha256(pack([args, sorted(kwargs.items())])).hexdigest()
        return f"{name}:{digest[:32]}"

    return key


class Registry:
    """The application's jobs. ``state`` builds the shared application state
    once per worker process (a DB pool, an HTTP session); a state that is a
    context manager is entered at start and exited at shutdown."""

    def __init__(self, state: Callable[[], Any] | None = None) -> None:
        self.state_factory = state
        self.definitions: dict[str, JobDefinition[Any, Any]] = {}
        self.schedules: list[Schedule] = []

    def job(
        self,
        name: str | None = None,
        *,
        queue: str | None = None,
        priority: int | None = None,
        max_attempts: int | None = None,
        backoff: Backoff | None = None,
        timeout: float | None = None,
        unique: bool | Callable[..., str] = False,
        context: bool = False,
        cron: str | None = None,
    ) -> Callable[[Callable[P, R]], JobDefinition[P, R]]:
        """Register a function as a job type. With ``context=True`` the function
        gets a ``JobContext`` as its first argument (state, id, attempt, cancel).
        ``unique=True`` makes equal arguments one job while it is queued or
        running; a callable computes the key from the arguments instead.
        ``cron`` runs the job (without arguments) on that schedule, as
        ``schedule`` does. ``ProtocolError`` (a ValueError) for an option out
        of range."""
        options = JobOptions(queue, priority, max_attempts, backoff, timeout)

        def register(func: Callable[P, R]) -> JobDefinition[P, R]:
            job_name = name or func.__name__
            if job_name in self.definitions:
                raise ValueError(f"job {job_name!r} is registered twice")
            key = args_key(job_name) if unique is True else (unique or None)
            definition: JobDefinition[P, R] = JobDefinition(func, job_name, options, key, context)
            self.definitions[job_name] = definition
            if cron is not None:
                self.schedule(cron, definition)
            return definition

        return register

    def schedule(
        self, cron: str, job: str | JobDefinition[Any, Any], *args: Any, **kwargs: Any
    ) -> None:
        """Run ``job`` with these arguments at every time of the cron
        expression (5 fields, or 6 with seconds last: ``*/10 * * * * 30``).

        Workers announce their schedules; the broker enqueues each fire once,
        with an id made of the schedule and the fire time, so several workers,
        several brokers and broker restarts never enqueue a fire twice."""
        from croniter import croniter

        if not croniter.is_valid(cron):
            raise ValueError(f"not a valid cron expression: {cron!r}")
        name = job if isinstance(job, str) else job.name
        queue = None if isinstance(job, str) else job.options.queue
        self.schedules.append(Schedule(cron, name, pack_args(args, kwargs), queue))

    def __getitem__(self, name: str) -> JobDefinition[Any, Any]:
        return self.definitions[name]

    def __contains__(self, name: object) -> bool:
        return name in self.definitions

    def queues(self) -> list[str]:
        """The queues the registered jobs default to (``default`` for those
        that name none): what a worker serves when told no queue."""
        return sorted({d.options.queue or DEFAULT_QUEUE for d in self.definitions.values()})
