"""Exceptions a producer sees. All derive from ``JobsdError``."""

from __future__ import annotations

from typing import Any


class JobsdError(Exception):
    """Base of every jobsd error raised to applications."""


class BrokerUnavailable(JobsdError):
    """No reply from the broker after every retry: it is down or unreachable."""


class BrokerError(JobsdError):
    """The broker refused a request. ``code`` is stable (see PROTOCOL.md)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class JobNotFound(JobsdError, KeyError):
    """No job with that id (never submitted, or purged)."""


class JobFailed(JobsdError):
    """The job ended without a result: dead after its attempts, or cancelled.
    ``error`` is the remote error text (type, message and traceback)."""

    def __init__(self, job: Any) -> None:
        super().__init__(f"job {job.id} ({job.name}) is {job.state}: {job.error or 'no error'}")
        self.job = job
        self.error = job.error


class ResultTimeout(JobsdError, TimeoutError):
    """The job did not finish within the time asked for; it may still run."""
