"""Worker sessions: who is connected, and which session holds each running job.

A session is one worker connection (one DEALER identity) between its HELLO
and its end. It knows the jobs pushed to it and their leases, and its credit
(capacity minus what it holds); it holds no socket and makes no decision:
the broker loop sends, the job manager decides what becomes of a job whose
session ended.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field

from jobsd.protocol.roles import name_of
from jobsd.protocol.worker import Hello
from jobsd.storage import JobRecord, Lease

#: Connections told RECONNECT and not heard from with a HELLO since, at most:
#: each is told once, and the oldest are forgotten past this.
TOLD_LIMIT = 10_000


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
    #: The key it authenticated with (None on a broker without keys).
    user: str | None = None
    #: The jobs pushed to it and not reported yet, with their leases.
    inflight: dict[str, JobRecord] = field(default_factory=dict)
    #: Jobs it said it still runs (HELLO) that are no longer its: taken from it
    #: while it was away. They hold its threads until it reports them, so they
    #: count against its capacity until then.
    held: set[str] = field(default_factory=set)
    draining: bool = False

    @property
    def free(self) -> int:
        return 0 if self.draining else self.capacity - len(self.inflight) - len(self.held)


class Sessions:
    def __init__(self) -> None:
        self._by_peer: dict[bytes, WorkerSession] = {}
        self._owner: dict[str, WorkerSession] = {}
        self._told: OrderedDict[bytes, None] = OrderedDict()
        #: Jobs of sessions whose connection vanished, by id: their worker may
        #: have a new connection whose HELLO is on its way, until the deadline.
        self._away: dict[str, tuple[JobRecord, float]] = {}

    def __iter__(self) -> Iterator[WorkerSession]:
        return iter(list(self._by_peer.values()))

    def __len__(self) -> int:
        return len(self._by_peer)

    def get(self, peer: bytes, user: str | None) -> WorkerSession | None:
        """The session of a connection that said HELLO, with the key its
        messages are signed with: a message under another key is none of its."""
        session = self._by_peer.get(peer)
        return session if session is not None and session.user == user else None

    def seen(self, peer: bytes, user: str | None, now: float) -> WorkerSession | None:
        """The sender's session, kept alive; None for a connection that said no HELLO."""
        session = self.get(peer, user)
        if session is not None:
            session.last_seen = now
        return session

    def first_word_from(self, peer: bytes) -> bool:
        """Whether an unknown connection is heard from for the first time since
        it was told to say HELLO: it is told once, not at every message (a
        worker answers each RECONNECT with a HELLO)."""
        if peer in self._told:
            return False
        self._told[peer] = None
        if len(self._told) > TOLD_LIMIT:
            self._told.popitem(last=False)
        return True

    # -- a session's life ----------------------------------------------------------

    def register(
        self, peer: bytes, user: str | None, hello: Hello, now: float
    ) -> tuple[WorkerSession, WorkerSession | None]:
        """Register a HELLO; return its session and the session it replaces.

        A HELLO on a live session (the worker answered a RECONNECT that was
        already on its way) updates it and keeps every job it holds. A HELLO
        on a new connection from a worker that has a session on another one
        (it rebuilt its socket) replaces that session: the caller ends it.

        Under keys a worker's id is prefixed with its key's name, so the
        leases storage records for it are its key's alone: no other key can
        report for them or take them over, even after a broker restart.
        """
        self._told.pop(peer, None)
        session = self.get(peer, user)
        if session is not None:
            session.queues, session.capacity = tuple(hello.queues), hello.capacity
            session.last_seen, session.draining = now, False
            return session, None
        worker = hello.worker if user is None else f"{name_of(user)}/{hello.worker}"
        replaced = next((s for s in self._by_peer.values() if s.worker_id == worker), None)
        session = WorkerSession(
            peer, worker, tuple(hello.queues), hello.capacity, now, hello.pid, hello.host, user
        )
        self._by_peer[peer] = session
        return session, replaced

    def end(self, session: WorkerSession) -> list[JobRecord]:
        """Forget a session; return the jobs it held, to be put back."""
        self._by_peer.pop(session.peer, None)
        jobs = [job for job in session.inflight.values() if self._owner.get(job.id) is session]
        for job in jobs:
            del self._owner[job.id]
        session.inflight.clear()
        return jobs

    def await_return(self, jobs: list[JobRecord], until: float) -> None:
        """These jobs' connection is gone, not necessarily their worker: a
        HELLO that names their leases by ``until`` takes them over."""
        for job in jobs:
            self._away[job.id] = (job, until)

    def overdue(self, now: float) -> list[JobRecord]:
        """The jobs whose worker did not come back in time, forgotten."""
        late = [job for job, until in self._away.values() if until <= now]
        for job in late:
            del self._away[job.id]
        return late

    def accounted(self, job_id: str) -> bool:
        """Whether a session holds the job, or its worker may yet come back for it."""
        return job_id in self._owner or job_id in self._away

    def next_return(self) -> float | None:
        return min((until for _, until in self._away.values()), default=None)

    def silent_since(self, limit: float) -> list[WorkerSession]:
        return [s for s in self._by_peer.values() if s.last_seen < limit]

    def forgive(self, now: float) -> None:
        """Every session is as good as heard from now (the broker's own loop
        stalled, and their heartbeats may wait unread)."""
        for session in self._by_peer.values():
            session.last_seen = max(session.last_seen, now)

    # -- leases --------------------------------------------------------------------

    def take(self, session: WorkerSession, jobs: list[JobRecord]) -> None:
        """``session`` holds these jobs now (pushed, or adopted from a HELLO)."""
        for job in jobs:
            self._away.pop(job.id, None)
            previous = self._owner.get(job.id)
            if previous is not None and previous is not session:
                previous.inflight.pop(job.id, None)  # its old connection
            session.inflight[job.id] = job
            self._owner[job.id] = session

    def adoptable(self, session: WorkerSession, running: list[tuple[str, str]]) -> list[Lease]:
        """Of the leases a HELLO names, those its worker may take over: held by
        no session (storage checks the claim was this worker's), or by one of
        this worker's own under that very lease (its old connection)."""
        leases = []
        for job_id, token in running:
            owner = self._owner.get(job_id)
            if owner is None:
                leases.append(Lease(job_id, token, session.worker_id))
            elif owner.worker_id == session.worker_id:
                record = owner.inflight.get(job_id)
                if record is not None and record.lease == token:
                    leases.append(Lease(job_id, token))
        return leases

    def adopt(
        self, session: WorkerSession, running: list[tuple[str, str]], adopted: list[JobRecord]
    ) -> None:
        """``session`` holds the ``adopted`` jobs now; the others its HELLO
        named (taken from it while it was away) hold its slots until reported."""
        self.take(session, adopted)
        stale = {job_id for job_id, _ in running} - {job.id for job in adopted}
        session.held |= stale - set(session.inflight)

    def fence(self, session: WorkerSession, job_id: str, token: str) -> Lease | None:
        """The lease a report from ``session`` may end, or None when another
        lease holds the job: another session's, or a newer one of its own.
        For a job no session holds (the broker restarted), storage checks
        that the claim was made for this worker."""
        owner = self._owner.get(job_id)
        if owner is None:
            return Lease(job_id, token, session.worker_id)
        record = owner.inflight.get(job_id)
        if owner is not session or record is None or record.lease != token:
            return None
        return Lease(job_id, token)

    def reported(self, session: WorkerSession, job_id: str, token: str) -> JobRecord | None:
        """``session`` reported this lease: it holds the job no longer (nor a
        stale run of it). Returns the job as claimed, if it was the session's."""
        session.held.discard(job_id)
        record = session.inflight.get(job_id)
        if record is None or record.lease != token:
            return None
        del session.inflight[job_id]
        if self._owner.get(job_id) is session:
            del self._owner[job_id]
        return record

    def owner(self, job_id: str) -> WorkerSession | None:
        return self._owner.get(job_id)

    def leases(self) -> list[Lease]:
        """Every lease a live session holds: what the lease timer extends."""
        return [job.held() for s in self._by_peer.values() for job in s.inflight.values()]

    def queues(self) -> set[str]:
        return {q for s in self._by_peer.values() for q in s.queues}

    def with_room(self) -> list[WorkerSession]:
        return [s for s in self._by_peer.values() if s.free > 0]
