"""The ``jobsd`` command line: the broker, workers, and a producer's tools.

Commands parse options and call the library; they hold no job semantics.
Every option that names the broker or storage can come from the environment
(``JOBSD_ENDPOINT``, ``JOBSD_STORAGE``, ``JOBSD_LOG_LEVEL``...).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import click

from jobsd.client import DEFAULT_ENDPOINT, Client
from jobsd.errors import JobsdError

ENDPOINT = click.option(
    "--connect",
    "endpoint",
    envvar="JOBSD_ENDPOINT",
    default=DEFAULT_ENDPOINT,
    show_default=True,
    help="The broker's endpoint.",
)
TIMEOUT = click.option(
    "--request-timeout",
    type=float,
    default=5.0,
    show_default=True,
    help="Seconds to wait for each reply before retrying.",
)
JSON = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--log-level",
    envvar="JOBSD_LOG_LEVEL",
    default="INFO",
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
)
@click.version_option(package_name="jobsd")
def main(log_level: str) -> None:
    """jobsd: a job processor daemon. Start a broker with `jobsd serve`, workers
    with `jobsd worker app.jobs:registry`, and submit with `jobsd submit`."""
    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
    )


# -- the broker -----------------------------------------------------------------


def _heartbeat_options(
    *, heartbeat: str, liveness: str
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--heartbeat`` and ``--liveness``, the same limits on both programs: a
    zero heartbeat would spin the loops."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        command = click.option(
            "--liveness", type=click.IntRange(min=1), default=3, show_default=True, help=liveness
        )(command)
        return click.option(
            "--heartbeat",
            type=click.FloatRange(min=0.01),
            default=1.0,
            show_default=True,
            help=heartbeat,
        )(command)

    return decorate


def _keep_option(state: str, days: int) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option(
        f"--keep-{state}",
        type=float,
        default=days * 86400.0,
        show_default=True,
        help=f"Seconds to keep {state} jobs and their results (negative: forever).",
    )


@main.command()
@click.option(
    "--bind",
    envvar="JOBSD_ENDPOINT",
    default=DEFAULT_ENDPOINT,
    show_default=True,
    help="Endpoint to bind the broker's socket on.",
)
@click.option(
    "--storage",
    envvar="JOBSD_STORAGE",
    default=None,
    help="Storage URL: memory://, sqlite:///path, postgresql://..., mysql+pymysql://... "
    "[default: sqlite:///jobsd.sqlite3]",
)
@_heartbeat_options(
    heartbeat="Seconds between heartbeats with workers.",
    liveness="Missed heartbeats before a worker is declared lost.",
)
@click.option(
    "--lease",
    type=click.FloatRange(min=0.1),
    default=30.0,
    show_default=True,
    help="Seconds a claimed job's lease lasts unless its worker's heartbeats extend it.",
)
@_keep_option("done", days=7)
@_keep_option("dead", days=30)
@_keep_option("cancelled", days=7)
@click.option(
    "--retention-interval",
    type=float,
    default=60.0,
    show_default=True,
    help="Seconds between retention sweeps.",
)
def serve(
    bind: str,
    storage: str | None,
    heartbeat: float,
    liveness: int,
    lease: float,
    keep_done: float,
    keep_dead: float,
    keep_cancelled: float,
    retention_interval: float,
) -> None:
    """Run the broker: it owns the storage and pushes jobs to workers."""
    import zmq

    from jobsd.broker import Broker, BrokerConfig
    from jobsd.storage import DEFAULT_URL, StorageError, open_storage

    try:
        store = open_storage(storage or DEFAULT_URL)
    except (ValueError, StorageError) as exc:
        raise click.ClickException(str(exc)) from None
    config = BrokerConfig(
        heartbeat=heartbeat,
        liveness=liveness,
        lease=lease,
        keep_done=None if keep_done < 0 else keep_done,
        keep_dead=None if keep_dead < 0 else keep_dead,
        keep_cancelled=None if keep_cancelled < 0 else keep_cancelled,
        retention_interval=retention_interval,
    )
    broker = Broker(store, bind, config)
    try:
        broker.bind()
    except zmq.ZMQError as exc:  # a malformed endpoint, or a port already taken
        store.close()
        raise click.ClickException(f"cannot bind {bind}: {exc}") from None
    _on_stop_signals(broker.stop, lambda: os._exit(1))
    try:
        broker.run()
    finally:
        store.close()


@main.command()
@click.argument("url", envvar="JOBSD_STORAGE")
def migrate(url: str) -> None:
    """Create or upgrade the schema of the SQL storage at URL."""
    from jobsd.storage import StorageError
    from jobsd.storage.sql import SQLStorage

    try:
        store = SQLStorage(url, create=False)
        before, after = store.migrate()
        store.close()
    except (ValueError, StorageError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"schema at version {after}" + (f" (was {before})" if before != after else ""))


# -- workers --------------------------------------------------------------------


@main.command()
@click.argument("app")
@ENDPOINT
@click.option(
    "-q",
    "--queue",
    "queues",
    multiple=True,
    help="A queue to serve (repeatable). Default: the queues the app's jobs name.",
)
@click.option(
    "-c",
    "--concurrency",
    type=click.IntRange(1, 10_000),
    default=8,
    show_default=True,
    help="Jobs run at once by each process.",
)
@click.option(
    "-p",
    "--processes",
    type=click.IntRange(1, 1024),
    default=1,
    show_default=True,
    help="Worker processes, each with its own application state.",
)
@click.option(
    "--prefetch",
    type=click.IntRange(0, 100_000),
    default=None,
    help="Jobs held beyond those running, so a freed thread starts the next at once "
    "[default: the concurrency].",
)
@_heartbeat_options(
    heartbeat="Seconds between heartbeats to the broker.",
    liveness="Broker heartbeats missed before the worker reconnects.",
)
@click.option(
    "--grace",
    type=float,
    default=30.0,
    show_default=True,
    help="Seconds running jobs get to finish after SIGTERM.",
)
def worker(
    app: str,
    endpoint: str,
    queues: tuple[str, ...],
    concurrency: int,
    processes: int,
    prefetch: int | None,
    heartbeat: float,
    liveness: int,
    grace: float,
) -> None:
    """Run the jobs of APP (module:attribute of a Registry; attribute defaults to `jobs`)."""
    registry = load_registry(app)
    if processes > 1:
        sys.exit(_supervise(processes))
    from jobsd.workers.runtime import Worker, WorkerConfig

    config = WorkerConfig(
        endpoint=endpoint,
        queues=queues or tuple(registry.queues()),
        concurrency=concurrency,
        heartbeat=heartbeat,
        liveness=liveness,
        grace=grace,
        prefetch=concurrency if prefetch is None else prefetch,
    )
    runner = Worker(registry, config)
    _on_stop_signals(runner.stop, runner.stop)
    runner.run()


def load_registry(app: str) -> Any:
    """Import ``module[:attribute]`` (from the working directory too, as
    users run workers next to their code) and check it is a Registry."""
    from jobsd.workers.registry import Registry

    module_name, _, attr = app.partition(":")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise click.ClickException(f"cannot import {module_name!r}: {exc}") from None
    registry = getattr(module, attr or "jobs", None)
    if not isinstance(registry, Registry):
        raise click.ClickException(
            f"{module_name}:{attr or 'jobs'} is not a jobsd Registry "
            f"(declare `jobs = jobsd.Registry()` and decorate functions with @jobs.job())"
        )
    return registry


def _supervise(processes: int) -> int:
    """Run N single-process workers (fresh interpreters: nothing crosses a
    fork) and restart any that dies unexpectedly, until a stop signal."""
    argv = [sys.executable, "-m", "jobsd", *_without_processes(sys.argv[1:])]
    children = [subprocess.Popen(argv) for _ in range(processes)]
    stopping = []

    def stop() -> None:
        stopping.append(True)
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    _on_stop_signals(stop, stop)
    while True:
        for i, child in enumerate(children):
            code = child.poll()
            if code is None:
                continue
            if stopping:
                continue
            logging.getLogger("jobsd.worker").error(
                "worker process %d exited with %s: starting another", child.pid, code
            )
            time.sleep(1.0)
            children[i] = subprocess.Popen(argv)
        if stopping and all(child.poll() is not None for child in children):
            return max(abs(child.returncode or 0) for child in children) and 1
        time.sleep(0.1)


def _without_processes(args: list[str]) -> list[str]:
    out: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg in ("-p", "--processes"):
            skip = True
            continue
        if arg.startswith("--processes="):
            continue
        out.append(arg)
    return out


def _on_stop_signals(first: Callable[[], None], again: Callable[[], None]) -> None:
    """SIGTERM or SIGINT once: graceful stop; a second time: at once."""
    calls = []

    def handler(signum: int, frame: Any) -> None:
        calls.append(signum)
        (first if len(calls) == 1 else again)()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


# -- producers ------------------------------------------------------------------


def _client(endpoint: str, request_timeout: float) -> Client:
    return Client(endpoint, timeout=request_timeout)


def _run(action: Callable[[], Any]) -> Any:
    try:
        return action()
    except JobsdError as exc:
        raise click.ClickException(str(exc)) from None


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


@main.command()
@click.argument("name")
@click.argument("args_json", default="[]")
@click.option("--kwargs", "kwargs_json", default="{}", help="Keyword arguments as a JSON object.")
@click.option("-q", "--queue", default=None)
@click.option("--priority", type=click.IntRange(0, 65535), default=None, help="Lower runs first.")
@click.option("--delay", type=float, default=None, help="Run no sooner than this many seconds.")
@click.option("--run-at", default=None, help="Run no sooner than this time (ISO 8601 or epoch).")
@click.option("--unique-key", default=None, help="No second active job with this key.")
@click.option("--max-attempts", type=click.IntRange(0), default=None, help="0: no limit.")
@click.option(
    "--timeout", "job_timeout", type=float, default=None, help="The job's time limit in seconds."
)
@click.option("--wait", is_flag=True, help="Wait for the job and print its result as JSON.")
@click.option("--wait-timeout", type=float, default=60.0, show_default=True)
@ENDPOINT
@TIMEOUT
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
    endpoint: str,
    request_timeout: float,
) -> None:
    """Submit job NAME with ARGS_JSON (a JSON array, or one JSON value); print its id."""
    args = _json_arg(args_json, "ARGS_JSON")
    kwargs = _json_arg(kwargs_json, "--kwargs")
    if not isinstance(args, list):
        args = [args]
    if not isinstance(kwargs, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--kwargs")
    with _client(endpoint, request_timeout) as client:
        submitted = _run(
            lambda: client.enqueue(
                name,
                args,
                kwargs,
                queue=queue,
                priority=priority,
                delay=delay,
                run_at=_parse_time(run_at) if run_at else None,
                unique_key=unique_key,
                max_attempts=max_attempts,
                timeout=job_timeout,
            )
        )
        if not submitted.created:
            click.echo(f"existing job {submitted.id} (same id or unique key)", err=True)
        if not wait:
            click.echo(submitted.id)
            return
        status = _run(lambda: client.wait(submitted.id, wait_timeout))
    if status.state == "done":
        click.echo(json.dumps(status.result, default=repr))
        return
    if status.finished:
        click.echo(f"job {status.id} {status.state}: {status.error}", err=True)
        sys.exit(1)
    click.echo(f"job {status.id} still {status.state} after {wait_timeout} s", err=True)
    sys.exit(2)


def _json_arg(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint=what) from None


@main.command()
@click.argument("job_id")
@JSON
@ENDPOINT
@TIMEOUT
def status(job_id: str, as_json: bool, endpoint: str, request_timeout: float) -> None:
    """Show one job: its state, attempts, result or error history."""
    with _client(endpoint, request_timeout) as client:
        job = _run(lambda: client.status(job_id, errors=True))
    if job is None:
        raise click.ClickException(f"no job {job_id}")
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(job), indent=2, default=repr))
        return
    click.echo(f"{job.id}  {job.name}  queue={job.queue}  state={job.state}")
    click.echo(
        f"  attempts {job.attempts}/{job.max_attempts or 'unlimited'}  "
        f"priority {job.priority}  run_at {_when(job.run_at)}"
    )
    click.echo(
        f"  args {json.dumps(list(job.args), default=repr)}  "
        f"kwargs {json.dumps(job.kwargs, default=repr)}"
    )
    if job.state == "done":
        click.echo(f"  result {json.dumps(job.result, default=repr)}")
    for err in job.errors:
        click.echo(f"  attempt {err['attempt']} failed at {_when(err['at'])}:")
        click.echo("    " + err["error"].replace("\n", "\n    "))


@main.command("jobs")
@click.option("-q", "--queue", default=None)
@click.option("-s", "--state", default=None)
@click.option("-n", "--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@JSON
@ENDPOINT
@TIMEOUT
def jobs_command(
    queue: str | None,
    state: str | None,
    limit: int,
    as_json: bool,
    endpoint: str,
    request_timeout: float,
) -> None:
    """List jobs, newest first."""
    with _client(endpoint, request_timeout) as client:
        found = _run(lambda: client.list_jobs(queue, state, limit))
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(j) for j in found], indent=2, default=repr))
        return
    for job in found:
        click.echo(
            f"{job.id}  {job.state:<9}  {job.queue:<12}  {job.name}  "
            f"attempts={job.attempts}  {_when(job.updated_at)}"
        )


@main.command()
@JSON
@click.option(
    "--watch",
    type=float,
    default=None,
    metavar="SECONDS",
    help="Print again every SECONDS until interrupted.",
)
@ENDPOINT
@TIMEOUT
def stats(as_json: bool, watch: float | None, endpoint: str, request_timeout: float) -> None:
    """Counts per queue and state, and the connected workers."""
    with _client(endpoint, request_timeout) as client:
        while True:
            data = _run(client.stats)
            if as_json:
                click.echo(json.dumps(data, default=repr))
            else:
                _print_stats(data)
            if watch is None:
                return
            time.sleep(watch)


@main.command()
@ENDPOINT
@TIMEOUT
def queues(endpoint: str, request_timeout: float) -> None:
    """Counts per state for each queue, and which are paused."""
    with _client(endpoint, request_timeout) as client:
        _print_queues(_run(client.stats)["queues"])


def _print_queues(queues_: dict[str, Any]) -> None:
    from jobsd.storage import STATES

    click.echo(f"{'queue':<16}" + "".join(f"{s:>11}" for s in STATES) + "  paused")
    for name, info in queues_.items():
        counts = info["counts"]
        click.echo(
            f"{name:<16}"
            + "".join(f"{counts.get(s, 0):>11}" for s in STATES)
            + ("  yes" if info["paused"] else "")
        )


def _print_stats(data: dict[str, Any]) -> None:
    _print_queues(data["queues"])
    click.echo(
        f"\n{len(data['workers'])} worker(s); stale reports ignored: {data['stale_reports']}"
    )
    for w in data["workers"]:
        click.echo(
            f"  {w['id']}  queues={','.join(w['queues'])}  "
            f"running {w['running']}/{w['capacity']}" + ("  stopping" if w["draining"] else "")
        )


@main.command()
@click.argument("job_id", required=False)
@click.option("--all-dead", is_flag=True, help="Retry every dead job.")
@click.option("-q", "--queue", default=None, help="With --all-dead: only this queue's.")
@ENDPOINT
@TIMEOUT
def retry(
    job_id: str | None, all_dead: bool, queue: str | None, endpoint: str, request_timeout: float
) -> None:
    """Run a dead or cancelled job again (or every dead job)."""
    if bool(job_id) == all_dead:
        raise click.UsageError("give a JOB_ID or --all-dead")
    with _client(endpoint, request_timeout) as client:
        if all_dead:
            click.echo(f"{_run(lambda: client.retry_dead(queue))} job(s) retried")
        elif job_id and not _run(lambda: client.retry(job_id)):
            raise click.ClickException(
                f"job {job_id} is not dead or cancelled (or its unique key is taken)"
            )


@main.command()
@click.argument("job_ids", nargs=-1, required=True)
@ENDPOINT
@TIMEOUT
def delete(job_ids: tuple[str, ...], endpoint: str, request_timeout: float) -> None:
    """Delete finished jobs (done, dead or cancelled) and their history."""
    with _client(endpoint, request_timeout) as client:
        click.echo(f"{_run(lambda: client.delete(job_ids))} job(s) deleted")


@main.command()
@click.argument("job_id")
@ENDPOINT
@TIMEOUT
def cancel(job_id: str, endpoint: str, request_timeout: float) -> None:
    """Cancel a queued job, or ask a running one to stop."""
    with _client(endpoint, request_timeout) as client:
        if _run(lambda: client.cancel(job_id)):
            click.echo(f"cancelled {job_id}")
        else:
            click.echo(f"{job_id} is not queued: asked its worker to cancel it if it runs")


@main.command()
@click.argument("queue")
@ENDPOINT
@TIMEOUT
def pause(queue: str, endpoint: str, request_timeout: float) -> None:
    """Stop dispatching jobs from QUEUE (submits are still accepted)."""
    with _client(endpoint, request_timeout) as client:
        _run(lambda: client.pause(queue))
    click.echo(f"paused {queue}")


@main.command()
@click.argument("queue")
@ENDPOINT
@TIMEOUT
def resume(queue: str, endpoint: str, request_timeout: float) -> None:
    """Dispatch jobs from QUEUE again."""
    with _client(endpoint, request_timeout) as client:
        _run(lambda: client.resume(queue))
    click.echo(f"resumed {queue}")


@main.command()
@click.option(
    "-s",
    "--state",
    "states",
    multiple=True,
    type=click.Choice(["done", "dead", "cancelled"]),
    help="States to purge (repeatable). Default: all finished states.",
)
@click.option(
    "--older-than",
    type=float,
    default=0.0,
    show_default=True,
    help="Only jobs finished more than this many seconds ago.",
)
@ENDPOINT
@TIMEOUT
def purge(
    states: tuple[str, ...], older_than: float, endpoint: str, request_timeout: float
) -> None:
    """Delete finished jobs."""
    with _client(endpoint, request_timeout) as client:
        click.echo(f"{_run(lambda: client.purge(states, older_than))} job(s) purged")


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts).isoformat(timespec="milliseconds")
