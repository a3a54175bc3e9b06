"""A worker process's I/O thread: one DEALER socket to the broker.

It announces the worker (HELLO), starts the jobs the broker pushes, sends their
outcomes back in batches, heartbeats, and rebuilds its socket when the broker
goes silent (Paranoid Pirate). Jobs never run on this thread, so a long job
never starves the heartbeats.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import socket as pysocket
import time
import uuid
from dataclasses import dataclass
from typing import Any

import zmq

from jobsd.keys import ClientKeys
from jobsd.protocol import framing
from jobsd.protocol.worker import Ack, Dispatch, Fail, Hello, Welcome, decode_cancel, decode_jobs
from jobsd.vocabulary import MAX_MESSAGE_BYTES
from jobsd.workers.executor import Executor, JobContext, Running, timed_out
from jobsd.workers.outbox import Outbox
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
    heartbeat: float = 1.0  # seconds between heartbeats, until WELCOME says otherwise
    liveness: int = 3  # broker heartbeats missed before reconnecting, likewise
    grace: float = 30.0  # how long running jobs may finish after a stop signal
    # Jobs held beyond those running, so a freed thread starts the next one at
    # once instead of after a round trip to the broker. Bounded, so a slow
    # worker never hoards: at most concurrency + prefetch jobs are its.
    prefetch: int = 0
    reconnect_max: float = 30.0  # the longest wait for a broker on one socket
    # Key files for a broker run with --keys: its public key, this worker's secret.
    server_key: str | None = None
    key: str | None = None


class Worker:
    def __init__(self, registry: Registry, config: WorkerConfig) -> None:
        if config.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.registry = registry
        self.config = config
        self._keys = ClientKeys.load(config.server_key, config.key)
        #: Who this worker is, for its whole life: the broker records it with
        #: each job it claims for it, and takes a job's report after a broker
        #: restart only from the worker it was claimed for.
        self.worker_id = f"{pysocket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.running: dict[str, Running] = {}
        self.outbox = Outbox()
        self._context = zmq.Context()
        self._socket: zmq.Socket[Any] | None = None
        self._executor: Executor | None = None
        self._stop_requested = 0
        self._stop_deadline: float | None = None
        self._heartbeat = config.heartbeat
        self._last_heard = 0.0
        self._last_sent = 0.0
        self._registered = False
        self._patience = config.heartbeat * config.liveness

    def stop(self) -> None:
        """Stop taking work; finish what runs within the grace period. A second
        call stops at once. Safe from a signal handler."""
        self._stop_requested += 1

    def run(self) -> None:
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
                    self._socket.close(linger=int(self._heartbeat * 1000))
                self._context.destroy(linger=0)  # never hangs on a socket left open

    def _serve(self) -> None:
        assert self._executor is not None  # set by run()
        wakeup = self._executor.wakeup
        poller = zmq.Poller()
        poller.register(wakeup.read_fd, zmq.POLLIN)
        sock = self._connect(poller)
        while True:
            if self._stop_requested and self._stopping_done():
                return
            events = dict(poller.poll(self._poll_timeout_ms()))
            if sock in events:
                self._receive(sock)
            if wakeup.read_fd in events:
                wakeup.drain()
            self._send_outcomes()
            now = time.monotonic()
            self._check_timeouts(now)
            if self._registered and now - self._last_sent >= self._heartbeat:
                self._send(framing.HEARTBEAT, {})
            if now - self._last_heard > self._patience:
                log.warning("broker silent for %.1f s: reconnecting", now - self._last_heard)
                # Not registered on this socket either: wait longer on the next
                # one (its HELLO reaches a broker that comes back at once).
                # (Registered, the patience is the liveness WELCOME set.)
                if not self._registered:
                    self._patience = min(self._patience * 2, self.config.reconnect_max)
                poller.unregister(sock)
                sock = self._connect(poller)

    def _poll_timeout_ms(self) -> int:
        waits = [self._heartbeat]
        deadlines = [r.deadline for r in self.running.values() if r.deadline is not None]
        if deadlines:
            waits.append(min(deadlines) - time.monotonic())
        if self._stop_deadline is not None:
            waits.append(self._stop_deadline - time.monotonic())
        return max(1, int(min(waits) * 1000))

    def _connect(self, poller: zmq.Poller) -> zmq.Socket[Any]:
        """A fresh socket with a fresh identity, so the broker never confuses
        it with the old connection (no ROUTER handover needed), and a HELLO on
        it: queued until the broker is there, then registered at once."""
        if self._socket is not None:
            self._socket.close(linger=0)
        self._socket = sock = self._context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IDENTITY, uuid.uuid4().bytes)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        if self._keys is not None:
            self._keys.apply(sock)
        sock.connect(self.config.endpoint)
        self._last_heard = time.monotonic()
        poller.register(sock, zmq.POLLIN)
        self._hello()
        return sock

    def _hello(self) -> None:
        self._registered = False
        hello = Hello(
            worker=self.worker_id,
            queues=list(self.config.queues),
            capacity=self.config.concurrency + self.config.prefetch,
            pid=os.getpid(),
            host=pysocket.gethostname(),
            job_types={name: d.options for name, d in self.registry.definitions.items()},
            # Every lease this worker still answers for: running, or reported
            # and not yet confirmed stored.
            running=[(r.job.id, r.job.lease) for r in self.running.values()] + self.outbox.leases(),
            schedules=self.registry.schedules,
        )
        self._send(framing.HELLO, hello.to_wire())
        if self._stop_deadline is not None:
            self._send(framing.BYE, {})  # a new connection while stopping: no work, please

    def _send(self, command: bytes, body: Any) -> None:
        assert self._socket is not None
        try:
            framing.send(self._socket, framing.encode(command, body), zmq.NOBLOCK)
            self._last_sent = time.monotonic()
        except zmq.Again:
            log.warning("could not send %s: broker not reachable", command.decode())

    def _receive(self, sock: zmq.Socket[Any]) -> None:
        for frames in framing.recv_waiting(sock, RECEIVE_BURST, framing.recv):
            self._last_heard = time.monotonic()
            try:
                command, body = framing.decode(frames)
                self._on_message(command, body)
            except framing.ProtocolError as exc:
                log.error("bad message from the broker: %s", exc)

    def _on_message(self, command: bytes, body: Any) -> None:
        if command == framing.JOB:
            jobs = decode_jobs(body)
            if self._stop_requested:
                self._hand_back(jobs)
            else:
                for job in jobs:
                    self._start(job)
        elif command == framing.CONFIRM:
            self.outbox.confirmed(body)
        elif command == framing.WELCOME:
            self._welcome(Welcome.from_wire(body))
        elif command == framing.CANCEL:
            for job_id in decode_cancel(body):
                running = self.running.get(job_id)
                if running is not None:
                    running.context.request_cancel()
        elif command == framing.RECONNECT and self._registered:
            # Not while a HELLO awaits its WELCOME: this RECONNECT answers a
            # message sent before it.
            log.info("the broker does not know this worker (it restarted?): saying HELLO again")
            self._hello()
        elif command == framing.ERROR:
            log.error("broker error: %s", body)

    def _welcome(self, welcome: Welcome) -> None:
        """Registered: keep the broker's heartbeat, and send again, once, the
        reports it has not confirmed (it may never have stored them)."""
        if self._registered:
            return
        self._registered = True
        self._heartbeat = welcome.heartbeat
        self._patience = welcome.heartbeat * welcome.liveness
        log.info("registered with the broker at %s", self.config.endpoint)
        for command, body in self.outbox.unconfirmed():
            self._send(command, body)

    def _start(self, job: Dispatch) -> None:
        assert self._executor is not None
        current = self.running.get(job.id)
        if current is not None:
            # A job this worker runs already, under another lease: the broker
            # took it from us (it believed this worker lost, or restarted and
            # saw the lease expire) and gave it back. The run in progress
            # answers for the new lease: ignored, the new claim would never
            # end, and the old one's report would be refused as stale.
            if job.lease != current.job.lease:
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

    def _sender(self) -> Any:
        """Where reports go now: to the broker once registered; until then they
        wait in the outbox, for the WELCOME."""
        return self._send if self._registered else None

    def _send_outcomes(self) -> None:
        assert self._executor is not None
        acks: list[Ack] = []
        fails: list[Fail] = []
        outcomes = self._executor.outcomes
        while not outcomes.empty():
            running, report = outcomes.get_nowait()
            if running.abandoned or self.running.get(running.job.id, _GONE) is not running:
                continue  # reported already (timed out): the late outcome is ignored
            del self.running[running.job.id]
            if report.lease != running.job.lease:  # the run took a newer claim over
                report = dataclasses.replace(report, lease=running.job.lease)
            if isinstance(report, Ack):
                acks.append(report)
            else:
                fails.append(report)
        if acks:
            self.outbox.acks(acks, self._sender())
        if fails:
            self.outbox.fails(fails, self._sender())

    def _check_timeouts(self, now: float) -> None:
        assert self._executor is not None
        late = [r for r in self.running.values() if r.deadline is not None and r.deadline <= now]
        for running in late:
            job = running.job
            log.warning("job %s (%s) ran past its %s s limit", job.id, job.name, job.timeout)
            del self.running[job.id]
            self._executor.abandon(running)
            self.outbox.fails([timed_out(running)], self._sender())

    def _begin_stop(self) -> None:
        """Say BYE (once): the broker sends no more work; prefetched jobs no
        thread has begun go back at once, their attempt not counted."""
        if self._stop_deadline is None:
            assert self._executor is not None
            self._stop_deadline = time.monotonic() + self.config.grace
            self._send(framing.BYE, {})
            unstarted = self._executor.take_unstarted()
            for running in unstarted:
                self.running.pop(running.job.id, None)
            log.info(
                "stopping: %d job(s) running, grace %.0f s", len(self.running), self.config.grace
            )
            self._hand_back([running.job for running in unstarted])

    def _hand_back(self, jobs: list[Dispatch]) -> None:
        """Jobs that arrive once the worker is stopping (sent before the broker
        had its BYE) are not started: they go back at once, their attempt not
        counted. BYE goes first, so the broker does not send them again."""
        self._begin_stop()
        leases = [(job.id, job.lease) for job in jobs if job.id not in self.running]
        if leases:
            log.info("handing back %d job(s) not started", len(leases))
            self.outbox.releases(leases, self._sender())

    def _stopping_done(self) -> bool:
        """Drive a graceful stop; True when the worker may exit."""
        now = time.monotonic()
        self._begin_stop()
        assert self._stop_deadline is not None  # set by _begin_stop
        if not self.running and not self.outbox:
            return True
        if self._stop_requested > 1 or now >= self._stop_deadline:
            if self.running:
                leases = [[r.job.id, r.job.lease] for r in self.running.values()]
                log.warning("handing back %d unfinished job(s)", len(leases))
                self._send(framing.RELEASE, {"jobs": leases})
            if self.outbox:
                log.warning("%d report(s) not confirmed by the broker", len(self.outbox))
            return True
        return False


def _wake_on_signals(fd: int) -> Any:
    """Have a signal wake the I/O thread at once, in its poll. Python runs a
    handler on the main thread only, once the main thread runs Python code,
    and retries an interrupted wait without telling the caller: without
    this, a stop signal took effect only when the wait ended. Returns what
    undoes it; a no-op off the main thread."""
    try:
        previous = signal.set_wakeup_fd(fd, warn_on_full_buffer=False)
    except ValueError:  # not the main thread: whoever runs us handles signals
        return lambda: None
    return lambda: signal.set_wakeup_fd(previous)
