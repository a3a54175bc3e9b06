"""``jobsd keygen``: the key pairs a broker with ``--keys`` and its peers use."""

from __future__ import annotations

from pathlib import Path

import click

from jobsd.keys import ROLE_FOLDERS, KeyFileError
from jobsd.keys import keygen as make_pair


@click.command()
@click.option(
    "--dir",
    "directory",
    default="keys",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Where to write the pair (made if missing).",
)
@click.argument("name")
def keygen(directory: str, name: str) -> None:
    """Write the key pair NAME.key (public) and NAME.key_secret into DIR.

    \b
    jobsd keygen --dir keys broker           # the broker's own pair
    jobsd keygen --dir keys/workers w1       # a worker's; likewise keys/producers,
                                             # keys/observers (read-only), keys/admins
    jobsd serve --keys keys                  # lets in the public keys of those folders

    Copy each NAME.key_secret to the host that runs that program only, with
    keys/broker.key; the broker needs the public NAME.key files alone.
    """
    try:
        public, secret = make_pair(directory, name)
    except KeyFileError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{public}\n{secret}")
    if name != "broker" and Path(directory).name not in ROLE_FOLDERS:
        folders = ", ".join(ROLE_FOLDERS)
        click.echo(f"note: a broker lets in the keys of its folders {folders} only", err=True)
