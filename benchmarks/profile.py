"""``--profile DIR``: py-spy on jobsd's processes while the workloads run —
the producer (this process) and the broker during enqueue, the broker and the worker
processes during drain, all three during end-to-end — as raw collapsed
stacks plus a text summary of the functions with the most samples (self, and
including callees).

A profiled run is slower than a plain one: read its profiles, not its numbers.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from benchmarks.systems.base import System

RATE = 250  # samples per second


@dataclass
class Session:
    label: str
    outputs: list[Path]
    procs: list[subprocess.Popen[bytes]]


class Profiles:
    def __init__(self, directory: Path) -> None:
        if shutil.which("py-spy") is None:
            raise SystemExit("--profile needs py-spy: pip install py-spy")
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.summaries: list[str] = []

    def start(self, system: System, phase: str) -> Session | None:
        """Profile jobsd's processes for one phase: ``client`` (this process
        and the broker: enqueue), ``servers`` (broker and workers: drain) or
        ``e2e`` (all three)."""
        if system.family != "jobsd":
            return None
        targets = dict(system.extra_pids())
        if phase in ("client", "e2e"):
            targets["client"] = os.getpid()
        session = Session(f"{system.key}-{phase}", [], [])
        for role, pid in targets.items():
            out = self.directory / f"{system.key}-{phase}-{role}.txt"
            cmd = [
                "py-spy",
                "record",
                "-p",
                str(pid),
                "-f",
                "raw",
                "-o",
                str(out),
                "-r",
                str(RATE),
                "--nolineno",
            ]
            if role == "workers":
                cmd.append("--subprocesses")  # the supervisor's 2 worker processes
            session.procs.append(
                subprocess.Popen(
                    cmd,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
            session.outputs.append(out)
        return session

    def stop(self, session: Session) -> None:
        for proc in session.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        for proc in session.procs:
            try:
                proc.wait(15.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for out in session.outputs:
            if out.exists():
                text = summarize(out)
                out.with_suffix(".summary.txt").write_text(text)
                self.summaries.append(text)


def summarize(path: Path, top: int = 20) -> str:
    """The functions with the most samples: self (the leaf frame) and total
    (anywhere on the stack, once per sample)."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if not f.startswith("process ")]
        if not frames:
            continue
        samples += count
        own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count
    lines = [
        f"== {path.name}: {samples} samples at {RATE}/s (busy threads only)",
        "   self%  total%  function",
    ]
    if not samples:
        return lines[0] + "\n"
    for frame, count in own.most_common(top):
        lines.append(
            f"  {100 * count / samples:5.1f}  {100 * total[frame] / samples:6.1f}  {frame}"
        )
    lines.append("   -- by total --")
    for frame, count in total.most_common(top):
        lines.append(f"  {100 * own[frame] / samples:5.1f}  {100 * count / samples:6.1f}  {frame}")
    return "\n".join(lines) + "\n"
