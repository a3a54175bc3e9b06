"""How the producer commands print what the broker answers."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import click

from jobsd.protocol.producer import JobStatus
from jobsd.vocabulary import STATES


def when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts).isoformat(timespec="milliseconds")


def as_json(value: Any) -> str:
    return json.dumps(value, default=repr)


def job(status: JobStatus) -> None:
    click.echo(f"{status.id}  {status.name}  queue={status.queue}  state={status.state}")
    click.echo(
        f"  attempts {status.attempts}/{status.max_attempts or 'unlimited'}  "
        f"priority {status.priority}  run_at {when(status.run_at)}"
    )
    click.echo(f"  args {as_json(list(status.args))}  kwargs {as_json(status.kwargs)}")
    if status.worker:
        click.echo(f"  worker {status.worker}")
    if status.state == "done":
        click.echo(f"  result {as_json(status.result)}")
    for err in status.errors:
        click.echo(f"  attempt {err['attempt']} failed at {when(err['at'])}:")
        click.echo("    " + err["error"].replace("\n", "\n    "))


def job_line(status: JobStatus) -> None:
    click.echo(
        f"{status.id}  {status.state:<9}  {status.queue:<12}  {status.name}  "
        f"attempts={status.attempts}  {when(status.updated_at)}"
    )


def queues(info: dict[str, Any]) -> None:
    click.echo(f"{'queue':<16}" + "".join(f"{s:>11}" for s in STATES) + "  paused")
    for name, queue in info.items():
        counts = queue["counts"]
        click.echo(
            f"{name:<16}"
            + "".join(f"{counts.get(s, 0):>11}" for s in STATES)
            + ("  yes" if queue["paused"] else "")
        )


def stats(data: dict[str, Any]) -> None:
    queues(data["queues"])
    click.echo(
        f"\n{len(data['workers'])} worker(s); stale reports ignored: {data['stale_reports']}"
    )
    for w in data["workers"]:
        click.echo(
            f"  {w['id']}  queues={','.join(w['queues'])}  "
            f"running {w['running']}/{w['capacity']}" + ("  stopping" if w["draining"] else "")
        )
