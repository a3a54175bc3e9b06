"""The Storage contract, held against every backend: memory, SQLite, PostgreSQL
and MariaDB. ``jobsd/storage/base.py`` is the specification; each test names the
rule it checks. SQL-only matters (schema, URLs, errors, concurrency) follow.

Server-backed parameters skip when the server is missing, and fail under CI.
"""

from __future__ import annotations

import importlib.util
import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import select, text, update

from jobsd.storage import (
    CANCELLED,
    DEAD,
    DEFAULT_PRIORITY,
    DONE,
    READY,
    RUNNING,
    SCHEDULED,
    STATES,
    AddResult,
    Completion,
    Failure,
    JobRecord,
    Lease,
    NewJob,
    SchemaError,
    Storage,
    StorageError,
    open_storage,
)
from jobsd.storage import schema as schema_module
from jobsd.storage.schema import SCHEMA_VERSION, jobs, meta
from jobsd.storage.sql import SQLStorage

if TYPE_CHECKING:
    from tests.storage_backends import Backend

# The backend fixtures: backend, sql_backend, server_backend, postgres_url, mysql_url.
pytest_plugins = ["tests.storage_backends"]

# An epoch with a fraction, to catch backends that round timestamps.
NOW = 1_700_000_000.123456
LEASE = NOW + 30.0
ARGS = bytes(range(256)) + b"\x00\x81\xa1a\x01"


def job(job_id: str, queue: str = "q", **fields: object) -> NewJob:
    return NewJob(id=job_id, name=f"task.{job_id}", queue=queue, args=ARGS, **fields)  # type: ignore[arg-type]


@pytest.fixture
def storage(backend: Backend) -> Storage:
    return backend.open()


def claim_ids(storage: Storage, queues: list[str], limit: int = 100, now: float = NOW) -> list[str]:
    return [j.id for j in storage.claim(queues, limit, now, now + 30.0, "w1")]


def state_of(storage: Storage, job_id: str) -> str:
    return storage.get([job_id])[job_id].state


def run(storage: Storage, job_id: str, queue: str = "q") -> JobRecord:
    """Claim ``job_id`` (it must be the only ready job of ``queue``)."""
    (claimed,) = storage.claim([queue], 1, NOW, LEASE, "w1")
    assert claimed.id == job_id
    return claimed


# -- add ---------------------------------------------------------------------


def test_add_stores_every_field_ready_or_scheduled_by_run_at(storage: Storage) -> None:
    results = storage.add(
        [
            job("now", run_at=NOW),
            job("past", run_at=NOW - 5),
            job(
                "later",
                queue="other",
                run_at=NOW + 0.5,
                priority=7,
                max_attempts=5,
                backoff={"base": 2.0, "max": 60, "kind": "exp"},
                timeout=12.5,
                unique_key="key-1",
            ),
        ],
        NOW,
    )
    assert results == [AddResult("now", True), AddResult("past", True), AddResult("later", True)]
    got = storage.get(["now", "past", "later"])
    assert got["now"].state == READY
    assert got["past"].state == READY
    later = got["later"]
    assert later.state == SCHEDULED
    assert (later.name, later.queue, later.args) == ("task.later", "other", ARGS)
    assert (later.priority, later.run_at, later.attempts) == (7, NOW + 0.5, 0)
    assert later.max_attempts == 5
    assert later.backoff == {"base": 2.0, "max": 60, "kind": "exp"}
    assert later.timeout == 12.5
    assert later.unique_key == "key-1"
    assert (later.created_at, later.updated_at) == (NOW, NOW)
    assert (later.lease_until, later.worker, later.result, later.error) == (None, None, None, None)
    now = got["now"]
    assert (now.priority, now.max_attempts, now.backoff, now.timeout, now.unique_key) == (
        DEFAULT_PRIORITY,
        None,
        None,
        None,
        None,
    )
    assert got["now"].seq < got["past"].seq < got["later"].seq


def test_add_empty_batch(storage: Storage) -> None:
    assert storage.add([], NOW) == []
    assert storage.stats() == {}


def test_add_is_idempotent_on_id(storage: Storage) -> None:
    assert storage.add([job("a")], NOW) == [AddResult("a", True)]
    resent = NewJob(id="a", name="other", queue="q2", args=b"new")
    assert storage.add([resent, job("b")], NOW + 1) == [AddResult("a", False), AddResult("b", True)]
    a = storage.get(["a"])["a"]
    assert (a.name, a.queue, a.args, a.created_at) == ("task.a", "q", ARGS, NOW)
    assert storage.stats()["q"].counts[READY] == 2
    assert "q2" not in storage.stats()


def test_add_is_idempotent_within_one_batch(storage: Storage) -> None:
    first = job("a")
    second = NewJob(id="a", name="dup", queue="q", args=b"dup")
    assert storage.add([first, second, job("b")], NOW) == [
        AddResult("a", True),
        AddResult("a", False),
        AddResult("b", True),
    ]
    assert storage.get(["a"])["a"].args == ARGS
    assert len(storage.list_jobs()) == 2


def test_add_unique_key_returns_the_active_holder(storage: Storage) -> None:
    assert storage.add([job("a", unique_key="k")], NOW) == [AddResult("a", True)]
    # Scheduled, ready and running all hold the key.
    assert storage.add([job("b", unique_key="k")], NOW) == [AddResult("a", False)]
    run(storage, "a")
    assert storage.add([job("c", unique_key="k"), job("d", unique_key="k2")], NOW) == [
        AddResult("a", False),
        AddResult("d", True),
    ]
    assert storage.add([job("e", unique_key="s", run_at=NOW + 60)], NOW) == [AddResult("e", True)]
    assert storage.add([job("f", unique_key="s")], NOW) == [AddResult("e", False)]
    assert set(storage.get(["b", "c", "f"])) == set()


def test_add_unique_key_within_one_batch(storage: Storage) -> None:
    results = storage.add(
        [job("a", unique_key="k"), job("b", unique_key="k"), job("c"), job("a", unique_key="z")],
        NOW,
    )
    assert results == [
        AddResult("a", True),
        AddResult("a", False),
        AddResult("c", True),
        AddResult("a", False),
    ]
    # The id check comes first: a resent "a" with another key does not take "z".
    assert storage.add([job("d", unique_key="z")], NOW) == [AddResult("d", True)]


@pytest.mark.parametrize("end", [DONE, DEAD, CANCELLED])
def test_finishing_frees_the_unique_key(storage: Storage, end: str) -> None:
    storage.add([job("a", unique_key="k")], NOW)
    if end == CANCELLED:
        assert storage.cancel(["a"], NOW) == [True]
    else:
        run(storage, "a")
        if end == DONE:
            assert storage.complete([Completion("a", 1, b"ok")], NOW) == [True]
        else:
            assert storage.fail([Failure("a", 1, "boom")], NOW) == [True]
    assert state_of(storage, "a") == end
    assert storage.add([job("b", unique_key="k")], NOW) == [AddResult("b", True)]
    assert storage.get(["a"])["a"].unique_key == "k"
    # ...and the new holder holds it again.
    assert storage.add([job("c", unique_key="k")], NOW) == [AddResult("b", False)]


def test_timestamps_and_bytes_round_trip_exactly(storage: Storage) -> None:
    big = os.urandom(1 << 20)
    run_at = NOW - 0.000_001
    storage.add([NewJob(id="big", name="n", queue="q", args=big, run_at=run_at)], NOW)
    (claimed,) = storage.claim(["q"], 1, NOW + 0.25, NOW + 1.000_001, "w")
    assert claimed.args == big
    assert (claimed.run_at, claimed.lease_until) == (run_at, NOW + 1.000_001)
    assert storage.complete([Completion("big", 1, big[::-1])], NOW + 0.5) == [True]
    done = storage.get(["big"])["big"]
    assert (done.args, done.result) == (big, big[::-1])
    assert (done.run_at, done.created_at, done.updated_at) == (run_at, NOW, NOW + 0.5)


def test_keys_compare_exactly(storage: Storage) -> None:
    assert storage.add([job("a", unique_key="K"), job("A", unique_key="k")], NOW) == [
        AddResult("a", True),
        AddResult("A", True),
    ]
    assert set(storage.get(["a", "A"])) == {"a", "A"}
    storage.add([job("x", queue="Q")], NOW)
    assert claim_ids(storage, ["q"]) == ["a", "A"]


# -- claim -------------------------------------------------------------------


def test_claim_runs_jobs_and_counts_the_attempt(storage: Storage) -> None:
    storage.add([job("a"), job("b")], NOW)
    claimed = storage.claim(["q"], 10, NOW + 1, NOW + 31, "worker-7")
    assert [j.id for j in claimed] == ["a", "b"]
    for record in claimed:
        assert record.state == RUNNING
        assert record.attempts == 1
        assert record.lease_until == NOW + 31
        assert record.worker == "worker-7"
        assert record.updated_at == NOW + 1
        assert record.args == ARGS
        assert record.lease() == Lease(record.id, 1)
        assert storage.get([record.id])[record.id] == record
    assert storage.claim(["q"], 10, NOW + 1, NOW + 31, "worker-7") == []


def test_claim_order_is_priority_then_run_at_then_seq(storage: Storage) -> None:
    storage.add(
        [
            job("p9-old", priority=9, run_at=NOW - 100),
            job("p1-late", priority=1, run_at=NOW - 1),
            job("p1-early", priority=1, run_at=NOW - 50),
            job("p5-x", queue="other", priority=5, run_at=NOW - 10),
            job("p1-late-2", priority=1, run_at=NOW - 1),
            job("p0", queue="other", priority=0, run_at=NOW),
            job("p5-y", priority=5, run_at=NOW - 10),
        ],
        NOW,
    )
    assert claim_ids(storage, ["q", "other"]) == [
        "p0",
        "p1-early",
        "p1-late",
        "p1-late-2",
        "p5-x",
        "p5-y",
        "p9-old",
    ]


def test_claim_respects_the_limit_across_queues(storage: Storage) -> None:
    storage.add([job(f"q{i}", priority=i) for i in range(5)], NOW)
    storage.add([job(f"o{i}", queue="o", priority=i) for i in range(5)], NOW)
    assert claim_ids(storage, ["q", "o"], limit=3) == ["q0", "o0", "q1"]
    assert claim_ids(storage, ["o", "q"], limit=1) == ["o1"]
    assert claim_ids(storage, ["q"], limit=0) == []
    assert claim_ids(storage, [], limit=5) == []
    assert claim_ids(storage, ["q", "q"], limit=10) == ["q2", "q3", "q4"]


def test_claim_takes_only_the_given_queues_and_only_ready_jobs(storage: Storage) -> None:
    storage.add([job("a", queue="a"), job("b", queue="b"), job("later", run_at=NOW + 5)], NOW)
    assert claim_ids(storage, ["a", "nope"]) == ["a"]
    assert claim_ids(storage, ["q"]) == []
    assert state_of(storage, "b") == READY


def test_claim_skips_paused_queues(storage: Storage) -> None:
    storage.add([job("a", queue="a"), job("b", queue="b")], NOW)
    storage.set_paused("a", True)
    storage.set_paused("a", True)  # twice is fine
    assert storage.paused_queues() == {"a"}
    assert claim_ids(storage, ["a", "b"]) == ["b"]
    assert claim_ids(storage, ["a"]) == []
    # Submits are still accepted while paused.
    assert storage.add([job("a2", queue="a")], NOW) == [AddResult("a2", True)]
    storage.set_paused("a", False)
    storage.set_paused("never-paused", False)
    assert storage.paused_queues() == set()
    assert claim_ids(storage, ["a"]) == ["a", "a2"]


# -- complete ------------------------------------------------------------------


def test_complete_stores_the_result(storage: Storage) -> None:
    storage.add([job("a"), job("b")], NOW)
    storage.claim(["q"], 2, NOW, LEASE, "w")
    assert storage.complete([Completion("a", 1, b"\x00result"), Completion("b", 1)], NOW + 2) == [
        True,
        True,
    ]
    a, b = storage.get(["a"])["a"], storage.get(["b"])["b"]
    assert (a.state, a.result, a.attempts, a.updated_at) == (DONE, b"\x00result", 1, NOW + 2)
    assert (a.lease_until, a.worker) == (None, None)
    assert (b.state, b.result) == (DONE, None)


def test_complete_with_reschedule_runs_again_as_fresh(storage: Storage) -> None:
    storage.add([job("a", unique_key="k"), job("b")], NOW)
    storage.claim(["q"], 2, NOW, LEASE, "w")
    storage.fail([Failure("a", 1, "first try", retry_at=NOW)], NOW)
    run(storage, "a")
    assert storage.complete(
        [Completion("a", 2, reschedule_at=NOW + 60), Completion("b", 1, reschedule_at=NOW)],
        NOW + 1,
    ) == [True, True]
    records = storage.get(["a", "b"])
    a, b = records["a"], records["b"]
    assert (a.state, a.run_at, a.attempts, a.error) == (SCHEDULED, NOW + 60, 0, None)
    assert (a.lease_until, a.worker, a.updated_at) == (None, None, NOW + 1)
    assert (b.state, b.run_at, b.attempts) == (READY, NOW, 0)
    # Still active: the key stays taken.
    assert storage.add([job("c", unique_key="k")], NOW) == [AddResult("a", False)]
    assert storage.next_run_at() == NOW + 60


# -- fail ----------------------------------------------------------------------


def test_fail_with_retry_keeps_every_error(storage: Storage) -> None:
    storage.add([job("a", max_attempts=2)], NOW)
    run(storage, "a")
    assert storage.fail([Failure("a", 1, "first", retry_at=NOW + 10)], NOW + 1) == [True]
    a = storage.get(["a"])["a"]
    assert (a.state, a.run_at, a.attempts, a.error) == (SCHEDULED, NOW + 10, 1, "first")
    assert (a.lease_until, a.worker, a.updated_at) == (None, None, NOW + 1)
    assert storage.promote(NOW + 10) == 1
    (again,) = storage.claim(["q"], 1, NOW + 11, NOW + 41, "w2")
    assert again.attempts == 2
    assert storage.fail([Failure("a", 2, "second\nwith a traceback" * 5000)], NOW + 12) == [True]
    a = storage.get(["a"])["a"]
    assert (a.state, a.error) == (DEAD, "second\nwith a traceback" * 5000)
    history = storage.errors("a")
    assert [(e.attempt, e.at, e.error) for e in history] == [
        (1, NOW + 1, "first"),
        (2, NOW + 12, "second\nwith a traceback" * 5000),
    ]
    assert storage.errors("nope") == []


def test_fail_with_past_retry_is_ready_at_once(storage: Storage) -> None:
    storage.add([job("a")], NOW)
    run(storage, "a")
    assert storage.fail([Failure("a", 1, "x", retry_at=NOW - 1)], NOW) == [True]
    a = storage.get(["a"])["a"]
    assert (a.state, a.run_at) == (READY, NOW - 1)


def test_fail_to_cancelled(storage: Storage) -> None:
    storage.add([job("a", unique_key="k")], NOW)
    run(storage, "a")
    assert storage.fail([Failure("a", 1, "cancelled by user", final_state=CANCELLED)], NOW) == [
        True
    ]
    assert state_of(storage, "a") == CANCELLED
    assert [e.error for e in storage.errors("a")] == ["cancelled by user"]


def test_fail_batch_mixes_outcomes_in_order(storage: Storage) -> None:
    storage.add([job(x) for x in "abcd"], NOW)
    storage.claim(["q"], 4, NOW, LEASE, "w")
    results = storage.fail(
        [
            Failure("a", 1, "ea", retry_at=NOW + 5),
            Failure("b", 2, "stale"),
            Failure("c", 1, "ec"),
            Failure("zz", 1, "unknown"),
            Failure("d", 1, "ed", final_state=CANCELLED),
            Failure("a", 1, "again"),
        ],
        NOW,
    )
    assert results == [True, False, True, False, True, False]
    states = {i: r.state for i, r in storage.get(list("abcd")).items()}
    assert states == {"a": SCHEDULED, "b": RUNNING, "c": DEAD, "d": CANCELLED}
    assert [e.error for e in storage.errors("a")] == ["ea"]
    assert storage.errors("b") == []


# -- fencing -------------------------------------------------------------------


def test_stale_reports_change_nothing(storage: Storage) -> None:
    storage.add([job("a")], NOW)
    run(storage, "a")
    # The lease ran out, the broker gave the attempt up, and a new one began.
    (late,) = storage.expired(LEASE + 1)
    assert late.id == "a"
    assert storage.fail([Failure("a", 1, "lease expired", retry_at=LEASE + 1)], LEASE + 1) == [True]
    (second,) = storage.claim(["q"], 1, LEASE + 2, LEASE + 60, "w2")
    assert second.attempts == 2
    before = storage.get(["a"])["a"]
    errors_before = storage.errors("a")

    assert storage.complete([Completion("a", 1, b"late")], LEASE + 3) == [False]
    assert storage.fail([Failure("a", 1, "late")], LEASE + 3) == [False]
    assert storage.release([Lease("a", 1)], LEASE + 3) == [False]
    assert storage.extend_leases([Lease("a", 1)], LEASE + 999) == [False]
    assert storage.complete([Completion("a", 3)], LEASE + 3) == [False]
    assert storage.get(["a"])["a"] == before
    assert storage.errors("a") == errors_before

    assert storage.complete([Completion("a", 2, b"ok")], LEASE + 4) == [True]
    # Once done, even the right attempt is stale.
    assert storage.complete([Completion("a", 2, b"again")], LEASE + 5) == [False]
    assert storage.fail([Failure("a", 2, "after done")], LEASE + 5) == [False]
    assert storage.release([Lease("a", 2)], LEASE + 5) == [False]
    assert storage.extend_leases([Lease("a", 2)], LEASE + 5) == [False]
    assert storage.get(["a"])["a"].result == b"ok"


def test_unknown_and_not_running_jobs_are_stale(storage: Storage) -> None:
    storage.add([job("ready"), job("later", run_at=NOW + 9)], NOW)
    for name in ("ready", "later", "missing"):
        assert storage.complete([Completion(name, 0)], NOW) == [False]
        assert storage.complete([Completion(name, 1)], NOW) == [False]
        assert storage.fail([Failure(name, 1, "x")], NOW) == [False]
        assert storage.release([Lease(name, 1)], NOW) == [False]
        assert storage.extend_leases([Lease(name, 1)], NOW) == [False]
    assert state_of(storage, "ready") == READY
    assert state_of(storage, "later") == SCHEDULED
    assert storage.complete([], NOW) == []
    assert storage.fail([], NOW) == []
    assert storage.release([], NOW) == []
    assert storage.extend_leases([], NOW) == []


def test_a_lease_named_twice_in_a_batch_acts_once(storage: Storage) -> None:
    storage.add([job("a"), job("b")], NOW)
    storage.claim(["q"], 2, NOW, LEASE, "w")
    assert storage.complete([Completion("a", 1, b"1"), Completion("a", 1, b"2")], NOW) == [
        True,
        False,
    ]
    assert storage.get(["a"])["a"].result == b"1"
    assert storage.extend_leases([Lease("b", 1), Lease("b", 1)], LEASE + 5) == [True, True]
    assert storage.release([Lease("b", 1), Lease("b", 1)], NOW) == [True, False]
    assert storage.get(["b"])["b"].attempts == 0


# -- release, leases, expiry ---------------------------------------------------------


def test_release_hands_back_without_counting_the_attempt(storage: Storage) -> None:
    storage.add([job("a"), job("b")], NOW)
    storage.claim(["q"], 2, NOW, LEASE, "w")
    assert storage.release([Lease("b", 1), Lease("a", 1)], NOW + 1) == [True, True]
    for record in storage.get(["a", "b"]).values():
        assert (record.state, record.attempts) == (READY, 0)
        assert (record.lease_until, record.worker, record.updated_at) == (None, None, NOW + 1)
    # Back in its place in the order.
    assert [(j.id, j.attempts) for j in storage.claim(["q"], 5, NOW, LEASE, "w")] == [
        ("a", 1),
        ("b", 1),
    ]


def test_extend_leases_keeps_jobs_from_expiring(storage: Storage) -> None:
    storage.add([job("a"), job("b")], NOW)
    storage.claim(["q"], 2, NOW, LEASE, "w")
    assert storage.extend_leases([Lease("a", 1), Lease("b", 7)], LEASE + 100) == [True, False]
    assert storage.get(["a"])["a"].lease_until == LEASE + 100
    assert storage.get(["a"])["a"].updated_at == NOW
    assert [j.id for j in storage.expired(LEASE + 1)] == ["b"]
    assert [j.id for j in storage.expired(LEASE + 101)] == ["b", "a"]


def test_expired_lists_running_jobs_whose_lease_ended(storage: Storage) -> None:
    storage.add([job(x) for x in "abcd"], NOW)
    storage.claim(["q"], 1, NOW, NOW + 20, "w")  # a
    storage.claim(["q"], 1, NOW, NOW + 10, "w")  # b
    storage.claim(["q"], 1, NOW, NOW + 30, "w")  # c; d stays ready
    assert storage.expired(NOW + 10) == []  # a lease ending exactly now is still alive
    late = storage.expired(NOW + 25)
    assert [j.id for j in late] == ["b", "a"]
    assert all(j.state == RUNNING for j in late)
    assert late[0] == storage.get(["b"])["b"]
    assert [j.id for j in storage.expired(NOW + 100, limit=2)] == ["b", "a"]
    assert storage.expired(NOW + 100, limit=0) == []
    # expired() only reports; nothing moved.
    assert state_of(storage, "b") == RUNNING


# -- scheduling ------------------------------------------------------------------


def test_promote_and_next_run_at(storage: Storage) -> None:
    assert storage.next_run_at() is None
    assert storage.promote(NOW) == 0
    storage.add(
        [job("in5", run_at=NOW + 5), job("in1", run_at=NOW + 1), job("in9", run_at=NOW + 9)], NOW
    )
    assert storage.next_run_at() == NOW + 1
    assert storage.promote(NOW + 0.5) == 0
    assert storage.promote(NOW + 5) == 2
    assert {i: r.state for i, r in storage.get(["in1", "in5", "in9"]).items()} == {
        "in1": READY,
        "in5": READY,
        "in9": SCHEDULED,
    }
    assert storage.get(["in5"])["in5"].updated_at == NOW + 5
    assert storage.next_run_at() == NOW + 9
    assert claim_ids(storage, ["q"], now=NOW + 5) == ["in1", "in5"]
    storage.cancel(["in9"], NOW)
    assert storage.next_run_at() is None
    assert storage.promote(NOW + 100) == 0


# -- inspection --------------------------------------------------------------------


def test_get_returns_only_existing_jobs(storage: Storage) -> None:
    storage.add([job("a"), job("b")], NOW)
    found = storage.get(["b", "missing", "a", "b"])
    assert set(found) == {"a", "b"}
    assert found["a"].id == "a"
    assert storage.get([]) == {}


def test_list_jobs_filters_orders_and_pages(storage: Storage) -> None:
    storage.add([job(f"j{i}", queue="even" if i % 2 == 0 else "odd") for i in range(10)], NOW)
    storage.claim(["even"], 2, NOW, LEASE, "w")  # j0, j2
    assert [j.id for j in storage.list_jobs()] == [f"j{i}" for i in range(9, -1, -1)]
    assert [j.id for j in storage.list_jobs(queue="odd", limit=3)] == ["j9", "j7", "j5"]
    assert [j.id for j in storage.list_jobs(state=RUNNING)] == ["j2", "j0"]
    assert [j.id for j in storage.list_jobs(queue="even", state=READY)] == ["j8", "j6", "j4"]
    assert storage.list_jobs(queue="none") == []
    assert storage.list_jobs(limit=0) == []
    seen: list[str] = []
    before = None
    while True:
        page = storage.list_jobs(limit=4, before_seq=before)
        if not page:
            break
        seen.extend(j.id for j in page)
        before = page[-1].seq
    assert seen == [f"j{i}" for i in range(9, -1, -1)]
    assert storage.list_jobs()[0].args == ARGS


def test_stats_counts_every_state_per_queue(storage: Storage) -> None:
    storage.add(
        [job("s", run_at=NOW + 9), job("r1"), job("r2"), job("x", queue="x"), job("c1")], NOW
    )
    storage.cancel(["c1"], NOW)
    storage.claim(["x"], 1, NOW, LEASE, "w")
    storage.set_paused("idle", True)
    storage.set_paused("x", True)
    stats = storage.stats()
    assert set(stats) == {"q", "x", "idle"}
    assert stats["q"].counts == {
        SCHEDULED: 1,
        READY: 2,
        RUNNING: 0,
        DONE: 0,
        DEAD: 0,
        CANCELLED: 1,
    }
    assert not stats["q"].paused
    assert stats["x"].counts[RUNNING] == 1 and stats["x"].paused
    assert stats["idle"].paused
    assert stats["idle"].counts == dict.fromkeys(STATES, 0)


# -- administration ----------------------------------------------------------------


def test_cancel_only_scheduled_or_ready(storage: Storage) -> None:
    storage.add(
        [
            job("ready"),
            job("later", run_at=NOW + 5),
            job("run", queue="r"),
            job("k", unique_key="k"),
        ],
        NOW,
    )
    storage.claim(["r"], 1, NOW, LEASE, "w")
    results = storage.cancel(["ready", "later", "run", "missing", "ready", "k"], NOW + 1)
    assert results == [True, True, False, False, False, True]
    records = storage.get(["ready", "later", "run"])
    assert records["ready"].state == CANCELLED
    assert records["ready"].updated_at == NOW + 1
    assert records["later"].state == CANCELLED
    assert records["run"].state == RUNNING
    assert storage.cancel(["ready"], NOW) == [False]  # final now
    assert claim_ids(storage, ["q"]) == []
    assert storage.next_run_at() is None
    assert storage.add([job("k2", unique_key="k")], NOW) == [AddResult("k2", True)]
    assert storage.cancel([], NOW) == []


def test_retry_runs_dead_or_cancelled_jobs_again(storage: Storage) -> None:
    storage.add([job("dead"), job("cancelled", run_at=NOW + 50), job("done"), job("ready")], NOW)
    storage.claim(["q"], 2, NOW, LEASE, "w")  # dead, done
    storage.fail([Failure("dead", 1, "boom")], NOW)
    storage.complete([Completion("done", 1, b"r")], NOW)
    storage.cancel(["cancelled"], NOW)
    results = storage.retry(["dead", "cancelled", "done", "ready", "missing", "dead"], NOW + 7)
    assert results == [True, True, False, False, False, False]
    for name in ("dead", "cancelled"):
        record = storage.get([name])[name]
        assert (record.state, record.attempts, record.run_at) == (READY, 0, NOW + 7)
        assert record.updated_at == NOW + 7
    assert storage.get(["dead"])["dead"].error == "boom"  # last error kept for inspection
    assert [e.error for e in storage.errors("dead")] == ["boom"]
    assert state_of(storage, "done") == DONE
    assert storage.retry([], NOW) == []


def test_retried_job_queues_behind_earlier_run_at(storage: Storage) -> None:
    storage.add([job("first"), job("second", run_at=NOW + 1)], NOW + 1)
    storage.cancel(["first"], NOW + 1)
    storage.retry(["first"], NOW + 2)  # run_at is now NOW + 2
    assert claim_ids(storage, ["q"], now=NOW + 3) == ["second", "first"]


def test_retry_takes_the_unique_key_back(storage: Storage) -> None:
    storage.add(
        [job("a", unique_key="k"), job("b", unique_key="k2"), job("c", unique_key="k2")], NOW
    )
    storage.cancel(["a", "b"], NOW)
    assert storage.add([job("c", unique_key="k2")], NOW) == [AddResult("c", True)]
    storage.cancel(["c"], NOW)
    # b and c share k2: the first in the batch wins it.
    assert storage.retry(["a", "c", "b"], NOW) == [True, True, False]
    assert storage.add([job("d", unique_key="k")], NOW) == [AddResult("a", False)]
    assert storage.add([job("e", unique_key="k2")], NOW) == [AddResult("c", False)]


def test_retry_refused_while_another_job_holds_the_key(storage: Storage) -> None:
    storage.add([job("old", unique_key="k")], NOW)
    storage.cancel(["old"], NOW)
    storage.add([job("new", unique_key="k", run_at=NOW + 60)], NOW)
    assert storage.retry(["old"], NOW) == [False]
    assert state_of(storage, "old") == CANCELLED
    storage.cancel(["new"], NOW)
    assert storage.retry(["old"], NOW) == [True]
    assert storage.retry(["new"], NOW) == [False]


def test_delete_only_final_jobs_with_their_history(storage: Storage) -> None:
    storage.add(
        [job("dead"), job("done"), job("ready"), job("cancelled"), job("run", queue="r")], NOW
    )
    storage.claim(["q"], 2, NOW, LEASE, "w")
    storage.claim(["r"], 1, NOW, LEASE, "w")
    storage.fail([Failure("dead", 1, "boom")], NOW)
    storage.complete([Completion("done", 1)], NOW)
    storage.cancel(["cancelled"], NOW)
    deleted = storage.delete(["dead", "done", "ready", "cancelled", "run", "missing", "dead"])
    assert deleted == 3
    assert set(storage.get(["dead", "done", "ready", "cancelled", "run"])) == {"ready", "run"}
    assert storage.errors("dead") == []
    assert storage.delete([]) == 0
    # The id is free again.
    assert storage.add([job("dead")], NOW) == [AddResult("dead", True)]
    assert storage.errors("dead") == []


def test_purge_by_state_and_age(storage: Storage) -> None:
    storage.add([job(x) for x in ("done-old", "dead-old", "done-new", "cancel-old", "ready")], NOW)
    storage.claim(["q"], 3, NOW, LEASE, "w")  # done-old, dead-old, done-new
    storage.complete([Completion("done-old", 1)], NOW + 1)
    storage.fail([Failure("dead-old", 1, "x")], NOW + 1)
    storage.complete([Completion("done-new", 1)], NOW + 10)
    storage.cancel(["cancel-old"], NOW + 1)
    assert storage.purge([DONE, READY], NOW + 1) == 0  # strictly before
    assert storage.purge([DONE, READY, RUNNING], NOW + 5) == 1
    assert storage.purge([], NOW + 100) == 0
    assert storage.purge({DEAD, CANCELLED}, NOW + 5) == 2
    assert storage.errors("dead-old") == []
    assert set(storage.get(["done-old", "dead-old", "done-new", "cancel-old", "ready"])) == {
        "done-new",
        "ready",
    }


def test_large_batches(storage: Storage) -> None:
    n = 4500  # more than one IN list's worth in the SQL backends
    assert all(r.created for r in storage.add([job(f"a{i:05}") for i in range(n)], NOW))
    assert all(not r.created for r in storage.add([job(f"a{i:05}") for i in range(0, n, 2)], NOW))
    storage.add([job(f"b{i:05}", queue="b") for i in range(n)], NOW)
    claimed = storage.claim(["a", "q", "b"], 2 * n - 10, NOW, LEASE, "w")
    assert len(claimed) == 2 * n - 10
    assert [j.id for j in claimed[:2]] == ["a00000", "a00001"]
    assert len({j.id for j in claimed}) == len(claimed)
    leases = [j.lease() for j in claimed]
    assert all(storage.extend_leases(leases, LEASE + 10))
    assert all(storage.complete([Completion(lease.job_id, 1) for lease in leases], NOW))
    stats = storage.stats()
    assert (stats["q"].counts[DONE], stats["b"].counts[DONE]) == (n, n - 10)
    assert stats["b"].counts[READY] == 10
    assert storage.purge([DONE], NOW + 1) == 2 * n - 10


# -- transactions ----------------------------------------------------------------------


def test_calls_in_a_transaction_apply_together(storage: Storage) -> None:
    """Rule: several calls, one commit (what the broker does each turn)."""
    storage.add([job("a"), job("b")], NOW)
    first = run(storage, "a")
    with storage.transaction():
        assert storage.complete([Completion("a", first.attempts, b"r")], NOW) == [True]
        with storage.transaction():  # a nested block joins the outer one
            (claimed,) = storage.claim(["q"], 5, NOW, LEASE, "w1")
        assert storage.get(["a"])["a"].state == DONE  # seen inside, before the commit
    assert claimed.id == "b"
    assert state_of(storage, "a") == DONE and state_of(storage, "b") == RUNNING


def test_a_failed_transaction_applies_nothing(sql_backend: Backend) -> None:
    """Rule: if anything inside raises, none of the calls applies, and a
    failure the caller caught still fails the block."""
    storage = sql_backend.open()
    assert isinstance(storage, SQLStorage)
    storage.add([job("a"), job("b")], NOW)
    first = run(storage, "a")
    with pytest.raises(RuntimeError), storage.transaction():
        storage.complete([Completion("a", first.attempts, b"r")], NOW)
        storage.claim(["q"], 5, NOW, LEASE, "w1")
        raise RuntimeError("the broker failed halfway")
    assert state_of(storage, "a") == RUNNING and state_of(storage, "b") == READY
    with pytest.raises(StorageError), storage.transaction():
        storage.complete([Completion("a", first.attempts, b"r")], NOW)
        with pytest.raises(StorageError):  # a statement the database refuses
            storage._write(lambda conn: conn.exec_driver_sql("SELECT * FROM no_such_table"))
    assert state_of(storage, "a") == RUNNING
    assert storage.complete([Completion("a", first.attempts, b"r")], NOW) == [True]


# -- SQL only: schema, URLs, errors ------------------------------------------------------


def test_schema_version_is_recorded(sql_backend: Backend) -> None:
    storage = sql_backend.open()
    assert isinstance(storage, SQLStorage)
    assert storage.schema_version() == SCHEMA_VERSION
    engine = sql_backend.engine()
    with engine.connect() as conn:
        value = conn.scalar(meta.select().with_only_columns(meta.c.value))
    engine.dispose()
    assert value == str(SCHEMA_VERSION)
    assert storage.migrate() == (SCHEMA_VERSION, SCHEMA_VERSION)
    # Opening again keeps the data.
    storage.add([job("a")], NOW)
    assert sql_backend.open().get(["a"])["a"].args == ARGS


def test_newer_schema_is_refused(sql_backend: Backend) -> None:
    sql_backend.open().close()
    engine = sql_backend.engine()
    with engine.begin() as conn:
        conn.execute(update(meta).values(value=str(SCHEMA_VERSION + 1)))
    engine.dispose()
    for create in (True, False):
        with pytest.raises(SchemaError, match="upgrade jobsd"):
            sql_backend.open(create=create)


def test_create_false_leaves_the_database_alone_until_migrate(sql_backend: Backend) -> None:
    storage = sql_backend.open(create=False)
    assert isinstance(storage, SQLStorage)
    assert storage.schema_version() == 0
    with pytest.raises(StorageError):
        storage.add([job("a")], NOW)
    assert storage.migrate() == (0, SCHEMA_VERSION)
    assert storage.add([job("a")], NOW) == [AddResult("a", True)]


def test_migrate_runs_each_step_once(sql_backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = sql_backend.open()
    assert isinstance(storage, SQLStorage)
    storage.add([job("a")], NOW)
    steps: list[int] = []

    def v1_to_v2(conn: object) -> None:
        steps.append(1)

    monkeypatch.setattr(schema_module, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    monkeypatch.setitem(schema_module.STEPS, SCHEMA_VERSION, v1_to_v2)
    assert storage.migrate() == (SCHEMA_VERSION, SCHEMA_VERSION + 1)
    assert storage.migrate() == (SCHEMA_VERSION + 1, SCHEMA_VERSION + 1)
    assert steps == [1]
    assert storage.schema_version() == SCHEMA_VERSION + 1
    assert storage.get(["a"])["a"].state == READY


def test_a_failed_call_applies_nothing(sql_backend: Backend) -> None:
    storage = sql_backend.open()
    storage.add([job("a"), job("b")], NOW)
    storage.claim(["q"], 2, NOW, LEASE, "w")
    engine = sql_backend.engine()
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE jobsd_job_errors"))
    engine.dispose()
    with pytest.raises(StorageError, match="jobsd_job_errors"):
        storage.fail([Failure("a", 1, "x", retry_at=NOW)], NOW)
    assert state_of(storage, "a") == RUNNING
    # A batch with one bad job stores none of it.
    bad = NewJob(id="bad", name=None, queue="q", args=b"")  # type: ignore[arg-type]
    with pytest.raises(StorageError):
        storage.add([job("c"), bad], NOW)
    assert storage.get(["c", "bad"]) == {}


def test_open_storage_picks_sql_by_url(sql_backend: Backend) -> None:
    storage = open_storage(sql_backend.url)
    sql_backend.opened.append(storage)
    assert isinstance(storage, SQLStorage)
    scheme = storage.url.split("://")[0]
    assert scheme in ("sqlite", "postgresql+psycopg", "mysql+pymysql", "mariadb+pymysql")


@pytest.mark.parametrize(
    "url", ["redis://localhost:6379/0", "oracle://scott:tiger@db/orcl", "not a url", "jobs.db"]
)
def test_unsupported_url_is_a_value_error(url: str) -> None:
    with pytest.raises(ValueError, match="unsupported storage URL") as caught:
        SQLStorage(url)
    assert "tiger" not in str(caught.value)
    assert "sqlite:///" in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("postgresql://postgres:secret@127.0.0.1:1/test", marks=pytest.mark.postgres),
        pytest.param("mysql://root:secret@127.0.0.1:1/test", marks=pytest.mark.mysql),
    ],
)
def test_unreachable_server_is_a_storage_error(url: str) -> None:
    started = time.monotonic()
    with pytest.raises(StorageError) as caught:
        SQLStorage(url, connect_timeout=2)
    assert time.monotonic() - started < 10
    message = str(caught.value)
    assert "127.0.0.1:1" in message
    assert "secret" not in message
    assert "\n" not in message


@pytest.mark.postgres
def test_url_is_masked_and_bare_schemes_get_jobsd_drivers(postgres_url: str) -> None:
    from sqlalchemy.engine import make_url

    url = make_url(postgres_url).set(drivername="postgresql", password="hidden")
    storage = SQLStorage(url.render_as_string(hide_password=False))
    try:
        assert storage.url.startswith("postgresql+psycopg://postgres:***@")
        assert "hidden" not in repr(storage)
    finally:
        storage.close()


def test_missing_driver_is_a_storage_error() -> None:
    candidates = {
        "pg8000": "postgresql+pg8000://u:pw@127.0.0.1/db",
        "MySQLdb": "mysql+mysqldb://u:pw@127.0.0.1/db",
        "psycopg2": "postgresql+psycopg2://u:pw@127.0.0.1/db",
    }
    missing = [url for module, url in candidates.items() if not importlib.util.find_spec(module)]
    if not missing:
        pytest.skip("every alternative driver is installed")
    url = missing[0]
    with pytest.raises(StorageError, match="driver") as caught:
        SQLStorage(url)
    assert "pw" not in str(caught.value)


def test_unwritable_sqlite_location_is_a_storage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    places = [
        "/proc/jobsd-cannot-exist/jobs.sqlite3",  # a read-only file system, even for root
        str(tmp_path / "missing-dir" / "jobs.sqlite3"),
        str(blocker / "jobs.sqlite3"),
    ]
    if os.geteuid() != 0:  # root writes through permission bits
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        places.append(str(locked / "jobs.sqlite3"))
    for place in places:
        with pytest.raises(StorageError, match="cannot open storage sqlite"):
            SQLStorage(f"sqlite:///{place}")


def test_read_only_sqlite_database_is_a_storage_error(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    SQLStorage(f"sqlite:///{path}").close()
    with pytest.raises(StorageError, match="readonly"):
        # Refused when opening (the schema check begins a write transaction),
        # or at the latest by the first write.
        storage = SQLStorage(f"sqlite:///file:{path}?mode=ro&uri=true")
        try:
            storage.add([job("a")], NOW)
        finally:
            storage.close()


def test_in_memory_sqlite_works(tmp_path: Path) -> None:
    for url in ("sqlite://", "sqlite:///:memory:"):
        storage = SQLStorage(url)
        try:
            storage.add([job("a")], NOW)
            assert claim_ids(storage, ["q"]) == ["a"]
        finally:
            storage.close()


def test_sqlite_survives_reopening(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.sqlite3'}"
    first = SQLStorage(url)
    first.add([job("a"), job("b", unique_key="k")], NOW)
    first.claim(["q"], 1, NOW, LEASE, "w")
    first.set_paused("q", True)
    first.close()
    second = SQLStorage(url)
    try:
        records = second.get(["a", "b"])
        assert (records["a"].state, records["b"].state) == (RUNNING, READY)
        assert second.paused_queues() == {"q"}
        assert second.add([job("c", unique_key="k")], NOW) == [AddResult("b", False)]
    finally:
        second.close()


def test_sqlite_pragmas(tmp_path: Path) -> None:
    storage = SQLStorage(f"sqlite:///{tmp_path / 'jobs.sqlite3'}")
    try:
        with storage._engine.connect() as conn:
            pragmas = {
                name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
                for name in ("journal_mode", "synchronous", "busy_timeout", "foreign_keys")
            }
    finally:
        storage.close()
    assert pragmas == {
        "journal_mode": "wal",
        "synchronous": 2,  # FULL
        "busy_timeout": 5000,
        "foreign_keys": 1,
    }


# -- several brokers on one database -----------------------------------------------------


def _together(*targets: object) -> None:
    """Run the callables on threads at once; re-raise the first failure."""
    failures: list[BaseException] = []
    start = threading.Barrier(len(targets))

    def wrap(target: object) -> None:
        try:
            start.wait()
            target()  # type: ignore[operator]
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            failures.append(exc)

    threads = [threading.Thread(target=wrap, args=(t,)) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    if failures:
        raise failures[0]


def test_brokers_sharing_a_database_never_claim_one_job_twice(
    server_backend: Backend,
) -> None:
    brokers = [server_backend.open(), server_backend.open(), server_backend.open()]
    n = 600
    brokers[0].add([job(f"j{i:04}", queue="ab"[i % 2], priority=i % 7) for i in range(n)], NOW)
    claimed: list[list[str]] = [[] for _ in brokers]

    def take(index: int, queues: list[str], limit: int) -> list[JobRecord]:
        batch = brokers[index].claim(queues, limit, NOW, LEASE, f"broker{index}")
        claimed[index].extend(j.id for j in batch)
        assert all(brokers[index].complete([Completion(j.id, 1) for j in batch], NOW))
        return batch

    def worker(index: int) -> None:
        queues = ["a"] if index == 0 else ["a", "b"]  # the one- and several-queue paths
        misses = 0
        while misses < 3:
            misses = 0 if take(index, queues, 7) else misses + 1

    _together(*(lambda i=i: worker(i) for i in range(len(brokers))))
    assert all(claimed), "every broker should have had a share"
    # A claim skips jobs another broker holds locked at that moment (heads of a
    # queue it looked at but did not take): drain what is left.
    while take(1, ["a", "b"], 50):
        pass
    everything = Counter(i for ids in claimed for i in ids)
    assert len(everything) == n
    assert set(everything.values()) == {1}
    stats = brokers[2].stats()
    assert stats["a"].counts[DONE] == stats["b"].counts[DONE] == n // 2


def test_claim_skips_jobs_another_broker_has_locked(server_backend: Backend) -> None:
    storage = server_backend.open()
    storage.add([job("a"), job("b")], NOW)
    engine = server_backend.engine()
    try:
        with engine.begin() as other:  # another broker, mid-claim on "a"
            other.execute(select(jobs.c.id).where(jobs.c.id == "a").with_for_update())
            started = time.monotonic()
            assert claim_ids(storage, ["q"]) == ["b"]
            assert claim_ids(storage, ["q", "other"]) == []
            assert time.monotonic() - started < 5, "claim waited for a lock"
    finally:
        engine.dispose()
    assert claim_ids(storage, ["q"]) == ["a"]


def test_pauses_are_shared_by_brokers_on_one_database(sql_backend: Backend) -> None:
    first, second = sql_backend.open(), sql_backend.open()
    first.add([job("a")], NOW)
    first.set_paused("q", True)
    assert second.paused_queues() == {"q"}
    assert second.stats()["q"].paused
    assert claim_ids(second, ["q"]) == []
    second.set_paused("q", False)
    assert first.paused_queues() == set()
    assert claim_ids(first, ["q"]) == ["a"]


def test_sqlite_processes_sharing_a_file_never_claim_one_job_twice(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.sqlite3'}"
    brokers = [SQLStorage(url), SQLStorage(url)]
    try:
        brokers[0].add([job(f"j{i:04}") for i in range(300)], NOW)
        claimed: list[list[str]] = [[], []]

        def worker(index: int) -> None:
            while batch := brokers[index].claim(["q"], 5, NOW, LEASE, f"b{index}"):
                claimed[index].extend(j.id for j in batch)
                assert all(brokers[index].complete([Completion(j.id, 1) for j in batch], NOW))

        _together(lambda: worker(0), lambda: worker(1))
        everything = Counter(claimed[0] + claimed[1])
        assert len(everything) == 300 and set(everything.values()) == {1}
    finally:
        for storage in brokers:
            storage.close()


def test_brokers_adding_the_same_jobs_at_once_store_each_once(
    server_backend: Backend,
) -> None:
    brokers = [server_backend.open(), server_backend.open()]
    batch = [job(f"j{i:03}", unique_key=f"k{i % 50}") for i in range(200)]
    results: list[list[AddResult]] = [[], []]

    def submit(index: int) -> None:
        for start in range(0, len(batch), 20):
            results[index].extend(brokers[index].add(batch[start : start + 20], NOW))

    _together(lambda: submit(0), lambda: submit(1))
    created = [r.job_id for rs in results for r in rs if r.created]
    assert sorted(created) == [f"j{i:03}" for i in range(50)]
    assert len(brokers[0].list_jobs(limit=1000)) == 50
    # Both brokers name the same holder for every key.
    assert [r.job_id for r in results[0]] == [r.job_id for r in results[1]]
