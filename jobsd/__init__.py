"""jobsd: a ZeroMQ job processor daemon.

Producers use ``Client``; applications declare jobs on a ``Registry``; workers
run them with ``jobsd worker module:registry``. Everything public is here.

The names load on first use (PEP 562), so that importing one part of jobsd
(``jobsd.storage.memory`` in a broker, ``jobsd.protocol`` in a tool) does not
load the others: the client, the worker runtime and ZeroMQ come with the first
name that needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Each public name and the module that defines it.
_EXPORTS = {
    "DEFAULT_ENDPOINT": "jobsd.client",
    "Client": "jobsd.client",
    "Submitted": "jobsd.client",
    "Backoff": "jobsd.protocol.backoff",
    "JobOptions": "jobsd.protocol.options",
    "JobStatus": "jobsd.protocol.producer",
    "BrokerError": "jobsd.errors",
    "BrokerUnavailable": "jobsd.errors",
    "JobFailed": "jobsd.errors",
    "JobNotFound": "jobsd.errors",
    "JobsdError": "jobsd.errors",
    "ResultTimeout": "jobsd.errors",
    "JobContext": "jobsd.workers.executor",
    "JobCancelled": "jobsd.workers.registry",
    "JobDefinition": "jobsd.workers.registry",
    "JobRequest": "jobsd.workers.registry",
    "Registry": "jobsd.workers.registry",
    "Reschedule": "jobsd.workers.registry",
    "Retry": "jobsd.workers.registry",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'jobsd' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup is a plain one
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:
    from jobsd.client import DEFAULT_ENDPOINT as DEFAULT_ENDPOINT
    from jobsd.client import Client as Client
    from jobsd.client import Submitted as Submitted
    from jobsd.errors import BrokerError as BrokerError
    from jobsd.errors import BrokerUnavailable as BrokerUnavailable
    from jobsd.errors import JobFailed as JobFailed
    from jobsd.errors import JobNotFound as JobNotFound
    from jobsd.errors import JobsdError as JobsdError
    from jobsd.errors import ResultTimeout as ResultTimeout
    from jobsd.protocol.backoff import Backoff as Backoff
    from jobsd.protocol.options import JobOptions as JobOptions
    from jobsd.protocol.producer import JobStatus as JobStatus
    from jobsd.workers.executor import JobContext as JobContext
    from jobsd.workers.registry import JobCancelled as JobCancelled
    from jobsd.workers.registry import JobDefinition as JobDefinition
    from jobsd.workers.registry import JobRequest as JobRequest
    from jobsd.workers.registry import Registry as Registry
    from jobsd.workers.registry import Reschedule as Reschedule
    from jobsd.workers.registry import Retry as Retry
