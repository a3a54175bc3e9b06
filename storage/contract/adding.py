"""The contract on adding and claiming jobs: idempotence, unique keys, order."""

from __future__ import annotations

import os

from jobsd.storage.contract.base import ARGS, BROKER, LEASE, NOW, ContractBase, job
from jobsd.storage.records import AddResult, NewJob
from jobsd.storage.rules import CANCELLABLE, cancelled, done
from jobsd.vocabulary import (
    CANCELLED,
    DEAD,
    DEFAULT_PRIORITY,
    DONE,
    MAX_KEY_LENGTH,
    READY,
    RUNNING,
    SCHEDULED,
)


class AddingContract(ContractBase):
    def test_add_stores_every_field_ready_or_scheduled_by_run_at(self) -> None:
        storage = self.storage
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
        assert results == [
            AddResult("now", True),
            AddResult("past", True),
            AddResult("later", True),
        ]
        got = storage.get(["now", "past", "later"])
        assert (got["now"].state, got["past"].state) == (READY, READY)
        later = got["later"]
        assert later.state == SCHEDULED
        assert (later.name, later.queue, later.args) == ("task.later", "other", ARGS)
        assert (later.priority, later.run_at, later.attempts) == (7, NOW + 0.5, 0)
        assert (later.max_attempts, later.timeout, later.unique_key) == (5, 12.5, "key-1")
        assert later.backoff == {"base": 2.0, "max": 60, "kind": "exp"}
        assert (later.created_at, later.updated_at) == (NOW, NOW)
        assert (later.lease_until, later.worker, later.result, later.error) == (None,) * 4
        assert (later.lease, later.broker) == (None, None)
        now = got["now"]
        assert (now.priority, now.max_attempts, now.backoff, now.timeout, now.unique_key) == (
            DEFAULT_PRIORITY,
            None,
            None,
            None,
            None,
        )
        assert got["now"].seq < got["past"].seq < got["later"].seq

    def test_add_empty_batch(self) -> None:
        assert self.storage.add([], NOW) == []
        assert self.storage.stats() == {}

    def test_add_is_idempotent_on_id(self) -> None:
        storage = self.storage
        assert storage.add([job("a")], NOW) == [AddResult("a", True)]
        resent = NewJob(id="a", name="other", queue="q2", args=b"new")
        assert storage.add([resent, job("b")], NOW + 1) == [
            AddResult("a", False),
            AddResult("b", True),
        ]
        a = storage.get(["a"])["a"]
        assert (a.name, a.queue, a.args, a.created_at) == ("task.a", "q", ARGS, NOW)
        assert storage.stats()["q"].counts[READY] == 2
        assert "q2" not in storage.stats()

    def test_add_is_idempotent_within_one_batch(self) -> None:
        second = NewJob(id="a", name="dup", queue="q", args=b"dup")
        assert self.storage.add([job("a"), second, job("b")], NOW) == [
            AddResult("a", True),
            AddResult("a", False),
            AddResult("b", True),
        ]
        assert self.storage.get(["a"])["a"].args == ARGS
        assert len(self.storage.list_jobs()) == 2

    def test_add_unique_key_returns_the_active_holder(self) -> None:
        storage = self.storage
        assert storage.add([job("a", unique_key="k")], NOW) == [AddResult("a", True)]
        # Scheduled, ready and running all hold the key.
        assert storage.add([job("b", unique_key="k")], NOW) == [AddResult("a", False)]
        self.run("a")
        assert storage.add([job("c", unique_key="k"), job("d", unique_key="k2")], NOW) == [
            AddResult("a", False),
            AddResult("d", True),
        ]
        assert storage.add([job("e", unique_key="s", run_at=NOW + 60)], NOW) == [
            AddResult("e", True)
        ]
        assert storage.add([job("f", unique_key="s")], NOW) == [AddResult("e", False)]
        assert set(storage.get(["b", "c", "f"])) == set()

    def test_add_unique_key_within_one_batch(self) -> None:
        batch = [
            job("a", unique_key="k"),
            job("b", unique_key="k"),
            job("c"),
            job("a", unique_key="z"),
        ]
        assert self.storage.add(batch, NOW) == [
            AddResult("a", True),
            AddResult("a", False),
            AddResult("c", True),
            AddResult("a", False),
        ]
        # The id check comes first: a resent "a" with another key does not take "z".
        assert self.storage.add([job("d", unique_key="z")], NOW) == [AddResult("d", True)]

    def test_finishing_frees_the_unique_key(self) -> None:
        storage = self.storage
        for end in (DONE, DEAD, CANCELLED):
            key = f"key-{end}"
            storage.add([job(end, queue=end, unique_key=key)], NOW)
            if end == CANCELLED:
                assert storage.move([end], CANCELLABLE, cancelled(), NOW) == [True]
            else:
                held = self.run(end, queue=end)
                assert self.complete(held) if end == DONE else self.fail(held)
            assert self.state_of(end) == end
            assert storage.add([job(f"{end}-2", unique_key=key)], NOW) == [
                AddResult(f"{end}-2", True)
            ]
            assert storage.get([end])[end].unique_key == key
            # ...and the new holder holds it again.
            assert storage.add([job(f"{end}-3", unique_key=key)], NOW) == [
                AddResult(f"{end}-2", False)
            ]

    def test_timestamps_and_bytes_round_trip_exactly(self) -> None:
        big = os.urandom(1 << 20)
        run_at = NOW - 0.000_001
        self.storage.add([NewJob(id="big", name="n", queue="q", args=big, run_at=run_at)], NOW)
        (claimed,) = self.claim(["q"], 1, NOW + 0.25, until=NOW + 1.000_001)
        assert claimed.args == big
        assert (claimed.run_at, claimed.lease_until) == (run_at, NOW + 1.000_001)
        assert self.storage.finish([(claimed.held(), done(big[::-1]))], NOW + 0.5) == [True]
        finished = self.storage.get(["big"])["big"]
        assert (finished.args, finished.result) == (big, big[::-1])
        assert (finished.run_at, finished.created_at, finished.updated_at) == (
            run_at,
            NOW,
            NOW + 0.5,
        )

    def test_keys_compare_exactly_and_whole(self) -> None:
        """Invariant: keys of up to MAX_KEY_LENGTH characters are kept whole
        and compared exactly (no case folding, no truncation)."""
        storage = self.storage
        assert storage.add([job("a", unique_key="K"), job("A", unique_key="k")], NOW) == [
            AddResult("a", True),
            AddResult("A", True),
        ]
        assert set(storage.get(["a", "A"])) == {"a", "A"}
        storage.add([job("x", queue="Q")], NOW)
        assert self.claim_ids(["q"]) == ["a", "A"]
        longest = "é" * (MAX_KEY_LENGTH - 1) + "x"
        storage.add([NewJob(longest, longest, longest, ARGS, unique_key=longest)], NOW)
        (claimed,) = self.claim([longest], worker=longest, broker=longest)
        assert (claimed.id, claimed.name, claimed.queue, claimed.unique_key) == (longest,) * 4
        assert (claimed.worker, claimed.broker) == (longest, longest)
        assert storage.add([job("y", unique_key=longest[:-1] + "y")], NOW)[0].created

    # -- claim ---------------------------------------------------------------------

    def test_claim_runs_jobs_under_the_grant_and_counts_the_attempt(self) -> None:
        self.storage.add([job("a"), job("b")], NOW)
        claimed = self.claim(["q"], 10, NOW + 1, worker="worker-7", until=NOW + 31)
        assert [j.id for j in claimed] == ["a", "b"]
        for record in claimed:
            assert (record.state, record.attempts, record.updated_at) == (RUNNING, 1, NOW + 1)
            assert (record.lease_until, record.worker, record.broker) == (
                NOW + 31,
                "worker-7",
                BROKER,
            )
            assert record.lease is not None and record.lease.startswith("token-")
            assert record.args == ARGS
            assert self.storage.get([record.id])[record.id] == record
        assert claimed[0].lease == claimed[1].lease  # one grant per claim
        assert self.claim(["q"], 10, NOW + 1) == []

    def test_claim_order_is_priority_then_run_at_then_seq(self) -> None:
        self.storage.add(
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
        assert self.claim_ids(["q", "other"]) == [
            "p0",
            "p1-early",
            "p1-late",
            "p1-late-2",
            "p5-x",
            "p5-y",
            "p9-old",
        ]

    def test_claim_respects_the_limit_across_queues(self) -> None:
        self.storage.add([job(f"q{i}", priority=i) for i in range(5)], NOW)
        self.storage.add([job(f"o{i}", queue="o", priority=i) for i in range(5)], NOW)
        assert self.claim_ids(["q", "o"], limit=3) == ["q0", "o0", "q1"]
        assert self.claim_ids(["o", "q"], limit=1) == ["o1"]
        assert self.claim_ids(["q"], limit=0) == []
        assert self.claim_ids([], limit=5) == []
        assert self.claim_ids(["q", "q"], limit=10) == ["q2", "q3", "q4"]

    def test_claim_takes_only_the_given_queues_and_only_ready_jobs(self) -> None:
        self.storage.add(
            [job("a", queue="a"), job("b", queue="b"), job("later", run_at=NOW + 5)], NOW
        )
        assert self.claim_ids(["a", "nope"]) == ["a"]
        assert self.claim_ids(["q"]) == []
        assert self.state_of("b") == READY

    def test_claim_skips_paused_queues(self) -> None:
        storage = self.storage
        storage.add([job("a", queue="a"), job("b", queue="b")], NOW)
        storage.set_paused("a", True)
        storage.set_paused("a", True)  # twice is fine
        assert storage.paused_queues() == {"a"}
        assert self.claim_ids(["a", "b"]) == ["b"]
        assert self.claim_ids(["a"]) == []
        # Submits are still accepted while paused.
        assert storage.add([job("a2", queue="a")], NOW) == [AddResult("a2", True)]
        storage.set_paused("a", False)
        storage.set_paused("never-paused", False)
        assert storage.paused_queues() == set()
        assert self.claim_ids(["a"]) == ["a", "a2"]

    def test_large_batches(self) -> None:
        storage = self.storage
        n = 4500  # more than one IN list's worth in the SQL backends
        assert all(r.created for r in storage.add([job(f"a{i:05}") for i in range(n)], NOW))
        again = [job(f"a{i:05}") for i in range(0, n, 2)]
        assert not any(r.created for r in storage.add(again, NOW))
        storage.add([job(f"b{i:05}", queue="b") for i in range(n)], NOW)
        claimed = self.claim(["a", "q", "b"], 2 * n - 10)
        assert len(claimed) == 2 * n - 10
        assert [j.id for j in claimed[:2]] == ["a00000", "a00001"]
        assert len({j.id for j in claimed}) == len(claimed)
        leases = [j.held() for j in claimed]
        assert all(storage.extend_leases(leases, LEASE + 10, BROKER))
        assert all(storage.finish([(lease, done(None)) for lease in leases], NOW))
        stats = storage.stats()
        assert (stats["q"].counts[DONE], stats["b"].counts[DONE]) == (n, n - 10)
        assert stats["b"].counts[READY] == 10
        assert storage.purge([DONE], NOW + 1) == 2 * n - 10
