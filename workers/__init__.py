"""The worker runtime, installed as ``jobsd.workers``: ``registry`` (job
definitions), ``executor`` (threads and an event loop that run jobs),
``runtime`` (the process's one connection to the broker), ``outbox``
(reports kept until confirmed) and ``supervisor`` (``--processes N``)."""

from jobsd.protocol.options import JobOptions
from jobsd.workers.registry import (
    JobCancelled,
    JobDefinition,
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
