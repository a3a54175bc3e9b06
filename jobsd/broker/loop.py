"""The broker daemon's loop: one ROUTER socket, one thread, turns and group commit.

Each loop turn drains every message that has arrived (up to a bound), hands
each to its command, then applies the turn's submits and worker reports and
claims jobs for the workers' free slots, all in one transaction (group
commit); only after that commit does it push the jobs, answer producers and
confirm reports. Chores and deadlines (due jobs, cron fires, waits) run
between turns. Storage is only ever touched from this thread.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import zmq

from jobsd.broker.commands import Commands, Turn
from jobsd.broker.config import BrokerConfig
from jobsd.broker.cron import CronTable
from jobsd.broker.gate import Gatekeeper
from jobsd.broker.manager import JobManager, Outcome
from jobsd.broker.sessions import Sessions, WorkerSession
from jobsd.broker.timers import Heartbeats, Leases, Orphans, Poll, Refusals, Retention, Timers
from jobsd.broker.waiters import Waiters
from jobsd.keys import KeyRing
from jobsd.protocol import framing
from jobsd.protocol.framing import (
    CONFIRM,
    ERROR,
    INTERNAL_ERROR,
    JOB,
    OK,
    STORAGE_ERROR,
    ProtocolError,
    decode,
    encode,
    error_body,
    recv_signed,
    recv_unsigned,
    recv_waiting,
)
from jobsd.protocol.producer import GetRequest, submit_reply
from jobsd.protocol.worker import Dispatch
from jobsd.storage import JobRecord, NewJob, Storage, StorageError

log = logging.getLogger("jobsd.broker")

#: Messages handled in one loop turn at most, so chores and dispatch keep running.
TURN_MESSAGES = 5000
_NOBLOCK = int(zmq.NOBLOCK)


class Broker:
    def __init__(
        self,
        storage: Storage,
        endpoint: str,
        config: BrokerConfig | None = None,
        clock: Callable[[], float] = time.time,
        context: zmq.Context[Any] | None = None,
        keys: KeyRing | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.config = config or BrokerConfig()
        self.config.validate()
        self.clock = clock
        self.manager = JobManager(storage, self.config, clock)
        self.sessions = Sessions()
        self.waiters = Waiters(lambda ids: self.manager.get(GetRequest(ids)), self.send)
        self.cron = CronTable()
        self.commands = Commands(self)
        self.timers = Timers()
        #: Queues that may have ready jobs: the next dispatch looks at them.
        self.maybe_ready: set[str] = set()
        #: Messages refused since the last summary in the log, by error code.
        self.refused: Counter[str] = Counter()
        #: When the earliest scheduled job is due (None: none is).
        self.next_due: float | None = None
        self._context = context or zmq.Context.instance()
        self._socket: zmq.Socket[Any] | None = None
        #: With keys: CURVE on the socket, a ZAP handler checking each key.
        self.keys = keys
        self._gatekeeper: Gatekeeper | None = None
        self._receive = recv_unsigned if keys is None else recv_signed
        self._stopping = False
        # Reports a failed commit could not record, retried with the next turn.
        self._pending: Turn | None = None

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
        if self.keys is not None:
            self._gatekeeper = Gatekeeper(self._context, self.keys)
            self._gatekeeper.start()
            self.keys.serve(sock)
        self._socket = sock
        try:
            sock.bind(self.endpoint)
        except zmq.ZMQError:  # a malformed endpoint, a port taken: nothing left running
            self._close()
            raise
        self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.config = self.config.named_for(self.endpoint)
        self.manager.config = self.config
        return self.endpoint

    def stop(self) -> None:
        """Ask the loop to finish its turn and return (safe from a signal handler)."""
        self._stopping = True

    def run(self) -> None:
        if self._socket is None:
            self.bind()
        sock = self._socket
        assert sock is not None  # for the type checker: bind() set it
        now = self.clock()
        self.next_due = self.manager.next_run_at()
        for chore in (Heartbeats(self), Leases(self), Poll(self), Retention(self), Refusals(self)):
            self.timers.at(now, chore)
        self.timers.at(now + self.config.silence, Orphans(self))
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        log.info(
            "broker serving on %s with storage %s as %s",
            self.endpoint,
            self.manager.storage.url,
            self.config.name,
        )
        try:
            while not self._stopping:
                timeout = self._next_wakeup() - self.clock()
                if poller.poll(max(0, int(timeout * 1000) + 1) if timeout > 0 else 0):
                    self._turn(sock)
                self._run_timers()
                self._dispatch()
            log.info("stopping")
        finally:
            self._flush_pending()
            self._close()
            log.info("broker stopped")

    def _close(self) -> None:
        """Close the socket and stop the ZAP handler's thread."""
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None
        if self._gatekeeper is not None:
            self._gatekeeper.stop()
            self._gatekeeper = None

    # -- one loop turn --------------------------------------------------------------

    def _turn(self, sock: zmq.Socket[Any]) -> None:
        """Handle every message that has arrived, then commit them together."""
        turn = Turn()
        for frames, user in recv_waiting(sock, TURN_MESSAGES, self._receive):
            self._handle(frames, user, turn)
        self._commit(turn)

    def _handle(self, frames: list[bytes], user: str | None, turn: Turn) -> None:
        peer = frames[0]
        try:
            command, body = decode(frames[1:])
            self.commands.receive(peer, user, command, body, turn)
        except ProtocolError as exc:
            if not self.refused[exc.code]:  # the first of its kind this interval, in full
                log.warning("refused a message from peer %s: %s", peer.hex(), exc)
            self.refused[exc.code] += 1
            self.send(peer, ERROR, error_body(exc.code, str(exc)))
        except StorageError as exc:
            log.error("storage failed handling a message from peer %s: %s", peer.hex(), exc)
            self.send(peer, ERROR, error_body(STORAGE_ERROR, str(exc)))
        except Exception:  # a bug must cost one message, not the daemon
            log.exception("failed to handle a message from peer %s", peer.hex())
            self.send(peer, ERROR, error_body(INTERNAL_ERROR, "see broker log"))

    def _commit(self, turn: Turn) -> None:
        """Apply the turn to storage with one commit: its submits, its workers'
        reports, and claims for the slots they free and the jobs they add (on
        SQLite one fsync a turn, not one per call). Jobs, replies and CONFIRMs
        go out only once that commit is done."""
        now = self.clock()
        self._merge_pending(turn)
        submitted = [job for _, batch in turn.submits for job in batch]
        try:
            with self.manager.storage.transaction():
                added = self.manager.add(submitted, now)
                self._note_added(submitted, now)
                outcomes = self.manager.report(turn.reports, now)
                self._note_waiting(outcomes)
                claimed = self._claim_ready(now) if submitted or turn.reports else []
        except StorageError as exc:
            log.error(
                "storage failed: %d submitted job(s) refused, %d report(s) to retry: %s",
                len(submitted),
                len(turn.reports),
                exc,
            )
            for peer, _ in turn.submits:
                self.send(peer, ERROR, error_body(STORAGE_ERROR, str(exc)))
            if turn.reports:
                self._pending = Turn(reports=turn.reports, confirms=turn.confirms)
            self.maybe_ready.update(self.sessions.queues())  # claims made were undone
        else:
            # Jobs first: a worker starts one while its producer reads the reply.
            for session, jobs in claimed:
                self._push(session, jobs)
            start = 0
            for peer, batch in turn.submits:
                chunk = added[start : start + len(batch)]
                start += len(batch)
                self.send(peer, OK, submit_reply([(r.job_id, r.created) for r in chunk]))
            for peer, seq in turn.confirms:
                self.send(peer, CONFIRM, {"seq": seq})
            self.waiters.finished([o.job_id for o in outcomes if o.final])
            if turn.reports:
                for session in self.sessions:
                    if session.draining and not session.inflight and not session.held:
                        self.end_session(session, "worker stopped")
        for peer, command, body in turn.requests:
            self.commands.answer(peer, command, body, now)

    def _note_added(self, jobs: list[NewJob], now: float) -> None:
        for job in jobs:
            if job.run_at <= now:
                self.maybe_ready.add(job.queue)
            elif self.next_due is None or job.run_at < self.next_due:
                self.next_due = job.run_at

    def _note_waiting(self, outcomes: Sequence[Outcome]) -> None:
        """Jobs ready or scheduled again: where the next claim and promotion look."""
        waiting = [o for o in outcomes if o.waiting]
        for outcome in waiting:
            if outcome.queue:
                self.maybe_ready.add(outcome.queue)
            else:  # a job this broker did not hand out: any queue may have it
                self.maybe_ready.update(self.sessions.queues())
        if waiting:
            self.next_due = self.manager.next_run_at()

    def _merge_pending(self, turn: Turn) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            turn.reports[:0] = pending.reports
            turn.confirms[:0] = pending.confirms

    def _flush_pending(self) -> None:
        """On stop: one last try to record reports that storage refused."""
        if self._pending is not None:
            try:
                self.manager.report(self._pending.reports, self.clock())
            except StorageError as exc:
                log.error("could not record worker reports at stop: %s", exc)

    # -- sessions ending ------------------------------------------------------------

    def end_session(
        self,
        session: WorkerSession,
        reason: str,
        undelivered: Sequence[JobRecord] = (),
        gone: bool = False,
    ) -> None:
        """However a session ends, what it held goes back: jobs that never
        reached it at once, without counting the attempt; the others, counted,
        at once too, but when only its connection is ``gone`` (a send to it
        failed) after one liveness period, unless its worker says HELLO on a
        new connection by then and takes them over (it may have rebuilt its
        socket while this broker was stalled)."""
        jobs = self.sessions.end(session)
        self.cron.forget(session.peer)
        never = {job.id for job in undelivered}
        lost = [job for job in jobs if job.id not in never]
        level = logging.WARNING if jobs else logging.INFO
        now = self.clock()
        if gone and lost:
            self.sessions.await_return(lost, now + self.config.silence)
            log.log(
                level,
                "%s: %s, %d job(s) go back unless it comes back within %.1f s",
                reason,
                session.worker_id,
                len(jobs),
                self.config.silence,
            )
            lost = []
        else:
            log.log(level, "%s: %s, %d job(s) go back", reason, session.worker_id, len(jobs))
        try:
            self.settle(
                self.manager.hand_back(undelivered, now) + self.manager.lost(lost, reason, now)
            )
        except StorageError as exc:  # the lease timer takes them back later
            log.error(
                "storage failed putting back %d job(s) of %s: %s", len(jobs), session.worker_id, exc
            )

    def settle(self, outcomes: Sequence[Outcome]) -> None:
        """After jobs were put back outside a turn: dispatch and waiters."""
        self._note_waiting(outcomes)
        self.waiters.finished([o.job_id for o in outcomes if o.final])

    # -- dispatch ---------------------------------------------------------------------

    def _dispatch(self) -> None:
        try:
            claimed = self._claim_ready(self.clock())
        except StorageError as exc:
            log.error("storage failed to claim jobs: %s", exc)
            return
        for session, jobs in claimed:
            self._push(session, jobs)

    def _claim_ready(self, now: float) -> list[tuple[WorkerSession, list[JobRecord]]]:
        """Claim ready jobs for every worker with free slots. Nothing is sent
        here: the caller pushes them once the claims have committed."""
        claimed: list[tuple[WorkerSession, list[JobRecord]]] = []
        if not self.maybe_ready:
            return claimed
        for session in self.sessions.with_room():
            if not self.maybe_ready.intersection(session.queues):
                continue
            free = session.free
            jobs = self.manager.claim(session.queues, free, now, session.worker_id)
            if len(jobs) < free:
                self.maybe_ready.difference_update(session.queues)
            if jobs:
                claimed.append((session, jobs))
            if not self.maybe_ready:
                break
        return claimed

    def _push(self, session: WorkerSession, jobs: list[JobRecord]) -> None:
        self.sessions.take(session, jobs)
        if not self.send(session.peer, JOB, {"jobs": [Dispatch.of(job).to_wire() for job in jobs]}):
            # The worker vanished since its last message: the jobs never
            # reached it; what it ran before goes back, its attempt counted.
            self.end_session(
                session, "worker lost: could not send it jobs", undelivered=jobs, gone=True
            )

    # -- deadlines --------------------------------------------------------------------

    def _next_wakeup(self) -> float:
        """The next chore, due job, WAIT deadline, cron fire, or retry of a
        commit that failed."""
        retry = self.clock() + 0.1 if self._pending is not None else None
        deadlines = (
            self.timers.next_at(),
            self.next_due,
            self.waiters.next_deadline(),
            self.sessions.next_return(),
        )
        candidates = [t for t in (*deadlines, self.cron.next_fire(), retry) if t is not None]
        return min(candidates, default=self.clock() + 1.0)

    def _run_timers(self) -> None:
        now = self.clock()
        try:
            if self.next_due is not None and self.next_due <= now:
                if self.manager.promote(now):
                    self.maybe_ready.update(self.sessions.queues())
                self.next_due = self.manager.next_run_at()
            if self._pending is not None:
                self._commit(Turn())
            for job in self.manager.enqueue_fires(self.cron.due(now), now):
                self.maybe_ready.add(job.queue)
            self.waiters.expire(now)
            if overdue := self.sessions.overdue(now):
                self.settle(self.manager.lost(overdue, "worker lost: it did not come back", now))
            self.timers.run_due(now)
        except StorageError as exc:
            log.error("storage failed in a timer, will retry: %s", exc)

    # -- sending ------------------------------------------------------------------------

    def send(self, peer: bytes, command: bytes, body: Any) -> bool:
        """Send without ever blocking the loop; False when the peer is gone."""
        assert self._socket is not None  # only called while running
        try:
            framing.send(self._socket, [peer, *encode(command, body)], _NOBLOCK)
            return True
        except zmq.ZMQError as exc:
            log.info("could not send %s to peer %s: %s", command.decode(), peer.hex(), exc)
            return False
