"""The broker's ZAP handler: who each CURVE handshake is, asked of the keys.

pyzmq's ``ThreadAuthenticator`` answers libzmq's ZAP requests in a thread of
its own; this one asks a :class:`~jobsd.keys.KeyRing`, so keys added or
removed take effect at its next reload, and answers each key it lets in
with a User-Id naming its role, which libzmq then attaches to every message
of that connection.
"""

from __future__ import annotations

import logging
from typing import Any

import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from jobsd.keys import KeyRing


class Gatekeeper(ThreadAuthenticator):
    """pyzmq's ZAP handler, asking a :class:`KeyRing` who each key is; the
    identity it answers with reaches the broker on every message as its
    User-Id."""

    def __init__(self, context: zmq.Context[Any], ring: KeyRing) -> None:
        super().__init__(context, log=logging.getLogger("jobsd.zap"))
        self.ring = ring

    def start(self) -> None:
        super().start()
        self.configure_curve_callback("*", credentials_provider=self)

    def callback(self, domain: str, key: bytes) -> bool:
        return self.ring.identify(key) is not None

    def curve_user_id(self, client_public_key: bytes) -> str:
        identity = self.ring.identify(z85.encode(client_public_key))
        return "" if identity is None else identity.user_id
