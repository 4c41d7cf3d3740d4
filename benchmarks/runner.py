"""scripts/bench: run W1-W3 against the running platform and against the in-memory ceiling relay.

The platform is reached at http://127.0.0.1:$SWITCHBOARD_PORT (or --url) with tokens signed by
$SWITCHBOARD_JWT_SECRET (both read through Settings.from_env()). The ceiling relay is started in a
subprocess on a free port with a throwaway secret, and gets the same workloads from the same client.
Targets run one after the other so they never compete for CPU.

Exit status: 0 when every run kept the guarantees, 1 when one lost, duplicated or reordered a
message or delivered one that was never acknowledged, 2 when the benchmark could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import secrets
import sys

from switchboard.settings import Settings

from .capacity import CapacityResult, capacity, process_rss_bytes
from .client import BenchError, Target, health_problem
from .relay import RelayProcess
from .workloads import WORKLOADS, Result

# Without a terminal (CI logs), print progress less often so the log stays readable.
PROGRESS_EVERY_S_WITHOUT_TTY = 5


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="end stdout with one JSON line of the figures")
    parser.add_argument("--only", default="w1,w2,w3",
                        help="comma-separated workloads, e.g. w1,w3; `capacity`: idle sockets held and memory per socket")
    parser.add_argument("--skip-ceiling", action="store_true", help="do not run the in-memory relay")
    parser.add_argument("--skip-platform", action="store_true", help="only run the in-memory relay")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply counts and durations (0.2: smoke run)")
    parser.add_argument("--url", help="platform base URL (default http://127.0.0.1:$SWITCHBOARD_PORT)")
    args = parser.parse_args(argv)
    args.only = [name.strip().lower() for name in args.only.split(",") if name.strip()]
    args.capacity = "capacity" in args.only
    args.only = [name for name in args.only if name != "capacity"]
    unknown = [name for name in args.only if name not in WORKLOADS]
    if unknown or not (args.only or args.capacity):
        parser.error(f"--only takes a comma-separated subset of {', '.join(WORKLOADS)}, capacity")
    if not 0 < args.scale <= 10:
        parser.error("--scale must be in (0, 10]")
    return args


def _progress_printer(label: str, unit: str = "delivered"):
    tty = sys.stderr.isatty()
    last_shown_s = 0.0

    def show(elapsed_s: float, delivered: int) -> None:
        nonlocal last_shown_s
        if not tty and elapsed_s - last_shown_s < PROGRESS_EVERY_S_WITHOUT_TTY - 0.5:
            return
        last_shown_s = elapsed_s
        line = f"{label}: {elapsed_s:.1f} s, {delivered} {unit}, {delivered / elapsed_s:.0f}/s"
        print(f"\r{line}   " if tty else line, end="" if tty else "\n", file=sys.stderr, flush=True)

    return show


async def run_target(target: Target, names: list[str], scale: float, run_id: str) -> dict[str, Result]:
    results = {}
    for name in names:
        label = f"{name.upper()} {target.name}"
        print(f"{label}: setting up", file=sys.stderr, flush=True)
        results[name] = result = await WORKLOADS[name](target, scale=scale, run_id=run_id,
                                                        progress=_progress_printer(label))
        end = "\n" if sys.stderr.isatty() else ""
        print(f"{end}{label}: done, {result.delivered} delivered in {result.wall_s:.1f} s "
              f"({result.delivered_per_s:.0f} msg/s)", file=sys.stderr, flush=True)
    return results


# ---- reporting -----------------------------------------------------------------------------------

def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ratio(platform: float | None, ceiling: float | None) -> str:
    return "-" if not platform or not ceiling else f"{platform / ceiling:.2f}x"


def table(names: list[str], platform: dict[str, Result], ceiling: dict[str, Result]) -> str:
    header = (f"{'':4} {'target':9} {'delivered/s':>11} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
              f"{'lost':>6} {'refused':>8}")
    lines = [header, "-" * len(header)]
    for name in names:
        for label, results in (("platform", platform), ("ceiling", ceiling)):
            if name in results:
                s = results[name].summary()
                lines.append(f"{name:4} {label:9} {s['delivered_per_s']:>11.1f} {_fmt(s['p50_ms']):>8} "
                             f"{_fmt(s['p95_ms']):>8} {_fmt(s['p99_ms']):>8} {s['lost']:>6} {s['refused']:>8}")
        if name in platform and name in ceiling:
            p, c = platform[name].summary(), ceiling[name].summary()
            lines.append(f"{name:4} {'ratio':9} {_ratio(p['delivered_per_s'], c['delivered_per_s']):>11} "
                         f"{'':>8} {'':>8} {_ratio(p['p99_ms'], c['p99_ms']):>8}")
    lines.append("")
    lines.append("checks (all should be 0): delivered_without_sent, unanswered, errors, duplicates, "
                 "cursor_regressions, closed")
    for label, results in (("platform", platform), ("ceiling", ceiling)):
        for name, r in results.items():
            lines.append(f"  {name} {label:9} {r.delivered_without_sent}, {r.unanswered}, {r.errors}, "
                         f"{r.duplicates}, {r.cursor_regressions}, {r.closed_unexpectedly}"
                         + ("   (send phase cut off at its time budget)" if r.timed_out else ""))
    return "\n".join(lines)


def json_summary(platform: dict[str, Result], ceiling: dict[str, Result],
                 held: dict[str, CapacityResult] | None = None) -> dict:
    """Always the same keys; a workload or target that did not run is null."""
    def block(results: dict[str, Result]) -> dict:
        return {name: results[name].summary() if name in results else None for name in WORKLOADS}

    held = held or {}
    return {**block(platform), "ceiling": block(ceiling),
            "capacity": {label: held[label].summary() if label in held else None for label in ("platform", "ceiling")}}


def capacity_table(held: dict[str, CapacityResult]) -> str:
    lines = [f"{'capacity':9} {'held':>7} {'of':>7} {'open s':>7} {'KB/socket':>10} {'beyond replicas':>16} "
             f"{'replicas':>8} {'heard':>7} {'closed':>6}"]
    for label, result in held.items():
        s = result.summary()
        lines.append(f"{label:9} {s['held']:>7} {s['wanted']:>7} {s['open_s']:>7} {s['kb_per_socket']:>10} "
                     f"{s['kb_per_socket_beyond_replicas'] if s['replicas'] else '-':>16} {s['replicas'] or '-':>8} "
                     f"{s['sample_received']:>7} {s['closed_while_idle']:>6}")
    if "platform" in held and held["platform"].replicas:
        lines.append(f"platform replicas over time (s, replicas): {held['platform'].replicas}")
    return "\n".join(lines)


def raise_open_files_limit() -> None:
    """10,000 sockets are 10,000 descriptors in this one process: take the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# ---- entry point ---------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = Settings.from_env()
    run_id = secrets.token_hex(3)  # user ids are unique per run, so reruns never collide in the database
    platform: dict[str, Result] = {}
    ceiling: dict[str, Result] = {}
    held: dict[str, CapacityResult] = {}
    raise_open_files_limit()
    try:
        if not args.skip_platform:
            target = Target("platform", args.url or f"http://127.0.0.1:{settings.port}", settings.jwt_secret)
            problem = asyncio.run(health_problem(target.http_url))
            if problem:
                print(f"bench: the platform is not reachable: {problem}.\n"
                      f"bench: start it first, or pass --skip-platform to measure only the ceiling.",
                      file=sys.stderr)
                return 2
            platform = asyncio.run(run_target(target, args.only, args.scale, run_id))
            if args.capacity:
                held["platform"] = asyncio.run(capacity(target, args.scale, run_id,
                                                        progress=_progress_printer("capacity platform", "sockets held")))
        if not args.skip_ceiling:
            secret = secrets.token_urlsafe(32)
            with RelayProcess(secret) as relay:
                relay_target = Target("ceiling", relay.base_url, secret)
                ceiling = asyncio.run(run_target(relay_target, args.only, args.scale, run_id))
                if args.capacity:
                    held["ceiling"] = asyncio.run(capacity(
                        relay_target, args.scale, run_id, measure=lambda: process_rss_bytes([relay.process.pid]),
                        replicas=None, progress=_progress_printer("capacity ceiling", "sockets held")))
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    if args.only:
        print(table(args.only, platform, ceiling))
    if held:
        print(capacity_table(held))
    if args.json:
        print(json.dumps(json_summary(platform, ceiling, held)))
    broken = [f"{name} {label}: {', '.join(r.violations())}"
              for label, results in (("platform", platform), ("ceiling", ceiling))
              for name, r in results.items() if r.violations()]
    for line in broken:
        print(f"bench: guarantee broken: {line}", file=sys.stderr)
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
