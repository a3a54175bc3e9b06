"""The worker runtime: job definitions, the executor that runs them, and the
process that talks to the broker. Installed as ``jobsd.workers``."""

from jobsd.workers.registry import (
    JobCancelled,
    JobDefinition,
    JobOptions,
    JobRequest,
    Registry,
    Reschedule,
    Retry,
)

__all__ = [
    "JobCancelled",
    "JobDefinition",
    "JobOptions",
    "JobRequest",
    "Registry",
    "Reschedule",
    "Retry",
]
