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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias, TypeVar

import zmq

from jobsd.errors import BrokerError, BrokerUnavailable, JobFailed, JobNotFound, ResultTimeout
from jobsd.keys import ClientKeys
from jobsd.protocol import framing, producer
from jobsd.protocol.framing import ProtocolError
from jobsd.protocol.options import JobOptions
from jobsd.protocol.producer import JobStatus
from jobsd.vocabulary import MAX_BATCH
from jobsd.workers.registry import JobDefinition, JobRequest

DEFAULT_ENDPOINT = "tcp://127.0.0.1:7465"

JobRef: TypeAlias = str | JobDefinition[Any, Any]
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Submitted:
    """The answer to one submission. ``created`` is False when the job was
    there already: the same id resent, or an active job with its unique key
    (``id`` is then that job's)."""

    id: str
    created: bool


def new_job_id() -> str:
    """128 random bits as 32 hex digits (uuid4's format without its object)."""
    return os.urandom(16).hex()


class Client:
    """A connection to one broker, shared freely between threads.

    With ``server_key`` (the broker's public key file) and ``key`` (this
    client's secret key file) every connection is encrypted and
    authenticated with CURVE, as a broker run with ``--keys`` requires. A
    key the broker does not know gets no reply at all: ``BrokerUnavailable``.
    """

    def __init__(
        self,
        endpoint: str = DEFAULT_ENDPOINT,
        *,
        timeout: float = 5.0,
        retries: int = 3,
        server_key: str | None = None,
        key: str | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.retries = retries
        self._keys = ClientKeys.load(server_key, key)
        self._start()

    def submit(self, job: JobRef, *args: Any, **kwargs: Any) -> str:
        """Submit one job with these arguments and its type's defaults; return its id."""
        if isinstance(job, str) and job:  # by name, no options: the wire form at once
            wire = {"id": new_job_id(), "name": job, "args": producer.pack_args(args, kwargs)}
            reply = self._request(framing.SUBMIT, {"jobs": [wire]})
            return self._read(producer.read_submit_reply, reply, 1)[0][0]
        return self.submit_many([_request(job, args, kwargs)])[0].id

    def enqueue(
        self,
        job: JobRef,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        job_id: str | None = None,
        **options: Any,
    ) -> Submitted:
        """Submit one job with per-submit options (the fields of
        ``JobOptions``: ``queue``, ``priority`` 0-65535 with lower first,
        ``delay`` in seconds or ``run_at`` in epoch seconds, ``max_attempts``
        with 0 for no limit, ``backoff``, ``timeout``, ``unique_key``) over
        the job type's, and an id of the caller's choosing (a resubmit with
        the same id is stored once)."""
        base = _request(job, tuple(args), dict(kwargs or {}))
        request = JobRequest(
            base.name, base.args, base.kwargs, options=base.options, job_id=job_id, **options
        )
        return self.submit_many([request])[0]

    def submit_many(self, requests: Iterable[JobRequest]) -> list[Submitted]:
        """Submit a batch in one round trip and one storage transaction."""
        jobs = [
            producer.JobSubmission(
                r.job_id or new_job_id(), r.name, producer.pack_args(r.args, r.kwargs), r.options
            )
            for r in requests
        ]
        results: list[Submitted] = []
        for start in range(0, len(jobs), MAX_BATCH):
            chunk = jobs[start : start + MAX_BATCH]
            reply = self._request(framing.SUBMIT, {"jobs": [j.to_wire() for j in chunk]})
            read = self._read(producer.read_submit_reply, reply, len(chunk))
            results += [Submitted(job_id, created) for job_id, created in read]
        return results

    def status(self, job_id: str, *, errors: bool = False) -> JobStatus | None:
        """The job's state, or None when there is no such job. With ``errors``,
        every failed attempt's error too."""
        reply = self._request(framing.GET, producer.GetRequest([job_id], errors))
        return self._read(producer.read_get_reply, reply, 1)[0]

    def wait(self, job_id: str, timeout: float) -> JobStatus:
        """Block until the job is finished or ``timeout`` seconds pass (the
        broker holds the request; nothing polls); return its status then."""
        reply = self._request(framing.WAIT, producer.WaitRequest(job_id, timeout), wait=timeout)
        status = self._read(producer.read_wait_reply, reply)
        if status is None:
            raise JobNotFound(job_id)
        return status

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
        """The newest jobs (of a queue, in a state), newest first."""
        return self.list_page(queue, state, limit)[0]

    def list_page(
        self,
        queue: str | None = None,
        state: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> tuple[list[JobStatus], str | None]:
        """One page of jobs, newest first, and the cursor of the next page
        (None after the last): pass it back to read on."""
        reply = self._request(framing.LIST, producer.ListRequest(queue, state, limit, cursor))
        return self._read(producer.read_list_reply, reply)

    def stats(self) -> dict[str, Any]:
        """Counts per queue and state, paused queues, connected workers."""
        return dict(self._request(framing.STATS, {}))

    def ping(self) -> bool:
        return bool(self._request(framing.PING, {})["pong"])

    def cancel(self, job_id: str) -> bool:
        """Cancel a queued or scheduled job (True), or ask a running one's
        handler to stop (False; it sees ``JobContext.cancelled``)."""
        return bool(self._request(framing.CANCEL, producer.IdsRequest([job_id]))["cancelled"][0])

    def retry(self, job_id: str) -> bool:
        """Run a dead or cancelled job again, attempts reset."""
        return bool(self._request(framing.RETRY, producer.RetryRequest([job_id]))["retried"][0])

    def retry_dead(self, queue: str | None = None) -> int:
        """Run every dead job (of ``queue``) again; return how many."""
        return sum(self._request(framing.RETRY, producer.RetryRequest([], True, queue))["retried"])

    def delete(self, job_ids: Sequence[str]) -> int:
        """Delete finished jobs (done, dead, cancelled); return how many."""
        return int(self._request(framing.DELETE, producer.IdsRequest(list(job_ids)))["deleted"])

    def pause(self, queue: str) -> None:
        """Stop dispatching from a queue; submits are still accepted."""
        self._request(framing.PAUSE, producer.QueueRequest(queue))

    def resume(self, queue: str) -> None:
        self._request(framing.RESUME, producer.QueueRequest(queue))

    def purge(self, states: Sequence[str] = (), older_than: float = 0.0) -> int:
        """Delete finished jobs in ``states`` (all final states by default)
        last changed more than ``older_than`` seconds ago."""
        body = producer.PurgeRequest(list(states), older_than)
        return int(self._request(framing.PURGE, body)["purged"])

    def _request(self, command: bytes, body: Any, wait: float = 0.0) -> Any:
        if isinstance(body, producer.Request):
            body = body.to_wire()
        message = framing.encode(command, body)[1:]  # REQ adds the empty frame
        timeout_ms = int((self.timeout + wait) * 1000)
        for _ in range(self.retries):
            sock = self._socket(timeout_ms)
            framing.send(sock, message)
            try:
                frames = framing.recv(sock)
            except zmq.Again:  # no reply within the receive timeout
                self._discard_socket()
                continue
            try:
                reply, reply_body = framing.decode([b"", *frames])
            except ProtocolError as exc:
                raise BrokerError("bad_reply", str(exc)) from None
            if reply == framing.ERROR:
                error = reply_body if isinstance(reply_body, dict) else {}
                raise BrokerError(str(error.get("code", "bad_reply")), str(error.get("message")))
            return reply_body
        hint = "" if self._keys is None else " (a broker refuses keys not in its key folders)"
        raise BrokerUnavailable(
            f"no reply from the broker at {self.endpoint} after {self.retries} tries "
            f"of {self.timeout + wait:.1f} s{hint}"
        )

    @staticmethod
    def _read(reader: Callable[..., T], *args: Any) -> T:
        """A reply read by the protocol: one the client cannot read is the
        broker's error, never a crash of the caller's."""
        try:
            return reader(*args)
        except ProtocolError as exc:
            raise BrokerError("bad_reply", str(exc)) from None

    def _socket(self, timeout_ms: int) -> zmq.Socket[Any]:
        """This thread's REQ socket, its receive timeout set to ``timeout_ms``
        (a timeout on the socket, not a poll per request: fewer calls)."""
        if os.getpid() != self._pid:
            self._start()
        sock: zmq.Socket[Any] | None = getattr(self._local, "socket", None)
        if sock is None:
            sock = self._context.socket(zmq.REQ)
            sock.setsockopt(zmq.LINGER, 0)
            if self._keys is not None:
                self._keys.apply(sock)
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

    def _start(self) -> None:
        """This process's own context and sockets: a context never crosses fork()."""
        self._pid = os.getpid()
        self._context: zmq.Context[Any] = zmq.Context()
        self._local = threading.local()
        self._sockets: list[zmq.Socket[Any]] = []
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


def _request(job: JobRef, args: tuple[Any, ...], kwargs: dict[str, Any]) -> JobRequest:
    if isinstance(job, JobDefinition):
        return job.request(*args, **kwargs)
    if not isinstance(job, str) or not job:
        raise TypeError("job must be a job name or a registered job function")
    return JobRequest(job, args, kwargs)


__all__ = ["DEFAULT_ENDPOINT", "Client", "JobOptions", "JobStatus", "Submitted", "new_job_id"]
