"""The broker daemon: one ROUTER socket, one poll loop, small handlers.

Each loop turn drains every message that has arrived (up to a bound), applies
the turn's submits, acks and fails to storage in one call each and claims jobs
for the workers' free slots, all in one transaction (group commit); only after
that commit does it answer producers, confirm reports and push the jobs.
Timers (promotion of due jobs, heartbeats, leases, waits) run between turns.
One thread, no locks: storage is only ever touched from this loop.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import zmq

from jobsd import protocol
from jobsd.cron import CronTable
from jobsd.manager import JobManager, Outcome
from jobsd.storage import (
    FINAL_STATES,
    STATES,
    AddResult,
    JobRecord,
    Lease,
    NewJob,
    Storage,
    StorageError,
)
from jobsd.waiters import Waiters

log = logging.getLogger("jobsd.broker")

#: Messages handled in one loop turn at most, so timers and dispatch keep running.
TURN_MESSAGES = 5000
_NOBLOCK = int(zmq.NOBLOCK)


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    heartbeat: float = 1.0  # seconds between heartbeats, both ways
    liveness: int = 3  # heartbeats a worker may miss before it is declared lost
    lease: float = 30.0  # how long a claim lasts without being extended
    poll_interval: float = 1.0  # how often to look for work other brokers made ready
    max_message_bytes: int = protocol.MAX_MESSAGE_BYTES
    # How long finished jobs (and their results) are kept, by state; None: forever.
    keep_done: float | None = 7 * 86400.0
    keep_dead: float | None = 30 * 86400.0
    keep_cancelled: float | None = 7 * 86400.0
    retention_interval: float = 60.0


@dataclass(eq=False)
class WorkerSession:
    """A connected worker as the broker sees it."""

    peer: bytes
    worker_id: str
    queues: tuple[str, ...]
    capacity: int
    last_seen: float
    pid: int = 0
    host: str = ""
    inflight: dict[str, JobRecord] = field(default_factory=dict)
    # Jobs the worker said it still runs (HELLO) that are no longer its: taken
    # from it while it was away. They hold its threads until it reports them,
    # so they count against its capacity until then.
    held: set[str] = field(default_factory=set)
    draining: bool = False

    @property
    def free(self) -> int:
        return 0 if self.draining else self.capacity - len(self.inflight) - len(self.held)


@dataclass
class Turn:
    """What arrived in one loop turn, applied to storage together."""

    submits: list[tuple[bytes, list[NewJob]]] = field(default_factory=list)
    acks: list[protocol.Ack] = field(default_factory=list)
    fails: list[protocol.Fail] = field(default_factory=list)
    releases: list[Lease] = field(default_factory=list)
    confirms: list[tuple[bytes, int]] = field(default_factory=list)
    requests: list[tuple[bytes, bytes, Any]] = field(default_factory=list)


class Broker:
    def __init__(
        self,
        storage: Storage,
        endpoint: str,
        config: BrokerConfig | None = None,
        clock: Callable[[], float] = time.time,
        context: zmq.Context[Any] | None = None,
    ) -> None:
        self.storage = storage
        self.endpoint = endpoint
        self.config = config or BrokerConfig()
        self.clock = clock
        self.manager = JobManager(storage, clock)
        self.workers: dict[bytes, WorkerSession] = {}
        self.job_owner: dict[str, WorkerSession] = {}
        self.waiters = Waiters()
        self.cron = CronTable()
        self.maybe_ready: set[str] = set()
        self.next_due: float | None = None
        self._context = context or zmq.Context.instance()
        self._socket: zmq.Socket[Any] | None = None
        self._stopping = False
        self._timers: list[tuple[float, int, str]] = []
        self._timer_seq = itertools.count()
        # Reports a failed commit could not record, retried with the next turn.
        self._pending_reports: Turn | None = None
        self._last_heartbeat: float | None = None
        self._handlers: dict[bytes, Callable[[bytes, Any, Turn], None]] = {
            protocol.SUBMIT: self._on_submit,
            protocol.HELLO: self._on_hello,
            protocol.ACK: self._on_ack,
            protocol.FAIL: self._on_fail,
            protocol.RELEASE: self._on_release,
            protocol.HEARTBEAT: self._on_heartbeat,
            protocol.BYE: self._on_bye,
        }
        self._requests: dict[bytes, Callable[[Any, float], Any]] = {
            protocol.GET: self._get,
            protocol.LIST: self._list,
            protocol.STATS: self._stats,
            protocol.CANCEL: self._cancel,
            protocol.RETRY: self._retry,
            protocol.DELETE: self._delete,
            protocol.PAUSE: self._pause,
            protocol.RESUME: self._resume,
            protocol.PURGE: self._purge,
            protocol.PING: self._ping,
        }

    # -- life cycle ----------------------------------------------------------------

    def bind(self) -> str:
        """Bind the ROUTER socket; return the endpoint (with the real port when
        the given one asked for any free port, ``tcp://127.0.0.1:*``)."""
        sock = self._context.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.MAXMSGSIZE, self.config.max_message_bytes)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.bind(self.endpoint)
        self._socket = sock
        self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        return self.endpoint

    def stop(self) -> None:
        """Ask the loop to finish its turn and return (safe from a signal handler)."""
        self._stopping = True

    def run(self) -> None:
        if self._socket is None:
            self.bind()
        assert self._socket is not None  # for the type checker: bind() set it
        sock = self._socket
        now = self.clock()
        self.maybe_ready.update(self._known_queues())
        self.next_due = self.storage.next_run_at()
        for name in ("heartbeat", "poll", "leases", "retention"):
            self._schedule(name, now)
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        log.info("broker serving on %s with storage %s", self.endpoint, self.storage.url)
        try:
            while not self._stopping:
                timeout = self._next_wakeup() - self.clock()
                if poller.poll(max(0, int(timeout * 1000) + 1) if timeout > 0 else 0):
                    self._turn(sock)
                self._run_timers()
                self._dispatch()
            log.info("stopping")
        finally:
            self._pending_flush()
            sock.close(linger=0)
            self._socket = None
            log.info("broker stopped")

    # -- one loop turn --------------------------------------------------------------

    def _turn(self, sock: zmq.Socket[Any]) -> None:
        """Handle every message that has arrived, then commit them together."""
        turn = Turn()
        for frames in protocol.recv_waiting(sock, TURN_MESSAGES):
            self._handle(frames, turn)
        self._commit(turn)

    def _handle(self, frames: list[bytes], turn: Turn) -> None:
        peer = frames[0]
        try:
            command, body = protocol.decode(frames[1:])
            handler = self._handlers.get(command)
            if handler is not None:
                handler(peer, body, turn)
            elif command in self._requests or command == protocol.WAIT:
                turn.requests.append((peer, command, body))
            else:
                raise protocol.ProtocolError(
                    f"unknown command {command[:32]!r}", code="unknown_command"
                )
        except protocol.ProtocolError as exc:
            log.warning("bad message from peer %s: %s", peer.hex(), exc)
            self._send(peer, protocol.ERROR, protocol.error_body(exc.code, str(exc)))
        except StorageError as exc:
            log.error("storage failed handling a message from peer %s: %s", peer.hex(), exc)
            self._send(peer, protocol.ERROR, protocol.error_body("storage_error", str(exc)))
        except Exception:  # a bug must cost one message, not the daemon
            log.exception("failed to handle a message from peer %s", peer.hex())
            self._send(
                peer, protocol.ERROR, protocol.error_body("internal_error", "see broker log")
            )

    def _commit(self, turn: Turn) -> None:
        """Apply the turn to storage with one commit: its submits, its workers'
        reports, and claims for the slots they free and the jobs they add (on
        SQLite one fsync a turn, not one per call). Replies, CONFIRMs and jobs
        go out only once that commit is done."""
        now = self.clock()
        self._merge_pending(turn)
        submitted = [job for _, batch in turn.submits for job in batch]
        try:
            with self.storage.transaction():
                added = self.manager.add(submitted, now)
                self._note_added(submitted, now)
                finished = self._commit_reports(turn, now)
                changed = submitted or turn.acks or turn.fails or turn.releases
                claimed = self._claim_ready() if changed else []
        except StorageError as exc:
            log.error(
                "storage failed: %d submitted job(s) refused, %d report(s) to retry: %s",
                len(submitted),
                len(turn.acks) + len(turn.fails) + len(turn.releases),
                exc,
            )
            for peer, _ in turn.submits:
                self._send(peer, protocol.ERROR, protocol.error_body("storage_error", str(exc)))
            if turn.acks or turn.fails or turn.releases:
                self._pending_reports = Turn(
                    acks=turn.acks, fails=turn.fails, releases=turn.releases, confirms=turn.confirms
                )
            self.maybe_ready.update(self._known_queues())  # claims made were undone
        else:
            # Jobs first: a worker starts one while its producer reads the reply.
            for session, jobs in claimed:
                self._push(session, jobs)
            self._reply_added(turn.submits, added)
            for peer, seq in turn.confirms:
                self._send(peer, protocol.CONFIRM, {"seq": seq})
            try:
                self._answer_waiters(finished)
            except StorageError as exc:  # the poll timer answers them later
                log.error("storage failed to read finished jobs for waiters: %s", exc)
        for peer, command, body in turn.requests:
            self._answer(peer, command, body, now)

    def _note_added(self, jobs: list[NewJob], now: float) -> None:
        for job in jobs:
            if job.run_at <= now:
                self.maybe_ready.add(job.queue)
            else:
                self._due_at(job.run_at)

    def _reply_added(
        self, submits: list[tuple[bytes, list[NewJob]]], results: list[AddResult]
    ) -> None:
        start = 0
        for peer, batch in submits:
            chunk = results[start : start + len(batch)]
            start += len(batch)
            self._send(
                peer,
                protocol.OK,
                {"ids": [r.job_id for r in chunk], "created": [r.created for r in chunk]},
            )

    def _merge_pending(self, turn: Turn) -> None:
        pending, self._pending_reports = self._pending_reports, None
        if pending is None:
            return
        turn.acks[:0] = pending.acks
        turn.fails[:0] = pending.fails
        turn.releases[:0] = pending.releases
        turn.confirms[:0] = pending.confirms

    def _commit_reports(self, turn: Turn, now: float) -> list[str]:
        """Apply acks, fails and releases; return the ids of jobs now final."""
        if not (turn.acks or turn.fails or turn.releases):
            return []
        outcomes: list[Outcome] = []
        outcomes += self.manager.complete(turn.acks, now)
        outcomes += self.manager.fail(turn.fails, self._running_record, now)
        reported = [(a.job_id, a.attempt) for a in turn.acks]
        reported += [(f.job_id, f.attempt) for f in turn.fails]
        if turn.releases:
            self.storage.release(turn.releases, now)
            for lease in turn.releases:
                self.maybe_ready.add(self._forget(lease.job_id, lease.attempt))
        for outcome, (job_id, attempt) in zip(outcomes, reported, strict=True):
            queue = self._forget(job_id, attempt)
            if outcome.accepted and not outcome.final:
                self.maybe_ready.add(queue)
        if any(o.accepted and not o.final for o in outcomes):
            self._refresh_due()
        return [o.job_id for o in outcomes if o.final]

    def _pending_flush(self) -> None:
        """On stop: one last try to record reports that storage refused."""
        if self._pending_reports is not None:
            try:
                self._commit_reports(self._pending_reports, self.clock())
            except StorageError as exc:
                log.error("could not record worker reports at stop: %s", exc)

    # -- worker messages ---------------------------------------------------------------

    def _on_submit(self, peer: bytes, body: Any, turn: Turn) -> None:
        now = self.clock()
        jobs = [self.manager.new_job(sub, now) for sub in protocol.decode_submit(body)]
        turn.submits.append((peer, jobs))

    def _on_hello(self, peer: bytes, body: Any, turn: Turn) -> None:
        hello = protocol.Hello.from_wire(body)
        self.cron.add(hello.schedules, self.clock())  # may refuse the HELLO: before anything
        old = self.workers.get(peer)
        if old is not None:
            self._lose_worker(old, "worker said HELLO again")
        session = WorkerSession(
            peer=peer,
            worker_id=hello.worker,
            queues=tuple(hello.queues),
            capacity=hello.capacity,
            last_seen=self.clock(),
            pid=hello.pid,
            host=hello.host,
        )
        self.workers[peer] = session
        self.manager.learn_job_types(hello.job_types)
        self.maybe_ready.update(session.queues)
        if hello.running:
            self._adopt(session, hello.running)
        log.info(
            "worker %s (pid %s on %s) joined: queues %s, capacity %d",
            hello.worker,
            hello.pid,
            hello.host or "?",
            ",".join(hello.queues),
            hello.capacity,
        )
        self._send(
            peer,
            protocol.WELCOME,
            {"heartbeat": self.config.heartbeat, "liveness": self.config.liveness},
        )

    def _adopt(self, session: WorkerSession, running: list[tuple[str, int]]) -> None:
        """A worker that reconnected (a broker restart, a network cut) still runs
        jobs: take their leases over so they are not expired under it."""
        now = self.clock()
        leases = [Lease(job_id, attempt) for job_id, attempt in running]
        current = self.storage.extend_leases(leases, now + self.config.lease)
        records = self.storage.get(
            [lease.job_id for lease, ok in zip(leases, current, strict=False) if ok]
        )
        session.held.update(lease.job_id for lease in leases if lease.job_id not in records)
        if session.held:
            log.info(
                "worker %s still runs %d job(s) now run elsewhere: they hold its slots until "
                "it reports them",
                session.worker_id,
                len(session.held),
            )
        for record in records.values():
            previous = self.job_owner.get(record.id)
            if previous is not None and previous is not session:
                # The worker's old connection, not yet declared lost: losing
                # it later must not take this job back.
                previous.inflight.pop(record.id, None)
            session.inflight[record.id] = record
            self.job_owner[record.id] = session

    def _session(self, peer: bytes) -> WorkerSession | None:
        """The sender's session, kept alive; a worker the broker does not know
        (it restarted, or declared the worker lost) is told to say HELLO again."""
        session = self.workers.get(peer)
        if session is None:
            self._send(peer, protocol.RECONNECT, {})
            return None
        session.last_seen = self.clock()
        return session

    def _on_ack(self, peer: bytes, body: Any, turn: Turn) -> None:
        # Reports count even from an unknown worker: storage fences them by attempt.
        acks = protocol.decode_acks(body)
        turn.acks.extend(acks)
        self._report_received(peer, body, turn, [a.job_id for a in acks])

    def _on_fail(self, peer: bytes, body: Any, turn: Turn) -> None:
        fails = protocol.decode_fails(body)
        turn.fails.extend(fails)
        self._report_received(peer, body, turn, [f.job_id for f in fails])

    def _on_release(self, peer: bytes, body: Any, turn: Turn) -> None:
        leases = [
            Lease(job_id, attempt) for job_id, attempt in protocol.decode_leases(body, "RELEASE")
        ]
        turn.releases.extend(leases)
        self._report_received(peer, body, turn, [lease.job_id for lease in leases])

    def _report_received(self, peer: bytes, body: Any, turn: Turn, job_ids: list[str]) -> None:
        """Confirm the report once storage has it: until then the worker keeps
        it, and sends it again if it has to reconnect. A job reported is no
        longer held by the worker, whoever it belongs to now."""
        seq = protocol.report_seq(body)
        if seq is not None:
            turn.confirms.append((peer, seq))
        session = self._session(peer)
        if session is not None and session.held:
            session.held.difference_update(job_ids)

    def _on_heartbeat(self, peer: bytes, body: Any, turn: Turn) -> None:
        self._session(peer)

    def _on_bye(self, peer: bytes, body: Any, turn: Turn) -> None:
        """The worker stops: send it nothing more; it reports what it runs."""
        session = self.workers.get(peer)
        if session is not None:
            session.draining = True
            log.info("worker %s is stopping", session.worker_id)
            if not session.inflight:
                del self.workers[peer]

    def _running_record(self, job_id: str) -> JobRecord | None:
        owner = self.job_owner.get(job_id)
        return owner.inflight.get(job_id) if owner else None

    def _forget(self, job_id: str, attempt: int) -> str:
        """A worker reported ``attempt`` of a job: drop the job from its
        owner's in-flight set and return its queue, if that is the attempt the
        owner runs. A stale report (the job was taken from a lost worker and
        runs elsewhere under a newer attempt) changes nothing: the job's new
        owner keeps it, and its lease."""
        owner = self.job_owner.get(job_id)
        if owner is None:
            return ""
        record = owner.inflight.get(job_id)
        if record is not None and record.attempts != attempt:
            return ""
        del self.job_owner[job_id]
        owner.inflight.pop(job_id, None)
        if owner.draining and not owner.inflight:
            self.workers.pop(owner.peer, None)
        return record.queue if record else ""

    # -- dispatch ---------------------------------------------------------------------

    def _dispatch(self) -> None:
        try:
            claimed = self._claim_ready()
        except StorageError as exc:
            log.error("storage failed to claim jobs: %s", exc)
            return
        for session, jobs in claimed:
            self._push(session, jobs)

    def _claim_ready(self) -> list[tuple[WorkerSession, list[JobRecord]]]:
        """Claim ready jobs for every worker with free slots. Nothing is sent
        here: the caller pushes them once the claims have committed."""
        claimed: list[tuple[WorkerSession, list[JobRecord]]] = []
        if not self.maybe_ready:
            return claimed
        for session in [s for s in self.workers.values() if s.free > 0]:
            if not self.maybe_ready.intersection(session.queues):
                continue
            now = self.clock()
            jobs = self.storage.claim(
                session.queues, session.free, now, now + self.config.lease, session.worker_id
            )
            if len(jobs) < session.free:
                self.maybe_ready.difference_update(session.queues)
            if jobs:
                claimed.append((session, jobs))
            if not self.maybe_ready:
                break
        return claimed

    def _push(self, session: WorkerSession, jobs: list[JobRecord]) -> None:
        for job in jobs:
            session.inflight[job.id] = job
            self.job_owner[job.id] = session
        body = {
            "jobs": [
                protocol.Dispatch(j.id, j.name, j.queue, j.attempts, j.args, j.timeout).to_wire()
                for j in jobs
            ]
        }
        if not self._send(session.peer, protocol.JOB, body):
            # The worker vanished between its last message and now: the jobs
            # never reached it, so they go back without counting the attempt.
            self._drop_worker(session)
            self.storage.release([j.lease() for j in jobs], self.clock())
            self.maybe_ready.update(session.queues)

    # -- producer requests ---------------------------------------------------------------

    def _answer(self, peer: bytes, command: bytes, body: Any, now: float) -> None:
        try:
            if command == protocol.WAIT:
                self._wait(peer, body, now)
                return
            reply = self._requests[command](body, now)
        except protocol.ProtocolError as exc:
            self._send(peer, protocol.ERROR, protocol.error_body(exc.code, str(exc)))
            return
        except StorageError as exc:
            log.error("storage failed on %s: %s", command.decode(), exc)
            self._send(peer, protocol.ERROR, protocol.error_body("storage_error", str(exc)))
            return
        self._send(peer, protocol.OK, reply)

    def _get(self, body: Any, now: float) -> Any:
        f = protocol.Fields(body, "GET")
        ids = f.names("ids")
        jobs = self.storage.get(ids)
        views = {job_id: job_view(job) for job_id, job in jobs.items()}
        if f.flag("errors"):
            for job_id, view in views.items():
                view["errors"] = [
                    {"attempt": e.attempt, "at": e.at, "error": e.error}
                    for e in self.storage.errors(job_id)
                ]
        return {"jobs": [views.get(job_id) for job_id in ids]}

    def _wait(self, peer: bytes, body: Any, now: float) -> None:
        f = protocol.Fields(body, "WAIT")
        job_id = f.text("id")
        timeout = min(f.number("timeout"), 24 * 3600.0)
        job = self.storage.get([job_id]).get(job_id)
        if job is None:
            raise protocol.ProtocolError(f"no job {job_id}", code="not_found")
        if job.state in FINAL_STATES or timeout <= 0:
            self._send(peer, protocol.OK, {"job": job_view(job)})
            return
        self.waiters.add(job_id, peer, now + timeout)

    def _answer_waiters(self, job_ids: Sequence[str]) -> None:
        waiting = [job_id for job_id in job_ids if self.waiters.is_waited(job_id)]
        if not waiting:
            return
        for job_id, job in self.storage.get(waiting).items():
            for peer in self.waiters.pop_job(job_id):
                self._send(peer, protocol.OK, {"job": job_view(job)})

    def _list(self, body: Any, now: float) -> Any:
        f = protocol.Fields(body, "LIST")
        state = f.text("state", required=False)
        if state is not None and state not in STATES:
            raise protocol.ProtocolError(f"LIST: state must be one of {', '.join(STATES)}")
        jobs = self.storage.list_jobs(
            queue=f.text("queue", required=False),
            state=state,
            limit=f.integer("limit", required=False, low=1, high=10_000) or 100,
            before_seq=f.integer("before_seq", required=False),
        )
        return {"jobs": [job_view(job) for job in jobs]}

    def _stats(self, body: Any, now: float) -> Any:
        queues = {
            queue: {"counts": stats.counts, "paused": stats.paused}
            for queue, stats in sorted(self.storage.stats().items())
        }
        workers = [
            {
                "id": s.worker_id,
                "pid": s.pid,
                "host": s.host,
                "queues": list(s.queues),
                "capacity": s.capacity,
                "running": len(s.inflight),
                "draining": s.draining,
            }
            for s in self.workers.values()
        ]
        return {
            "queues": queues,
            "workers": workers,
            "stale_reports": self.manager.stale_reports,
            "pid": os.getpid(),
            "storage": self.storage.url,
        }

    def _cancel(self, body: Any, now: float) -> Any:
        ids = protocol.Fields(body, "CANCEL").names("ids")
        cancelled = self.storage.cancel(ids, now)
        requested = []
        for job_id, ok in zip(ids, cancelled, strict=False):
            owner = self.job_owner.get(job_id)
            if not ok and owner is not None:
                self._send(owner.peer, protocol.CANCEL, {"ids": [job_id]})
                requested.append(job_id)
        self._answer_waiters([job_id for job_id, ok in zip(ids, cancelled, strict=False) if ok])
        return {"cancelled": cancelled, "requested": [job_id in requested for job_id in ids]}

    def _retry(self, body: Any, now: float) -> Any:
        f = protocol.Fields(body, "RETRY")
        ids = f.names("ids", required=False)
        if f.flag("all_dead"):
            ids = ids + self._all_ids(f.text("queue", required=False))
        retried = self.storage.retry(ids, now)
        self.maybe_ready.update(self._known_queues())
        return {"ids": ids, "retried": retried}

    def _all_ids(self, queue: str | None) -> list[str]:
        ids: list[str] = []
        before: int | None = None
        while True:
            page = self.storage.list_jobs(queue=queue, state="dead", limit=1000, before_seq=before)
            ids += [job.id for job in page]
            if len(page) < 1000:
                return ids
            before = page[-1].seq

    def _delete(self, body: Any, now: float) -> Any:
        ids = protocol.Fields(body, "DELETE").names("ids")
        return {"deleted": self.storage.delete(ids)}

    def _pause(self, body: Any, now: float) -> Any:
        queue = protocol.Fields(body, "PAUSE").text("queue")
        self.storage.set_paused(queue, True)
        return {"queue": queue, "paused": True}

    def _resume(self, body: Any, now: float) -> Any:
        queue = protocol.Fields(body, "RESUME").text("queue")
        self.storage.set_paused(queue, False)
        self.maybe_ready.add(queue)
        return {"queue": queue, "paused": False}

    def _purge(self, body: Any, now: float) -> Any:
        f = protocol.Fields(body, "PURGE")
        states = f.names("states", required=False) or sorted(FINAL_STATES)
        if not set(states) <= FINAL_STATES:
            raise protocol.ProtocolError(f"PURGE: states must be among {sorted(FINAL_STATES)}")
        older_than = f.number("older_than", required=False) or 0.0
        return {"purged": self.storage.purge(states, now - older_than)}

    def _ping(self, body: Any, now: float) -> Any:
        return {"pong": True, "time": now}

    # -- timers -------------------------------------------------------------------------

    def _schedule(self, name: str, at: float) -> None:
        heapq.heappush(self._timers, (at, next(self._timer_seq), name))

    def _due_at(self, run_at: float) -> None:
        if self.next_due is None or run_at < self.next_due:
            self.next_due = run_at

    def _refresh_due(self) -> None:
        self.next_due = self.storage.next_run_at()

    def _next_wakeup(self) -> float:
        candidates = [self._timers[0][0]]
        if self.next_due is not None:
            candidates.append(self.next_due)
        for deadline in (self.waiters.next_deadline(), self.cron.next_fire()):
            if deadline is not None:
                candidates.append(deadline)
        if self._pending_reports is not None:
            candidates.append(self.clock() + 0.1)
        return min(candidates)

    def _run_timers(self) -> None:
        now = self.clock()
        try:
            if self.next_due is not None and self.next_due <= now:
                if self.storage.promote(now):
                    self.maybe_ready.update(self._known_queues())
                self._refresh_due()
            if self._pending_reports is not None:
                self._commit(Turn())
            fires = self.cron.due(now)
            if fires:
                self._enqueue_fires(fires, now)
            for peer, job_id in self.waiters.pop_expired(now):
                job = self.storage.get([job_id]).get(job_id)
                self._send(peer, protocol.OK, {"job": job_view(job) if job else None})
            while self._timers and self._timers[0][0] <= now:
                _, _, name = heapq.heappop(self._timers)
                getattr(self, f"_timer_{name}")(now)
        except StorageError as exc:
            log.error("storage failed in a timer, will retry: %s", exc)

    def _timer_heartbeat(self, now: float) -> None:
        interval = self.config.heartbeat
        self._schedule("heartbeat", now + interval)
        last, self._last_heartbeat = self._last_heartbeat, now
        if last is not None and now - last > 2 * interval:
            # This loop did not run for a while (the process was stopped, the
            # machine paused, storage hung): the workers' heartbeats may wait
            # unread in the socket. Judge no one on that: every worker gets a
            # fresh liveness period (and a reconnected one the time to say
            # HELLO and take its running jobs over).
            log.warning("broker loop stalled for %.1f s: workers get a fresh liveness", now - last)
            for session in self.workers.values():
                session.last_seen = max(session.last_seen, now)
        limit = now - interval * self.config.liveness
        for session in list(self.workers.values()):
            if session.last_seen < limit:
                self._lose_worker(session, "worker lost: no heartbeat")
            else:
                self._send(session.peer, protocol.HEARTBEAT, {})

    def _enqueue_fires(self, fires: list[protocol.JobSubmission], now: float) -> None:
        jobs = [self.manager.new_job(fire, now) for fire in fires]
        added = self.manager.add(jobs, now)
        for job, result in zip(jobs, added, strict=False):
            done = "enqueued" if result.created else "was already enqueued"
            log.info("cron: %s %s as %s", job.name, done, job.id)
            self.maybe_ready.add(job.queue)

    def _timer_retention(self, now: float) -> None:
        """Delete finished jobs past their retention, a state at a time."""
        self._schedule("retention", now + self.config.retention_interval)
        for state, keep in (
            ("done", self.config.keep_done),
            ("dead", self.config.keep_dead),
            ("cancelled", self.config.keep_cancelled),
        ):
            if keep is not None:
                purged = self.storage.purge([state], now - keep)
                if purged:
                    log.info(
                        "retention: purged %d %s job(s) older than %.0f s", purged, state, keep
                    )

    def _timer_poll(self, now: float) -> None:
        """Catch what other brokers on a shared database did: new ready jobs,
        due jobs, finished jobs that producers here wait for."""
        self._schedule("poll", now + self.config.poll_interval)
        self.maybe_ready.update(self._known_queues())
        self._refresh_due()
        finished = [
            job.id
            for job in self.storage.get(self.waiters.job_ids()).values()
            if job.state in FINAL_STATES
        ]
        self._answer_waiters(finished)

    def _timer_leases(self, now: float) -> None:
        """Keep live workers' leases ahead of expiry; take back expired ones."""
        self._schedule("leases", now + self.config.lease / 3)
        leases = [job.lease() for s in self.workers.values() for job in s.inflight.values()]
        if leases:
            self.storage.extend_leases(leases, now + self.config.lease)
        expired = [job for job in self.storage.expired(now) if job.id not in self.job_owner]
        if expired:
            log.warning("%d job lease(s) expired: their worker is gone", len(expired))
            self._requeue_lost(expired, "lease expired: worker gone", now)

    def _lose_worker(self, session: WorkerSession, reason: str) -> None:
        log.warning("%s: %s, %d job(s) go back", reason, session.worker_id, len(session.inflight))
        jobs = list(session.inflight.values())
        self._drop_worker(session)
        if jobs:
            self._requeue_lost(jobs, reason, self.clock())

    def _drop_worker(self, session: WorkerSession) -> None:
        self.workers.pop(session.peer, None)
        for job_id in session.inflight:
            if self.job_owner.get(job_id) is session:
                del self.job_owner[job_id]
        session.inflight.clear()

    def _requeue_lost(self, jobs: list[JobRecord], reason: str, now: float) -> None:
        outcomes = self.manager.lost(jobs, reason, now)
        self._answer_waiters([o.job_id for o in outcomes if o.final])
        self.maybe_ready.update(job.queue for job in jobs)
        self._refresh_due()

    def _known_queues(self) -> set[str]:
        return {q for s in self.workers.values() for q in s.queues}

    # -- sending ------------------------------------------------------------------------

    def _send(self, peer: bytes, command: bytes, body: Any) -> bool:
        """Send without ever blocking the loop; False when the peer is gone."""
        assert self._socket is not None  # only called while running
        try:
            protocol.send(self._socket, [peer, *protocol.encode(command, body)], _NOBLOCK)
            return True
        except (zmq.Again, zmq.ZMQError) as exc:
            log.info("could not send %s to peer %s: %s", command.decode(), peer.hex(), exc)
            return False


def job_view(job: JobRecord) -> dict[str, Any]:
    """A job as producers see it (see PROTOCOL.md, "Job view")."""
    return {
        "id": job.id,
        "name": job.name,
        "queue": job.queue,
        "state": job.state,
        "priority": job.priority,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts or 0,
        "run_at": job.run_at,
        "created_at": job.created_at,
        "updated_at": job.updated_at,
        "timeout": job.timeout,
        "unique_key": job.unique_key,
        "args": job.args,
        "result": job.result,
        "error": job.error,
        "worker": job.worker,
    }
