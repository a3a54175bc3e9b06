"""jobsd: a ZeroMQ job processor daemon.

Producers use ``Client``; applications declare jobs on a ``Registry``; workers
run them with ``jobsd worker module:registry``. Everything public is here.
"""

from jobsd.backoff import Backoff
from jobsd.client import DEFAULT_ENDPOINT, Client, JobStatus, Submitted
from jobsd.errors import (
    BrokerError,
    BrokerUnavailable,
    JobFailed,
    JobNotFound,
    JobsdError,
    ResultTimeout,
)
from jobsd.workers.executor import JobContext
from jobsd.workers.registry import (
    JobCancelled,
    JobDefinition,
    JobRequest,
    Registry,
    Reschedule,
    Retry,
)

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_ENDPOINT",
    "Backoff",
    "BrokerError",
    "BrokerUnavailable",
    "Client",
    "JobCancelled",
    "JobContext",
    "JobDefinition",
    "JobFailed",
    "JobNotFound",
    "JobRequest",
    "JobStatus",
    "JobsdError",
    "Registry",
    "Reschedule",
    "ResultTimeout",
    "Retry",
    "Submitted",
]
