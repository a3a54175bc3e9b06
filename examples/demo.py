"""The whole of jobsd in one command: a broker on the embedded SQLite default,
a worker, and a producer that submits a job and prints its result.

    python -m examples.demo

It runs the same programs a deployment runs (`jobsd serve`, `jobsd worker`)
as child processes, and stops them gracefully at the end.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from examples.divide import divide
from jobsd import Client

ROOT = Path(__file__).resolve().parent.parent


def start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "jobsd", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for_line(proc: subprocess.Popen[str], pattern: str) -> re.Match[str]:
    """Read the child's log until a line matches (the child exits on error)."""
    assert proc.stdout is not None
    for line in proc.stdout:
        print("  |", line.rstrip())
        match = re.search(pattern, line)
        if match:
            return match
    raise SystemExit(f"jobsd {proc.args[3]} exited with {proc.wait()}")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        storage = f"sqlite:///{os.path.join(tmp, 'jobsd.sqlite3')}"
        broker = start("serve", "--bind", "tcp://127.0.0.1:*", "--storage", storage)
        worker = None
        try:
            endpoint = wait_for_line(broker, r"broker serving on (\S+)").group(1)
            worker = start("worker", "examples.divide:jobs", "--connect", endpoint)
            wait_for_line(worker, "registered with the broker")
            with Client(endpoint) as client:
                job_id = client.submit(divide, 7, 2)
                print(f"submitted divide(7, 2) as job {job_id}")
                print(f"divide(7, 2) = {client.result(job_id, timeout=30)}")
        finally:
            for proc in (worker, broker):
                if proc is not None:
                    proc.terminate()
                    proc.wait(30)


if __name__ == "__main__":
    main()
