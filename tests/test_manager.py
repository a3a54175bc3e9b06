"""The job manager alone, on memory storage with a clock the test sets: the
semantics the broker's commands and chores only call."""

from __future__ import annotations

import random

import pytest

from jobsd import JobOptions
from jobsd.broker.config import BrokerConfig
from jobsd.broker.manager import JobManager, Report
from jobsd.protocol.backoff import Backoff
from jobsd.protocol.producer import JobSubmission, ListRequest, RetryRequest, pack_args
from jobsd.protocol.worker import (
    FAIL_CANCELLED,
    FAIL_ERROR,
    FAIL_FINAL,
    FAIL_RETRY,
    FAIL_TIMEOUT,
    Ack,
    Fail,
)
from jobsd.storage import JobRecord
from jobsd.storage.memory import MemoryStorage

NOW = 1_700_000_000.0
ARGS = pack_args([], {})


@pytest.fixture
def manager() -> JobManager:
    config = BrokerConfig(name="b1", keep_done=10.0, keep_dead=None, keep_cancelled=5.0)
    return JobManager(MemoryStorage(), config, lambda: NOW, random.Random(7))


def submit(
    manager: JobManager, job_id: str, options: JobOptions | None = None, name: str = "n"
) -> None:
    jobs = manager.new_jobs([JobSubmission(job_id, name, ARGS, options)], NOW)
    assert manager.add(jobs, NOW)[0].created


def claim(manager: JobManager, limit: int = 1, queue: str = "default") -> list[JobRecord]:
    return manager.claim([queue], limit, NOW, "w1")


def fail(manager: JobManager, job: JobRecord, kind: str = FAIL_ERROR, **extra: float) -> None:
    outcome = Fail(job.id, job.lease or "", "boom", kind, extra.get("retry_at"))
    (result,) = manager.report([Report(job.held(), outcome, job)], NOW)
    assert result.accepted


def test_a_submit_takes_its_types_defaults_then_the_brokers(manager: JobManager) -> None:
    manager.learn_job_types({"send": JobOptions(queue="emails", max_attempts=5, timeout=30.0)})
    jobs = manager.new_jobs(
        [
            JobSubmission("a", "send", ARGS),
            JobSubmission("b", "send", ARGS, JobOptions(max_attempts=0, delay=60)),
            JobSubmission("c", "other", ARGS),
            JobSubmission("d", "other", ARGS, JobOptions(timeout=0, priority=3)),
        ],
        NOW,
    )
    summary = [(j.queue, j.max_attempts, j.timeout, j.run_at, j.priority) for j in jobs]
    assert summary == [
        ("emails", 5, 30.0, NOW, 32768),
        ("emails", None, 30.0, NOW + 60, 32768),  # 0: no limit
        ("default", 25, None, NOW, 32768),
        ("default", 25, None, NOW, 3),  # a timeout of 0 is none
    ]


def test_a_failure_retries_by_backoff_until_its_attempts_are_spent(manager: JobManager) -> None:
    submit(manager, "a", JobOptions(max_attempts=2, backoff=Backoff.fixed(10.0)))
    (first,) = claim(manager)
    fail(manager, first)
    a = manager.storage.get(["a"])["a"]
    assert (a.state, a.run_at) == ("scheduled", NOW + 10.0)
    manager.storage.promote(NOW + 10)
    (second,) = claim(manager)
    fail(manager, second)
    assert manager.storage.get(["a"])["a"].state == "dead"


@pytest.mark.parametrize(
    ("kind", "state"),
    [
        (FAIL_FINAL, "dead"),
        (FAIL_CANCELLED, "cancelled"),
        (FAIL_TIMEOUT, "scheduled"),
    ],
)
def test_what_a_failure_says_decides_its_end(manager: JobManager, kind: str, state: str) -> None:
    submit(manager, "a")
    (job,) = claim(manager)
    fail(manager, job, kind)
    assert manager.storage.get(["a"])["a"].state == state


def test_a_retry_asked_for_is_never_in_the_past(manager: JobManager) -> None:
    submit(manager, "a")
    (job,) = claim(manager)
    fail(manager, job, FAIL_RETRY, retry_at=NOW - 100)
    a = manager.storage.get(["a"])["a"]
    assert (a.state, a.run_at) == ("ready", NOW)


def test_a_lost_worker_costs_the_attempt_but_not_the_backoff(manager: JobManager) -> None:
    submit(manager, "a", JobOptions(max_attempts=1))
    submit(manager, "b", JobOptions(backoff=Backoff.fixed(3600.0)))
    a, b = claim(manager, 2)
    outcomes = manager.lost([a, b], "worker lost: no heartbeat", NOW)
    assert [(o.job_id, o.final, o.waiting, o.queue) for o in outcomes] == [
        ("a", True, False, "default"),
        ("b", False, True, "default"),
    ]
    records = manager.storage.get(["a", "b"])
    assert (records["a"].state, records["b"].state, records["b"].run_at) == ("dead", "ready", NOW)


def test_reports_for_leases_gone_are_counted_stale(manager: JobManager) -> None:
    submit(manager, "a")
    (job,) = claim(manager)
    manager.hand_back([job], NOW)
    (again,) = claim(manager)
    assert again.lease != job.lease and again.attempts == job.attempts == 1
    (outcome,) = manager.report([Report(job.held(), Ack("a", job.lease or ""), job)], NOW)
    assert not outcome.accepted and manager.stale_reports == 1


def test_retry_all_dead_finds_them_a_page_at_a_time(manager: JobManager) -> None:
    for i in range(1100):
        submit(manager, f"j{i:04}", JobOptions(max_attempts=1))
    manager.lost(claim(manager, 1100), "lost", NOW)
    ids, retried = manager.retry(RetryRequest([], all_dead=True), NOW)
    assert len(ids) == 1100 and all(retried)


def test_list_pages_with_a_cursor_until_none(manager: JobManager) -> None:
    for i in range(5):
        submit(manager, f"j{i}")
    seen, cursor = [], None
    while True:
        views, cursor = manager.list_page(ListRequest(limit=2, cursor=cursor))
        seen += [view["id"] for view in views]
        if cursor is None:
            break
    assert seen == ["j4", "j3", "j2", "j1", "j0"]


def test_retention_keeps_each_final_state_its_own_time(manager: JobManager) -> None:
    for job_id in ("done", "dead", "cancelled"):
        submit(manager, job_id, JobOptions(max_attempts=1))
    done, dead = claim(manager, 2)
    manager.report([Report(done.held(), Ack("done", done.lease or ""), done)], NOW)
    manager.lost([dead], "lost", NOW)
    manager.cancel(["cancelled"], NOW)
    manager.retention(NOW + 6)
    assert set(manager.storage.get(["done", "dead", "cancelled"])) == {"done", "dead"}
    manager.retention(NOW + 11)
    assert set(manager.storage.get(["done", "dead", "cancelled"])) == {"dead"}  # kept for ever
