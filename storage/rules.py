"""A job's state rules, written once: every backend applies them, none decides them.

Where a job goes is a ``Transition``, made by one of the constructors below
from what happened (an attempt done, failed, handed back, rescheduled; an
operator's cancel or retry). A backend applies a transition to a job that is
still where the rule says it must be (running under the reported lease, or
in one of the states a move accepts) and changes nothing otherwise. The
unique-key rule follows from the states: a job holds its key while it is
active; leaving the active states frees it, and entering them again takes it
back, which is refused while another active job holds it.
"""

from __future__ import annotations

from dataclasses import dataclass

from jobsd.vocabulary import ACTIVE_STATES, CANCELLED, DEAD, DONE, FINAL_STATES, READY, SCHEDULED

#: What a transition does to the job's attempt count.
KEEP = "keep"
RESET = "reset"  # a fresh job: no attempt made yet
GIVE_BACK = "give_back"  # the attempt never started: it does not count


@dataclass(slots=True)  # per job: see the note on mutable records in records.py
class Transition:
    """Where a job goes. ``run_at`` None keeps its place in the queue;
    ``error`` is recorded as the job's last error and in its history, under
    the attempt it ends; ``clear_error`` forgets the last error."""

    state: str
    run_at: float | None = None
    result: bytes | None = None
    error: str | None = None
    attempts: str = KEEP
    clear_error: bool = False

    @property
    def keeps_key(self) -> bool:
        return self.state in ACTIVE_STATES


def waiting(run_at: float, now: float) -> str:
    return READY if run_at <= now else SCHEDULED


# -- the end of an attempt (fenced by the job's lease) ---------------------------------


def done(result: bytes | None) -> Transition:
    return Transition(DONE, result=result)


def again(run_at: float, now: float, error: str) -> Transition:
    """A failed attempt with attempts left: run again at ``run_at``."""
    return Transition(waiting(run_at, now), run_at, error=error)


def ended(state: str, error: str) -> Transition:
    """A failed attempt that ends the job: dead (attempts spent, or no point
    retrying) or cancelled (its handler honoured a cancel)."""
    if state not in (DEAD, CANCELLED):
        raise ValueError(f"an attempt ends a job as dead or cancelled, not {state}")
    return Transition(state, error=error)


def rescheduled(run_at: float, now: float) -> Transition:
    """A successful attempt that asks for another run: a fresh job at ``run_at``."""
    return Transition(waiting(run_at, now), run_at, attempts=RESET, clear_error=True)


def released() -> Transition:
    """A job handed back unstarted: ready again in its place, the attempt not counted."""
    return Transition(READY, attempts=GIVE_BACK)


# -- an operator's moves (fenced by the job's state) ----------------------------------

#: What cancel accepts: a running job is cancelled by its worker instead.
CANCELLABLE = frozenset({SCHEDULED, READY})
RETRYABLE = frozenset({DEAD, CANCELLED})
#: What delete and purge accept: an active job is never deleted.
DELETABLE = FINAL_STATES


def cancelled() -> Transition:
    return Transition(CANCELLED)


def retried(now: float) -> Transition:
    """Run again from the start, behind the jobs already ready; the last
    error stays for inspection."""
    return Transition(READY, now, attempts=RESET)
