"""Who may talk to a broker, and as what: CURVE keys in role folders.

A broker run with ``--keys DIR`` encrypts every connection with CURVE and lets
in only the public keys found in ``DIR/producers``, ``DIR/workers``,
``DIR/observers`` and ``DIR/admins``; the folder a key is in is its role
(``jobsd.protocol.roles`` says what each role may send). The key files are
pyzmq's certificate files, so ``zmq.auth`` writes and reads them, and its
ZAP handler (the piece without which CURVE authenticates nobody) checks each
handshake against the folders (``jobsd.broker.gate``). A key that is in no
folder gets no message through: libzmq drops the connection at the handshake.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.auth

from jobsd.errors import JobsdError
from jobsd.protocol import roles

log = logging.getLogger("jobsd.keys")

#: The broker's own key pair: ``DIR/broker.key`` (public) and ``DIR/broker.key_secret``.
BROKER = "broker"
#: Role folders under a keys directory, and the role each grants.
ROLE_FOLDERS = {
    "producers": roles.PRODUCER,
    "workers": roles.WORKER,
    "observers": roles.OBSERVER,
    "admins": roles.ADMIN,
}
PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"


class KeyFileError(JobsdError):
    """A key file that is missing, unreadable or not what it must be."""


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated peer: its role and the name of its key file."""

    role: str
    name: str

    @property
    def user_id(self) -> str:
        """The ZAP User-Id libzmq attaches to each message of this peer."""
        return roles.user_id(self.role, self.name)


def keygen(directory: str | os.PathLike[str], name: str) -> tuple[Path, Path]:
    """Write a new key pair ``NAME.key`` and ``NAME.key_secret`` into
    ``directory`` (made if missing); refuse to overwrite a key that exists,
    since whoever holds it would be locked out. The secret file is readable
    by its owner only."""
    if not name or "/" in name or name.startswith(".") or ":" in name:
        raise KeyFileError(f"key name {name!r}: use letters, digits, '-' and '_'")
    folder = Path(directory)
    public, secret = folder / f"{name}{PUBLIC_SUFFIX}", folder / f"{name}{SECRET_SUFFIX}"
    for path in (public, secret):
        if path.exists():
            raise KeyFileError(f"{path} exists: remove it first to replace the key")
    folder.mkdir(parents=True, exist_ok=True)
    written = zmq.auth.create_certificates(folder, name)
    os.chmod(written[1], 0o600)
    return Path(written[0]), Path(written[1])


def load_public(path: str | os.PathLike[str]) -> bytes:
    """The z85 public key of a key file (public or secret)."""
    return _load(path)[0]


def load_pair(path: str | os.PathLike[str]) -> tuple[bytes, bytes]:
    """The z85 ``(public, secret)`` keys of a secret key file."""
    public, secret = _load(path)
    if secret is None:
        raise KeyFileError(f"{path} holds no secret key (the .key_secret file is the one to give)")
    return public, secret


def _load(path: str | os.PathLike[str]) -> tuple[bytes, bytes | None]:
    try:
        return zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc}") from None


@dataclass(frozen=True, slots=True)
class ClientKeys:
    """What a CURVE client of a broker sets on each socket it makes: the
    broker's public key, and a key pair of its own (z85)."""

    server: bytes
    public: bytes
    secret: bytes

    @classmethod
    def load(cls, server_key: str | None, key: str | None) -> ClientKeys | None:
        """The keys of the broker's public key file ``server_key`` and this
        client's secret key file ``key``: both, or neither (None)."""
        if server_key is None and key is None:
            return None
        if server_key is None or key is None:
            raise KeyFileError(
                "a secured connection needs both the broker's key (--server-key) "
                "and a key of its own (--key)"
            )
        return cls(load_public(server_key), *load_pair(key))

    def apply(self, sock: zmq.Socket[Any]) -> None:
        """Make ``sock`` a CURVE client; before it connects."""
        sock.curve_serverkey = self.server
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret


class KeyRing:
    """The keys of one keys directory: the broker's pair and who is let in.

    :meth:`reload` reads the role folders again (``jobsd serve`` calls it on
    SIGHUP), so adding or removing a key file needs no restart; connections
    made with a removed key stay until they drop, as with any credential
    checked at the handshake.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.public, self.secret = load_pair(self.directory / f"{BROKER}{SECRET_SUFFIX}")
        self._known: dict[bytes, Identity] = {}
        self._lock = threading.Lock()
        #: Handshakes refused so far, for STATS (the log says it once an interval).
        self.refused = 0
        self.reload()

    def reload(self) -> dict[str, int]:
        """Read the role folders; return how many keys each role has now. A
        key found in two folders is let in under neither (which role was
        meant cannot be known), and said so."""
        found: dict[bytes, list[Identity]] = {}
        for folder, role in ROLE_FOLDERS.items():
            path = self.directory / folder
            if not path.is_dir():
                continue
            for file in sorted(path.glob(f"*{PUBLIC_SUFFIX}")):
                try:
                    public = load_public(file)
                except KeyFileError as exc:
                    log.error("%s: skipped", exc)
                    continue
                found.setdefault(public, []).append(Identity(role, file.stem))
        known: dict[bytes, Identity] = {}
        for public, identities in found.items():
            if len(identities) == 1:
                known[public] = identities[0]
            else:
                names = ", ".join(f"{i.role} {i.name}" for i in identities)
                log.error("one key is listed as %s: it is let in as none of them", names)
        with self._lock:
            self._known = known
        counts = {role: 0 for role in ROLE_FOLDERS.values()}
        for identity in known.values():
            counts[identity.role] += 1
        log.info("keys from %s: %s", self.directory, _counts(counts))
        return counts

    def identify(self, public: bytes) -> Identity | None:
        """The identity of a z85 public key, None for a key not let in."""
        with self._lock:
            identity = self._known.get(public)
            if identity is None:
                self.refused += 1
            return identity

    def serve(self, sock: zmq.Socket[Any]) -> None:
        """Make ``sock`` a CURVE server with the broker's key pair."""
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_server = True


def local_only(endpoint: str) -> bool:
    """Whether a bind endpoint is reachable from this host alone: IPC, or TCP
    on a loopback address. Anything else (``*``, ``0.0.0.0``, an interface, a
    host's address) may be reached from the network."""
    scheme, _, rest = endpoint.partition("://")
    if scheme in ("ipc", "inproc"):
        return True
    if scheme != "tcp":
        return False
    host = rest.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {role}{'' if n == 1 else 's'}" for role, n in counts.items())
