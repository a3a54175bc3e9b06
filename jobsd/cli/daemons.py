"""The long-running programs: ``jobsd serve`` (the broker), ``jobsd worker``,
and ``jobsd migrate``. Each parses its options into its program's settings
and runs it; the programs themselves live in ``jobsd.broker`` and
``jobsd.workers``."""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable

import click

from jobsd.broker.config import BrokerConfig
from jobsd.cli.options import ENDPOINT, KEY, SERVER_KEY, F, heartbeat_options
from jobsd.keys import local_only
from jobsd.process import on_stop_signals

log = logging.getLogger("jobsd.serve")

_BROKER = BrokerConfig()


def _keep_option(state: str, default: float | None) -> Callable[[F], F]:
    return click.option(
        f"--keep-{state}",
        type=float,
        default=-1.0 if default is None else default,
        show_default=True,
        help=f"Seconds to keep {state} jobs and their results (negative: forever).",
    )


def _limit_option(what: str, text: str) -> Callable[[F], F]:
    """A ``--max-WHAT`` bound of the broker, its default from ``BrokerConfig``
    (whose own check says which values cannot work)."""
    return click.option(
        f"--max-{what}",
        type=int,
        default=getattr(_BROKER, f"max_{what}"),
        show_default=True,
        help=text,
    )


@click.command()
@click.option(
    "--bind",
    envvar="JOBSD_ENDPOINT",
    default="tcp://127.0.0.1:7465",
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
@heartbeat_options(
    heartbeat="Seconds between heartbeats with workers.",
    liveness="Missed heartbeats before a worker is declared lost.",
)
@click.option(
    "--lease",
    type=click.FloatRange(min=0.1),
    default=_BROKER.lease,
    show_default=True,
    help="Seconds a claimed job's lease lasts unless its worker's heartbeats extend it.",
)
@_keep_option("done", _BROKER.keep_done)
@_keep_option("dead", _BROKER.keep_dead)
@_keep_option("cancelled", _BROKER.keep_cancelled)
@click.option(
    "--retention-interval",
    type=click.FloatRange(min=0.001),
    default=_BROKER.retention_interval,
    show_default=True,
    help="Seconds between retention sweeps.",
)
@click.option(
    "--name",
    default="",
    help="The broker's name in storage, the same across restarts "
    "[default: the host and the endpoint bound].",
)
@_limit_option("payload", "The largest args or result of one job, in bytes.")
@_limit_option("workers", "Worker connections registered at once, at most.")
@_limit_option("waiters", "Producers blocked in WAIT (Client.result) at once, at most.")
@click.option(
    "--keys",
    "keys_dir",
    envvar="JOBSD_KEYS",
    type=click.Path(file_okay=False, exists=True),
    default=None,
    help="Serve with CURVE: DIR/broker.key_secret, and the public keys let in from "
    "DIR/producers, DIR/workers, DIR/observers and DIR/admins (reread on SIGHUP).",
)
@click.option(
    "--insecure",
    is_flag=True,
    help="Allow a non-loopback bind without --keys (anyone who reaches it owns it).",
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
    name: str,
    max_payload: int,
    max_workers: int,
    max_waiters: int,
    keys_dir: str | None,
    insecure: bool,
) -> None:
    """Run the broker: it owns the storage and pushes jobs to workers."""
    import zmq

    from jobsd.broker import Broker
    from jobsd.keys import KeyFileError, KeyRing
    from jobsd.storage import DEFAULT_URL, StorageError, open_storage

    if keys_dir is None and not insecure and not local_only(bind):
        raise click.ClickException(
            f"{bind} is reachable from other hosts, and without keys anyone who reaches it "
            "may submit, read and take every job. Make keys (jobsd keygen --dir keys broker, "
            "then a key per program: see `jobsd keygen --help`) and serve with --keys keys, "
            "or say --insecure on a network you trust."
        )
    try:
        keys = None if keys_dir is None else KeyRing(keys_dir)
    except KeyFileError as exc:
        raise click.ClickException(str(exc)) from None

    config = BrokerConfig(
        heartbeat=heartbeat,
        liveness=liveness,
        lease=lease,
        keep_done=None if keep_done < 0 else keep_done,
        keep_dead=None if keep_dead < 0 else keep_dead,
        keep_cancelled=None if keep_cancelled < 0 else keep_cancelled,
        retention_interval=retention_interval,
        name=name,
        max_payload=max_payload,
        max_workers=max_workers,
        max_waiters=max_waiters,
    )
    try:
        config.validate()
        store = open_storage(storage or DEFAULT_URL)
    except (ValueError, StorageError) as exc:
        raise click.ClickException(str(exc)) from None
    broker = Broker(store, bind, config, keys=keys)
    try:
        broker.bind()
    except zmq.ZMQError as exc:  # a malformed endpoint, or a port already taken
        store.close()
        raise click.ClickException(f"cannot bind {bind}: {exc}") from None
    on_stop_signals(broker.stop, lambda: os._exit(1))
    if keys is None:
        if not local_only(bind):
            log.warning("serving %s WITHOUT KEYS (--insecure): anyone who reaches it owns it", bind)
    else:
        signal.signal(signal.SIGHUP, lambda signum, frame: keys.reload())
    try:
        broker.run()
    finally:
        store.close()


@click.command()
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


@click.command()
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
@heartbeat_options(
    heartbeat="Seconds between heartbeats to the broker, until it says its own.",
    liveness="Broker heartbeats missed before the worker reconnects, likewise.",
)
@click.option(
    "--grace",
    type=float,
    default=30.0,
    show_default=True,
    help="Seconds running jobs get to finish after SIGTERM.",
)
@SERVER_KEY
@KEY
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
    server_key: str | None,
    key: str | None,
) -> None:
    """Run the jobs of APP (module:attribute of a Registry; attribute defaults to `jobs`)."""
    from jobsd.keys import ClientKeys, KeyFileError
    from jobsd.workers.runtime import WorkerConfig
    from jobsd.workers.supervisor import AppNotFound, load_registry, run_worker, supervise

    try:
        registry = load_registry(app)
        ClientKeys.load(server_key, key)  # a bad key file: said now, not by every process
    except (AppNotFound, KeyFileError) as exc:
        raise click.ClickException(str(exc)) from None
    config = WorkerConfig(
        endpoint=endpoint,
        queues=queues or tuple(registry.queues()),
        concurrency=concurrency,
        heartbeat=heartbeat,
        liveness=liveness,
        grace=grace,
        prefetch=concurrency if prefetch is None else prefetch,
        server_key=server_key,
        key=key,
    )
    if processes > 1:
        sys.exit(supervise(app, config, processes, logging.getLogger().getEffectiveLevel()))
    run_worker(registry, config)
