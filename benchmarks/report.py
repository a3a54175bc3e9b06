"""Results: one ``Record`` per system and workload, the table with ratios to
the fastest peer, the issue's targets checked, and the JSON file."""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

WORKLOADS = ("enqueue_one", "enqueue_batch", "drain", "e2e", "latency")
HEADINGS = {
    "enqueue_one": "enqueue 1-by-1",
    "enqueue_batch": "enqueue batch",
    "drain": "drain",
    "e2e": "end-to-end",
    "latency": "latency p50 / p99",
}


@dataclass
class Record:
    system: str
    family: str
    backend: str
    workload: str
    n: int
    jobs_per_s: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    seconds: float | None = None
    versions: dict[str, str] = field(default_factory=dict)
    settings: str = ""
    note: str = ""
    verified: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def percentiles(seconds: list[float]) -> dict[str, float]:
    """p50 and p99 in milliseconds (p99: the value below which 99% fall)."""
    ordered = sorted(seconds)
    return {
        "p50_ms": statistics.median(ordered) * 1000,
        "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
    }


def _rate(value: float | None) -> str:
    if value is None:
        return "n/a"
    if value >= 10_000:
        return f"{value / 1000:.0f}k"
    if value >= 1000:
        return f"{value / 1000:.1f}k"
    return f"{value:.0f}"


def best_peer(records: list[Record], workload: str, backend: str | None = None) -> Record | None:
    """The peer (not jobsd) with the highest jobs/s, or for latency the lowest p50."""
    peers = [
        r
        for r in records
        if r.family != "jobsd"
        and r.workload == workload
        and (backend is None or r.backend == backend)
    ]
    if workload == "latency":
        peers = [r for r in peers if r.p50_ms is not None]
        return min(peers, key=lambda r: r.p50_ms or 0.0, default=None)
    peers = [r for r in peers if r.jobs_per_s]
    return max(peers, key=lambda r: r.jobs_per_s or 0.0, default=None)


def _cell(record: Record | None, best: Record | None) -> str:
    if record is None:
        return "-"
    if record.workload == "latency":
        if record.p50_ms is None or record.p99_ms is None:
            return "n/a"
        text = f"{record.p50_ms:.2f} / {record.p99_ms:.2f} ms"
        if best and best.p50_ms:
            text += f" ({best.p50_ms / record.p50_ms:.2f}x)"
        return text
    if record.jobs_per_s is None:
        return record.note or "n/a"
    text = _rate(record.jobs_per_s)
    if best and best.jobs_per_s:
        text += f" ({record.jobs_per_s / best.jobs_per_s:.2f}x)"
    return text


def table(records: list[Record], failures: dict[str, str]) -> str:
    systems: dict[str, dict[str, Record]] = {}
    for r in records:
        if r.workload in WORKLOADS:
            systems.setdefault(r.system, {})[r.workload] = r
    best = {w: best_peer(records, w) for w in WORKLOADS}
    head = ["system", "queue store", *(HEADINGS[w] for w in WORKLOADS)]
    rows = [head]
    for name, by_workload in systems.items():
        any_record = next(iter(by_workload.values()))
        rows.append(
            [name, any_record.backend, *(_cell(by_workload.get(w), best[w]) for w in WORKLOADS)]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = [
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines += [f"{name}  FAILED: {error}" for name, error in failures.items()]
    return "\n".join(lines)


def footer(records: list[Record], raw: dict[str, dict[str, float]]) -> str:
    best = {w: best_peer(records, w) for w in WORKLOADS}
    lines = [
        "jobs/s unless noted; (Nx) = ratio to the fastest peer in that column, the best "
        "peer being 1.00x; for latency (Nx) = best peer p50 / this p50, so >1 is faster.",
        "Fastest peers: "
        + ", ".join(f"{HEADINGS[w]} = {b.system}" for w, b in best.items() if b is not None),
        "enqueue: N/2 one by one + N/2 batched, no workers; drain: N queued, 2 worker "
        "processes started, first job run to last; end-to-end: idle workers, N submitted "
        "one by one, first submit to last run; latency: one job at a time, enqueue to start.",
    ]
    sizes = sorted({(r.system, r.workload, r.n) for r in records if r.workload in WORKLOADS})
    capped = sorted(
        {s for s, w, n in sizes if w == "drain" and n < max(x[2] for x in sizes if x[1] == "drain")}
    )
    if capped:
        lines.append(
            "Smaller N (too slow for the full N): "
            + ", ".join(f"{s} N={n}" for s, w, n in sizes if s in capped and w == "drain")
        )
    if raw:
        lines.append(
            "Raw pyzmq on this machine: "
            + "; ".join(
                f"{name} {_rate(v['jobs_per_s'])} msgs/s"
                + (
                    f" (p50 {v['p50_ms']:.3f} ms, p99 {v['p99_ms']:.3f} ms)"
                    if "p50_ms" in v
                    else ""
                )
                for name, v in raw.items()
            )
        )
    busy = sorted(
        {
            (r.system, r.extra.get("background_cores", 0.0))
            for r in records
            if r.extra.get("background_cores", 0.0) > 0.1
        }
    )
    if busy:
        lines.append(
            "Other processes were busy during: "
            + ", ".join(f"{s} ({c:.2f} cores)" for s, c in busy)
            + " - those numbers are low"
        )
    lines.append("Worker settings (2 processes each):")
    seen: dict[str, str] = {}
    for r in records:
        if r.workload in WORKLOADS and r.system not in seen:
            seen[r.system] = r.settings
            batch = next(
                (x.note for x in records if x.system == r.system and x.workload == "enqueue_batch"),
                "",
            )
            versions = " ".join(f"{k} {v}" for k, v in r.versions.items())
            lines.append(f"  {r.system}: {r.settings}; batch: {batch or 'n/a'}; {versions}")
    return "\n".join(lines)


@dataclass
class Target:
    name: str
    goal: str
    measured: str
    met: bool | None  # None: not measured in this run


def targets(records: list[Record], raw: dict[str, dict[str, float]]) -> list[Target]:
    def get(system: str, workload: str) -> Record | None:
        return next((r for r in records if r.system == system and r.workload == workload), None)

    out: list[Target] = []

    def ratio_target(name: str, system: str, against: Record | None, goal: float) -> None:
        mine = get(system, "drain")
        if mine is None or against is None or not mine.jobs_per_s or not against.jobs_per_s:
            out.append(Target(name, f">= {goal}x", "not measured", None))
            return
        ratio = mine.jobs_per_s / against.jobs_per_s
        out.append(
            Target(
                name,
                f">= {goal}x",
                f"{ratio:.2f}x ({_rate(mine.jobs_per_s)} vs "
                f"{against.system} {_rate(against.jobs_per_s)})",
                ratio >= goal,
            )
        )

    ratio_target("drain, memory vs fastest peer", "jobsd-memory", best_peer(records, "drain"), 3.0)
    ratio_target(
        "drain, SQLite vs fastest peer on Redis",
        "jobsd-sqlite",
        best_peer(records, "drain", backend="Redis"),
        1.5,
    )
    ratio_target(
        "drain with CURVE keys vs plain", "jobsd-memory-curve", get("jobsd-memory", "drain"), 0.85
    )
    batch = get("jobsd-memory", "enqueue_batch")
    if batch and batch.jobs_per_s:
        out.append(
            Target(
                "submit_many",
                ">= 50k jobs/s",
                f"{_rate(batch.jobs_per_s)} jobs/s",
                batch.jobs_per_s >= 50_000,
            )
        )
    else:
        out.append(Target("submit_many", ">= 50k jobs/s", "not measured", None))
    one, rr = get("jobsd-memory", "enqueue_one"), raw.get("REQ/REP")
    if one and one.jobs_per_s and rr:
        share = one.jobs_per_s / rr["jobs_per_s"]
        out.append(
            Target(
                "submit one by one vs raw REQ/REP",
                ">= 80%",
                f"{share:.0%} ({_rate(one.jobs_per_s)} vs {_rate(rr['jobs_per_s'])}/s)",
                share >= 0.8,
            )
        )
    else:
        out.append(Target("submit one by one vs raw REQ/REP", ">= 80%", "not measured", None))
    lat = get("jobsd-memory", "latency")
    if lat and lat.p50_ms is not None and lat.p99_ms is not None:
        idle = raw.get("REQ/REP from idle")
        floor = (
            f" (raw REQ/REP from idle: p50 {idle['p50_ms']:.3f}, p99 {idle['p99_ms']:.3f} ms)"
            if idle
            else ""
        )
        out.append(
            Target(
                "latency p50, memory",
                "<= 0.35 ms",
                f"{lat.p50_ms:.3f} ms{floor}",
                lat.p50_ms <= 0.35,
            )
        )
        out.append(
            Target(
                "latency p99, memory", "<= 1 ms", f"{lat.p99_ms:.3f} ms{floor}", lat.p99_ms <= 1.0
            )
        )
    soak = next((r for r in records if r.workload == "soak"), None)
    if soak is not None:
        out.append(
            Target(
                "broker RSS flat over the soak",
                "flat",
                f"{soak.extra.get('rss_start_mb', 0):.0f} -> "
                f"{soak.extra.get('rss_end_mb', 0):.0f} MB "
                f"(peak {soak.extra.get('rss_peak_mb', 0):.0f}) over {soak.n} jobs",
                bool(soak.extra.get("flat")),
            )
        )
    return out


def targets_text(items: list[Target]) -> str:
    mark = {True: "MET   ", False: "MISSED", None: "  -   "}
    width = max(len(t.name) for t in items)
    return "\n".join(
        f"  {mark[t.met]}  {t.name.ljust(width)}  goal {t.goal:<14} got {t.measured}" for t in items
    )


def write_json(
    path: Path,
    records: list[Record],
    raw: dict[str, dict[str, float]],
    meta: dict[str, Any],
    failures: dict[str, str],
) -> None:
    out = [asdict(r) for r in records]
    for name, values in raw.items():
        out.append(
            asdict(
                Record(
                    f"raw-pyzmq {name}",
                    "pyzmq",
                    "loopback tcp",
                    name,
                    int(values["n"]),
                    values["jobs_per_s"],
                    values.get("p50_ms"),
                    values.get("p99_ms"),
                    values.get("seconds"),
                    versions=meta.get("raw_versions", {}),
                    verified=True,
                )
            )
        )
    body = {
        "meta": meta,
        "records": out,
        "targets": [asdict(t) for t in targets(records, raw)],
        "failures": failures,
    }
    path.write_text(json.dumps(body, indent=2) + "\n")
