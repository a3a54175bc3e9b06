"""Runs jobs: plain functions on a pool of threads, ``async def`` ones on one
event loop, and hands every outcome back to the worker's I/O thread.

The I/O thread owns the socket (sockets are not thread-safe); job threads and
the event loop only put outcomes on a queue and poke a pipe that the I/O
thread polls, so a report goes out at once without the I/O thread ever waiting
on a job.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

from jobsd.protocol.framing import pack
from jobsd.protocol.producer import unpack_args
from jobsd.protocol.worker import (
    FAIL_CANCELLED,
    FAIL_ERROR,
    FAIL_FINAL,
    FAIL_RETRY,
    FAIL_TIMEOUT,
    MAX_RESULT_BYTES,
    Ack,
    Dispatch,
    Fail,
)
from jobsd.workers.registry import JobCancelled, Registry, Reschedule, Retry

log = logging.getLogger("jobsd.worker")

Report = Ack | Fail


@dataclass(eq=False)
class JobContext:
    """What a job may know about its own run; pass ``context=True`` to get it."""

    id: str
    name: str
    queue: str
    attempt: int
    state: Any
    # A plain flag, not an Event: jobs poll it and nothing waits on it, and a
    # context is made for every job. Set by the I/O thread, read by the job's.
    _cancel_requested: bool = field(default=False, repr=False)

    @property
    def cancelled(self) -> bool:
        """True once a cancel was requested: a long job should check and stop."""
        return self._cancel_requested

    def request_cancel(self) -> None:
        self._cancel_requested = True

    def raise_if_cancelled(self) -> None:
        if self._cancel_requested:
            raise JobCancelled(f"job {self.id} was cancelled")


@dataclass(eq=False)
class Running:
    """A job this worker holds: started, or waiting for a thread."""

    job: Dispatch
    context: JobContext
    started: float | None = None
    task: asyncio.Future[Any] | None = None
    abandoned: bool = False

    @property
    def deadline(self) -> float | None:
        """When its time limit ends: counted from its start, not its arrival,
        so a prefetched job does not spend its limit waiting for a thread."""
        if self.started is None or not self.job.timeout:
            return None
        return self.started + self.job.timeout


class Wakeup:
    """A pipe the I/O thread polls: any thread may poke it.

    One byte per batch, not per job: a poke while one is pending writes
    nothing. Safe without a lock because ``drain`` empties the pipe first and
    clears the flag after, and the I/O thread reads the outcome queue after
    ``drain``: a poke that saw the flag set queued its outcome before the clear,
    so that read finds it; a poke after the clear writes a byte that stays in
    the pipe. (Clearing first would lose a wakeup: a byte written between the
    clear and the read would be swallowed with the flag left set.)
    """

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        os.set_blocking(self.write_fd, False)
        self._pending = False

    def poke(self) -> None:
        if self._pending:
            return
        self._pending = True
        try:
            os.write(self.write_fd, b"\0")
        except BlockingIOError:
            pass  # the pipe is full: a wakeup is already pending

    def drain(self) -> None:
        try:
            while os.read(self.read_fd, 4096):
                pass
        except BlockingIOError:
            pass
        self._pending = False

    def close(self) -> None:
        os.close(self.read_fd)
        os.close(self.write_fd)


class Executor:
    def __init__(self, registry: Registry, state: Any, concurrency: int) -> None:
        self.registry = registry
        self.state = state
        self.concurrency = concurrency
        self.outcomes: queue.SimpleQueue[tuple[Running, Report]] = queue.SimpleQueue()
        self.wakeup = Wakeup()
        self._work: queue.SimpleQueue[Running | None] = queue.SimpleQueue()
        self._threads = 0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, running: Running) -> None:
        job = running.job
        definition = self.registry.definitions.get(job.name)
        if definition is None:
            known = ", ".join(sorted(self.registry.definitions)) or "none"
            error = f"UnknownJob: no job named {job.name!r} on this worker (it knows: {known})"
            self._report(running, Fail(job.id, job.lease, error, FAIL_FINAL))
            return
        if definition.is_async:
            self._start_async(running)
        else:
            self._work.put(running)
            self._grow()

    def _grow(self) -> None:
        """Keep ``concurrency`` threads that take work: started as needed, and
        one more for each thread a timed-out job still holds."""
        with self._lock:
            missing = self.concurrency - self._threads
            self._threads += max(missing, 0)
        for _ in range(missing):
            threading.Thread(target=self._thread_main, name="jobsd-job", daemon=True).start()

    def abandon(self, running: Running) -> None:
        """A job ran past its time limit: it is reported failed now and its late
        outcome ignored. An ``async def`` job is cancelled. Python cannot stop
        a thread, so a plain function runs on in its thread, which leaves the
        pool when the function returns; another thread takes its place."""
        with self._lock:
            running.abandoned = True
            if running.task is None and running.started is not None:
                self._threads -= 1  # that thread is held until the function returns
        if running.task is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(running.task.cancel)
        self._grow()

    def take_unstarted(self) -> list[Running]:
        """Prefetched jobs no thread has begun: the worker hands them back."""
        taken: list[Running] = []
        while True:
            try:
                running = self._work.get_nowait()
            except queue.Empty:
                return taken
            if running is None:
                self._work.put(None)
                return taken
            taken.append(running)

    def _thread_main(self) -> None:
        while True:
            running = self._work.get()
            if running is None:
                return
            with self._lock:
                if running.abandoned:
                    continue  # timed out while it waited: reported already
                running.started = time.monotonic()
            report = self._run_sync(running)
            self._report(running, report)
            with self._lock:
                if running.abandoned:
                    return  # a replacement took this thread's place

    def _run_sync(self, running: Running) -> Report:
        definition = self.registry.definitions[running.job.name]
        try:
            args, kwargs = unpack_args(running.job.args)
            if definition.pass_context:
                args = [running.context, *args]
            return self._success(running, definition.func(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - a job's failure, whatever it is
            return _failure(running, exc)

    def _start_async(self, running: Running) -> None:
        loop = self._event_loop()
        running.started = time.monotonic()
        running.task = asyncio.run_coroutine_threadsafe(self._run_async(running), loop)  # type: ignore[assignment]

    async def _run_async(self, running: Running) -> None:
        definition = self.registry.definitions[running.job.name]
        try:
            args, kwargs = unpack_args(running.job.args)
            if definition.pass_context:
                args = [running.context, *args]
            coro = definition.func(*args, **kwargs)
            timeout = running.job.timeout
            result = await (asyncio.wait_for(coro, timeout) if timeout else coro)
            report = self._success(running, result)
        except asyncio.TimeoutError:
            report = timed_out(running)
        except asyncio.CancelledError:
            report = (
                timed_out(running)
                if running.abandoned
                else _failure(running, JobCancelled("cancelled"))
            )
        except BaseException as exc:  # noqa: BLE001 - a job's failure, whatever it is
            report = _failure(running, exc)
        self._report(running, report)

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="jobsd-asyncio", daemon=True).start()
            self._loop = loop
        return self._loop

    def _success(self, running: Running, result: Any) -> Report:
        job = running.job
        if isinstance(result, Reschedule):
            at = result.at if result.at is not None else time.time() + (result.delay or 0.0)
            return Ack(job.id, job.lease, None, at)
        try:
            packed = pack(result)
        except (TypeError, ValueError, OverflowError) as exc:
            return _failure(running, TypeError(f"the job's return value cannot be stored: {exc}"))
        if len(packed) > MAX_RESULT_BYTES:
            # A report over the broker's message limit would be dropped unread,
            # and the job would wait for its lease: say so, once, now.
            error = (
                f"ResultTooLarge: the return value is {len(packed)} bytes encoded, "
                f"over the {MAX_RESULT_BYTES} a report can carry"
            )
            return Fail(job.id, job.lease, error, FAIL_FINAL)
        return Ack(job.id, job.lease, packed)

    def _report(self, running: Running, report: Report) -> None:
        self.outcomes.put((running, report))
        self.wakeup.poke()

    def close(self) -> None:
        with self._lock:
            threads = self._threads
        for _ in range(threads):
            self._work.put(None)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)


def _failure(running: Running, exc: BaseException) -> Fail:
    job = running.job
    if isinstance(exc, Retry):
        at = exc.at if exc.at is not None else time.time() + (exc.delay or 0.0)
        return Fail(job.id, job.lease, str(exc), FAIL_RETRY, at)
    if isinstance(exc, JobCancelled):
        return Fail(job.id, job.lease, f"JobCancelled: {exc}", FAIL_CANCELLED)
    text = "".join(traceback.format_exception(exc)).strip()
    return Fail(job.id, job.lease, text, FAIL_ERROR)


def timed_out(running: Running) -> Fail:
    job = running.job
    error = f"JobTimeout: ran longer than its time limit of {job.timeout} s"
    return Fail(job.id, job.lease, error, FAIL_TIMEOUT)
