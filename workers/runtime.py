"""A worker process's I/O thread: one DEALER socket to the broker.

It announces the worker (HELLO), starts the jobs the broker pushes, sends their
outcomes back in batches, heartbeats, and rebuilds its socket when the broker
goes silent (Paranoid Pirate). Jobs never run on this thread, so a long job
never starves the heartbeats.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import os
import select
import signal
import socket as pysocket
import time
import uuid
from dataclasses import dataclass
from typing import Any

import zmq

from jobsd import protocol
from jobsd.workers.executor import Executor, JobContext, Running, timed_out
from jobsd.workers.registry import Registry

log = logging.getLogger("jobsd.worker")
_GONE = object()  # what ``running.get`` gives for a job no longer held
#: Messages read at most before the loop goes on to send outcomes and heartbeats.
RECEIVE_BURST = 1000


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    endpoint: str
    queues: tuple[str, ...]
    concurrency: int = 8
    heartbeat: float = 1.0  # seconds between heartbeats to the broker
    liveness: int = 3  # broker heartbeats missed before reconnecting
    grace: float = 30.0  # how long running jobs may finish after a stop signal
    # Jobs held beyond those running, so a freed thread starts the next one at
    # once instead of after a round trip to the broker. Bounded, so a slow
    # worker never hoards: at most concurrency + prefetch jobs are its.
    prefetch: int = 0
    reconnect_max: float = 30.0  # the longest wait between reconnect attempts


class Worker:
    def __init__(self, registry: Registry, config: WorkerConfig) -> None:
        if config.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.registry = registry
        self.config = config
        self.running: dict[str, Running] = {}
        self._context = zmq.Context()
        self._socket: zmq.Socket[Any] | None = None
        self._executor: Executor | None = None
        self._stop_requested = 0
        self._stop_deadline: float | None = None
        self._last_heard = 0.0
        self._last_sent = 0.0
        self._reconnect_delay = config.heartbeat
        self._registered = False
        # Reports sent but not yet confirmed stored, by sequence number: sent
        # again after a reconnect, so an ack lost with a broker is not lost.
        self._unconfirmed: dict[int, tuple[bytes, dict[str, Any]]] = {}
        self._report_seq = itertools.count(1)

    def stop(self) -> None:
        """Stop taking work; finish what runs within the grace period. A second
        call stops at once. Safe from a signal handler."""
        self._stop_requested += 1

    def run(self) -> None:
        """Build the state, serve until stopped, tear the state down."""
        factory = self.registry.state_factory
        state = factory() if factory else None
        with contextlib.ExitStack() as stack:
            if isinstance(state, contextlib.AbstractContextManager):
                state = stack.enter_context(state)
            self._executor = Executor(self.registry, state, self.config.concurrency)
            unwake = _wake_on_signals(self._executor.wakeup.write_fd)
            try:
                self._serve()
            finally:
                self._executor.close()
                unwake()
                self._executor.wakeup.close()
                if self._socket is not None:
                    # Let the last reports (acks, hand-backs) reach the broker.
                    self._socket.close(linger=int(self.config.heartbeat * 1000))
                self._context.term()

    # -- the loop ------------------------------------------------------------------

    def _serve(self) -> None:
        assert self._executor is not None  # set by run()
        self._connect()
        poller = zmq.Poller()
        poller.register(self._executor.wakeup.read_fd, zmq.POLLIN)
        sock = self._register(poller)
        while True:
            if self._stop_requested and self._stopping_done():
                return
            events = dict(poller.poll(self._poll_timeout_ms()))
            if sock in events:
                self._receive(sock)
            if self._executor.wakeup.read_fd in events:
                self._executor.wakeup.drain()
            self._send_outcomes()
            now = time.monotonic()
            self._check_timeouts(now)
            if now - self._last_sent >= self.config.heartbeat:
                self._send(protocol.HEARTBEAT, {})
            if now - self._last_heard > self.config.heartbeat * self.config.liveness:
                log.warning("broker silent for %.1f s: reconnecting", now - self._last_heard)
                poller.unregister(sock)
                self._pause(min(self._reconnect_delay, self.config.reconnect_max))
                self._reconnect_delay = min(self._reconnect_delay * 2, self.config.reconnect_max)
                self._connect()
                sock = self._register(poller)

    def _pause(self, seconds: float) -> None:
        """Wait before reconnecting; a stop signal ends the wait at once."""
        assert self._executor is not None
        wakeup = self._executor.wakeup
        deadline = time.monotonic() + seconds
        while not self._stop_requested and (left := deadline - time.monotonic()) > 0:
            select.select([wakeup.read_fd], [], [], left)
            wakeup.drain()

    def _register(self, poller: zmq.Poller) -> zmq.Socket[Any]:
        assert self._socket is not None
        poller.register(self._socket, zmq.POLLIN)
        self._hello()
        if self._stop_deadline is not None:
            self._send(protocol.BYE, {})  # a new connection while stopping: no work, please
        return self._socket

    def _poll_timeout_ms(self) -> int:
        waits = [self.config.heartbeat]
        deadlines = [r.deadline for r in self.running.values() if r.deadline is not None]
        if deadlines:
            waits.append(min(deadlines) - time.monotonic())
        if self._stop_deadline is not None:
            waits.append(self._stop_deadline - time.monotonic())
        return max(1, int(min(waits) * 1000))

    def _connect(self) -> None:
        """A fresh socket with a fresh identity: the broker never confuses it
        with the old connection, so no ROUTER handover is needed."""
        if self._socket is not None:
            self._socket.close(linger=0)
        sock = self._context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IDENTITY, uuid.uuid4().bytes)
        sock.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_MESSAGE_BYTES)
        sock.connect(self.config.endpoint)
        self._socket = sock
        self._registered = False
        self._last_heard = time.monotonic()

    def _hello(self) -> None:
        hello = protocol.Hello(
            worker=f"{pysocket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}",
            queues=list(self.config.queues),
            capacity=self.config.concurrency + self.config.prefetch,
            pid=os.getpid(),
            host=pysocket.gethostname(),
            job_types={
                name: d.options.to_job_type() for name, d in self.registry.definitions.items()
            },
            running=[(r.job.id, r.job.attempt) for r in self.running.values()],
            schedules=self.registry.schedules,
        )
        self._send(protocol.HELLO, hello.to_wire())

    def _send(self, command: bytes, body: Any) -> None:
        assert self._socket is not None
        try:
            protocol.send(self._socket, protocol.encode(command, body), zmq.NOBLOCK)
            self._last_sent = time.monotonic()
        except zmq.Again:
            log.warning("could not send %s: broker not reachable", command.decode())

    # -- from the broker ---------------------------------------------------------------

    def _receive(self, sock: zmq.Socket[Any]) -> None:
        for frames in protocol.recv_waiting(sock, RECEIVE_BURST):
            self._last_heard = time.monotonic()
            try:
                command, body = protocol.decode(frames)
                self._on_message(command, body)
            except protocol.ProtocolError as exc:
                log.error("bad message from the broker: %s", exc)

    def _on_message(self, command: bytes, body: Any) -> None:
        if command == protocol.JOB:
            jobs = protocol.decode_jobs(body)
            if self._stop_requested:
                self._hand_back(jobs)
            else:
                for job in jobs:
                    self._start(job)
        elif command == protocol.CONFIRM:
            self._unconfirmed.pop(protocol.report_seq(body) or 0, None)
        elif command == protocol.WELCOME:
            self._registered = True
            self._reconnect_delay = self.config.heartbeat
            log.info("registered with the broker at %s", self.config.endpoint)
            for report, report_body in self._unconfirmed.values():
                self._send(report, report_body)
        elif command == protocol.CANCEL:
            for job_id in protocol.Fields(body, "CANCEL").names("ids"):
                running = self.running.get(job_id)
                if running is not None:
                    running.context.request_cancel()
        elif command == protocol.RECONNECT and not self._stop_requested:
            log.info("the broker does not know this worker (it restarted?): saying HELLO again")
            self._hello()
        elif command == protocol.ERROR:
            log.error("broker error: %s", body)

    def _start(self, job: protocol.Dispatch) -> None:
        assert self._executor is not None
        current = self.running.get(job.id)
        if current is not None:
            # A job this worker runs already. Under a newer attempt, the broker
            # took it from us (it believed this worker lost, or restarted and
            # saw the lease expire) and gave it back: the run in progress now
            # answers for the new attempt. Ignored, the new attempt would
            # never end, and the old one's report would be refused as stale.
            if job.attempt > current.job.attempt:
                log.info(
                    "job %s is ours again as attempt %d: the run in progress takes it over",
                    job.id,
                    job.attempt,
                )
                current.job = job
            return
        running = Running(
            job, JobContext(job.id, job.name, job.queue, job.attempt, self._executor.state)
        )
        self.running[job.id] = running
        self._executor.start(running)

    # -- to the broker -----------------------------------------------------------------

    def _send_outcomes(self) -> None:
        assert self._executor is not None
        acks: list[Any] = []
        fails: list[Any] = []
        outcomes = self._executor.outcomes
        while not outcomes.empty():
            running, report = outcomes.get_nowait()
            if running.abandoned or self.running.get(running.job.id, _GONE) is not running:
                continue  # reported already (timed out): the late outcome is ignored
            del self.running[running.job.id]
            if report.attempt != running.job.attempt:  # the run took a newer attempt over
                report = dataclasses.replace(report, attempt=running.job.attempt)
            if isinstance(report, protocol.Ack):
                acks.append(report.to_wire())
            else:
                fails.append(report.to_wire())
        if acks:
            self._report(protocol.ACK, {"acks": acks})
        if fails:
            self._report(protocol.FAIL, {"fails": fails})

    def _report(self, command: bytes, body: dict[str, Any]) -> None:
        body["seq"] = seq = next(self._report_seq)
        self._unconfirmed[seq] = (command, body)
        self._send(command, body)

    def _check_timeouts(self, now: float) -> None:
        assert self._executor is not None
        late = [r for r in self.running.values() if r.deadline is not None and r.deadline <= now]
        for running in late:
            log.warning(
                "job %s (%s) ran past its %s s limit",
                running.job.id,
                running.job.name,
                running.job.timeout,
            )
            del self.running[running.job.id]
            self._executor.abandon(running)
            self._report(protocol.FAIL, {"fails": [timed_out(running).to_wire()]})

    # -- stopping ----------------------------------------------------------------------

    def _begin_stop(self) -> None:
        """Say BYE (once): the broker sends no more work; prefetched jobs no
        thread has begun go back at once, their attempt not counted."""
        if self._stop_deadline is None:
            assert self._executor is not None
            self._stop_deadline = time.monotonic() + self.config.grace
            self._send(protocol.BYE, {})
            unstarted = self._executor.take_unstarted()
            for running in unstarted:
                self.running.pop(running.job.id, None)
            log.info(
                "stopping: %d job(s) running, grace %.0f s", len(self.running), self.config.grace
            )
            self._hand_back([running.job for running in unstarted])

    def _hand_back(self, jobs: list[protocol.Dispatch]) -> None:
        """Jobs that arrive once the worker is stopping (sent before the broker
        had its BYE) are not started: they go back at once, their attempt not
        counted. BYE goes first, so the broker does not send them again."""
        self._begin_stop()
        leases = [[job.id, job.attempt] for job in jobs if job.id not in self.running]
        if leases:
            log.info("handing back %d job(s) not started", len(leases))
            self._report(protocol.RELEASE, {"jobs": leases})

    def _stopping_done(self) -> bool:
        """Drive a graceful stop; True when the worker may exit."""
        now = time.monotonic()
        self._begin_stop()
        assert self._stop_deadline is not None  # set by _begin_stop
        if not self.running and not self._unconfirmed:
            return True
        if self._stop_requested > 1 or now >= self._stop_deadline:
            if self.running:
                leases = [[r.job.id, r.job.attempt] for r in self.running.values()]
                log.warning("handing back %d unfinished job(s)", len(leases))
                self._send(protocol.RELEASE, {"jobs": leases})
            if self._unconfirmed:
                log.warning("%d report(s) not confirmed by the broker", len(self._unconfirmed))
            return True
        return False


def _wake_on_signals(fd: int) -> Any:
    """Have a signal wake the I/O thread at once, in its poll or in its wait
    before reconnecting. Python runs a handler on the main thread only, once
    the main thread runs Python code, and retries an interrupted wait without
    telling the caller: without this, a stop signal took effect only when the
    wait ended (a heartbeat, or up to ``reconnect_max`` seconds). Returns
    what undoes it; a no-op off the main thread."""
    try:
        previous = signal.set_wakeup_fd(fd, warn_on_full_buffer=False)
    except ValueError:  # not the main thread: whoever runs us handles signals
        return lambda: None
    return lambda: signal.set_wakeup_fd(previous)
