"""``python -m benchmarks.run``: jobsd and its peers on the same work, one run.

python -m benchmarks.run                    # everything, N = 20,000
python -m benchmarks.run --quick            # under 2 minutes
python -m benchmarks.run --systems jobsd-memory,huey-redis --n 5000 --json out.json
python -m benchmarks.run --systems none --soak          # only the 1M-job soak
python -m benchmarks.run --list
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from benchmarks import rawzmq, report
from benchmarks.load import LoadMonitor, background_load
from benchmarks.procs import cleanup_all, install_cleanup
from benchmarks.systems.base import System
from benchmarks.tally import Tally
from benchmarks.workloads import Plan, run_system


def all_systems() -> list[type[System]]:
    """Every system, jobsd first. Imported here so a missing peer package
    fails only that peer."""
    out: list[type[System]] = []
    from benchmarks.systems.jobsd import JobsdCurve, JobsdMemory, JobsdPostgres, JobsdSQLite

    out += [JobsdMemory, JobsdCurve, JobsdSQLite, JobsdPostgres]
    for module, names in (
        ("rq", ("RQFork", "RQSimple")),
        (
            "celery",
            ("CeleryRabbitLate", "CeleryRabbitDefault", "CeleryRedisLate", "CeleryRedisDefault"),
        ),
        ("dramatiq", ("DramatiqRabbit", "DramatiqRedis")),
        ("huey", ("HueyRedis", "HueySQLite")),
    ):
        try:
            mod = __import__(f"benchmarks.systems.{module}", fromlist=list(names))
        except ImportError as exc:
            print(f"skipping {module}: {exc} (pip install -e '.[bench]')", file=sys.stderr)
            continue
        out += [getattr(mod, name) for name in names]
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="small N, fewer systems: under 2 minutes")
    p.add_argument(
        "--systems",
        default="all",
        help="comma-separated keys or families (jobsd, rq, celery, ...), "
        "'all' or 'none' (default: all)",
    )
    p.add_argument("--n", type=int, help="jobs for enqueue+drain (default 20000; quick 1000)")
    p.add_argument("--n-e2e", type=int, help="jobs for end-to-end (default: N)")
    p.add_argument("--latency-samples", type=int, help="default 1000; quick 100")
    p.add_argument("--raw-count", type=int, help="REQ/REP round trips (default 20000)")
    p.add_argument("--no-raw", action="store_true", help="skip the raw pyzmq baselines")
    p.add_argument(
        "--soak",
        type=int,
        nargs="?",
        const=1_000_000,
        default=None,
        metavar="N",
        help="also push N jobs (default 1,000,000) through jobsd with the "
        "broker's RSS sampled; never part of --quick",
    )
    p.add_argument(
        "--soak-broker-args",
        default=None,
        help="extra `jobsd serve` flags for the soak (default: "
        "'--keep-done 1 --retention-interval 2')",
    )
    p.add_argument("--json", type=Path, help="write every record to this file")
    p.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="py-spy the jobsd client, broker and workers into DIR",
    )
    p.add_argument("--workdir", type=Path, help="logs and SQLite files (default: a temp dir)")
    p.add_argument("--list", action="store_true", help="list the systems and exit")
    return p.parse_args(argv)


def select(classes: list[type[System]], spec: str, quick: bool) -> list[type[System]]:
    if spec == "none":
        return []
    if spec == "all":
        return classes
    wanted = [w.strip() for w in spec.split(",") if w.strip()]
    unknown = [w for w in wanted if not any(w in (c.key, c.family) for c in classes)]
    if unknown:
        raise SystemExit(f"unknown system(s): {', '.join(unknown)}; see --list")
    return [c for c in classes if c.key in wanted or c.family in wanted]


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import redis

        info["redis_server"] = redis.Redis.from_url(Tally().url).info("server")["redis_version"]
    except Exception as exc:  # noqa: BLE001 - informational only
        info["redis_server"] = f"unavailable: {exc}"
    try:
        out = subprocess.run(["rabbitmqctl", "version"], capture_output=True, text=True, timeout=20)
        info["rabbitmq_server"] = out.stdout.strip() or "?"
    except (OSError, subprocess.TimeoutExpired):
        info["rabbitmq_server"] = "?"
    try:
        import psycopg

        with psycopg.connect(
            "postgresql://postgres@127.0.0.1:5432/test", connect_timeout=5
        ) as conn:
            info["postgresql_server"] = conn.execute("SHOW server_version").fetchone()[0]
    except Exception:  # noqa: BLE001 - informational only
        info["postgresql_server"] = "?"
    return info


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    classes = all_systems()
    if args.list:
        for c in classes:
            print(f"{c.key:24} {c.backend:32} {c.settings}")
        return
    install_cleanup()
    chosen = select(classes, args.systems, args.quick)
    n = args.n or (1000 if args.quick else 20_000)
    plan = Plan(
        n=n,
        n_e2e=args.n_e2e or n,
        latency_samples=args.latency_samples or (100 if args.quick else 1000),
        quick=args.quick,
        stall=15.0 if args.quick else 30.0,
    )
    if args.profile:
        from benchmarks.profile import Profiles

        plan.profiler = Profiles(args.profile)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="jobsd-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    tally = Tally()
    records: list[report.Record] = []
    failures: dict[str, str] = {}
    raw: dict[str, dict[str, float]] = {}
    meta = {
        "machine": machine(),
        "argv": sys.argv[1:],
        "n": n,
        "quick": args.quick,
        "raw_versions": {
            "pyzmq": __import__("zmq").__version__,
            "libzmq": __import__("zmq").zmq_version(),
        },
    }
    print(f"jobsd benchmarks: N={n}, {len(chosen)} systems, logs in {workdir}", flush=True)
    meta["background_cores_before"] = busy = background_load()
    if busy > 0.2:
        print(
            f"  WARNING: other processes use {busy:.2f} of {os.cpu_count()} cores: "
            "numbers will be low and noisy",
            flush=True,
        )
    monitor = LoadMonitor()
    try:
        if not args.no_raw:
            count = args.raw_count or (5000 if args.quick else 20_000)
            raw["REQ/REP"] = rawzmq.req_rep(workdir, count)
            raw["REQ/REP from idle"] = rawzmq.req_rep(
                workdir, plan.latency_samples, gap=plan.latency_gap
            )
            raw["DEALER->ROUTER"] = rawzmq.dealer_router(workdir, count * 10)
            raw["DEALER->ROUTER 1 frame"] = rawzmq.dealer_router(workdir, count * 10, frames=1)
            print(
                f"  raw pyzmq: REQ/REP {raw['REQ/REP']['jobs_per_s']:.0f} round trips/s, "
                f"DEALER->ROUTER {raw['DEALER->ROUTER']['jobs_per_s']:.0f} msgs/s (4 frames), "
                f"{raw['DEALER->ROUTER 1 frame']['jobs_per_s']:.0f} (1 frame); "
                f"REQ/REP from idle p50 {raw['REQ/REP from idle']['p50_ms']:.3f} ms",
                flush=True,
            )
        for cls in chosen:
            system = cls(workdir)
            t0 = time.monotonic()
            monitor.mark()
            try:
                got = run_system(system, plan, tally)
                bg_mean, bg_peak = monitor.mark()
                for r in got:
                    r.extra["background_cores"] = round(bg_mean, 2)
                    r.extra["background_cores_peak"] = round(bg_peak, 2)
                records += got
                summary = ", ".join(
                    f"{r.workload} {r.jobs_per_s:.0f}/s"
                    if r.jobs_per_s
                    else f"{r.workload} p50 {r.p50_ms:.2f} ms"
                    if r.p50_ms is not None
                    else f"{r.workload} n/a"
                    for r in got
                )
                busy = f"; OTHER PROCESSES USED {bg_mean:.2f} CORES" if bg_mean > 0.1 else ""
                print(f"  {cls.key}: {summary} [{time.monotonic() - t0:.0f} s{busy}]", flush=True)
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # noqa: BLE001 - one system failing must not stop the rest
                failures[cls.key] = f"{type(exc).__name__}: {exc}"
                print(f"  {cls.key}: FAILED {type(exc).__name__}: {exc}", flush=True)
                traceback.print_exc()
                print(system.worker_logs(), file=sys.stderr)
            finally:
                system.close()
        if args.soak:
            from benchmarks.soak import DEFAULT_BROKER_ARGS, run_soak

            print(f"  soak: {args.soak} jobs through jobsd-memory ...", flush=True)
            soak = run_soak(workdir, tally, args.soak, args.soak_broker_args or DEFAULT_BROKER_ARGS)
            records.append(soak)
            e = soak.extra
            print(
                f"  soak: {soak.jobs_per_s:.0f} jobs/s, broker RSS {e['rss_start_mb']:.0f} -> "
                f"{e['rss_settled_mb']:.0f} (at 25%) -> {e['rss_end_mb']:.0f} MB, peak "
                f"{e['rss_peak_mb']:.0f} MB: {'FLAT' if e['flat'] else 'GROWING'}"
                f"{'' if soak.verified else ' NOT VERIFIED: ' + soak.note}",
                flush=True,
            )
    finally:
        monitor.close()
        cleanup_all()
    meta["seconds"] = time.monotonic() - started
    meta["background_cores_after"] = background_load()
    print()
    print(report.table(records, failures))
    print()
    print(report.footer(records, raw))
    print()
    print("Issue #6 targets:")
    print(report.targets_text(report.targets(records, raw)))
    m = meta["machine"]
    print(
        f"\n{m.get('cpu', '?')}, {m['cores']} cores, Python {m['python']}, Redis "
        f"{m['redis_server']}, RabbitMQ {m['rabbitmq_server']}, PostgreSQL "
        f"{m['postgresql_server']}; total {meta['seconds']:.0f} s; other processes used "
        f"{meta['background_cores_before']:.2f} cores before the run, "
        f"{meta['background_cores_after']:.2f} after"
    )
    if plan.profiler:
        print("\nProfiles (" + str(args.profile) + "):")
        for text in plan.profiler.summaries:
            print(text)
    if args.json:
        report.write_json(args.json, records, raw, meta, failures)
        print(f"wrote {args.json}")
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
