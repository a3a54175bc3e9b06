"""What each role may send: the roles table of PROTOCOL.md, checked per message.

On a broker without keys there are no roles and everything is allowed (it
binds loopback only, unless told ``--insecure``). With keys every peer has
the role of the folder its key is in, and a command outside that role gets
``forbidden`` and changes nothing.
"""

from __future__ import annotations

from jobsd.protocol import framing as wire

PRODUCER = "producer"
WORKER = "worker"
OBSERVER = "observer"
ADMIN = "admin"

#: Submit, and follow a job one knows the id of.
_PRODUCE = frozenset({wire.SUBMIT, wire.GET, wire.WAIT, wire.PING})
#: Read everything, change nothing: a read-only dashboard, a metrics scraper.
_OBSERVE = frozenset({wire.GET, wire.WAIT, wire.LIST, wire.STATS, wire.PING})

PERMITTED: dict[str, frozenset[bytes]] = {
    PRODUCER: _PRODUCE,
    # Workers may submit follow-up jobs from their handlers.
    WORKER: wire.WORKER_COMMANDS | {wire.SUBMIT, wire.PING},
    OBSERVER: _OBSERVE,
    ADMIN: wire.PRODUCER_COMMANDS,
}


def permits(role: str | None, command: bytes) -> bool:
    """Whether a peer of ``role`` (None: no keys, no roles) may send ``command``."""
    return role is None or command in PERMITTED.get(role, frozenset())


def user_id(role: str, name: str) -> str:
    """The User-Id a broker's ZAP handler gives a key: its role and its name."""
    return f"{role}:{name}"


def role_of(user: str | None) -> str | None:
    return None if user is None else user.partition(":")[0]


def name_of(user: str) -> str:
    return user.partition(":")[2]
