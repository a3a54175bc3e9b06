"""A worker's outbox: reports numbered, kept until confirmed, and sent in
messages that stay under the broker's frame limit."""

from __future__ import annotations

from typing import Any

from jobsd.protocol.framing import ACK, RELEASE, pack
from jobsd.protocol.worker import MAX_RESULT_BYTES, Ack
from jobsd.vocabulary import MAX_BATCH, MAX_MESSAGE_BYTES
from jobsd.workers.outbox import Outbox


def test_large_results_go_in_messages_under_the_frame_limit() -> None:
    sent: list[tuple[bytes, dict[str, Any]]] = []
    outbox = Outbox()
    results = [Ack(f"j{i}", f"l{i}", b"x" * (20 << 20)) for i in range(7)]  # 140 MiB in all
    outbox.acks(results, lambda command, body: sent.append((command, body)))
    assert len(sent) >= 3
    assert all(len(pack(body)) <= MAX_MESSAGE_BYTES for _, body in sent)
    assert [item[0] for _, body in sent for item in body["acks"]] == [a.job_id for a in results]
    assert MAX_RESULT_BYTES < MAX_MESSAGE_BYTES


def test_reports_are_kept_until_confirmed_and_their_leases_told_in_hello() -> None:
    outbox = Outbox()
    outbox.acks([Ack("a", "la")], None)  # not registered: kept, not sent
    outbox.releases([("b", "lb")] * (MAX_BATCH + 1), None)
    assert len(outbox) == 3  # one ACK, the RELEASE in two batches
    assert ("a", "la") in outbox.leases() and ("b", "lb") in outbox.leases()
    for command, body in outbox.unconfirmed():
        assert command in (ACK, RELEASE)
        outbox.confirmed({"seq": body["seq"]})
    assert len(outbox) == 0 and outbox.leases() == []
