"""The ``jobsd`` command line: the broker, workers, and a producer's tools.

Commands parse options and call the library; they hold no job semantics.
``daemons`` holds the long-running programs, ``producers`` the commands that
talk to a running broker. Every option that names the broker or storage can
come from the environment (``JOBSD_ENDPOINT``, ``JOBSD_STORAGE``,
``JOBSD_LOG_LEVEL``...).
"""

from __future__ import annotations

import logging

import click

from jobsd.cli import daemons, keys, producers
from jobsd.process import LOG_FORMAT


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
    logging.basicConfig(level=log_level.upper(), format=LOG_FORMAT)


for command in (daemons.serve, daemons.migrate, daemons.worker, keys.keygen, *producers.COMMANDS):
    main.add_command(command)
