"""Options several commands share, each defined once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from jobsd.client import DEFAULT_ENDPOINT, Client
from jobsd.errors import JobsdError

F = TypeVar("F", bound=Callable[..., Any])

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


def heartbeat_options(
    *, heartbeat: str, liveness: str, default: float, beats: int
) -> Callable[[F], F]:
    """``--heartbeat`` and ``--liveness``, the same limits on both programs: a
    zero heartbeat would spin the loops."""

    def decorate(command: F) -> F:
        command = click.option(
            "--liveness",
            type=click.IntRange(min=1),
            default=beats,
            show_default=True,
            help=liveness,
        )(command)
        return click.option(
            "--heartbeat",
            type=click.FloatRange(min=0.01),
            default=default,
            show_default=True,
            help=heartbeat,
        )(command)

    return decorate


def connected(command: F) -> F:
    """``--connect`` and ``--request-timeout``: a producer command's broker."""
    return ENDPOINT(TIMEOUT(command))


def client(endpoint: str, request_timeout: float) -> Client:
    return Client(endpoint, timeout=request_timeout)


def run(action: Callable[[], Any]) -> Any:
    """Call the client; a jobsd error is the command's clear error."""
    try:
        return action()
    except JobsdError as exc:
        raise click.ClickException(str(exc)) from None
    except ValueError as exc:  # an option out of range, said by the protocol's one check
        raise click.UsageError(str(exc)) from None
