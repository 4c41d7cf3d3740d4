"""scripts/chaos: faults injected while traffic runs, then proof that nothing acked was lost.

It starts its own local multi-node Ray cluster (a head node and two worker nodes carrying the
region, cluster.py), an embedded PostgreSQL in a temporary directory (or DATABASE_URL) and the
platform on a free port; seeds every shard with 10,000 mailboxes with history; then users send over
WebSocket in direct and group conversations while the injector strikes one fault every --interval
seconds, in turn. Then it quiesces (every send answered, every client caught up with its mailbox
head), reads the database, runs the history checker (PROTOCOL.md guarantees 1-4 and 7), measures
recovery after each shard loss and how sends fared while PostgreSQL was down, and prints a summary.

  scripts/chaos                                   10 minutes, every fault kind
  scripts/chaos --duration 120 --interval 12      a short run
  scripts/chaos --faults shard_kill,pg_restart    only those kinds, in that order
  scripts/chaos --json                            end stdout with one JSON line of the figures

Exit status: 0 when the history holds every guarantee, 1 on any violation, 2 when the run could not
be carried out.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import json
import logging
import os
import secrets
import shutil
import sys
import tempfile
import threading
import time

from switchboard.actors.ring import Ring
from switchboard.private_ports import free_port
from switchboard.settings import Settings
from switchboard.storage.database import make_engine

from .cluster import INGRESS_RESOURCE, LocalCluster
from .faults import (
    DEFAULT_ORDER,
    FAULTS,
    REGION_ORDER,
    FaultContext,
    FaultRecord,
    await_restart,
    build_faults,
    current_shard_count,
)
from .history import Report, check_history
from .seeding import seed_mailboxes
from .snapshot import database_state, mailbox_heads
from .timings import (
    OutageReport,
    Recovery,
    StruckRegion,
    outage_report,
    send_p99s,
    send_pauses,
    shard_recoveries,
    summarize,
    summarize_seconds,
)
from .traffic import Traffic

log = logging.getLogger(__name__)

QUIESCE_TIMEOUT_S = 120.0
# Traffic runs this long before the first fault, so every conversation has history when it strikes.
WARM_UP_S = 5.0
# Per-user send rate limit for the run: well above the traffic's own rate, so refusals come from faults.
SEND_RATE_PER_S = 1000.0


def gateway_replicas(regions) -> int:
    """Each region's entry point's replicas in the run (see ChaosRun)."""
    return 2 if len(regions) < 2 else 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/chaos", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of traffic under faults (default 600)")
    parser.add_argument("--faults", default=None,
                        help=f"comma-separated kinds, injected in this order, repeatedly "
                             f"(default {','.join(DEFAULT_ORDER)}, and {','.join(REGION_ORDER)} with several regions)")
    parser.add_argument("--regions", default="local",
                        help="comma-separated regions, one worker node each (default: local, two nodes); "
                             "with several, the faults default adds region_loss and region_return")
    parser.add_argument("--interval", type=float, default=20.0, help="seconds between faults (default 20)")
    parser.add_argument("--users", type=int, default=20, help="users sending (default 20)")
    parser.add_argument("--rate", type=float, default=2.0, help="sends per second per user (default 2)")
    parser.add_argument("--shards", type=int, default=2, help="mailbox-shard actors (default 2)")
    parser.add_argument("--seed-mailboxes", type=int, default=10_000,
                        help="mailboxes with history seeded onto each shard (default 10000; 0: none)")
    parser.add_argument("--seed", type=int, default=None, help="random seed of the traffic plan")
    parser.add_argument("--json", action="store_true", help="end stdout with one JSON line of the figures")
    parser.add_argument("--dump", metavar="PATH", help="write every client's log (each connection's frames, "
                        "each send's attempts) and the fault records to PATH as JSON, for a closer look")
    args = parser.parse_args(argv)
    args.regions = tuple(region.strip() for region in args.regions.split(",") if region.strip())
    if not args.regions:
        parser.error("--regions needs at least one region")
    if args.faults is None:
        args.faults = ",".join(DEFAULT_ORDER + (REGION_ORDER if len(args.regions) > 1 else ()))
    args.faults = [kind.strip() for kind in args.faults.split(",") if kind.strip()]
    unknown = [kind for kind in args.faults if kind not in FAULTS]
    if unknown:
        parser.error(f"unknown fault kind(s) {unknown}; known: {', '.join(FAULTS)}")
    if args.users < 4:
        parser.error("--users must be at least 4")
    if args.seed is None:
        args.seed = secrets.randbelow(1_000_000)
    return args


def progress(text: str) -> None:
    print(f"chaos: {text}", file=sys.stderr, flush=True)


# ---- the run ------------------------------------------------------------------------------------

class ChaosRun:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.run_id = secrets.token_hex(3)
        self.data_dir = tempfile.mkdtemp(prefix="sbchaos-data-")
        base = Settings.from_env()
        self.settings = base.replace(
            jwt_secret=secrets.token_urlsafe(24),
            host="127.0.0.1",
            port=free_port(),
            data_dir=self.data_dir,
            namespace=f"switchboard-chaos-{self.run_id}",
            region=args.regions[0],
            regions=args.regions,
            shards_per_region=args.shards,
            # Gateway replicas on the head node, so a node_remove takes shards, never a replica
            # (when it also took the only replica, it measured Serve replacing that, up to ~10 s,
            # not the shards' recovery). One region: two replicas, so a gateway_kill drops half the
            # clients, who resume on the other at once. Several: one per region's entry point
            # (six processes for three regions left the 2-core machine short: hand-back sends
            # waited up to 4.3 s); a gateway_kill then sends that entry point's clients on to the
            # next region's gateway (the SDK's failover), resuming with `since` there.
            min_replicas=gateway_replicas(args.regions),
            max_replicas=gateway_replicas(args.regions),
            gateway_node_resource=INGRESS_RESOURCE,
            send_rate_per_s=SEND_RATE_PER_S,
            send_burst=int(SEND_RATE_PER_S),
        )
        self.ring = Ring(args.shards)
        # One worker node per region when there are several (a region's loss is its node's), two
        # for a lone region (a node_remove then moves its shards to the other).
        self.cluster = LocalCluster(self.settings, workers=len(args.regions) if len(args.regions) > 1 else 2)
        self.records: list[FaultRecord] = []
        self.setup_notes: list[str] = []
        self.notes: list[str] = []  # what kept the run from completing (a failed check by itself)

    def start(self) -> FaultContext:
        from ray import serve

        from switchboard.local import prepare_database, resolve_database, start_platform

        progress(f"starting a Ray cluster: a head node and {self.cluster.worker_count} worker nodes labelled "
                 f"with the regions {','.join(self.settings.regions)}")
        self.cluster.start()
        # One proxy, on the head: every node of this cluster shares the machine's loopback, so a
        # proxy per node would fight over the one port.
        serve.start(proxy_location="HeadOnly", http_options={"host": self.settings.host, "port": self.settings.port})
        database_url, embedded = resolve_database(self.settings, keep_running=False)
        prepare_database(database_url)
        if self.args.seed_mailboxes:
            progress(f"seeding {self.args.seed_mailboxes} mailboxes with history onto each of "
                     f"{self.args.shards} shards")
            engine = make_engine(database_url, pool_size=1)
            try:
                summary = seed_mailboxes(engine, self.run_id, self.args.shards, self.args.seed_mailboxes)
            finally:
                engine.dispose()
            self.setup_notes.append(f"seeded {summary.mailboxes_per_shard} mailboxes per shard, "
                              f"{summary.messages} messages, {summary.events} mailbox events")
        progress("starting the platform")
        platform = start_platform(self.settings, keep_postgres=False)
        return FaultContext(self.settings, self.cluster, platform.database_url, embedded)

    def inject_faults(self, context: FaultContext) -> None:
        """On the main thread (Ray's node start installs signal handlers, which only it may),
        while the traffic runs undisturbed on its own event loop thread."""
        faults = build_faults(self.args.faults)
        started = time.monotonic()
        turn = 0
        while True:
            next_at = started + WARM_UP_S + turn * self.args.interval
            if next_at - started >= self.args.duration:
                break
            time.sleep(max(0.0, next_at - time.monotonic()))
            fault = faults[turn % len(faults)]
            turn += 1
            shard_count = current_shard_count(context)
            record = fault.inject(context)
            record.shard_count = record.shard_count or shard_count
            self.records.append(record)
            skipped = " (skipped)" if record.skipped else ""
            progress(f"{time.monotonic() - started:6.1f} s  {record.kind}{skipped}: {record.detail}")
            if record.killed_shards and not record.skipped and not await_restart(context, record):
                self.notes.append(f"{record.kind} {record.detail}: shards not restarted within the wait")
        time.sleep(max(0.0, started + self.args.duration - time.monotonic()))

    async def quiesce(self, traffic: Traffic, engine) -> None:
        progress("quiescing: every send answered, every client caught up")
        if not await traffic.stop_sending(QUIESCE_TIMEOUT_S):
            self.notes.append(f"some sends were still unanswered after {QUIESCE_TIMEOUT_S:g} s")
        user_ids = [user.user_id for user in traffic.users]
        heads = await asyncio.to_thread(mailbox_heads, engine, user_ids)
        if not await traffic.catch_up(heads, QUIESCE_TIMEOUT_S):
            self.notes.append(f"clients behind their mailbox head (received, head): {traffic.behind(heads)}")
        await traffic.close()

    def run(self, context: FaultContext) -> tuple[Report, Traffic]:
        url = f"http://{self.settings.host}:{self.settings.port}"
        traffic = Traffic(url, self.settings.jwt_secret, self.run_id, self.args.users, self.args.shards,
                          self.args.rate, self.args.seed, list(self.settings.regions))
        engine = make_engine(context.database_url, pool_size=1)
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="chaos-traffic", daemon=True)
        thread.start()

        def on_traffic_loop(coroutine):
            return asyncio.run_coroutine_threadsafe(coroutine, loop).result()

        try:
            on_traffic_loop(traffic.setup())
            progress(f"{len(traffic.users)} users in {len(traffic.conversations)} conversations sending; "
                     f"faults every {self.args.interval:g} s for {self.args.duration:g} s")
            self.inject_faults(context)
            on_traffic_loop(self.quiesce(traffic, engine))
            progress("reading the database and checking the history")
            state = database_state(engine, list(traffic.conversations), [u.user_id for u in traffic.users])
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            engine.dispose()
        return check_history(traffic.logs(), state), traffic

    def stop(self) -> None:
        from switchboard.local import stop_database, stop_platform

        import ray

        try:
            if ray.is_initialized():  # (serve.shutdown would otherwise start a Ray of its own)
                stop_platform(self.settings)
        except Exception as error:
            log.warning("stopping the platform: %s", error)
        finally:
            self.cluster.shutdown()
            try:
                stop_database(self.settings)
            except Exception as error:
                log.warning("stopping PostgreSQL: %s", error)
            shutil.rmtree(self.data_dir, ignore_errors=True)


# ---- the report ---------------------------------------------------------------------------------

def figures(report: Report, records: list[FaultRecord], recoveries: list[Recovery], outage: OutageReport,
            failures: list[str], notes: list[str], timeline, layout: dict | None = None) -> dict:
    counted = collections.Counter(r.kind for r in records if not r.skipped)
    skipped = collections.Counter(r.kind for r in records if r.skipped)
    return {
        "faults": dict(counted),
        "sent": report.sends,
        "acked": report.acked,
        "delivered": report.delivered,
        "lost": report.lost,
        "duplicates": report.duplicates,
        "unanswered": report.unanswered,
        "recovery_s": summarize(recoveries),
        "takeover_s": summarize([r for r in recoveries if r.kind == "region_loss"]),
        "handback_pause_s": summarize_seconds(send_pauses(records, timeline, "region_return")),
        "handback_send_p99_s": summarize_seconds(send_p99s(records, timeline, "region_return")),
        "reshard_pause_s": summarize_seconds(send_pauses(records, timeline, "reshard")),
        "reshard_send_p99_s": summarize_seconds(send_p99s(records, timeline, "reshard")),
        "violations": len(report.violations),
        "violations_by_guarantee": {str(g): len(v) for g, v in report.by_guarantee().items()},
        "resyncs": report.resyncs,
        "skipped_faults": dict(skipped),
        "db_outage": {**outage.to_json(), "problems": len(outage.problems)},
        "refused_for_good": len(failures),
        "incomplete": len(notes),
        "layout": layout or {},
    }


def print_summary(report: Report, records, recoveries, outage: OutageReport, failures, notes, setup_notes) -> None:
    print("Chaos run")
    for note in setup_notes:
        print(f"  {note}")
    print("Faults injected, in order:")
    for record in records:
        print(f"  {record.kind:<13} {'skipped: ' if record.skipped else ''}{record.detail}")
    print(f"Sends: {report.sends} made, {report.acked} acked (`sent`), {report.unanswered} unanswered; "
          f"{report.delivered} message deliveries; {report.resyncs} resync_required")
    print(f"Lost: {report.lost}   duplicates: {report.duplicates}")
    print("Recovery after shard loss (kill -> restarted shard commits a send / delivers to its mailboxes):")
    for r in recoveries:
        parts = (f"sequencer {_s(r.sequencer_s)}, mailbox {_s(r.mailbox_s)}; "
                 f"process restarted at {_s(r.restarted_s)}, serving at {_s(r.ready_s)}")
        print(f"  {r.kind:<13} {r.detail:<28} {_s(r.seconds):>8}  ({parts})")
    summary = summarize(recoveries)
    print(f"  median {_s(summary['median'])}, max {_s(summary['max'])}  (goal: median <= 2 s, max <= 5 s)")
    if any(r.kind == "pg_restart" and not r.skipped for r in records):
        o = outage
        print(f"PostgreSQL down: {o.attempts} send attempts, {o.overloaded} answered `overloaded`, "
              f"{sum(o.refused_otherwise.values())} refused otherwise {o.refused_otherwise or ''}, "
              f"{o.sent_while_down} `sent`, {len(o.hung)} hung, {len(o.connections_closed)} connections closed; "
              f"first `sent` after it came back: {', '.join(_s(s) for s in o.recovered_s) or '-'}")
    if report.violations:
        print(f"VIOLATIONS ({len(report.violations)}):")
        for guarantee, violations in report.by_guarantee().items():
            print(f"  guarantee {guarantee}: {len(violations)}")
            for violation in violations[:20]:
                print(f"    {violation}")
    for problem in outage.problems:
        print(f"PROBLEM: {problem}")
    for failure in failures[:20]:
        print(f"REFUSED FOR GOOD: {failure}")
    for note in notes:
        print(f"INCOMPLETE: {note}")
    verdict = "held" if _passed(report, outage, failures, notes) else "VIOLATED"
    print(f"Guarantees 1-4 and 7: {verdict}")


def dump(path: str, traffic: Traffic, records: list[FaultRecord]) -> None:
    with open(path, "w") as out:
        json.dump({
            "faults": [dataclasses.asdict(record) | {"killed_shards": sorted(record.killed_shards)}
                       for record in records],
            "clients": [dataclasses.asdict(log) for log in traffic.logs()],
            "conversations": traffic.conversations,
            "timeline": dataclasses.asdict(traffic.timeline),
        }, out)


def _passed(report: Report, outage: OutageReport, failures: list[str], notes: list[str]) -> bool:
    return report.ok and not outage.problems and not failures and not notes


def _s(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.2f} s"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Ray's node processes inherit this process's stdout and write to it (the raylet's state dumps
    # when a node is removed); the report keeps the real stdout to itself, so that the JSON line
    # stays the last line, and everything else goes to stderr.
    sys.stdout.flush()
    report_out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    run = ChaosRun(args)
    try:
        try:
            context = run.start()
        except Exception as error:
            progress(f"could not start the platform: {error!r}")
            return 2
        try:
            report, traffic = run.run(context)
        except Exception as error:
            log.exception("the chaos run failed")
            progress(f"the run could not be carried out: {error!r}")
            return 2
    finally:
        progress("stopping the cluster")
        run.stop()
    incomplete = run.notes
    setup_notes = run.setup_notes + [
        f"{args.users} users, {len(traffic.conversations)} conversations, {args.shards} shards, seed {args.seed}",
        f"layout: {traffic.layout()}"]
    struck = StruckRegion(run.settings.region, run.settings.regions, traffic.homes())
    recoveries = shard_recoveries(run.records, traffic.timeline, run.ring, struck)
    outage = outage_report(run.records, traffic.timeline, run.settings.send_timeout_s)
    failures = traffic.failures()
    sys.stdout = report_out
    print_summary(report, run.records, recoveries, outage, failures, incomplete, setup_notes)
    closes = collections.Counter(None if close.code is None else int(close.code) for close in traffic.timeline.closes)
    print(f"Connections dropped, by close code: {dict(closes) or 'none'}")
    if args.dump:
        dump(args.dump, traffic, run.records)
    if args.json:
        print(json.dumps(figures(report, run.records, recoveries, outage, failures, incomplete, traffic.timeline,
                                 traffic.layout())), flush=True)
    return 0 if _passed(report, outage, failures, incomplete) else 1


if __name__ == "__main__":
    sys.exit(main())
