"""The contract on running jobs: transitions that end an attempt, fenced by the
lease; leases extended, expired, and found again after a broker restart."""

from __future__ import annotations

from jobsd.storage.contract.base import BROKER, LEASE, NOW, ContractBase, job
from jobsd.storage.records import AddResult, Lease
from jobsd.storage.rules import again, done, ended, released, rescheduled
from jobsd.vocabulary import CANCELLED, DEAD, DONE, READY, RUNNING, SCHEDULED


class LeaseContract(ContractBase):
    def test_done_stores_the_result_and_clears_the_lease(self) -> None:
        self.storage.add([job("a"), job("b")], NOW)
        a, b = self.claim(["q"], 2)
        assert self.storage.finish(
            [(a.held(), done(b"\x00result")), (b.held(), done(None))], NOW + 2
        ) == [True, True]
        a, b = self.storage.get(["a"])["a"], self.storage.get(["b"])["b"]
        assert (a.state, a.result, a.attempts, a.updated_at) == (DONE, b"\x00result", 1, NOW + 2)
        assert (a.lease, a.lease_until, a.worker, a.broker) == (None, None, None, None)
        assert (b.state, b.result) == (DONE, None)

    def test_rescheduled_runs_again_as_a_fresh_job(self) -> None:
        storage = self.storage
        storage.add([job("a", unique_key="k"), job("b")], NOW)
        a, b = self.claim(["q"], 2)
        assert self.end(a, again(NOW, NOW, "first try"))
        a = self.run("a")
        results = storage.finish(
            [(a.held(), rescheduled(NOW + 60, NOW + 1)), (b.held(), rescheduled(NOW, NOW + 1))],
            NOW + 1,
        )
        assert results == [True, True]
        records = storage.get(["a", "b"])
        a, b = records["a"], records["b"]
        assert (a.state, a.run_at, a.attempts, a.error) == (SCHEDULED, NOW + 60, 0, None)
        assert (a.lease_until, a.worker, a.updated_at) == (None, None, NOW + 1)
        assert (b.state, b.run_at, b.attempts) == (READY, NOW, 0)
        # Still active: the key stays taken.
        assert storage.add([job("c", unique_key="k")], NOW) == [AddResult("a", False)]
        assert storage.next_run_at() == NOW + 60

    def test_a_failed_attempt_keeps_every_error(self) -> None:
        storage = self.storage
        storage.add([job("a", max_attempts=2)], NOW)
        first = self.run("a")
        assert storage.finish([(first.held(), again(NOW + 10, NOW + 1, "first"))], NOW + 1) == [
            True
        ]
        a = storage.get(["a"])["a"]
        assert (a.state, a.run_at, a.attempts, a.error) == (SCHEDULED, NOW + 10, 1, "first")
        assert (a.lease_until, a.worker, a.updated_at) == (None, None, NOW + 1)
        assert storage.promote(NOW + 10) == 1
        (second,) = self.claim(["q"], 1, NOW + 11, worker="w2")
        assert second.attempts == 2
        long_error = "second\nwith a traceback" * 5000
        assert storage.finish([(second.held(), ended(DEAD, long_error))], NOW + 12) == [True]
        a = storage.get(["a"])["a"]
        assert (a.state, a.error) == (DEAD, long_error)
        assert [(e.attempt, e.at, e.error) for e in storage.errors("a")] == [
            (1, NOW + 1, "first"),
            (2, NOW + 12, long_error),
        ]
        assert storage.errors("nope") == []

    def test_a_retry_in_the_past_is_ready_at_once(self) -> None:
        self.storage.add([job("a")], NOW)
        assert self.fail(self.run("a"), "x", retry_at=NOW - 1)
        a = self.storage.get(["a"])["a"]
        assert (a.state, a.run_at) == (READY, NOW - 1)

    def test_an_attempt_may_end_the_job_as_cancelled(self) -> None:
        self.storage.add([job("a", unique_key="k")], NOW)
        assert self.end(self.run("a"), ended(CANCELLED, "cancelled by user"))
        assert self.state_of("a") == CANCELLED
        assert [e.error for e in self.storage.errors("a")] == ["cancelled by user"]

    def test_a_batch_mixes_outcomes_in_order(self) -> None:
        storage = self.storage
        storage.add([job(x) for x in "abcd"], NOW)
        a, b, c, d = (j.held() for j in self.claim(["q"], 4))
        results = storage.finish(
            [
                (a, again(NOW + 5, NOW, "ea")),
                (Lease("b", "not-its-token"), ended(DEAD, "stale")),
                (c, ended(DEAD, "ec")),
                (Lease("zz", a.token), ended(DEAD, "unknown")),
                (d, ended(CANCELLED, "ed")),
                (a, ended(DEAD, "again")),
            ],
            NOW,
        )
        assert results == [True, False, True, False, True, False]
        states = {i: r.state for i, r in storage.get(list("abcd")).items()}
        assert states == {"a": SCHEDULED, "b": RUNNING, "c": DEAD, "d": CANCELLED}
        assert [e.error for e in storage.errors("a")] == ["ea"]
        assert storage.errors("b") == []

    def test_released_jobs_go_back_in_place_without_the_attempt(self) -> None:
        storage = self.storage
        storage.add([job("a"), job("b")], NOW)
        a, b = self.claim(["q"], 2)
        assert storage.finish([(b.held(), released()), (a.held(), released())], NOW + 1) == [
            True,
            True,
        ]
        for record in storage.get(["a", "b"]).values():
            assert (record.state, record.attempts) == (READY, 0)
            assert (record.lease, record.lease_until, record.worker, record.updated_at) == (
                None,
                None,
                None,
                NOW + 1,
            )
        assert [(j.id, j.attempts) for j in self.claim(["q"], 5)] == [("a", 1), ("b", 1)]

    # -- fencing -------------------------------------------------------------------

    def test_a_lease_is_never_handed_out_twice(self) -> None:
        """A release gives the attempt back, not the lease: the next claim of
        the same job, at the same attempt number, has another token, and the
        old one is stale (a worker resending its release after a reconnect)."""
        self.storage.add([job("a")], NOW)
        first = self.run("a")
        assert self.release(first)
        second = self.run("a", worker="w2")
        assert second.attempts == first.attempts == 1
        assert second.lease != first.lease
        assert not self.release(first)
        assert not self.complete(first, b"forged")
        assert self.storage.get(["a"])["a"] == second
        assert self.complete(second, b"ok")

    def test_stale_leases_change_nothing(self) -> None:
        storage = self.storage
        storage.add([job("a")], NOW)
        first = self.run("a")
        # The lease ran out, the broker gave the attempt up, and a new one began.
        (late,) = storage.expired(LEASE + 1)
        assert late.id == "a"
        assert storage.finish([(late.held(), again(LEASE + 1, LEASE + 1, "lost"))], LEASE + 1) == [
            True
        ]
        (second,) = self.claim(["q"], 1, LEASE + 2, worker="w2", until=LEASE + 60)
        before, errors_before = storage.get(["a"])["a"], storage.errors("a")
        for to in (done(b"late"), ended(DEAD, "late"), released()):
            assert not self.end(first, to)
        assert storage.extend_leases([first.held()], LEASE + 999, BROKER) == [False]
        assert storage.get(["a"])["a"] == before
        assert storage.errors("a") == errors_before
        assert self.complete(second, b"ok")
        # Once done, even the right lease is stale.
        assert not self.complete(second, b"again")
        assert not self.fail(second, "after done")
        assert storage.extend_leases([second.held()], LEASE + 5, BROKER) == [False]
        assert storage.get(["a"])["a"].result == b"ok"

    def test_a_lease_that_names_a_worker_fences_on_it_too(self) -> None:
        self.storage.add([job("a")], NOW)
        held = self.run("a", worker="w1")
        assert self.storage.extend_leases(
            [Lease("a", held.lease or "", "w2")], LEASE + 5, BROKER
        ) == [False]
        assert not self.complete(Lease("a", held.lease or "", "w2"))
        assert self.complete(Lease("a", held.lease or "", "w1"), b"ok")

    def test_unknown_and_not_running_jobs_are_stale(self) -> None:
        storage = self.storage
        storage.add([job("ready"), job("later", run_at=NOW + 9)], NOW)
        for name in ("ready", "later", "missing"):
            for token in ("", "token-000001"):
                assert not self.complete(Lease(name, token))
                assert not self.release(Lease(name, token))
                assert storage.extend_leases([Lease(name, token)], NOW, BROKER) == [False]
        assert (self.state_of("ready"), self.state_of("later")) == (READY, SCHEDULED)
        assert storage.finish([], NOW) == []
        assert storage.extend_leases([], NOW, BROKER) == []

    def test_a_lease_named_twice_in_a_batch_acts_once(self) -> None:
        storage = self.storage
        storage.add([job("a"), job("b")], NOW)
        a, b = self.claim(["q"], 2)
        assert storage.finish([(a.held(), done(b"1")), (a.held(), done(b"2"))], NOW) == [
            True,
            False,
        ]
        assert storage.get(["a"])["a"].result == b"1"
        assert storage.extend_leases([b.held(), b.held()], LEASE + 5, BROKER) == [True, True]
        assert storage.finish([(b.held(), released()), (b.held(), released())], NOW) == [
            True,
            False,
        ]
        assert storage.get(["b"])["b"].attempts == 0

    # -- leases over time ------------------------------------------------------------

    def test_extend_leases_keeps_jobs_from_expiring_and_moves_them_to_a_broker(self) -> None:
        storage = self.storage
        storage.add([job("a"), job("b")], NOW)
        a, b = self.claim(["q"], 2)
        stale = Lease("b", "token-none")
        assert storage.extend_leases([a.held(), stale], LEASE + 100, "broker-2") == [True, False]
        a = storage.get(["a"])["a"]
        assert (a.lease_until, a.broker, a.updated_at) == (LEASE + 100, "broker-2", NOW)
        assert [j.id for j in storage.expired(LEASE + 1)] == ["b"]
        assert [j.id for j in storage.expired(LEASE + 101)] == ["b", "a"]

    def test_expired_lists_running_jobs_whose_lease_ended(self) -> None:
        storage = self.storage
        storage.add([job(x) for x in "abcd"], NOW)
        self.claim(["q"], 1, until=NOW + 20)  # a
        self.claim(["q"], 1, until=NOW + 10)  # b
        self.claim(["q"], 1, until=NOW + 30)  # c; d stays ready
        assert storage.expired(NOW + 10) == []  # a lease ending exactly now is still alive
        late = storage.expired(NOW + 25)
        assert [j.id for j in late] == ["b", "a"]
        assert all(j.state == RUNNING for j in late)
        assert late[0] == storage.get(["b"])["b"]
        assert [j.id for j in storage.expired(NOW + 100, limit=2)] == ["b", "a"]
        assert storage.expired(NOW + 100, limit=0) == []
        assert self.state_of("b") == RUNNING  # expired() only reports

    def test_running_finds_the_jobs_a_broker_handed_out(self) -> None:
        storage = self.storage
        storage.add([job(x) for x in "abc"], NOW)
        self.claim(["q"], 1, broker="broker-1")  # a
        self.claim(["q"], 1, broker="broker-2")  # b; c stays ready
        assert [j.id for j in storage.running("broker-1")] == ["a"]
        assert [j.id for j in storage.running("broker-2")] == ["b"]
        assert storage.running("broker-3") == []
        assert storage.running("broker-1", limit=0) == []
        b = storage.get(["b"])["b"]
        assert storage.extend_leases([b.held()], LEASE, "broker-1") == [True]
        assert [j.id for j in storage.running("broker-1")] == ["a", "b"]
