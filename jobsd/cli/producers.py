"""A producer's commands: each calls one ``Client`` method and prints the answer."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import sys
import time
from typing import Any

import click

from jobsd.cli import show
from jobsd.cli.options import JSON, Broker, connected, run
from jobsd.vocabulary import FINAL_STATES, MAX_BATCH, STATES


def _parse_time(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        pass
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is neither epoch seconds nor an ISO 8601 time"
        ) from None
    if moment.tzinfo is None:
        moment = moment.astimezone()
    return moment.timestamp()


def _json_arg(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint=what) from None


@click.command()
@click.argument("name")
@click.argument("args_json", default="[]")
@click.option("--kwargs", "kwargs_json", default="{}", help="Keyword arguments as a JSON object.")
@click.option("-q", "--queue", default=None)
@click.option("--priority", type=int, default=None, help="0-65535; lower runs first.")
@click.option("--delay", type=float, default=None, help="Run no sooner than this many seconds.")
@click.option("--run-at", default=None, help="Run no sooner than this time (ISO 8601 or epoch).")
@click.option("--unique-key", default=None, help="No second active job with this key.")
@click.option("--max-attempts", type=int, default=None, help="0: no limit.")
@click.option(
    "--timeout", "job_timeout", type=float, default=None, help="The job's time limit in seconds."
)
@click.option("--wait", is_flag=True, help="Wait for the job and print its result as JSON.")
@click.option("--wait-timeout", type=float, default=60.0, show_default=True)
@connected
def submit(
    name: str,
    args_json: str,
    kwargs_json: str,
    queue: str | None,
    priority: int | None,
    delay: float | None,
    run_at: str | None,
    unique_key: str | None,
    max_attempts: int | None,
    job_timeout: float | None,
    wait: bool,
    wait_timeout: float,
    broker: Broker,
) -> None:
    """Submit job NAME with ARGS_JSON (a JSON array, or one JSON value); print its id."""
    args = _json_arg(args_json, "ARGS_JSON")
    kwargs = _json_arg(kwargs_json, "--kwargs")
    if not isinstance(args, list):
        args = [args]
    if not isinstance(kwargs, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--kwargs")
    options: dict[str, Any] = {
        "queue": queue,
        "priority": priority,
        "delay": delay,
        "run_at": _parse_time(run_at) if run_at else None,
        "unique_key": unique_key,
        "max_attempts": max_attempts,
        "timeout": job_timeout,
    }
    with broker.client() as producer:
        submitted = run(lambda: producer.enqueue(name, args, kwargs, **options))
        if not submitted.created:
            click.echo(f"existing job {submitted.id} (same id or unique key)", err=True)
        if not wait:
            click.echo(submitted.id)
            return
        status = run(lambda: producer.wait(submitted.id, wait_timeout))
    if status.state == "done":
        click.echo(show.as_json(status.result))
        return
    if status.finished:
        click.echo(f"job {status.id} {status.state}: {status.error}", err=True)
        sys.exit(1)
    click.echo(f"job {status.id} still {status.state} after {wait_timeout} s", err=True)
    sys.exit(2)


@click.command()
@click.argument("job_id")
@JSON
@connected
def status(job_id: str, as_json: bool, broker: Broker) -> None:
    """Show one job: its state, attempts, result or error history."""
    with broker.client() as producer:
        found = run(lambda: producer.status(job_id, errors=True))
    if found is None:
        raise click.ClickException(f"no job {job_id}")
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(found), indent=2, default=repr))
    else:
        show.job(found)


@click.command("jobs")
@click.option("-q", "--queue", default=None)
@click.option("-s", "--state", type=click.Choice(STATES), default=None)
@click.option("-n", "--limit", type=click.IntRange(1, MAX_BATCH), default=50, show_default=True)
@click.option("--cursor", default=None, help="Read on from where a previous page ended.")
@JSON
@connected
def jobs_command(
    queue: str | None,
    state: str | None,
    limit: int,
    cursor: str | None,
    as_json: bool,
    broker: Broker,
) -> None:
    """List jobs, newest first, a page at a time."""
    with broker.client() as producer:
        found, after = run(lambda: producer.list_page(queue, state, limit, cursor))
    if as_json:
        page = {"jobs": [dataclasses.asdict(j) for j in found], "next": after}
        click.echo(json.dumps(page, indent=2, default=repr))
        return
    for job in found:
        show.job_line(job)
    if after is not None:
        click.echo(f"more: jobsd jobs --cursor {after}", err=True)


@click.command()
@JSON
@click.option(
    "--watch",
    type=float,
    default=None,
    metavar="SECONDS",
    help="Print again every SECONDS until interrupted.",
)
@connected
def stats(as_json: bool, watch: float | None, broker: Broker) -> None:
    """Counts per queue and state, and the connected workers."""
    with broker.client() as producer:
        while True:
            data = run(producer.stats)
            click.echo(show.as_json(data)) if as_json else show.stats(data)
            if watch is None:
                return
            time.sleep(watch)


@click.command()
@connected
def queues(broker: Broker) -> None:
    """Counts per state for each queue, and which are paused."""
    with broker.client() as producer:
        show.queues(run(producer.stats)["queues"])


@click.command()
@click.argument("job_id", required=False)
@click.option("--all-dead", is_flag=True, help="Retry every dead job.")
@click.option("-q", "--queue", default=None, help="With --all-dead: only this queue's.")
@connected
def retry(job_id: str | None, all_dead: bool, queue: str | None, broker: Broker) -> None:
    """Run a dead or cancelled job again (or every dead job)."""
    if bool(job_id) == all_dead:
        raise click.UsageError("give a JOB_ID or --all-dead")
    with broker.client() as producer:
        if all_dead:
            click.echo(f"{run(lambda: producer.retry_dead(queue))} job(s) retried")
        elif job_id and not run(lambda: producer.retry(job_id)):
            raise click.ClickException(
                f"job {job_id} is not dead or cancelled (or its unique key is taken)"
            )


@click.command()
@click.argument("job_ids", nargs=-1, required=True)
@connected
def delete(job_ids: tuple[str, ...], broker: Broker) -> None:
    """Delete finished jobs (done, dead or cancelled) and their history."""
    with broker.client() as producer:
        click.echo(f"{run(lambda: producer.delete(job_ids))} job(s) deleted")


@click.command()
@click.argument("job_id")
@connected
def cancel(job_id: str, broker: Broker) -> None:
    """Cancel a queued job, or ask a running one to stop."""
    with broker.client() as producer:
        if run(lambda: producer.cancel(job_id)):
            click.echo(f"cancelled {job_id}")
        else:
            click.echo(f"{job_id} is not queued: asked its worker to cancel it if it runs")


def _pausing(paused: bool, help: str) -> click.Command:
    @click.command("pause" if paused else "resume", help=help)
    @click.argument("queue")
    @connected
    def command(queue: str, broker: Broker) -> None:
        with broker.client() as producer:
            run(lambda: (producer.pause if paused else producer.resume)(queue))
        click.echo(f"{'paused' if paused else 'resumed'} {queue}")

    return command


pause = _pausing(True, "Stop dispatching jobs from QUEUE (submits are still accepted).")
resume = _pausing(False, "Dispatch jobs from QUEUE again.")


@click.command()
@click.option(
    "-s",
    "--state",
    "states",
    multiple=True,
    type=click.Choice(sorted(FINAL_STATES)),
    help="States to purge (repeatable). Default: all finished states.",
)
@click.option(
    "--older-than",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Only jobs finished more than this many seconds ago.",
)
@connected
def purge(states: tuple[str, ...], older_than: float, broker: Broker) -> None:
    """Delete finished jobs."""
    with broker.client() as producer:
        click.echo(f"{run(lambda: producer.purge(states, older_than))} job(s) purged")


COMMANDS = [
    submit,
    status,
    jobs_command,
    stats,
    queues,
    retry,
    delete,
    cancel,
    pause,
    resume,
    purge,
]
