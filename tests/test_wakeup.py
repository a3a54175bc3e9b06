"""The worker's wakeup pipe: job threads poke it, the I/O thread sleeps on it.

A lost wakeup does not fail loudly: the worker's reports wait for the next
heartbeat, and throughput falls to a trickle. This hammers the pipe from
several threads the way finished jobs do and fails on the first wait that
ends without a wakeup while outcomes are waiting.
"""

from __future__ import annotations

import queue
import select
import threading

from jobsd.workers.executor import Wakeup

THREADS = 4
POKES = 5000


def test_no_wakeup_is_lost_under_contention() -> None:
    wakeup = Wakeup()
    outcomes: queue.SimpleQueue[int] = queue.SimpleQueue()

    def finish_jobs() -> None:
        for i in range(POKES):
            outcomes.put(i)
            wakeup.poke()

    threads = [threading.Thread(target=finish_jobs) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    received = 0
    try:
        while received < THREADS * POKES:
            readable, _, _ = select.select([wakeup.read_fd], [], [], 2.0)
            if not readable:
                assert outcomes.empty(), (
                    f"lost wakeup: {outcomes.qsize()} outcome(s) waiting, pipe silent"
                )
                continue
            wakeup.drain()
            while not outcomes.empty():
                outcomes.get_nowait()
                received += 1
    finally:
        for thread in threads:
            thread.join(timeout=10)
        wakeup.close()
    assert received == THREADS * POKES
