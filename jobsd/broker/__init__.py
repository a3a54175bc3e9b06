"""The broker daemon: ``loop`` (the socket, turns, group commit, dispatch),
``commands`` (one handler per command), ``sessions`` (connected workers and
the leases they hold), ``manager`` (what every job operation means, the only
caller of storage), ``timers`` (recurring chores), ``cron`` and ``waiters``."""

from jobsd.broker.config import BrokerConfig
from jobsd.broker.loop import Broker

__all__ = ["Broker", "BrokerConfig"]
