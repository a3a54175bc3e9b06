"""The words every layer of jobsd shares: a job's states, the limits, the defaults.

A leaf: it imports nothing of jobsd, so the protocol, the storage backends,
the broker and the workers can all name the same states and bounds without
importing each other. A limit changed here is changed on the wire, in storage
and in every check at once (PROTOCOL.md quotes these numbers).
"""

from __future__ import annotations

SCHEDULED = "scheduled"
READY = "ready"
RUNNING = "running"
DONE = "done"
DEAD = "dead"
CANCELLED = "cancelled"

#: Every state a job can be in, in the order of a job's life.
STATES = (SCHEDULED, READY, RUNNING, DONE, DEAD, CANCELLED)
#: States in which a job still holds its unique key and may yet run.
ACTIVE_STATES = frozenset({SCHEDULED, READY, RUNNING})
#: States a job leaves only by an explicit retry, delete or purge.
FINAL_STATES = frozenset({DONE, DEAD, CANCELLED})

DEFAULT_QUEUE = "default"
DEFAULT_PRIORITY = 32768
MIN_PRIORITY = 0
MAX_PRIORITY = 65535
#: Attempts a job gets when neither its submit nor its type says (0: no limit).
DEFAULT_MAX_ATTEMPTS = 25
MAX_ATTEMPTS_LIMIT = 1_000_000

#: The longest job id, job name, queue name or worker id on the wire.
MAX_NAME_LENGTH = 200
#: The longest unique key; also the longest of any key storage keeps (an
#: indexed VARCHAR must stay within MySQL's index key limit).
MAX_KEY_LENGTH = 255
#: Error texts are cut to this many characters.
MAX_ERROR_LENGTH = 64 * 1024
#: The most items in one SUBMIT, JOB, ACK, FAIL or RELEASE batch.
MAX_BATCH = 10_000
#: The broker drops (and disconnects) any message frame larger than this.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
#: The largest args or result of one job a broker takes by default (its
#: ``--max-payload``): a queue carries references to data, not the data.
DEFAULT_MAX_PAYLOAD = 16 * 1024 * 1024
#: The longest a WAIT may be held, in seconds.
MAX_WAIT = 24 * 3600.0
#: The latest time a job may be scheduled at: the last second of year 9999,
#: the end of what every language's date type can show.
MAX_TIMESTAMP = 253_402_300_799.0
