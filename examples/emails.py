"""The zizq example: e-mails on their own queue, served by their own workers.

jobsd worker examples.emails:jobs -q emails -c 16
jobsd submit send_email '["ada@example.com", "Welcome"]'
"""

import logging

from jobsd import Backoff, Registry

jobs = Registry()
log = logging.getLogger("examples.emails")


@jobs.job(queue="emails", max_attempts=5, backoff=Backoff.exponential(2.0, max_delay=300))
def send_email(to: str, subject: str) -> dict[str, str]:
    # A real application would talk to its mail service here.
    log.info("sending %r to %s", subject, to)
    return {"to": to, "subject": subject, "status": "sent"}
