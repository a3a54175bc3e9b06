"""Options several commands share, each defined once."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import click

from jobsd.broker.config import BrokerConfig
from jobsd.client import DEFAULT_ENDPOINT, Client
from jobsd.errors import JobsdError

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

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


def heartbeat_options(*, heartbeat: str, liveness: str) -> Callable[[F], F]:
    """``--heartbeat`` and ``--liveness``, the same limits and defaults (the
    broker's) on both programs: a zero heartbeat would spin the loops."""
    defaults = BrokerConfig()

    def decorate(command: F) -> F:
        command = click.option(
            "--liveness",
            type=click.IntRange(min=1),
            default=defaults.liveness,
            show_default=True,
            help=liveness,
        )(command)
        return click.option(
            "--heartbeat",
            type=click.FloatRange(min=0.01),
            default=defaults.heartbeat,
            show_default=True,
            help=heartbeat,
        )(command)

    return decorate


SERVER_KEY = click.option(
    "--server-key",
    envvar="JOBSD_SERVER_KEY",
    type=click.Path(dir_okay=False),
    default=None,
    help="The broker's public key file (keys/broker.key), for a broker run with --keys.",
)
KEY = click.option(
    "--key",
    envvar="JOBSD_KEY",
    type=click.Path(dir_okay=False),
    default=None,
    help="This program's secret key file (NAME.key_secret), for a broker run with --keys.",
)


@dataclass(frozen=True)
class Broker:
    """The broker a command talks to, from its four options."""

    endpoint: str
    timeout: float
    server_key: str | None
    key: str | None

    def client(self) -> Client:
        return run(
            lambda: Client(
                self.endpoint, timeout=self.timeout, server_key=self.server_key, key=self.key
            )
        )


def connected(command: F) -> F:
    """``--connect``, ``--request-timeout``, ``--server-key`` and ``--key``,
    given to the command as one ``broker``."""

    @functools.wraps(command)
    def wrapper(
        *args: Any,
        endpoint: str,
        request_timeout: float,
        server_key: str | None,
        key: str | None,
        **kwargs: Any,
    ) -> Any:
        return command(*args, broker=Broker(endpoint, request_timeout, server_key, key), **kwargs)

    return cast(F, ENDPOINT(TIMEOUT(SERVER_KEY(KEY(wrapper)))))


def run(action: Callable[[], T]) -> T:
    """Call the client; a jobsd error is the command's clear error."""
    try:
        return action()
    except JobsdError as exc:
        raise click.ClickException(str(exc)) from None
    except ValueError as exc:  # an option out of range, said by the protocol's one check
        raise click.UsageError(str(exc)) from None
