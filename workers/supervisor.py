"""Worker processes: one, run in this process, or N supervised children.

``jobsd worker APP --processes N`` runs N children, each a fresh interpreter
(nothing crosses a fork: no ZeroMQ context, no application state) given its
settings explicitly, as JSON on its command line, never by editing the
parent's arguments. The supervisor restarts a child that exits unexpectedly
and forwards stop signals.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from jobsd.process import LOG_FORMAT, on_stop_signals
from jobsd.workers.registry import Registry
from jobsd.workers.runtime import Worker, WorkerConfig

log = logging.getLogger("jobsd.worker")

#: Seconds before a child that exited unexpectedly is started again.
RESTART_DELAY = 1.0
#: Seconds between a child's looks at whether its supervisor still lives.
ORPHAN_CHECK = 0.5


class AppNotFound(Exception):
    """``module:attribute`` does not name a jobsd Registry."""


def load_registry(app: str) -> Registry:
    """Import ``module[:attribute]`` (from the working directory too, as users
    run workers next to their code) and check it is a Registry."""
    module_name, _, attr = app.partition(":")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise AppNotFound(f"cannot import {module_name!r}: {exc}") from None
    registry = getattr(module, attr or "jobs", None)
    if not isinstance(registry, Registry):
        raise AppNotFound(
            f"{module_name}:{attr or 'jobs'} is not a jobsd Registry "
            f"(declare `jobs = jobsd.Registry()` and decorate functions with @jobs.job())"
        )
    return registry


def run_worker(registry: Registry, config: WorkerConfig, supervisor: int = 0) -> None:
    """One worker, in this process, until a stop signal (or, for a
    supervised child, until its supervisor is gone)."""
    worker = Worker(registry, config)
    on_stop_signals(worker.stop, worker.stop)
    if supervisor:
        threading.Thread(
            target=_stop_without, args=(supervisor, worker), name="jobsd-orphan", daemon=True
        ).start()
    worker.run()


def _stop_without(supervisor: int, worker: Worker) -> None:
    """A child whose supervisor died (kill -9 sends the children nothing)
    stops as on SIGTERM, instead of running on with no one to restart or
    stop it."""
    while os.getppid() == supervisor:
        time.sleep(ORPHAN_CHECK)
    log.warning("the worker supervisor (pid %d) is gone: stopping", supervisor)
    worker.stop()


def supervise(app: str, config: WorkerConfig, processes: int, log_level: int) -> int:
    """Run ``processes`` worker children and restart any that dies
    unexpectedly, until a stop signal; the exit code to end with."""
    settings = {
        "app": app,
        "config": dataclasses.asdict(config),
        "log_level": log_level,
        "supervisor": os.getpid(),
    }
    argv = [sys.executable, "-m", "jobsd.workers", json.dumps(settings)]
    children = [subprocess.Popen(argv) for _ in range(processes)]
    stopping: list[bool] = []

    def stop() -> None:
        stopping.append(True)
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    on_stop_signals(stop, stop)
    while True:
        for i, child in enumerate(children):
            code = child.poll()
            if code is None or stopping:
                continue
            log.error("worker process %d exited with %s: starting another", child.pid, code)
            time.sleep(RESTART_DELAY)
            children[i] = subprocess.Popen(argv)
        if stopping and all(child.poll() is not None for child in children):
            return 1 if any(child.returncode for child in children) else 0
        time.sleep(0.1)


def child_main(argv: list[str]) -> None:
    settings: dict[str, Any] = json.loads(argv[0])
    fields = settings["config"]
    fields["queues"] = tuple(fields["queues"])
    logging.basicConfig(level=settings["log_level"], format=LOG_FORMAT)
    run_worker(load_registry(settings["app"]), WorkerConfig(**fields), settings["supervisor"])
