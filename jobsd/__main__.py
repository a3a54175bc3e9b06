"""``python -m jobsd``: the same command line as ``jobsd``."""

from jobsd.cli import main

main(prog_name="jobsd")
