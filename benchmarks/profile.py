"""``--profile DIR``: py-spy on jobsd's processes while the workloads run —
the producer (this process) and the broker during enqueue, the broker and the
worker processes during drain, all three during end-to-end — as raw collapsed
stacks plus a text summary: how many cores each process used in the phase,
and the functions and lines with the most samples.

Sampling is ``--gil``: only the thread holding the GIL is recorded, so a
sample is Python at work, never a thread parked in ``poll`` or in a job
queue's ``get`` (py-spy counts those as busy otherwise). A profiled run is
slower than a plain one: read its profiles, not its numbers.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from benchmarks.systems.base import System

RATE = 250  # samples per second
LINE = re.compile(r":\d+\)$")


@dataclass
class Session:
    label: str
    outputs: list[Path]
    procs: list[subprocess.Popen[bytes]]
    roles: dict[str, int] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    started: float = 0.0


def _cpu_seconds(pid: int, children: bool) -> float:
    """CPU time of a process (and of all its descendants)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)] if children else [root]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


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
        session = Session(f"{system.key}-{phase}", [], [], roles=targets)
        for role, pid in targets.items():
            out = self.directory / f"{system.key}-{phase}-{role}.txt"
            cmd = ["py-spy", "record", "-p", str(pid), "-f", "raw", "-o", str(out)]
            cmd += ["-r", str(RATE), "--gil"]
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
        time.sleep(0.5)  # py-spy attaches
        session.cpu = {role: _cpu_seconds(pid, role == "workers") for role, pid in targets.items()}
        session.started = time.monotonic()
        return session

    def stop(self, session: Session) -> None:
        wall = time.monotonic() - session.started
        cores = {
            role: (_cpu_seconds(pid, role == "workers") - session.cpu[role]) / wall
            for role, pid in session.roles.items()
        }
        for proc in session.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        for proc in session.procs:
            try:
                proc.wait(15.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        usage = ", ".join(f"{role} {c:.2f}" for role, c in cores.items())
        header = f"#### {session.label}: {wall:.1f} s; cores used: {usage}\n"
        texts = [header]
        for out in session.outputs:
            if out.exists():
                texts.append(summarize(out))
        text = "".join(texts)
        (self.directory / f"{session.label}.summary.txt").write_text(text)
        self.summaries.append(text)


def summarize(path: Path, top: int = 15) -> str:
    """The functions with the most samples: self (the leaf frame) and total
    (anywhere on the stack, once per sample), then the hottest lines."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    lines_hot: Counter[str] = Counter()
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
        lines_hot[frames[-1]] += count
        functions = [LINE.sub(")", f) for f in frames]
        own[functions[-1]] += count
        for frame in set(functions):
            total[frame] += count
    out = [f"== {path.name}: {samples} samples with the GIL at {RATE}/s"]
    if not samples:
        return out[0] + "\n"
    out.append("   self%  total%  function (by self)")
    for frame, count in own.most_common(top):
        out.append(f"  {100 * count / samples:5.1f}  {100 * total[frame] / samples:6.1f}  {frame}")
    out.append("   self%  total%  function (by total, outside the entry points)")
    shown = 0
    for frame, count in total.most_common():
        if count / samples > 0.97:  # main(), run(), click: every sample has them
            continue
        out.append(f"  {100 * own[frame] / samples:5.1f}  {100 * count / samples:6.1f}  {frame}")
        shown += 1
        if shown == top:
            break
    out.append("   self%  line")
    for frame, count in lines_hot.most_common(top):
        out.append(f"  {100 * count / samples:5.1f}  {frame}")
    return "\n".join(out) + "\n"
