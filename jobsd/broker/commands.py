"""The broker's commands: one table from command to handler.

Commands carry no business logic: each parses its message (the protocol
checks every field), makes its calls on the job manager or the worker
sessions, and replies. Submits and worker reports are collected into the
loop turn, to be stored with one commit; producer requests are answered
after that commit, so they see what the turn changed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from jobsd.broker.core import BrokerCore
from jobsd.broker.manager import Report
from jobsd.broker.sessions import WorkerSession
from jobsd.protocol import framing as wire
from jobsd.protocol.framing import ProtocolError
from jobsd.protocol.producer import (
    GetRequest,
    IdsRequest,
    ListRequest,
    PurgeRequest,
    QueueRequest,
    RetryRequest,
    WaitRequest,
    check_empty,
    decode_submit,
)
from jobsd.protocol.roles import permits, role_of
from jobsd.protocol.worker import (
    Ack,
    Fail,
    Hello,
    Welcome,
    decode_acks,
    decode_fails,
    decode_releases,
    report_seq,
)
from jobsd.storage import NewJob, StorageError
from jobsd.vocabulary import FINAL_STATES

log = logging.getLogger("jobsd.broker")


@dataclass
class Turn:
    """What arrived in one loop turn, applied to storage together."""

    submits: list[tuple[bytes, list[NewJob]]] = field(default_factory=list)
    reports: list[Report] = field(default_factory=list)
    confirms: list[tuple[bytes, int]] = field(default_factory=list)
    requests: list[tuple[bytes, bytes, Any]] = field(default_factory=list)


Handler = Callable[[bytes, str | None, Any, Turn], None]
Request = Callable[[Any, float], Any]


class Commands:
    def __init__(self, broker: BrokerCore) -> None:
        self.broker = broker
        self.manager = broker.manager
        self.sessions = broker.sessions
        #: Handled as they arrive (submits and reports join the turn's commit).
        self.handlers: dict[bytes, Handler] = {
            wire.SUBMIT: self.submit,
            wire.HELLO: self.hello,
            wire.ACK: self.ack,
            wire.FAIL: self.fail,
            wire.RELEASE: self.release,
            wire.HEARTBEAT: self.heartbeat,
            wire.BYE: self.bye,
        }
        #: Answered after the turn's commit, with the body of their OK.
        self.requests: dict[bytes, Request] = {
            wire.GET: self.get,
            wire.LIST: self.list_jobs,
            wire.STATS: self.stats,
            wire.CANCEL: self.cancel,
            wire.RETRY: self.retry,
            wire.DELETE: self.delete,
            wire.PAUSE: self.pause,
            wire.RESUME: self.resume,
            wire.PURGE: self.purge,
            wire.PING: self.ping,
        }

    def receive(self, peer: bytes, user: str | None, command: bytes, body: Any, turn: Turn) -> None:
        """Handle a message from ``peer``, authenticated as ``user`` (None on
        a broker without keys)."""
        if not permits(role_of(user), command):
            raise ProtocolError(
                f"{command[:32].decode(errors='replace')} is not allowed for {user}",
                code=wire.FORBIDDEN,
            )
        handler = self.handlers.get(command)
        if handler is not None:
            handler(peer, user, body, turn)
        elif command in self.requests or command == wire.WAIT:
            turn.requests.append((peer, command, body))
        else:
            raise ProtocolError(f"unknown command {command[:32]!r}", code=wire.UNKNOWN_COMMAND)

    def answer(self, peer: bytes, command: bytes, body: Any, now: float) -> None:
        send = self.broker.send
        try:
            if command == wire.WAIT:
                self.wait(peer, body, now)
            else:
                send(peer, wire.OK, self.requests[command](body, now))
        except ProtocolError as exc:
            send(peer, wire.ERROR, wire.error_body(exc.code, str(exc)))
        except StorageError as exc:
            log.error("storage failed on %s: %s", command.decode(), exc)
            send(peer, wire.ERROR, wire.error_body(wire.STORAGE_ERROR, str(exc)))

    # -- producers: stored with the turn -------------------------------------------

    def submit(self, peer: bytes, user: str | None, body: Any, turn: Turn) -> None:
        turn.submits.append((peer, self.manager.new_jobs(decode_submit(body), self.broker.clock())))

    # -- workers -------------------------------------------------------------------

    def _session(self, peer: bytes, user: str | None) -> WorkerSession | None:
        """The sender's session, kept alive. A connection that said no HELLO
        (the broker restarted, or declared the worker lost) is told, once, to
        say HELLO; what it sent is not applied (it sends reports again)."""
        session = self.sessions.seen(peer, user, self.broker.clock())
        if session is None and self.sessions.first_word_from(peer):
            self.broker.send(peer, wire.RECONNECT, {})
        return session

    def hello(self, peer: bytes, user: str | None, body: Any, turn: Turn) -> None:
        hello = Hello.from_wire(body)
        now = self.broker.clock()
        self.broker.cron.check(hello.schedules)  # may refuse the HELLO: before anything
        for schedule in hello.schedules:  # a fire must never be refused later
            self.manager.check_args(schedule.name, schedule.args)
        limit = self.broker.config.max_workers
        if len(self.sessions) >= limit and self.sessions.get(peer, user) is None:
            raise ProtocolError(
                f"{limit} worker connections are registered already (--max-workers)",
                code=wire.LIMIT_REACHED,
            )
        session, replaced = self.sessions.register(peer, user, hello, now)
        self.broker.cron.add(hello.schedules, now, by=peer)
        self._adopt(session, hello.running, now)
        if replaced is not None and not self.broker.send(replaced.peer, wire.HEARTBEAT, {}):
            # The same worker on a new connection, its old one gone: what the
            # old session held and the HELLO did not take over goes back. (An
            # old connection still there is left to its heartbeats: a HELLO
            # naming another worker's id must not end that worker's session.)
            self.broker.end_session(replaced, "worker reconnected")
        self.manager.learn_job_types(hello.job_types)
        self.broker.maybe_ready.update(session.queues)
        log.info(
            "worker %s (pid %s on %s) joined: queues %s, capacity %d",
            hello.worker,
            hello.pid,
            hello.host or "?",
            ",".join(hello.queues),
            hello.capacity,
        )
        welcome = Welcome(self.broker.config.heartbeat, self.broker.config.liveness)
        self.broker.send(peer, wire.WELCOME, welcome.to_wire())

    def _adopt(self, session: WorkerSession, running: list[tuple[str, str]], now: float) -> None:
        """A worker that reconnected (a broker restart, a network cut) still
        answers for these leases: take over the current ones, so they are not
        expired under it. The others (their jobs taken from it while it was
        away) hold its slots until it reports them."""
        leases = self.sessions.adoptable(session, running)
        adopted = self.manager.adopt(leases, now) if leases else []
        self.sessions.adopt(session, running, adopted)
        if session.held:
            log.info(
                "worker %s still runs %d job(s) now run elsewhere: they hold its slots until "
                "it reports them",
                session.worker_id,
                len(session.held),
            )

    def ack(self, peer: bytes, user: str | None, body: Any, turn: Turn) -> None:
        self._reports(peer, user, body, turn, [(a.job_id, a.lease, a) for a in decode_acks(body)])

    def fail(self, peer: bytes, user: str | None, body: Any, turn: Turn) -> None:
        self._reports(peer, user, body, turn, [(f.job_id, f.lease, f) for f in decode_fails(body)])

    def release(self, peer: bytes, user: str | None, body: Any, turn: Turn) -> None:
        self._reports(peer, user, body, turn, [(j, t, None) for j, t in decode_releases(body)])

    def _reports(
        self,
        peer: bytes,
        user: str | None,
        body: Any,
        turn: Turn,
        items: list[tuple[str, str, Ack | Fail | None]],
    ) -> None:
        """Reports count only from the session that holds their lease (or,
        for a job no session holds, from the worker it was claimed for), and
        are confirmed once stored: until then the worker keeps them."""
        seq = report_seq(body)
        session = self._session(peer, user)
        if session is None:
            return
        stale = 0
        for job_id, token, outcome in items:
            lease = self.sessions.fence(session, job_id, token)
            record = self.sessions.reported(session, job_id, token)
            if lease is None:
                stale += 1
            else:
                turn.reports.append(Report(lease, outcome, record))
        if stale:
            self.manager.count_stale(stale)
        if seq is not None:
            turn.confirms.append((peer, seq))

    def heartbeat(self, peer: bytes, user: str | None, body: Any, turn: Turn) -> None:
        self._session(peer, user)

    def bye(self, peer: bytes, user: str | None, body: Any, turn: Turn) -> None:
        """The worker stops: send it nothing more; the session ends once the
        worker has reported every job it holds (its stale runs too)."""
        session = self.sessions.get(peer, user)
        if session is not None:
            session.draining = True
            log.info("worker %s is stopping", session.worker_id)
            if not session.inflight and not session.held:
                self.broker.end_session(session, "worker stopped")

    # -- producer requests, after the commit ------------------------------------------

    def get(self, body: Any, now: float) -> Any:
        return {"jobs": self.manager.get(GetRequest.from_wire(body))}

    def wait(self, peer: bytes, body: Any, now: float) -> None:
        request = WaitRequest.from_wire(body)
        (view,) = self.manager.get(GetRequest([request.id]))
        if view is None:
            raise ProtocolError(f"no job {request.id}", code=wire.NOT_FOUND)
        if view["state"] in FINAL_STATES or request.timeout <= 0:
            self.broker.send(peer, wire.OK, {"job": view})
        else:
            limit = self.broker.config.max_waiters
            if len(self.broker.waiters) >= limit:
                raise ProtocolError(
                    f"{limit} producers wait already (--max-waiters): ask again later",
                    code=wire.LIMIT_REACHED,
                )
            self.broker.waiters.add(request.id, peer, now + request.timeout)

    def list_jobs(self, body: Any, now: float) -> Any:
        views, cursor = self.manager.list_page(ListRequest.from_wire(body))
        return {"jobs": views, "next": cursor}

    def stats(self, body: Any, now: float) -> Any:
        check_empty(body, "STATS")
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
            for s in self.sessions
        ]
        return {
            "queues": self.manager.stats(),
            "workers": workers,
            "stale_reports": self.manager.stale_reports,
            "waiters": len(self.broker.waiters),
            "refused_keys": 0 if self.broker.keys is None else self.broker.keys.refused,
            "pid": os.getpid(),
            "storage": self.manager.storage.url,
        }

    def cancel(self, body: Any, now: float) -> Any:
        ids = IdsRequest.from_wire(body, "CANCEL").ids
        cancelled = self.manager.cancel(ids, now)
        requested = []
        for job_id, ok in zip(ids, cancelled, strict=True):
            owner = None if ok else self.sessions.owner(job_id)
            if owner is not None:
                self.broker.send(owner.peer, wire.CANCEL, {"ids": [job_id]})
            requested.append(owner is not None)
        self.broker.waiters.finished(
            [job_id for job_id, ok in zip(ids, cancelled, strict=True) if ok]
        )
        return {"cancelled": cancelled, "requested": requested}

    def retry(self, body: Any, now: float) -> Any:
        ids, retried = self.manager.retry(RetryRequest.from_wire(body), now)
        self.broker.maybe_ready.update(self.sessions.queues())
        return {"ids": ids, "retried": retried}

    def delete(self, body: Any, now: float) -> Any:
        return {"deleted": self.manager.delete(IdsRequest.from_wire(body, "DELETE").ids)}

    def pause(self, body: Any, now: float) -> Any:
        queue = QueueRequest.from_wire(body, "PAUSE").queue
        self.manager.set_paused(queue, True)
        return {"queue": queue, "paused": True}

    def resume(self, body: Any, now: float) -> Any:
        queue = QueueRequest.from_wire(body, "RESUME").queue
        self.manager.set_paused(queue, False)
        self.broker.maybe_ready.add(queue)
        return {"queue": queue, "paused": False}

    def purge(self, body: Any, now: float) -> Any:
        return {"purged": self.manager.purge(PurgeRequest.from_wire(body), now)}

    def ping(self, body: Any, now: float) -> Any:
        check_empty(body, "PING")
        return {"pong": True, "time": now}
