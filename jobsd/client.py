"""The producer API: submit jobs and ask about them from ordinary synchronous code.

A ``Client`` talks to the broker over REQ sockets, one per thread (sockets are
not thread-safe), made anew after ``fork()``. A request that gets no reply in
time is sent again on a fresh socket (Lazy Pirate); job ids are made here, so a
submit sent twice is stored once. After the last try it raises
``BrokerUnavailable``: it never hangs.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import zmq

from jobsd import protocol
from jobsd.errors import BrokerError, BrokerUnavailable, JobFailed, JobNotFound, ResultTimeout
from jobsd.workers.registry import JobDefinition, JobRequest

DEFAULT_ENDPOINT = "tcp://127.0.0.1:7465"

JobRef: TypeAlias = str | JobDefinition[Any, Any]


@dataclass(frozen=True, slots=True)
class Submitted:
    """The answer to one submission. ``created`` is False when the job was
    there already: the same id resent, or an active job with its unique key
    (``id`` is then that job's)."""

    id: str
    created: bool


@dataclass(frozen=True, slots=True)
class JobStatus:
    """A job as the broker reports it. ``result`` is the decoded return value."""

    id: str
    name: str
    queue: str
    state: str
    priority: int
    attempts: int
    max_attempts: int  # 0: no limit
    run_at: float
    created_at: float
    updated_at: float
    timeout: float | None
    unique_key: str | None
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    result: Any
    error: str | None
    errors: tuple[dict[str, Any], ...] = ()

    @classmethod
    def from_view(cls, view: dict[str, Any]) -> JobStatus:
        args, kwargs = protocol.unpack(view["args"])
        result = view.get("result")
        return cls(
            id=view["id"],
            name=view["name"],
            queue=view["queue"],
            state=view["state"],
            priority=view["priority"],
            attempts=view["attempts"],
            max_attempts=view["max_attempts"],
            run_at=view["run_at"],
            created_at=view["created_at"],
            updated_at=view["updated_at"],
            timeout=view.get("timeout"),
            unique_key=view.get("unique_key"),
            args=tuple(args),
            kwargs=kwargs,
            result=protocol.unpack(result) if result is not None else None,
            error=view.get("error"),
            errors=tuple(view.get("errors") or ()),
        )

    @property
    def finished(self) -> bool:
        return self.state in ("done", "dead", "cancelled")


def new_job_id() -> str:
    """128 random bits as 32 hex digits (uuid4's format without its object)."""
    return os.urandom(16).hex()


class Client:
    """A connection to one broker, shared freely between threads."""

    def __init__(
        self,
        endpoint: str = DEFAULT_ENDPOINT,
        *,
        timeout: float = 5.0,
        retries: int = 3,
    ) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.retries = retries
        self._pid = os.getpid()
        self._context: zmq.Context[Any] = zmq.Context()
        self._local = threading.local()
        self._sockets: list[zmq.Socket[Any]] = []
        self._lock = threading.Lock()

    # -- submitting ------------------------------------------------------------------

    def submit(self, job: JobRef, *args: Any, **kwargs: Any) -> str:
        """Submit one job with these arguments and its type's defaults; return its id."""
        if isinstance(job, str) and job:  # by name, no options: the wire form at once
            wire = {"id": new_job_id(), "name": job, "args": _pack_args(args, kwargs)}
            return str(self._request(protocol.SUBMIT, {"jobs": [wire]})["ids"][0])
        return self.submit_many([_request(job, args, kwargs)])[0].id

    def enqueue(
        self,
        job: JobRef,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> Submitted:
        """Submit one job with per-submit options: ``queue``, ``priority``
        (0-65535, lower first), ``delay`` (seconds) or ``run_at`` (epoch),
        ``max_attempts`` (0: no limit), ``backoff``, ``timeout``,
        ``unique_key``, ``job_id``."""
        base = _request(job, tuple(args), dict(kwargs or {}))
        unknown = set(options) - _OPTION_NAMES
        if unknown:
            raise TypeError(f"unknown submit option(s): {', '.join(sorted(unknown))}")
        fields = {name: getattr(base, name) for name in _REQUEST_FIELDS}
        fields.update(options)
        return self.submit_many([JobRequest(**fields)])[0]

    def submit_many(self, requests: Iterable[JobRequest]) -> list[Submitted]:
        """Submit a batch in one round trip and one storage transaction."""
        jobs = [_to_submission(r) for r in requests]
        results: list[Submitted] = []
        for start in range(0, len(jobs), protocol.MAX_BATCH):
            chunk = jobs[start : start + protocol.MAX_BATCH]
            reply = self._request(protocol.SUBMIT, {"jobs": [j.to_wire() for j in chunk]})
            results += [
                Submitted(i, c) for i, c in zip(reply["ids"], reply["created"], strict=True)
            ]
        return results

    # -- asking ------------------------------------------------------------------------

    def status(self, job_id: str, *, errors: bool = False) -> JobStatus | None:
        """The job's state, or None when there is no such job. With ``errors``,
        every failed attempt's error too."""
        reply = self._request(protocol.GET, {"ids": [job_id], "errors": errors})
        view = reply["jobs"][0]
        return JobStatus.from_view(view) if view is not None else None

    def wait(self, job_id: str, timeout: float) -> JobStatus:
        """Block until the job is finished or ``timeout`` seconds pass (the
        broker holds the request; nothing polls); return its status then."""
        reply = self._request(protocol.WAIT, {"id": job_id, "timeout": timeout}, wait=timeout)
        if reply["job"] is None:
            raise JobNotFound(job_id)
        return JobStatus.from_view(reply["job"])

    def result(self, job_id: str, timeout: float = 60.0) -> Any:
        """The job's return value once it is done. Raises ``JobFailed`` (with
        the remote error) when it ended dead or cancelled, ``ResultTimeout``
        when it is not finished in time."""
        status = self.wait(job_id, timeout)
        if status.state == "done":
            return status.result
        if status.finished:
            raise JobFailed(status)
        raise ResultTimeout(f"job {job_id} is still {status.state} after {timeout} s")

    def list_jobs(
        self, queue: str | None = None, state: str | None = None, limit: int = 100
    ) -> list[JobStatus]:
        body: dict[str, Any] = {"limit": limit}
        if queue:
            body["queue"] = queue
        if state:
            body["state"] = state
        return [JobStatus.from_view(v) for v in self._request(protocol.LIST, body)["jobs"]]

    def stats(self) -> dict[str, Any]:
        """Counts per queue and state, paused queues, connected workers."""
        return dict(self._request(protocol.STATS, {}))

    def ping(self) -> bool:
        return bool(self._request(protocol.PING, {})["pong"])

    # -- changing ----------------------------------------------------------------------

    def cancel(self, job_id: str) -> bool:
        """Cancel a queued or scheduled job (True), or ask a running one's
        handler to stop (False; it sees ``JobContext.cancelled``)."""
        return bool(self._request(protocol.CANCEL, {"ids": [job_id]})["cancelled"][0])

    def retry(self, job_id: str) -> bool:
        """Run a dead or cancelled job again, attempts reset."""
        return bool(self._request(protocol.RETRY, {"ids": [job_id]})["retried"][0])

    def retry_dead(self, queue: str | None = None) -> int:
        body: dict[str, Any] = {"all_dead": True}
        if queue:
            body["queue"] = queue
        return sum(self._request(protocol.RETRY, body)["retried"])

    def delete(self, job_ids: Sequence[str]) -> int:
        """Delete finished jobs (done, dead, cancelled); return how many."""
        return int(self._request(protocol.DELETE, {"ids": list(job_ids)})["deleted"])

    def pause(self, queue: str) -> None:
        """Stop dispatching from a queue; submits are still accepted."""
        self._request(protocol.PAUSE, {"queue": queue})

    def resume(self, queue: str) -> None:
        self._request(protocol.RESUME, {"queue": queue})

    def purge(self, states: Sequence[str] = (), older_than: float = 0.0) -> int:
        """Delete finished jobs in ``states`` (all final states by default)
        last changed more than ``older_than`` seconds ago."""
        body: dict[str, Any] = {"older_than": older_than}
        if states:
            body["states"] = list(states)
        return int(self._request(protocol.PURGE, body)["purged"])

    # -- the socket ----------------------------------------------------------------------

    def _request(self, command: bytes, body: Any, wait: float = 0.0) -> Any:
        """Send, await the reply; on silence, reopen the socket and resend."""
        message = protocol.encode(command, body)[1:]  # REQ adds the empty frame
        timeout_ms = int((self.timeout + wait) * 1000)
        for _ in range(self.retries):
            sock = self._socket(timeout_ms)
            protocol.send(sock, message)
            try:
                frames = protocol.recv(sock)
            except zmq.Again:  # no reply within the receive timeout
                self._discard_socket()
                continue
            try:
                reply, reply_body = protocol.decode([b"", *frames])
            except protocol.ProtocolError as exc:
                raise BrokerError("bad_reply", str(exc)) from None
            if reply == protocol.ERROR:
                raise BrokerError(str(reply_body.get("code")), str(reply_body.get("message")))
            return reply_body
        raise BrokerUnavailable(
            f"no reply from the broker at {self.endpoint} after {self.retries} tries "
            f"of {self.timeout + wait:.1f} s"
        )

    def _socket(self, timeout_ms: int) -> zmq.Socket[Any]:
        """This thread's REQ socket, its receive timeout set to ``timeout_ms``
        (a timeout on the socket, not a poll per request: fewer calls)."""
        if os.getpid() != self._pid:
            self._after_fork()
        sock: zmq.Socket[Any] | None = getattr(self._local, "socket", None)
        if sock is None:
            sock = self._context.socket(zmq.REQ)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(self.endpoint)
            self._local.socket = sock
            self._local.timeout_ms = None
            with self._lock:
                self._sockets.append(sock)
        if self._local.timeout_ms != timeout_ms:
            sock.setsockopt(zmq.RCVTIMEO, timeout_ms)
            self._local.timeout_ms = timeout_ms
        return sock

    def _discard_socket(self) -> None:
        sock = self._local.socket
        self._local.socket = None
        with self._lock:
            self._sockets.remove(sock)
        sock.close(linger=0)

    def _after_fork(self) -> None:
        """A context never crosses fork(): leave the parent's alone, start anew."""
        self._pid = os.getpid()
        self._context = zmq.Context()
        self._local = threading.local()
        self._sockets = []
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            for sock in self._sockets:
                sock.close(linger=0)
            self._sockets.clear()
        self._context.term()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_REQUEST_FIELDS = tuple(JobRequest.__dataclass_fields__)
_OPTION_NAMES = frozenset(_REQUEST_FIELDS) - {"name", "args", "kwargs"}


def _request(job: JobRef, args: tuple[Any, ...], kwargs: dict[str, Any]) -> JobRequest:
    if isinstance(job, JobDefinition):
        return job.request(*args, **kwargs)
    if not isinstance(job, str) or not job:
        raise TypeError("job must be a job name or a registered job function")
    return JobRequest(job, args, kwargs)


def _to_submission(r: JobRequest) -> protocol.JobSubmission:
    if r.delay is not None and r.run_at is not None:
        raise ValueError("give delay or run_at, not both")
    if r.priority is not None and not 0 <= r.priority <= 65535:
        raise ValueError("priority must be within 0..65535 (lower runs first)")
    return protocol.JobSubmission(
        id=r.job_id or new_job_id(),
        name=r.name,
        args=_pack_args(r.args, r.kwargs),
        queue=r.queue,
        priority=r.priority,
        run_at=r.run_at,
        delay=r.delay,
        max_attempts=r.max_attempts,
        backoff=r.backoff.to_wire() if r.backoff else None,
        timeout=r.timeout,
        unique_key=r.unique_key,
    )


def _pack_args(args: Sequence[Any], kwargs: dict[str, Any]) -> bytes:
    """A job's arguments as the protocol carries them: msgpack [args, kwargs]."""
    return protocol.pack([list(args), kwargs])
