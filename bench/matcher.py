"""Matcher benchmark: one slot read from Redis, cleared and published, object path vs columns.

For each size and participant regime it writes a book (as many bids as asks) into the
real local Redis, the way order-intake stores it (one ``OrderAccepted`` per order in the
slot's book hash) under a region of its own (``bench-<random>``), then runs the matcher's
whole ``clear_slot`` on it, with a real ``Service``, alternately along two paths:

  objects   the path before the columns (the handler as it was, copied below): an
            ``OrderAccepted``, an ``Order`` and a ``Decimal`` per order, ``clear``, a
            ``Settlement`` and a ``settlement_to_wire`` per fill, a metric update per fill
  columns   ``services.matcher.handlers.Matcher.clear_slot`` as it is now
            (``shared.messages.convert.clear_wire_book``)

Each run reads the book from Redis (HVALS), clears it, and publishes the ``SlotCleared``
fact and one ``SettlementsNotice`` per party through ``Service.publish_all``: persistent,
signed, with publisher confirms, to the ``microte`` topic exchange of the local RabbitMQ,
where a temporary durable queue bound to ``<region>.#`` takes them (so the broker really
writes them); the bench counts them there, then purges the queue. It prints the median
of the repeats, split into read (``RegionState.book``), clear (everything else: decode,
match, records, metrics) and publish (``publish_all``), checks that both paths published
the same bytes, and prints the ratio. Its floor: the same bodies published bare (aio-pika
on the benchmark's own confirming channel, persistent, all at once, without the services'
signature header or metrics) into the same queue, after each columns run, and the
columns' publish against it. At the end it deletes the queue and the region's
Redis keys (never the database: other work shares it).

    .venv/bin/python bench/matcher.py                        # 10k and 100k per side
    .venv/bin/python bench/matcher.py --sizes 100k --repeats 5 --participants 200,many
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import importlib.metadata
import secrets
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import aio_pika
import redis.utils

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from clearing import (  # noqa: E402  (bench/clearing.py, beside this file)
    ASK_TICKS,
    BID_TICKS,
    QUANTITY_WH,
    SLOT,
    SOURCES,
    fmt_s,
    label,
    machine,
    make_orders,
    parse_size,
)

from services.matcher.handlers import Matcher  # noqa: E402
from shared.market import PricingRule, Slot, clear  # noqa: E402
from shared.messages import decode_as, encode  # noqa: E402
from shared.messages import types as t  # noqa: E402
from shared.messages.convert import order_from_wire, order_to_wire, settlement_to_wire, slot_to_wire  # noqa: E402
from shared.runtime.metrics import JOULES_PER_WH  # noqa: E402
from shared.runtime.service import Service  # noqa: E402
from shared.runtime.settings import MarketSettings, Settings  # noqa: E402
from shared.runtime.state import Snapshot  # noqa: E402
from shared.runtime.topology import EXCHANGE, SETTLEMENTS, SLOT_CLEARED, dead_letter_queue  # noqa: E402

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
REDIS_URL = "redis://127.0.0.1:6379/0"
MATCHED_AT_MS = SLOT.start * 1000


class ObjectMatcher(Matcher):
    """The matcher as it was before the columnar path: ``clear_slot`` copied as it stood."""

    async def clear_slot(self, slot: Slot, matched_at_ms: int) -> None:
        metrics, region = self.svc.metrics, self.svc.region
        book = await self.state.book(slot)
        started = time.perf_counter()
        try:
            orders = [order_from_wire(decode_as(raw, t.OrderAccepted)) for raw in book]
            settlements = clear(orders, region=region, slot=slot, rule=self.market.rule, matched_at_ms=matched_at_ms)
            records = [settlement_to_wire(s) for s in settlements]
        except Exception as exc:
            await self.svc.state_ready()
            await self.hold(slot, matched_at_ms, len(book), f"{type(exc).__name__}: {exc}")
            return
        metrics.clearing_duration.labels(region).observe(time.perf_counter() - started)
        await self.svc.state_ready()
        wire_slot = slot_to_wire(slot)
        by_party: dict[str, list[t.SettlementRecord]] = defaultdict(list)
        for record in records:
            by_party[record.buyer].append(record)
            by_party[record.seller].append(record)
        cleared = t.SlotCleared(region=region, slot=wire_slot, rule=str(self.market.rule),
                                matched_at_ms=matched_at_ms, order_count=len(orders), settlements=records)
        await self.svc.publish_all([(cleared, self.svc.keys.fact(SLOT_CLEARED))] + [
            (t.SettlementsNotice(region=region, participant_id=p, slot=wire_slot, settlements=mine),
             self.svc.keys.to(p, SETTLEMENTS))
            for p, mine in sorted(by_party.items())
        ])
        await self.state.finish_clearing(slot)
        energy = sum(s.quantity_wh for s in settlements)
        for side in ("bid", "ask"):
            metrics.book_orders.labels(region, side).set(sum(1 for o in orders if o.side == side))
        for s in settlements:
            metrics.matched_energy.labels(region, s.source).inc(s.quantity_wh * JOULES_PER_WH)
        metrics.settlements.labels(region).inc(len(settlements))
        metrics.slot_matched_energy.labels(region).set(energy * JOULES_PER_WH)
        if energy:
            paid = sum(s.buy_price * s.quantity_wh for s in settlements)
            metrics.slot_price.labels(region).set(float(paid / energy))
        self.svc.log.info("slot_cleared", slot=str(slot), orders=len(orders), settlements=len(settlements),
                          energy_wh=energy)


class Run:
    """One ``clear_slot``: its laps, and what it handed to ``publish_all``."""

    def __init__(self) -> None:
        self.read = self.publish = 0.0
        self.published: list[tuple[t.Message, str]] = []


class Timer:
    """Times the book's read and the publishing of the current run, on one service object."""

    def __init__(self, svc: Service) -> None:
        self.run = Run()
        read, publish_all = svc.state.book, svc.publish_all

        async def book(slot: Slot) -> list[bytes]:
            started = time.perf_counter()
            try:
                return await read(slot)
            finally:
                self.run.read += time.perf_counter() - started

        async def publish(items: list[tuple[t.Message, str]]) -> None:
            started = time.perf_counter()
            try:
                await publish_all(items)
            finally:
                self.run.publish += time.perf_counter() - started
                self.run.published = items

        svc.state.book = book  # type: ignore[method-assign]
        svc.publish_all = publish  # type: ignore[method-assign]


def digest(items: list[tuple[t.Message, str]]) -> str:
    h = hashlib.blake2b(digest_size=8)
    for message, key in items:
        h.update(key.encode() + b"\0" + encode(message) + b"\0")
    return h.hexdigest()


def version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


async def server_versions(connection: aio_pika.abc.AbstractConnection, svc: Service) -> tuple[str, str]:
    info = await svc.redis.info("server")
    underlay = connection.transport.connection if connection.transport is not None else None
    rabbit = underlay.server_properties.get("version", "?") if underlay is not None else "?"
    rabbit_text = rabbit.decode() if isinstance(rabbit, bytes) else str(rabbit)
    return str(info.get("redis_version", "?")), rabbit_text


async def bench_case(svc: Service, timer: Timer, exchange: aio_pika.abc.AbstractExchange,
                     queue: aio_pika.abc.AbstractQueue, per_side: int, participants: int, repeats: int,
                     seed: int) -> None:
    region = svc.region
    orders = make_orders(per_side, participants, seed)
    entries = [(o.order_id, encode(order_to_wire(o, region=region))) for o in orders]
    await svc.state.forget_everything()
    await svc.state.restore(Snapshot(round_start=SLOT.start, books={SLOT: entries}), token="bench", now_ms=0)
    book_mb = sum(len(raw) for _, raw in entries) / 1e6
    del orders, entries

    paths: dict[str, Matcher] = {"objects": ObjectMatcher(svc), "columns": Matcher(svc)}
    laps: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name in paths}
    digests: dict[str, set[str]] = {name: set() for name in paths}
    shape: dict[str, tuple[int, int, float]] = {}
    floors: list[float] = []
    for _ in range(repeats):
        for name, matcher in paths.items():
            run = timer.run = Run()
            gc.collect()
            started = time.perf_counter()
            await matcher.clear_slot(SLOT, matched_at_ms=MATCHED_AT_MS)
            total = time.perf_counter() - started
            laps[name].append((run.read, total - run.read - run.publish, run.publish, total))
            digests[name].add(digest(run.published))
            cleared = run.published[0][0]
            assert isinstance(cleared, t.SlotCleared) and not cleared.failure, "the book did not clear"
            shape[name] = (len(cleared.settlements), len(run.published) - 1,
                           sum(len(encode(m)) for m, _ in run.published) / 1e6)
            queued = await wait_queued(queue, len(run.published))
            assert queued == len(run.published), f"{queued} messages queued of {len(run.published)} published"
            await queue.purge()
            if name == "columns":  # the floor: the same bodies, published bare
                floors.append(await publish_floor(exchange, queue, [(encode(m), k) for m, k in run.published]))
            timer.run = Run()
    same = digests["objects"] == digests["columns"] and len(digests["columns"]) == 1
    fills, notices, megabytes = shape["columns"]
    median = {name: [statistics.median(lap[i] for lap in laps[name]) for i in range(4)] for name in paths}
    for name in paths:
        read, clearing, publish, total = median[name]
        print(f"{label(per_side):>11} {participants:>9,} {name:>8} {fills:>9,} {notices:>8,} {megabytes:>7.1f} "
              f"{repeats:>4} {fmt_s(read):>9} {fmt_s(clearing):>9} {fmt_s(publish):>9} {fmt_s(total):>9}", flush=True)
    ratio = median["objects"][3] / median["columns"][3]
    clear_ratio = median["objects"][1] / median["columns"][1]
    floor = statistics.median(floors)
    print(f"{'':>11} {'':>9} {'':>8} book {book_mb:.1f} MB in Redis; objects/columns: total {ratio:.1f}x, "
          f"clear {clear_ratio:.1f}x; same bytes published: {'yes' if same else 'NO'}", flush=True)
    print(f"{'':>11} {'':>9} {'':>8} publish floor {fmt_s(floor)} (the same {notices + 1:,} bodies, bare); "
          f"columns' publish / floor {median['columns'][2] / floor:.1f}x", flush=True)


async def publish_floor(exchange: aio_pika.abc.AbstractExchange, queue: aio_pika.abc.AbstractQueue,
                        bodies: list[tuple[bytes, str]]) -> float:
    """Seconds to publish ``bodies`` as bare aio-pika does it, on the benchmark's own channel
    (publisher confirms): persistent, all at once, without the services' headers (signature,
    sender) or metrics; into ``queue``, counted and purged afterwards."""
    gc.collect()
    started = time.perf_counter()
    await asyncio.gather(*(exchange.publish(aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                                            routing_key=key) for body, key in bodies))
    seconds = time.perf_counter() - started
    queued = await wait_queued(queue, len(bodies))
    assert queued == len(bodies), f"{queued} messages queued of {len(bodies)} published bare"
    await queue.purge()
    return seconds


async def wait_queued(queue: aio_pika.abc.AbstractQueue, expected: int, timeout_s: float = 30.0) -> int:
    """Messages in the queue, once ``expected`` are there (confirmed messages are routed, but
    the count the broker reports may lag a little)."""
    deadline = time.monotonic() + timeout_s
    while True:
        declared = await queue.channel.declare_queue(queue.name, passive=True)
        count = declared.declaration_result.message_count or 0
        if count >= expected or time.monotonic() > deadline:
            return count
        await asyncio.sleep(0.05)


async def run_bench(sizes: list[int], regimes: list[str], rule: PricingRule, repeats: int, seed: int) -> None:
    region = f"bench-{secrets.token_hex(4)}"
    settings = Settings(market=MarketSettings(region=region, rule=rule), amqp_url=AMQP_URL, redis_url=REDIS_URL,
                        log_level="warning", service_key=secrets.token_hex(32))
    svc = Service("matcher", settings, 0)
    connection = await aio_pika.connect(AMQP_URL)
    queue: aio_pika.abc.AbstractQueue | None = None
    try:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(EXCHANGE.name, aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(f"{region}.bench", durable=True)
        await queue.bind(exchange, routing_key=f"{region}.#")
        await start(svc)
        timer = Timer(svc)
        redis_version, rabbit_version = await server_versions(connection, svc)
        print(f"servers:    Redis {redis_version} (redis-py {version('redis')}, hiredis parser "
              f"{'yes' if redis.utils.HIREDIS_AVAILABLE else 'no'}), RabbitMQ {rabbit_version} "
              f"(aio-pika {version('aio-pika')}, faststream {version('faststream')}), msgspec {version('msgspec')}")
        print(f"region:     {region} (its Redis keys and the queue {region}.bench are deleted at the end)")
        header = (f"{'orders/side':>11} {'particip.':>9} {'path':>8} {'fills':>9} {'notices':>8} {'MB pub.':>7} "
                  f"{'reps':>4} {'read':>9} {'clear':>9} {'publish':>9} {'total':>9}")
        print()
        print(header)
        print("-" * len(header))
        for per_side in sizes:
            for regime in regimes:
                participants = max(2 * per_side // 5, 2) if regime == "many" else int(regime)
                await bench_case(svc, timer, exchange, queue, per_side, participants, repeats, seed)
    finally:
        try:
            if queue is not None:
                await queue.delete(if_unused=False, if_empty=False)
            # The service's start-up declared the region's dead-letter queue: it goes too.
            dead = await connection.channel()
            await dead.queue_delete(dead_letter_queue(region).name)
        finally:
            await connection.close()
            await svc.state.forget_everything()
            await stop(svc)


async def start(svc: Service) -> None:
    """The service's own start-up, as its app runs it: exchanges, the region's dead-letter
    queue, the publishing channel (publisher confirms). It consumes nothing: no routes."""
    await svc._declare()


async def stop(svc: Service) -> None:
    connection = getattr(svc, "_connection", None)
    if connection is not None:
        await connection.close()
    await svc.redis.aclose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench/matcher.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10k,100k",
                        help="orders per side, comma-separated, k and M allowed (default: %(default)s)")
    parser.add_argument("--participants", default="many,200",
                        help="participant regimes, comma-separated: a count, or 'many' for one per 5 orders "
                             "(default: %(default)s); each party gets one notice")
    parser.add_argument("--rule", default="midpoint", choices=[str(r) for r in PricingRule],
                        help="pricing rule (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each path, the median is shown "
                        "(default: %(default)s)")
    parser.add_argument("--seed", type=int, default=20240601, help="book generator seed (default: %(default)s)")
    args = parser.parse_args(argv)
    sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    regimes = [r.strip() for r in args.participants.split(",") if r.strip()]
    for regime in regimes:
        if regime != "many" and not regime.isdigit():
            parser.error(f"--participants: {regime!r} is neither a count nor 'many'")
    rule = PricingRule(args.rule)

    print("matcher benchmark: one slot read from Redis, cleared and published (Matcher.clear_slot)")
    for line in machine():
        print(line)
    print(f"inputs:     {', '.join(label(s) for s in sizes)} orders per side (as many bids as asks); rule {rule}; "
          f"seed {args.seed}; participants {', '.join(regimes)} ('many' = one per 5 orders)")
    print(f"            the book of bench/clearing.py: sources {', '.join(SOURCES)}, bids "
          f"{BID_TICKS[0] / 1e4:.4f}-{BID_TICKS[1] / 1e4:.4f} $/kWh, asks {ASK_TICKS[0] / 1e4:.4f}-"
          f"{ASK_TICKS[1] / 1e4:.4f} $/kWh, {QUANTITY_WH[0]}-{QUANTITY_WH[1]} Wh each; repeats {args.repeats} "
          "(median), the two paths alternating")
    started = time.perf_counter()
    asyncio.run(run_bench(sizes, regimes, rule, args.repeats, args.seed))
    print("\ncolumns: read = RegionState.book (HVALS); clear = the rest of clear_slot (decode, match, records, "
          "grouping, metrics, two small Redis calls); publish = Service.publish_all of the SlotCleared and one "
          "SettlementsNotice per party (notices), MB pub. = their encoded bodies; publish floor = the same bodies "
          "published bare (persistent, confirmed, no headers), the median of the repeats")
    print(f"total time: {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
