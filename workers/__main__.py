"""A supervised worker child: ``python -m jobsd.workers SETTINGS_JSON``
(started by ``jobsd worker --processes N``; see ``supervisor.py``)."""

import sys

from jobsd.workers.supervisor import child_main

child_main(sys.argv[1:])
