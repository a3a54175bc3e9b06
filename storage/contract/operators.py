"""The contract on what operators and timers do: cancel, retry, delete,
purge, promote, queries, transactions, and several brokers at once."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable

from jobsd.storage.contract.base import ARGS, NOW, ContractBase, grant, job, skip
from jobsd.storage.records import AddResult
from jobsd.storage.rules import CANCELLABLE, RETRYABLE, cancelled, done, retried
from jobsd.vocabulary import CANCELLED, DEAD, DONE, READY, RUNNING, SCHEDULED, STATES


class OperatorContract(ContractBase):
    def cancel(self, ids: list[str], now: float = NOW) -> list[bool]:
        return self.storage.move(ids, CANCELLABLE, cancelled(), now)

    def retry(self, ids: list[str], now: float = NOW) -> list[bool]:
        return self.storage.move(ids, RETRYABLE, retried(now), now)

    def test_cancel_takes_only_scheduled_or_ready_jobs(self) -> None:
        storage = self.storage
        storage.add(
            [
                job("ready"),
                job("later", run_at=NOW + 5),
                job("run", queue="r"),
                job("k", unique_key="k"),
            ],
            NOW,
        )
        self.claim(["r"], 1)
        results = self.cancel(["ready", "later", "run", "missing", "ready", "k"], NOW + 1)
        assert results == [True, True, False, False, False, True]
        records = storage.get(["ready", "later", "run"])
        assert (records["ready"].state, records["ready"].updated_at) == (CANCELLED, NOW + 1)
        assert (records["later"].state, records["run"].state) == (CANCELLED, RUNNING)
        assert self.cancel(["ready"]) == [False]  # final now
        assert self.claim_ids(["q"]) == []
        assert storage.next_run_at() is None
        assert storage.add([job("k2", unique_key="k")], NOW) == [AddResult("k2", True)]
        assert self.cancel([]) == []

    def test_retry_runs_dead_or_cancelled_jobs_again(self) -> None:
        storage = self.storage
        storage.add(
            [job("dead"), job("cancelled", run_at=NOW + 50), job("done"), job("ready")], NOW
        )
        dead, finished = self.claim(["q"], 2)
        assert self.fail(dead, "boom") and self.complete(finished, b"r")
        self.cancel(["cancelled"])
        results = self.retry(["dead", "cancelled", "done", "ready", "missing", "dead"], NOW + 7)
        assert results == [True, True, False, False, False, False]
        for name in ("dead", "cancelled"):
            record = storage.get([name])[name]
            assert (record.state, record.attempts, record.run_at) == (READY, 0, NOW + 7)
            assert record.updated_at == NOW + 7
        assert storage.get(["dead"])["dead"].error == "boom"  # kept for inspection
        assert [e.error for e in storage.errors("dead")] == ["boom"]
        assert self.state_of("done") == DONE
        assert self.retry([]) == []

    def test_a_retried_job_queues_behind_earlier_run_at(self) -> None:
        self.storage.add([job("first"), job("second", run_at=NOW + 1)], NOW + 1)
        self.cancel(["first"], NOW + 1)
        self.retry(["first"], NOW + 2)  # run_at is now NOW + 2
        assert self.claim_ids(["q"], now=NOW + 3) == ["second", "first"]

    def test_retry_takes_the_unique_key_back(self) -> None:
        storage = self.storage
        storage.add(
            [job("a", unique_key="k"), job("b", unique_key="k2"), job("c", unique_key="k2")], NOW
        )
        self.cancel(["a", "b"])
        assert storage.add([job("c", unique_key="k2")], NOW) == [AddResult("c", True)]
        self.cancel(["c"])
        # b and c share k2: the first in the batch wins it.
        assert self.retry(["a", "c", "b"]) == [True, True, False]
        assert storage.add([job("d", unique_key="k")], NOW) == [AddResult("a", False)]
        assert storage.add([job("e", unique_key="k2")], NOW) == [AddResult("c", False)]

    def test_retry_is_refused_while_another_job_holds_the_key(self) -> None:
        self.storage.add([job("old", unique_key="k")], NOW)
        self.cancel(["old"])
        self.storage.add([job("new", unique_key="k", run_at=NOW + 60)], NOW)
        assert self.retry(["old"]) == [False]
        assert self.state_of("old") == CANCELLED
        self.cancel(["new"])
        assert self.retry(["old"]) == [True]
        assert self.retry(["new"]) == [False]

    def test_delete_takes_only_final_jobs_with_their_history(self) -> None:
        storage = self.storage
        storage.add(
            [job("dead"), job("done"), job("ready"), job("cancelled"), job("run", queue="r")], NOW
        )
        dead, finished = self.claim(["q"], 2)
        self.claim(["r"], 1)
        assert self.fail(dead) and self.complete(finished)
        self.cancel(["cancelled"])
        assert storage.delete(["dead", "done", "ready", "cancelled", "run", "missing", "dead"]) == 3
        assert set(storage.get(["dead", "done", "ready", "cancelled", "run"])) == {"ready", "run"}
        assert storage.errors("dead") == []
        assert storage.delete([]) == 0
        assert storage.add([job("dead")], NOW) == [AddResult("dead", True)]  # the id is free
        assert storage.errors("dead") == []

    def test_purge_by_state_and_age(self) -> None:
        storage = self.storage
        storage.add(
            [job(x) for x in ("done-old", "dead-old", "done-new", "cancel-old", "ready")], NOW
        )
        old, dead, new = self.claim(["q"], 3)
        assert storage.finish([(old.held(), done(None))], NOW + 1) == [True]
        assert self.fail(dead, "x")
        assert storage.finish([(new.held(), done(None))], NOW + 10) == [True]
        self.cancel(["cancel-old"], NOW + 1)
        storage.purge([DEAD], NOW)  # the fail above was at NOW: strictly before
        assert storage.purge([DONE, READY], NOW + 1) == 0  # strictly before
        assert storage.purge([DONE, READY, RUNNING], NOW + 5) == 1
        assert storage.purge([], NOW + 100) == 0
        assert storage.purge({DEAD, CANCELLED}, NOW + 5) == 2
        assert storage.errors("dead-old") == []
        remaining = storage.get(["done-old", "dead-old", "done-new", "cancel-old", "ready"])
        assert set(remaining) == {"done-new", "ready"}

    def test_promote_and_next_run_at(self) -> None:
        storage = self.storage
        assert storage.next_run_at() is None
        assert storage.promote(NOW) == 0
        storage.add(
            [job("in5", run_at=NOW + 5), job("in1", run_at=NOW + 1), job("in9", run_at=NOW + 9)],
            NOW,
        )
        assert storage.next_run_at() == NOW + 1
        assert storage.promote(NOW + 0.5) == 0
        assert storage.promote(NOW + 5) == 2
        states = {i: r.state for i, r in storage.get(["in1", "in5", "in9"]).items()}
        assert states == {"in1": READY, "in5": READY, "in9": SCHEDULED}
        assert storage.get(["in5"])["in5"].updated_at == NOW + 5
        assert storage.next_run_at() == NOW + 9
        assert self.claim_ids(["q"], now=NOW + 5) == ["in1", "in5"]
        self.cancel(["in9"])
        assert storage.next_run_at() is None
        assert storage.promote(NOW + 100) == 0

    # -- queries ---------------------------------------------------------------------

    def test_get_returns_only_existing_jobs_in_the_order_asked(self) -> None:
        self.storage.add([job("a"), job("b")], NOW)
        found = self.storage.get(["b", "missing", "a", "b"])
        assert list(found) == ["b", "a"]
        assert self.storage.get([]) == {}

    def test_list_jobs_filters_orders_and_pages(self) -> None:
        storage = self.storage
        storage.add([job(f"j{i}", queue="even" if i % 2 == 0 else "odd") for i in range(10)], NOW)
        self.claim(["even"], 2)  # j0, j2
        assert [j.id for j in storage.list_jobs()] == [f"j{i}" for i in range(9, -1, -1)]
        assert [j.id for j in storage.list_jobs(queue="odd", limit=3)] == ["j9", "j7", "j5"]
        assert [j.id for j in storage.list_jobs(state=RUNNING)] == ["j2", "j0"]
        assert [j.id for j in storage.list_jobs(queue="even", state=READY)] == ["j8", "j6", "j4"]
        assert storage.list_jobs(queue="none") == [] and storage.list_jobs(limit=0) == []
        seen: list[str] = []
        before = None
        while page := storage.list_jobs(limit=4, before_seq=before):
            seen.extend(j.id for j in page)
            before = page[-1].seq
        assert seen == [f"j{i}" for i in range(9, -1, -1)]
        assert storage.list_jobs()[0].args == ARGS

    def test_stats_counts_every_state_per_queue(self) -> None:
        storage = self.storage
        storage.add(
            [job("s", run_at=NOW + 9), job("r1"), job("r2"), job("x", queue="x"), job("c1")], NOW
        )
        self.cancel(["c1"])
        self.claim(["x"], 1)
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
        assert stats["idle"].paused and stats["idle"].counts == dict.fromkeys(STATES, 0)

    # -- transactions ------------------------------------------------------------------

    def test_calls_in_a_transaction_apply_together(self) -> None:
        """Several calls, one commit: what the broker does each turn."""
        storage = self.storage
        storage.add([job("a"), job("b")], NOW)
        first = self.run("a")
        with storage.transaction():
            assert self.complete(first, b"r")
            with storage.transaction():  # a nested block joins the outer one
                (claimed,) = self.claim(["q"], 5)
            assert self.state_of("a") == DONE  # seen inside, before the commit
        assert claimed.id == "b"
        assert (self.state_of("a"), self.state_of("b")) == (DONE, RUNNING)

    def test_a_failed_transaction_applies_nothing(self) -> None:
        storage = self.storage
        if not storage.transactional:
            skip(f"{type(storage).__name__} applies each call at once")
        storage.add([job("a"), job("b")], NOW)
        first = self.run("a")
        try:
            with storage.transaction():
                assert self.complete(first, b"r")
                self.claim(["q"], 5)
                raise RuntimeError("the broker failed halfway")
        except RuntimeError:
            pass
        assert (self.state_of("a"), self.state_of("b")) == (RUNNING, READY)
        assert self.complete(first, b"r")

    # -- several brokers on one database -------------------------------------------------

    def test_brokers_sharing_a_database_never_claim_one_job_twice(self) -> None:
        """Claims at once from three brokers: every job is claimed exactly once."""
        brokers = [self.storage, self.another(), self.another()]
        n = 600
        brokers[0].add([job(f"j{i:04}", queue="ab"[i % 2], priority=i % 7) for i in range(n)], NOW)
        claimed: list[list[str]] = [[] for _ in brokers]

        def take(index: int, queues: list[str], limit: int) -> int:
            batch = brokers[index].claim(queues, limit, NOW, grant(f"broker{index}"))
            claimed[index].extend(j.id for j in batch)
            assert all(brokers[index].finish([(j.held(), done(None)) for j in batch], NOW))
            return len(batch)

        def worker(index: int) -> None:
            queues = ["a"] if index == 0 else ["a", "b"]  # the one- and several-queue paths
            misses = 0
            while misses < 3:
                misses = 0 if take(index, queues, 7) else misses + 1

        together(*(lambda i=i: worker(i) for i in range(len(brokers))))
        if self.storage.concurrent:
            assert all(claimed), "every broker should have had a share"
        # A claim skips jobs another broker holds locked at that moment: drain the rest.
        while take(1, ["a", "b"], 50):
            pass
        everything = Counter(i for ids in claimed for i in ids)
        assert len(everything) == n and set(everything.values()) == {1}
        stats = brokers[2].stats()
        assert stats["a"].counts[DONE] == stats["b"].counts[DONE] == n // 2

    def test_brokers_adding_the_same_jobs_at_once_store_each_once(self) -> None:
        brokers = [self.storage, self.another()]
        batch = [job(f"j{i:03}", unique_key=f"k{i % 50}") for i in range(200)]
        results: list[list[AddResult]] = [[], []]

        def submit(index: int) -> None:
            for start in range(0, len(batch), 20):
                results[index].extend(brokers[index].add(batch[start : start + 20], NOW))

        together(lambda: submit(0), lambda: submit(1))
        created = [r.job_id for rs in results for r in rs if r.created]
        assert sorted(created) == [f"j{i:03}" for i in range(50)]
        assert len(brokers[0].list_jobs(limit=1000)) == 50
        # Both brokers name the same holder for every key.
        assert [r.job_id for r in results[0]] == [r.job_id for r in results[1]]

    def test_pauses_and_leases_are_shared_by_brokers(self) -> None:
        first, second = self.storage, self.another()
        first.add([job("a")], NOW)
        first.set_paused("q", True)
        assert second.paused_queues() == {"q"} and second.stats()["q"].paused
        assert second.claim(["q"], 1, NOW, grant()) == []
        second.set_paused("q", False)
        assert first.paused_queues() == set()
        (held,) = first.claim(["q"], 1, NOW, grant())
        assert second.finish([(held.held(), done(b"r"))], NOW) == [True]
        assert first.get(["a"])["a"].result == b"r"


def together(*targets: Callable[[], object]) -> None:
    """Run the callables on threads at once; re-raise the first failure."""
    failures: list[BaseException] = []
    start = threading.Barrier(len(targets))

    def wrap(target: Callable[[], object]) -> None:
        try:
            start.wait()
            target()
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            failures.append(exc)

    threads = [threading.Thread(target=wrap, args=(t,)) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    if failures:
        raise failures[0]
