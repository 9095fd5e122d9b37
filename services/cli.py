"""The ``microte`` command: serve a service, simulate a community, run the demo, report, and
provision the broker accounts of a region's participants."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import sys
import time
import urllib.parse
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from shared.runtime.settings import Settings, SettingsError, from_env
from shared.runtime.trust import TrustError

_APPS = {
    "clock": "services.clock.app",
    "order-intake": "services.order_intake.app",
    "matcher": "services.matcher.app",
    "meter-collector": "services.meter_collector.app",
    "ledger-writer": "services.ledger_writer.app",
}


def _serve(args: argparse.Namespace) -> int:
    from shared.runtime.service import serve

    settings = from_env()
    return serve(importlib.import_module(_APPS[args.service]).create(settings))


def _simulate(args: argparse.Namespace) -> int:
    from services.participants.community import Community
    from services.participants.profiles import community

    settings = from_env()
    homes = community(args.participants, args.seed)
    tally = asyncio.run(Community(settings.amqp_url, settings.region, homes, settings.market.tariff.timezone,
                                  max_rounds=args.rounds, aggregators=args.aggregators).run())
    print(f"simulation done: {tally.rounds} rounds, answers {dict(tally.answers)}, rejections {dict(tally.rejections)}")
    return 0


async def _report(settings: Settings) -> tuple[str, bool]:
    from services.report import report
    from shared.runtime.ledger import open_ledger

    store = open_ledger(settings.ledger_url)
    await store.open()
    try:
        return await report(store, settings.market)
    finally:
        await store.close()


def _report_cmd(args: argparse.Namespace) -> int:
    env = dict(os.environ)
    if args.ledger:
        env["MICROTE_LEDGER_URL"] = args.ledger
    if args.region:
        env["MICROTE_REGION"] = args.region
    text, ok = asyncio.run(_report(from_env(env)))
    print(text)
    return 0 if ok else 1


async def _replay(settings: Settings, slot_start: int) -> str:
    from shared.runtime.ledger import open_ledger
    from shared.runtime.replay import replay_slot

    store = open_ledger(settings.ledger_url)
    await store.open()
    try:
        done = await replay_slot(store, settings.market, slot_start)
    finally:
        await store.close()
    return (f"replayed slot {done.slot.start}-{done.slot.end} of region {settings.region}: "
            f"{len(done.settlements)} settlements, {len(done.entries)} entries written")


def _replay_cmd(args: argparse.Namespace) -> int:
    from shared.runtime.replay import ReplayRefused

    env = dict(os.environ)
    if args.ledger:
        env["MICROTE_LEDGER_URL"] = args.ledger
    env["MICROTE_REGION"] = args.region
    try:
        print(asyncio.run(_replay(from_env(env), args.slot)))
    except ReplayRefused as exc:
        print(f"microte: {exc}", file=sys.stderr)
        return 1
    return 0


async def _bad_input(settings: Settings, day: str) -> list[tuple[str, int]]:
    from redis.asyncio import Redis

    from shared.runtime.state import RegionState

    redis = Redis.from_url(settings.redis_url)
    try:
        return await RegionState(redis, settings.region).bad_input(day)
    finally:
        await redis.aclose()


def _bad_input_cmd(args: argparse.Namespace) -> int:
    env = {**os.environ, "MICROTE_REGION": args.region}
    day = args.day or time.strftime("%Y-%m-%d", time.gmtime())
    found = asyncio.run(_bad_input(from_env(env), day))
    print(f"bad input to region {args.region} on {day} (UTC), by sender:" if found else
          f"no bad input to region {args.region} on {day} (UTC)")
    for sender, count in found:
        print(f"  {count:>9}  {sender}")
    return 0


_MANAGEMENT_URL = "http://guest:guest@127.0.0.1:15672"


async def _membership(settings: Settings, ids: list[str]) -> tuple[set[str], dict[str, str]]:
    from redis.asyncio import Redis

    from shared.runtime.state import RegionState

    redis = Redis.from_url(settings.redis_url)
    try:
        state = RegionState(redis, settings.region)
        members = {pid for pid in ids if await state.is_member(pid)}
        return members, await state.agents()
    finally:
        await redis.aclose()


def _participants_cmd(args: argparse.Namespace) -> int:
    from services.participants import accounts as a

    settings = from_env({**os.environ, "MICROTE_REGION": args.region})
    vhost = urllib.parse.unquote(urllib.parse.urlsplit(settings.amqp_url).path.lstrip("/")) or "/"
    admin = a.Management(args.management_url, vhost)
    try:
        if args.action == "add":
            added = a.add(admin, settings.amqp_url, args.region, args.participant,
                          kind="aggregator" if args.aggregator else "household", agent=args.agent,
                          password=args.password)
            print(f"{added.account.kind} {args.participant} is an account of region {args.region}"
                  + (f", acting through agent {added.agent}" if added.agent else ""))
            if added.password is not None and args.password is None:
                print(f"password: {added.password}")
            return 0
        if args.action == "remove":
            closed = a.remove(admin, settings.amqp_url, args.region, args.participant)
            print(f"{args.participant} removed from region {args.region}: left the market, "
                  f"{closed} connection(s) closed, queue and user deleted")
            return 0
        found = a.accounts(admin, args.region)
        try:
            members, agents = asyncio.run(_membership(settings, [x.participant_id for x in found]))
        except OSError as exc:
            print(f"microte: Redis is not reachable ({exc}); membership is not shown", file=sys.stderr)
            members, agents = set(), {}
        print(f"{'participant':<24} {'kind':<11} {'member':<7} agent")
        for x in found:
            print(f"{x.participant_id:<24} {x.kind:<11} {'yes' if x.participant_id in members else 'no':<7} "
                  f"{agents.get(x.participant_id, '')}")
        print(f"{len(found)} account(s) in region {args.region}")
        return 0
    except a.AccountError as exc:
        print(f"microte: {exc}", file=sys.stderr)
        return 1


def _demo(args: argparse.Namespace) -> int:
    from services.demo import run_demo

    tz = ZoneInfo(args.timezone)
    start = int(datetime.fromisoformat(args.start).replace(tzinfo=tz).timestamp())
    region = args.region or f"demo{int(time.time())}"
    env = {
        **{k: v for k, v in os.environ.items() if k.startswith("MICROTE_")},
        "MICROTE_REGION": region,
        "MICROTE_TIMEZONE": args.timezone,
        "MICROTE_CLOCK_MODE": "simulation",
        "MICROTE_ROUNDS": str(args.rounds),
        "MICROTE_START_TIME": str(start),
        "MICROTE_ROUND_SECONDS": str(args.round_seconds),
        "MICROTE_LEDGER_URL": args.ledger or os.environ.get("MICROTE_LEDGER_URL", "sqlite:///var/ledger.sqlite"),
    }
    return asyncio.run(run_demo(env, participants=args.participants, seed=args.seed,
                                log_dir=Path("var/logs") / region, aggregators=args.aggregators))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="microte", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run one service (settings from MICROTE_* variables)")
    serve.add_argument("service", choices=sorted(_APPS))
    serve.set_defaults(run=_serve)
    sim = sub.add_parser("simulate", help="run a simulated community against running services")
    sim.add_argument("--participants", type=int, default=20)
    sim.add_argument("--seed", type=int, default=7)
    sim.add_argument("--rounds", type=int, default=0,
                     help="leave after this many rounds (default: when the clock's last round is recorded)")
    sim.add_argument("--aggregators", type=int, default=1,
                     help="aggregators submitting one batch a round for their households (0: one message each)")
    sim.set_defaults(run=_simulate)
    demo = sub.add_parser("demo", help="start the five services, simulate a community, report")
    demo.add_argument("--participants", type=int, default=20)
    demo.add_argument("--rounds", type=int, default=1440, help="rounds to simulate (1440 x 60 s = one day)")
    demo.add_argument("--round-seconds", type=int, default=60)
    demo.add_argument("--aggregators", type=int, default=1,
                      help="the households act through this many aggregators, each submitting one batch a round "
                           "for all of its households (default 1: the community as one aggregator; 0: every "
                           "household sends its own requests, one message each)")
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--start", default="2026-06-21T00:00", help="local market time of the first round")
    demo.add_argument("--timezone", default="America/Vancouver")
    demo.add_argument("--ledger", help="postgresql://... or sqlite:///path (default sqlite:///var/ledger.sqlite)")
    demo.add_argument("--region", help="region id (default: a fresh one per run)")
    demo.set_defaults(run=_demo)
    rep = sub.add_parser("report", help="report on a region's ledger")
    rep.add_argument("--ledger")
    rep.add_argument("--region")
    rep.set_defaults(run=_report_cmd)
    replay = sub.add_parser("replay-slot", help="clear and reconcile a held slot from the ledger's records "
                            "(market settings from MICROTE_* variables, as the region's services have them)")
    replay.add_argument("--region", required=True)
    replay.add_argument("--slot", type=int, required=True, help="the held slot's start, UNIX seconds")
    replay.add_argument("--ledger", help="the region's ledger URL (default: MICROTE_LEDGER_URL)")
    replay.set_defaults(run=_replay_cmd)
    bad = sub.add_parser("bad-input", help="who sent malformed, forged or misrouted messages to a region, per day "
                         "(senders: the broker user where the message names one, else the participant it claims)")
    bad.add_argument("--region", required=True)
    bad.add_argument("--day", help="YYYY-MM-DD, UTC (default: today); kept 8 days")
    bad.set_defaults(run=_bad_input_cmd)
    parts = sub.add_parser("participants", help="broker accounts of a region's households and aggregators, "
                           "through RabbitMQ's management API (for MICROTE_IDENTITY=broker_user)")
    parts.add_argument("action", choices=("add", "remove", "list"))
    parts.add_argument("participant", nargs="?", help="participant id (add, remove)")
    parts.add_argument("--region", required=True)
    parts.add_argument("--aggregator", action="store_true", help="add: an aggregator, not a household")
    parts.add_argument("--agent", help="add: the aggregator that may act for this household (it is joined "
                       "to the market naming it)")
    parts.add_argument("--password", help="add: its password (default: a new random one, printed once)")
    parts.add_argument("--management-url", default=os.environ.get("MICROTE_MANAGEMENT_URL", _MANAGEMENT_URL),
                       help="RabbitMQ management API with an administrator's credentials "
                            f"(default: MICROTE_MANAGEMENT_URL, else {_MANAGEMENT_URL})")
    parts.set_defaults(run=_participants_cmd)
    args = parser.parse_args(argv)
    if args.command == "participants" and (args.action == "list") == (args.participant is not None):
        parser.error("participants add and remove need a participant id; list takes none")
    try:
        return int(args.run(args))
    except (SettingsError, TrustError) as exc:
        print(f"microte: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
