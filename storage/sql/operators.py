"""SQL storage: what operators and inspection ask of it. Moves (cancel, retry)
guarded by each job's state, deletes, pauses, and the queries behind job views,
lists and stats; a part of ``SQLStorage`` (``backend.py``), split from the
operations on running jobs."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.engine import Connection

from jobsd.storage.records import AttemptError, JobRecord, QueueStats
from jobsd.storage.rules import DELETABLE, GIVE_BACK, RESET, Transition
from jobsd.storage.sql.engine import Database
from jobsd.storage.sql.schema import job_errors, jobs, paused_queues
from jobsd.storage.sql.statements import PAUSED, RECORD_COLUMNS, Statements, chunks, to_record
from jobsd.vocabulary import ACTIVE_STATES


class SQLOperators:
    _db: Database
    _sql: Statements

    # -- operators -----------------------------------------------------------

    def move(
        self, job_ids: Sequence[str], accepts: frozenset[str], to: Transition, now: float
    ) -> list[bool]:
        if not job_ids:
            return []

        def work(conn: Connection) -> list[bool]:
            rows = self._sql.lock(conn, job_ids, "state", "unique_key")
            found = {job_id: (state, key) for job_id, state, key in rows}
            # Active again, a job takes its key back, unless another holds it.
            keys = [key for _, key in found.values()] if to.keeps_key else []
            held = set(self._sql.key_holders(conn, keys))
            results = []
            for job_id in job_ids:
                state, key = found.get(job_id, ("", None))
                ok = state in accepts
                if ok and key is not None and to.keeps_key and state not in ACTIVE_STATES:
                    ok = key not in held
                    held.add(key)
                if ok:
                    found[job_id] = (to.state, key)  # a second mention moves once
                results.append(ok)
            moved = [job_id for job_id, ok in zip(job_ids, results, strict=True) if ok]
            values = changes(to.keeps_key, to.attempts, to.clear_error, now)
            values["state"] = to.state
            if to.run_at is not None:
                values["run_at"] = to.run_at
            if to.keeps_key:
                values["active_key"] = jobs.c.unique_key
            for chunk in chunks(moved):
                # checked above, on locked rows
                conn.execute(update(jobs).where(self._sql.in_(jobs.c.id, chunk)).values(**values))
            return results

        return self._db.write(work)

    def delete(self, job_ids: Sequence[str]) -> int:
        if not job_ids:
            return 0

        def work(conn: Connection) -> int:
            rows = self._sql.lock(conn, job_ids, "state")
            final = [job_id for job_id, state in rows if state in DELETABLE]
            for chunk in chunks(final):
                # The error history goes with its job (ON DELETE CASCADE).
                conn.execute(delete(jobs).where(self._sql.in_(jobs.c.id, chunk)))
            return len(final)

        return self._db.write(work)

    def purge(self, states: Iterable[str], finished_before: float) -> int:
        wanted = sorted(set(states) & DELETABLE)
        if not wanted:
            return 0
        stmt = delete(jobs).where(jobs.c.state.in_(wanted), jobs.c.updated_at < finished_before)
        return self._db.write(lambda conn: conn.execute(stmt).rowcount)

    def set_paused(self, queue: str, paused: bool) -> None:
        def work(conn: Connection) -> None:
            if not paused:
                conn.execute(delete(paused_queues).where(paused_queues.c.queue == queue))
                return
            there = conn.scalar(select(paused_queues.c.queue).where(paused_queues.c.queue == queue))
            if there is None:  # a race with another broker: IntegrityError, then retried
                conn.execute(paused_queues.insert().values(queue=queue))

        self._db.write(work)

    # -- queries -------------------------------------------------------------

    def get(self, job_ids: Sequence[str]) -> dict[str, JobRecord]:
        if not job_ids:
            return {}

        def work(conn: Connection) -> dict[str, JobRecord]:
            found: dict[str, JobRecord] = {}
            wanted = list(dict.fromkeys(job_ids))
            for chunk in chunks(wanted):
                stmt = select(*RECORD_COLUMNS).where(self._sql.in_(jobs.c.id, chunk))
                found.update((row.id, to_record(row)) for row in conn.execute(stmt))
            return {job_id: found[job_id] for job_id in wanted if job_id in found}  # asked order

        return self._db.read(work)

    def errors(self, job_id: str) -> list[AttemptError]:
        stmt = (
            select(job_errors.c.attempt, job_errors.c.at, job_errors.c.error)
            .where(job_errors.c.job_id == job_id)
            .order_by(job_errors.c.seq)
        )
        return self._db.read(lambda conn: [AttemptError(*row) for row in conn.execute(stmt)])

    def list_jobs(
        self,
        queue: str | None = None,
        state: str | None = None,
        limit: int = 100,
        before_seq: int | None = None,
    ) -> list[JobRecord]:
        if limit <= 0:
            return []
        stmt = select(*RECORD_COLUMNS).order_by(jobs.c.seq.desc()).limit(limit)
        if queue is not None:
            stmt = stmt.where(jobs.c.queue == queue)
        if state is not None:
            stmt = stmt.where(jobs.c.state == state)
        if before_seq is not None:
            stmt = stmt.where(jobs.c.seq < before_seq)
        return self._db.read(lambda conn: [to_record(row) for row in conn.execute(stmt)])

    def stats(self) -> dict[str, QueueStats]:
        def work(conn: Connection) -> dict[str, QueueStats]:
            stats: dict[str, QueueStats] = {}
            counts = select(jobs.c.queue, jobs.c.state, func.count()).group_by(
                jobs.c.queue, jobs.c.state
            )
            for queue, state, count in conn.execute(counts):
                stats.setdefault(queue, QueueStats()).counts[state] = int(count)
            for queue in conn.scalars(PAUSED):
                stats.setdefault(queue, QueueStats()).paused = True
            return stats

        return self._db.read(work)

    def paused_queues(self) -> set[str]:
        return self._db.read(lambda conn: set(conn.scalars(PAUSED)))


def changes(keeps_key: bool, attempts: str, clear_error: bool, now: float) -> dict[str, Any]:
    """The columns a transition changes besides its state and values: the
    unique key, the attempts and the last error, by the rules."""
    values: dict[str, Any] = {"updated_at": now}
    if not keeps_key:
        values["active_key"] = None
    if attempts == RESET:
        values["attempts"] = 0
    elif attempts == GIVE_BACK:
        values["attempts"] = jobs.c.attempts - 1
    if clear_error:
        values["error"] = None
    return values
