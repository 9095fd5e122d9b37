"""One household floods order-intake: how much later do the others get their answers?

A real-time region (order-intake, ledger-writer and the real-time clock, as processes, with
the limits of ``MICROTE_MAX_ORDERS_PER_SLOT`` and ``MICROTE_MAX_REQUESTS_PER_S``) and
``--members`` households. In one round, three times:

1. **baseline**: every household sends one order, spread evenly over ``--spread`` seconds;
2. **flood, fair**: the same again, while one more household sends ``--flood`` orders for
   the same slot as fast as its connection takes them, to order-intake as it runs (each pass
   takes at most ``MICROTE_FAIR_SHARE`` of one sender's requests while others' wait);
3. **flood, arrival order**: the same as 2, to an order-intake restarted with
   ``MICROTE_FAIR_SHARE=0``: every request in arrival order (what fairness is measured
   against, in the same run).

It prints the machine, the inputs, the others' order-ack latency (p50, p99, max) in each
phase and the difference to the baseline, and what each flood got (accepted, and refused by
reason). Every other household's order must be answered and accepted, or the run fails
(exit 1).

    make bench-flood ARGS="--members 200 --flood 10000"
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ensemble import (  # noqa: E402  (bench/ensemble.py, beside this file)
    Market,
    Phase,
    base_env,
    fmt_s,
    machine,
    pct,
    region_name,
    server_versions,
)

from services.ensemble import Ensemble, purge_region  # noqa: E402
from shared.messages import encode  # noqa: E402
from shared.messages import types as t  # noqa: E402
from shared.runtime import topology as k  # noqa: E402
from shared.runtime.settings import from_env  # noqa: E402

FLOODER = "flooder"


def order(region: str, pid: str, coid: str, slot: t.Slot, i: int) -> bytes:
    return encode(t.SubmitOrder(region=region, participant_id=pid, client_order_id=coid, side="bid" if i % 2 else "ask",
                                quantity_wh=100 + i % 500, price="0.1000", source="solar", slot=slot))


async def spread(market: Market, phase: Phase, region: str, members: list[str], slot: t.Slot, tag: str,
                 spread_s: float) -> None:
    """Every member's order at its time (open loop)."""
    keys = k.Keys(region)
    began = time.perf_counter()
    for i, pid in enumerate(members):
        due = began + spread_s * i / len(members)
        if (wait := due - time.perf_counter()) > 0:
            await asyncio.sleep(wait)
        key = ("order", pid, tag)
        phase.sent[key] = time.perf_counter()
        await market.send(key, order(region, pid, tag, slot, i), keys.request(k.ORDER))


async def flood(market: Market, phase: Phase, region: str, slot: t.Slot, count: int, tag: str) -> float:
    """The flooder's orders, as fast as the broker confirms them, 100 in flight; seconds taken."""
    keys, began = k.Keys(region), time.perf_counter()
    for first in range(0, count, 100):
        batch = []
        for i in range(first, min(first + 100, count)):
            key = ("order", FLOODER, f"{tag}{i}")
            phase.sent[key] = time.perf_counter()
            batch.append(market.send(key, order(region, FLOODER, f"{tag}{i}", slot, i), keys.request(k.ORDER)))
        await asyncio.gather(*batch)
    return time.perf_counter() - began


def others(phase: Phase) -> tuple[list[float], Counter[str]]:
    """The other households' latencies and outcomes."""
    lat = [at - phase.sent[key] for key, (at, _) in phase.answered.items() if key[1] != FLOODER]
    return lat, Counter(got for key, (_, got) in phase.answered.items() if key[1] != FLOODER)


def flood_answered(phase: Phase) -> float:
    """When the flood's last answer arrived (perf_counter)."""
    return max(at for key, (at, _) in phase.answered.items() if key[1] == FLOODER)


async def wait_all(phase: Phase, timeout_s: float) -> None:
    phase.close()
    await asyncio.wait_for(phase.all_in.wait(), timeout_s)


async def amain(args: argparse.Namespace) -> int:
    region = region_name("flood", args.members)
    work = ROOT / "var" / "bench" / region
    env = {**base_env(region, work, None), "MICROTE_CLOCK_MODE": "realtime", "MICROTE_ROUND_SECONDS": "60",
           "MICROTE_MAX_ORDERS_PER_SLOT": str(args.max_orders), "MICROTE_MAX_REQUESTS_PER_S": str(args.rate),
           "MICROTE_REQUEST_BURST": str(args.burst)}
    settings = from_env(env)
    rabbit, redis = await server_versions(settings)
    print("\n".join(machine(rabbit, redis)))
    print(f"inputs:     {args.members} households, one order each over {args.spread:g} s, three times; the flood: "
          f"{args.flood:,} orders for the same slot from one more household; limits: {args.max_orders} orders "
          f"per slot, {args.rate:g} requests/s (burst {args.burst})")
    members = [f"h{i:05d}" for i in range(args.members)]
    ensemble = Ensemble(env, work / "logs")
    market = Market(settings.amqp_url, region)
    failures: list[str] = []
    try:
        await market.open()
        await ensemble.start_all(("ledger-writer", "order-intake", "clock"))
        joins = Phase("joins")
        market.phase = joins
        for pid in (*members, FLOODER):
            joins.sent[("join", pid)] = time.perf_counter()
            await market.send(("join", pid), encode(t.JoinMarket(region=region, participant_id=pid)),
                              k.Keys(region).request(k.MEMBER))
        await wait_all(joins, 120)
        r = await market.next_round(timeout_s=90)  # a round that began with every member in
        slot, ends = r.next_settle, r.current_round.end
        if ends - time.time() < 3 * args.spread + 20:
            r = await market.next_round(timeout_s=90)
            slot, ends = r.next_settle, r.current_round.end
        phases = {}
        for name, tag in (("baseline", "b"), ("flood, fair", "f"), ("flood, arrival order", "a")):
            if name == "flood, arrival order":
                ensemble.stop("order-intake")
                ensemble.start("order-intake", MICROTE_FAIR_SHARE="0")
                await ensemble.wait_healthy("order-intake")
            phase = phases[name] = Phase(name)
            market.phase = phase
            phase.began = time.perf_counter()
            work_done = [spread(market, phase, region, members, slot, tag, args.spread)]
            if name != "baseline":
                work_done.append(flood(market, phase, region, slot, args.flood, tag))
            took = await asyncio.gather(*work_done)
            await wait_all(phase, 300)
            if name != "baseline":
                last = flood_answered(phase)
                print(f"{name}: the flood left in {took[1]:.2f} s ({args.flood / took[1]:,.0f} orders/s); its last "
                      f"answer came {last - phase.began:.2f} s after the phase began")
        if any(rr.current_round.start > r.current_round.start for rr in market.rounds):
            failures.append("the round moved on during the run: shorten --spread")
        rows = []
        for name, phase in phases.items():
            lat, outcomes = others(phase)
            if outcomes != Counter({"accepted": len(members)}):
                failures.append(f"{name}: the other households got {dict(outcomes)}")
            rows.append((name, lat))
        print()
        print("| phase | other households' order-ack p50 | p99 | max |")
        print("|---|---|---|---|")
        for name, lat in rows:
            print(f"| {name} | {fmt_s(pct(lat, 0.5))} | {fmt_s(pct(lat, 0.99))} | {fmt_s(max(lat, default=None))} |")
        print("\nthe other households that sent while the flood was still unanswered (until its last answer):\n")
        print("| phase | households | order-ack p50 | p99 | max |")
        print("|---|---|---|---|---|")
        for name, phase in phases.items():
            if name == "baseline":
                continue
            last = flood_answered(phase)
            lat = [at - phase.sent[key] for key, (at, _) in phase.answered.items()
                   if key[1] != FLOODER and phase.sent[key] <= last]
            print(f"| {name} | {len(lat)} | {fmt_s(pct(lat, 0.5))} | {fmt_s(pct(lat, 0.99))} | "
                  f"{fmt_s(max(lat, default=None))} |")
        print()
        (_, base), *floods = rows
        for name, flooded in floods:
            print(f"{name}: the flood added {fmt_s(pct(flooded, 0.5) - pct(base, 0.5))} to the others' p50 and "
                  f"{fmt_s(pct(flooded, 0.99) - pct(base, 0.99))} to their p99")
            got = Counter(out for key, (_, out) in phases[name].answered.items() if key[1] == FLOODER)
            print(f"{name}: the flood got " + ", ".join(f"{n:,} {what}" for what, n in got.most_common()))
    finally:
        ensemble.stop_all()
        await market.wire.close()
        await purge_region(settings.amqp_url, settings.redis_url, region, [])
    for failure in failures:
        print(f"FAILED: {failure}")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=200, help="other households (default: %(default)s)")
    parser.add_argument("--flood", type=int, default=10_000, help="the flooder's orders (default: %(default)s)")
    parser.add_argument("--spread", type=float, default=10.0,
                        help="seconds over which the others send, each phase (default: %(default)s)")
    parser.add_argument("--max-orders", type=int, default=100,
                        help="MICROTE_MAX_ORDERS_PER_SLOT (default: %(default)s)")
    parser.add_argument("--rate", type=float, default=5.0, help="MICROTE_MAX_REQUESTS_PER_S (default: %(default)s)")
    parser.add_argument("--burst", type=int, default=50, help="MICROTE_REQUEST_BURST (default: %(default)s)")
    return asyncio.run(amain(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
