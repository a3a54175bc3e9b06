"""Cron schedules in the broker: refused or adopted, firing without ever
raising, once after a long sleep, and only while a worker declares them."""

from __future__ import annotations

import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobsd.broker.cron import CronTable
from jobsd.protocol.framing import ProtocolError
from jobsd.protocol.worker import Schedule
from tests.fuzzing import ARGS, FUZZ, HOSTILE_CRON

cron_fields = st.sampled_from(["*", "0", "1", "59", "*/7", "1-5", "30", "31", "2", "1970", "2027"])
cron_expressions = st.one_of(
    st.sampled_from(HOSTILE_CRON),
    st.lists(cron_fields, min_size=5, max_size=7).map(" ".join),
    st.text(max_size=40),
)
#: Around the ends of years, where schedules with a year field run out.
YEAR_ENDS = [
    datetime.datetime(year, 12, 31, 23, 58, tzinfo=datetime.timezone.utc).timestamp()
    for year in (1970, 2026, 2027)
]


@settings(FUZZ, max_examples=300)
@given(
    cron=cron_expressions,
    start=st.builds(float.__add__, st.sampled_from(YEAR_ENDS), st.floats(-86400, 86400)),
    steps=st.lists(st.floats(0, 600), min_size=1, max_size=4),
)
def test_schedules_refuse_or_fire_but_never_raise(
    cron: str, start: float, steps: list[float]
) -> None:
    """A worker's schedule is refused (invalid) or adopted; then the broker's
    timer asks for due fires as time passes: it never raises (an exception
    there would stop the broker), even once the schedule has no fire left."""
    table = CronTable()
    try:
        table.add([Schedule(cron, "tick", ARGS, None)], start)
    except ProtocolError:
        return
    now = start
    for step in steps:
        now += step
        for fire in table.due(now):
            assert (
                fire.options is not None
                and fire.options.run_at is not None
                and fire.options.run_at <= now
            )
        upcoming = table.next_fire()
        assert upcoming is None or upcoming > now


@pytest.mark.parametrize(
    ("cron", "gap", "expected_latest"),
    [
        ("* * * * * *", 7 * 86400.0 + 0.5, 7 * 86400.0),  # every second, a week asleep
        ("*/5 * * * *", 3 * 3600.0 + 60.0, 3 * 3600.0),  # every 5 minutes
        ("0 0 1 1 *", 400 * 86400.0, 365 * 86400.0),  # yearly: the latest New Year
    ],
)
def test_a_broker_that_slept_through_many_fires_runs_the_latest_once(
    cron: str, gap: float, expected_latest: float
) -> None:
    """One fire, the latest, whatever the gap; found without stepping through
    every missed fire (a week of a per-second schedule took seconds)."""
    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc).timestamp()
    table = CronTable()
    table.add([Schedule(cron, "tick", ARGS, None)], start - 0.5)
    (fire,) = table.due(start + gap)
    assert fire.options is not None and fire.options.run_at == start + expected_latest
    assert fire.id.endswith(f"-{int(start + expected_latest)}")
    upcoming = table.next_fire()
    assert upcoming is not None and upcoming > start + gap
    assert table.due(start + gap) == []  # once


def test_a_schedule_fires_while_some_worker_declares_it() -> None:
    """A schedule lives while a connected worker session declares it: it
    stops when the last one that declared it ends."""
    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc).timestamp()
    every_second = Schedule("* * * * * *", "tick", ARGS, None)
    table = CronTable()
    table.add([every_second], start, by=b"worker-1")
    table.add([every_second], start, by=b"worker-2")
    assert len(table) == 1
    table.forget(b"worker-1")
    assert [f.name for f in table.due(start + 1.5)] == ["tick"]
    table.forget(b"worker-2")
    assert len(table) == 0 and table.next_fire() is None
    assert table.due(start + 10) == []
    table.forget(b"never-declared")  # nothing to forget: no error
