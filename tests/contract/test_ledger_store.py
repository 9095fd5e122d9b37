"""One contract for every ledger store: the in-memory twin, SQLite and PostgreSQL.

Every test runs against each back-end (``ledger_url`` is parametrized). PostgreSQL runs
twice: with its default write path and with COPY staging forced for every table. It
needs the server at MICROTE_TEST_PG_URL (default postgresql://postgres@127.0.0.1:5432/postgres);
this module creates a fresh database there and drops it at the end. If the server cannot
be reached the PostgreSQL tests fail: they are never skipped.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sqlite3
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information
import pytest

from shared.market import (
    EntryKind,
    LedgerEntry,
    Order,
    Reading,
    Settlement,
    Side,
    Slot,
    Tariff,
    bills,
    clear,
    entry_id,
    reconcile,
    true_up,
    violations,
)
from shared.runtime.ledger import (
    ConstraintViolation,
    HeldSlot,
    InvalidRecord,
    LedgerStore,
    PostgresLedgerStore,
    RecordBatch,
    StoreNotOpen,
    WriteResult,
    open_ledger,
)
from shared.runtime.ledger.rows import ENTRY_COLUMNS

PG_ADMIN_URL = os.environ.get("MICROTE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
T0 = 1_700_000_040  # a round boundary for 60 s rounds
SLOT = Slot(T0, T0 + 60)
T = TypeVar("T")


# --- Back-ends ----------------------------------------------------------------------


def _in_a_thread(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion on a loop of its own, away from the test's loop."""

    async def run() -> T:
        return await make()

    with ThreadPoolExecutor(1) as thread:
        return thread.submit(asyncio.run, run()).result()


@pytest.fixture(scope="module")
def pg_database() -> Iterator[str]:
    """A fresh, randomly named database for this module; dropped at the end."""
    name = f"microte_test_{uuid.uuid4().hex[:12]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(PG_ADMIN_URL, timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    problem = None
    try:
        _in_a_thread(lambda: admin(f"CREATE DATABASE {name}"))
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        problem = f"{type(exc).__name__}: {exc}"
    if problem is not None:
        pytest.fail(
            f"PostgreSQL is not reachable at {PG_ADMIN_URL} ({problem}). "
            "Start it (scripts/services.sh postgres) or point MICROTE_TEST_PG_URL at a server.",
            pytrace=False,
        )
    yield urlsplit(PG_ADMIN_URL)._replace(path=f"/{name}").geturl()
    _in_a_thread(lambda: admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture(params=["memory", "sqlite", "postgres", "postgres-copy"])
async def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL naming an empty ledger; a second store opened on it sees the same data."""
    backend = request.param
    if backend == "memory":
        return f"memory://contract-{uuid.uuid4().hex}"
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.sqlite'}"  # an absolute path: sqlite:////tmp/...
    url: str = request.getfixturevalue("pg_database")
    conn = await asyncpg.connect(url)
    try:  # the database is shared by the module; each test starts from no schema at all
        await conn.execute("DROP SCHEMA IF EXISTS public CASCADE; CREATE SCHEMA public")
    finally:
        await conn.close()
    return url


def _store(url: str, request: pytest.FixtureRequest) -> LedgerStore:
    store = open_ledger(url)
    if request.node.callspec.params["ledger_url"] == "postgres-copy":
        assert isinstance(store, PostgresLedgerStore)
        store.copy_threshold = 1  # every table through COPY into a staging table
    return store


@pytest.fixture
async def store(ledger_url: str, request: pytest.FixtureRequest) -> AsyncIterator[LedgerStore]:
    s = _store(ledger_url, request)
    await s.open()
    yield s
    await s.close()


@pytest.fixture
def another(ledger_url: str, request: pytest.FixtureRequest) -> Callable[[], LedgerStore]:
    """A maker of new, unopened store instances on the same ledger."""
    return lambda: _store(ledger_url, request)


# --- Records, made by the market core itself -------------------------------------------


def order(
    region: str, oid: str, who: str, side: Side, wh: int, price: str, source: str, seq: int, slot: Slot = SLOT
) -> tuple[str, Order]:
    return region, Order(
        order_id=oid,
        client_order_id=f"c-{oid}",
        participant_id=who,
        side=side,
        quantity_wh=wh,
        price=Decimal(price),
        source=source,
        slot=slot,
        seq=seq,
        submitted_at_ms=T0 * 1000 - 90_000 + seq,
    )


def market_batch(region: str = "north", slot: Slot = SLOT) -> RecordBatch:
    """One slot of a small community: orders, their clearing, readings, reconciliation."""
    orders = [
        order(region, f"{region}-o1", "alice", Side.BID, 1500, "0.1145", "solar", 1, slot),
        order(region, f"{region}-o2", "bob", Side.ASK, 1000, "0.1000", "solar", 2, slot),
        order(region, f"{region}-o3", "carol", Side.ASK, 800, "0.1100", "solar", 3, slot),
        order(region, f"{region}-o4", "dave", Side.BID, 500, "0.0800", "bess", 4, slot),
        order(region, f"{region}-o5", "erin", Side.ASK, 700, "0.0700", "bess", 5, slot),
    ]
    cancelled = order(region, f"{region}-o6", "alice", Side.BID, 300, "0.2000", "wind", 6, slot)
    settlements = clear([o for _, o in orders], region=region, slot=slot, matched_at_ms=slot.start * 1000 - 60_000)
    readings = [
        Reading("alice", slot, import_wh=1200),
        Reading("bob", slot, export_wh={"solar": 600, "bess": 300}, self_consumed_wh={"solar": 50}),
        Reading("carol", slot, export_wh={"solar": 900, "bess": 10}),
        Reading("dave", slot, import_wh=500),
        Reading("erin", slot, export_wh={"bess": 700}),
    ]
    entries = reconcile(
        region=region, slot=slot, settlements=settlements, readings=readings, grid=Tariff().prices_at(slot.start)
    )
    return RecordBatch(
        entries=entries,
        orders=[*orders, cancelled],
        settlements=settlements,
        readings=[(region, r, slot.end * 1000 + i) for i, r in enumerate(readings)],
        reconciled=[(region, slot, len(entries))],
        cancellations=[(region, f"{region}-o6", slot)],
    )


def entry(
    region: str,
    slot: Slot,
    n: int,
    *,
    wh: int = 1000,
    buy: str = "0.1000",
    sell: str = "0.1000",
    kind: EntryKind = EntryKind.P2P,
) -> LedgerEntry:
    seller, buyer = f"seller-{n}", f"buyer-{n}"
    return LedgerEntry(
        entry_id=entry_id(region, slot, kind, f"s-{n}", seller, buyer, "solar"),
        region=region,
        slot=slot,
        kind=kind,
        seller=seller,
        buyer=buyer,
        source="solar",
        quantity_wh=wh,
        buy_price=Decimal(buy),
        sell_price=Decimal(sell),
        settlement_id=f"s-{n}",
        matched_at_ms=slot.start * 1000 - 60_000,
        delivered_at=slot.end,
    )


def settlement(region: str, n: int, slot: Slot = SLOT) -> Settlement:
    return Settlement(
        settlement_id=f"{region}-s{n}",
        region=region,
        slot=slot,
        source="solar",
        buyer=f"b{n}",
        seller=f"s{n}",
        bid_id=f"bid{n}",
        ask_id=f"ask{n}",
        quantity_wh=100 + n,
        buy_price=Decimal("0.12345"),
        sell_price=Decimal("0.1234"),
        matched_at_ms=slot.start * 1000,
    )


def counts(batch: RecordBatch) -> WriteResult:
    return WriteResult(
        len(batch.entries),
        len(batch.orders),
        len(batch.settlements),
        len(batch.readings),
        len(batch.reconciled),
        len(batch.cancellations),
    )


async def everything(store: LedgerStore, region: str) -> tuple[object, ...]:
    return (
        await store.entries(region),
        await store.orders(region),
        await store.settlements(region),
        await store.readings(region),
        await store.reconciled_slots(region),
        await store.cancelled_orders(region),
    )


# --- Round trips ---------------------------------------------------------------------


async def test_entries_written_come_back_equal(store: LedgerStore) -> None:
    batch = market_batch()
    kinds = {e.kind for e in batch.entries}
    assert {EntryKind.P2P, EntryKind.BESS_COVER, EntryKind.SHORTFALL, EntryKind.UNCONSUMED} <= kinds

    assert (await store.write(RecordBatch(entries=batch.entries))).entries == len(batch.entries)

    back = await store.entries("north")
    assert back == list(batch.entries)
    assert bills(back) == bills(batch.entries)


async def test_orders_written_come_back_equal_in_acceptance_order(store: LedgerStore) -> None:
    batch = market_batch()
    assert (await store.write(RecordBatch(orders=batch.orders[::-1]))).orders == len(batch.orders)

    assert await store.orders("north") == [o for _, o in batch.orders]


async def test_settlements_written_come_back_equal_in_matching_order(store: LedgerStore) -> None:
    batch = market_batch()
    assert [s.source for s in batch.settlements] == ["bess", "solar", "solar"]
    assert (await store.write(RecordBatch(settlements=batch.settlements))).settlements == 3

    assert await store.settlements("north") == list(batch.settlements)


async def test_readings_written_come_back_equal(store: LedgerStore) -> None:
    batch = market_batch()
    assert (await store.write(RecordBatch(readings=batch.readings))).readings == 5

    back = await store.readings("north")
    assert back == sorted((r for _, r, _ in batch.readings), key=lambda r: r.participant_id)
    assert all(type(wh) is int for r in back for wh in [*r.export_wh.values(), *r.self_consumed_wh.values()])


async def test_reconciled_slots_written_come_back_equal(store: LedgerStore) -> None:
    later = Slot(T0 + 60, T0 + 120)
    result = await store.write(RecordBatch(reconciled=[("north", later, 3), ("north", SLOT, 12)]))

    assert result.reconciled == 2
    assert await store.reconciled_slots("north") == [SLOT, later]


async def test_cancellations_written_come_back_by_slot_then_order_id(store: LedgerStore) -> None:
    later = Slot(T0 + 60, T0 + 120)
    cancelled = [("north", "o-9", later), ("north", "o-2", later), ("north", "o-5", SLOT), ("south", "o-1", SLOT)]

    assert (await store.write(RecordBatch(cancellations=cancelled))).cancellations == 4
    assert (await store.write(RecordBatch(cancellations=cancelled))).cancellations == 0
    assert await store.cancelled_orders("north") == ["o-5", "o-2", "o-9"]
    assert await store.cancelled_orders("south") == ["o-1"]


async def test_held_slots_come_back_by_slot_and_the_first_record_of_a_slot_stands(store: LedgerStore) -> None:
    later = Slot(T0 + 60, T0 + 120)
    held = [("north", later, "reconciliation", "KeyError: 'h1'"), ("north", SLOT, "clearing", "ValueError: x"),
            ("south", SLOT, "clearing", "boom")]

    assert (await store.write(RecordBatch(held=held))).held == 3
    assert (await store.write(RecordBatch(held=[("north", SLOT, "reconciliation", "again")]))).held == 0
    assert await store.held_slots("north") == [HeldSlot(SLOT, "clearing", "ValueError: x"),
                                               HeldSlot(later, "reconciliation", "KeyError: 'h1'")]
    assert await store.held_slots("south") == [HeldSlot(SLOT, "clearing", "boom")]


async def test_a_held_slot_of_an_unknown_stage_is_refused(store: LedgerStore) -> None:
    with pytest.raises(ConstraintViolation):
        await store.write(RecordBatch(held=[("north", SLOT, "lunch", "")]))
    assert await store.held_slots("north") == []


async def test_rounds_come_back_by_start_then_fence_once_each(store: LedgerStore) -> None:
    rounds = [("north", T0 + 60, 2, 5), ("north", T0, 1, 1), ("north", T0, 2, 3), ("south", T0, 7, 1)]

    assert (await store.write(RecordBatch(rounds=rounds))).rounds == 4
    assert (await store.write(RecordBatch(rounds=rounds[:2]))).rounds == 0
    assert await store.rounds("north") == [(T0, 1), (T0, 2), (T0 + 60, 2)]
    assert await store.rounds("south") == [(T0, 7)]


async def test_members_are_those_whose_last_event_is_a_join(store: LedgerStore) -> None:
    events = [("north", "a", "joined", 10), ("north", "b", "joined", 10), ("north", "b", "left", 20),
              ("north", "c", "joined", 10), ("north", "c", "left", 20), ("north", "c", "joined", 30),
              ("north", "d", "joined", 40), ("north", "d", "left", 40), ("south", "z", "joined", 1)]

    assert (await store.write(RecordBatch(memberships=events))).memberships == len(events)
    assert (await store.write(RecordBatch(memberships=events))).memberships == 0
    assert await store.members("north") == ["a", "c"]
    assert await store.members("south") == ["z"]


async def test_a_members_agent_is_the_one_it_named_at_its_last_join(store: LedgerStore) -> None:
    events = [("north", "a", "joined", 10), ("north", "b", "joined", 10), ("north", "b", "left", 20),
              ("north", "c", "joined", 10), ("north", "c", "left", 20), ("north", "c", "joined", 30),
              ("north", "d", "joined", 10), ("north", "d", "left", 20), ("north", "d", "joined", 30),
              ("south", "z", "joined", 1)]
    agents = [("north", "a", "agg1", 10), ("north", "b", "agg1", 10), ("north", "c", "agg1", 10),
              ("north", "c", "agg2", 30), ("north", "d", "agg1", 10), ("south", "z", "agg9", 1)]

    written = await store.write(RecordBatch(memberships=events, agents=agents))
    assert written.agents == len(agents)
    assert (await store.write(RecordBatch(agents=agents))).agents == 0
    # b left; c joined again naming agg2; d joined again naming no one
    assert await store.agents("north") == {"a": "agg1", "c": "agg2"}
    assert await store.agents("south") == {"z": "agg9"}


async def test_a_members_connection_is_the_one_it_was_held_to_from_its_last_join(store: LedgerStore) -> None:
    events = [("north", "a", "joined", 10), ("north", "b", "joined", 10), ("north", "b", "left", 20),
              ("north", "c", "joined", 10), ("north", "c", "joined", 30), ("north", "d", "joined", 10),
              ("north", "d", "joined", 30), ("south", "a", "joined", 1)]
    held = [("north", "a", 5000, None, 10), ("north", "b", 1, 1, 10), ("north", "c", 1000, 2000, 10),
            ("north", "c", None, 0, 30), ("north", "d", 7, 7, 10), ("south", "a", 3, 4, 1)]

    written = await store.write(RecordBatch(memberships=events, connections=held))
    assert written.connections == len(held)
    assert (await store.write(RecordBatch(connections=held))).connections == 0
    # b left; c joined again, with no import limit and no export at all; d joined again with none
    assert await store.connections("north") == {"a": (5000, None), "c": (None, 0)}
    assert await store.connections("south") == {"a": (3, 4)}


async def test_a_negative_connection_is_refused(store: LedgerStore) -> None:
    with pytest.raises(ConstraintViolation):
        await store.write(RecordBatch(memberships=[("north", "a", "joined", 1)],
                                      connections=[("north", "a", -1, None, 1)]))
    assert await store.connections("north") == {}


async def test_a_membership_event_of_an_unknown_kind_is_refused(store: LedgerStore) -> None:
    with pytest.raises(ConstraintViolation):
        await store.write(RecordBatch(memberships=[("north", "a", "visited", 1)]))
    assert await store.members("north") == []


async def test_a_whole_batch_is_written_and_counted(store: LedgerStore) -> None:
    batch = market_batch()

    assert await store.write(batch) == counts(batch)
    assert await store.regions() == ["north"]


# --- Exactly once ----------------------------------------------------------------------


async def test_writing_the_same_batch_twice_inserts_nothing_the_second_time(store: LedgerStore) -> None:
    batch = market_batch()
    await store.write(batch)
    first = await everything(store, "north")

    assert await store.write(batch) == WriteResult()
    assert await everything(store, "north") == first
    assert len(await store.entries("north")) == len(batch.entries)


async def test_a_record_repeated_within_one_batch_is_inserted_once(store: LedgerStore) -> None:
    batch = market_batch()
    doubled = RecordBatch(
        entries=[*batch.entries, *batch.entries],
        orders=[*batch.orders, *batch.orders],
        settlements=[*batch.settlements, *batch.settlements],
        readings=[*batch.readings, *batch.readings],
        reconciled=[*batch.reconciled, *batch.reconciled],
        cancellations=[*batch.cancellations, *batch.cancellations],
    )

    assert await store.write(doubled) == counts(batch)
    assert await store.entries("north") == list(batch.entries)


async def test_the_first_reading_for_a_participant_and_slot_stands(store: LedgerStore) -> None:
    first = Reading("alice", SLOT, import_wh=100, export_wh={"solar": 7})
    second = Reading("alice", SLOT, import_wh=999)
    third = Reading("alice", SLOT, import_wh=5, self_consumed_wh={"bess": 1})

    assert (await store.write(RecordBatch(readings=[("north", first, 1)]))).readings == 1
    assert (await store.write(RecordBatch(readings=[("north", second, 2)]))).readings == 0
    assert (await store.write(RecordBatch(readings=[("north", third, 3), ("north", second, 4)]))).readings == 0

    assert await store.readings("north") == [first]


async def test_the_first_reading_within_one_batch_stands(store: LedgerStore) -> None:
    first, second = Reading("bob", SLOT, import_wh=1), Reading("bob", SLOT, import_wh=2)

    assert (await store.write(RecordBatch(readings=[("north", first, 1), ("north", second, 2)]))).readings == 1
    assert await store.readings("north") == [first]


# --- All or nothing --------------------------------------------------------------------


def _bad_entry(batch: RecordBatch) -> RecordBatch:
    bad = dataclasses.replace(entry("north", SLOT, 999), quantity_wh=-1)
    return dataclasses.replace(batch, entries=[*batch.entries, bad])


def _bad_order(batch: RecordBatch) -> RecordBatch:
    region, first = batch.orders[0]
    bad = dataclasses.replace(first, order_id="zero", quantity_wh=0)
    return dataclasses.replace(batch, orders=[*batch.orders, (region, bad)])


def _bad_reconciled(batch: RecordBatch) -> RecordBatch:
    return dataclasses.replace(batch, reconciled=[*batch.reconciled, ("north", Slot(T0 + 60, T0 + 120), -1)])


@pytest.mark.parametrize(
    "spoil", [_bad_order, _bad_entry, _bad_reconciled], ids=["first table", "middle table", "last table"]
)
async def test_a_batch_that_fails_midway_leaves_nothing_written(
    store: LedgerStore, spoil: Callable[[RecordBatch], RecordBatch]
) -> None:
    good = market_batch()

    with pytest.raises(ConstraintViolation):
        await store.write(spoil(good))

    assert await everything(store, "north") == ([], [], [], [], [], [])
    assert await store.regions() == []
    assert await store.write(good) == counts(good)  # and the store still works


async def test_a_float_price_is_refused_before_anything_is_written(store: LedgerStore) -> None:
    good = market_batch()
    floating = dataclasses.replace(good.entries[0], buy_price=0.1)  # type: ignore[arg-type]  # the point

    with pytest.raises(InvalidRecord):
        await store.write(dataclasses.replace(good, entries=[*good.entries, floating]))
    assert await everything(store, "north") == ([], [], [], [], [], [])


async def test_a_store_that_is_not_open_refuses_to_be_used(another: Callable[[], LedgerStore]) -> None:
    store = another()
    with pytest.raises(StoreNotOpen):
        await store.write(market_batch())
    await store.open()
    await store.close()
    with pytest.raises(StoreNotOpen):
        await store.entries("north")


# --- Ordering, isolation, filtering -------------------------------------------------


async def test_entries_come_back_in_the_order_written_within_a_slot(store: LedgerStore) -> None:
    early, late = SLOT, Slot(T0 + 60, T0 + 120)
    # Interleaved slots, ids in no sorted order: only the insertion sequence can say the order.
    batch_one = [entry("north", late if n % 2 else early, n) for n in (5, 3, 8, 1, 9, 2, 7, 4, 6, 0)]
    batch_two = [entry("north", early, n) for n in (15, 11, 13)]
    assert sorted(e.entry_id for e in batch_one) != [e.entry_id for e in batch_one]

    await store.write(RecordBatch(entries=batch_one))
    await store.write(RecordBatch(entries=batch_two))

    expected = [e for e in batch_one if e.slot == early] + batch_two + [e for e in batch_one if e.slot == late]
    assert await store.entries("north") == expected


async def test_regions_are_isolated(store: LedgerStore) -> None:
    north, south = market_batch("north"), market_batch("south")
    same_id = order("south", "north-o1", "zed", Side.BID, 10, "0.0100", "wind", 9)  # same order id, other region

    await store.write(north)
    await store.write(dataclasses.replace(south, orders=[*south.orders, same_id]))

    assert await store.regions() == ["north", "south"]
    assert await store.entries("north") == list(north.entries)
    assert await store.orders("north") == [o for _, o in north.orders]
    assert await store.orders("south") == [o for _, o in south.orders] + [same_id[1]]
    assert await store.settlements("south") == list(south.settlements)
    assert len(await store.readings("north")) == len(await store.readings("south")) == 5
    assert await store.reconciled_slots("south") == [SLOT]
    assert await everything(store, "west") == ([], [], [], [], [], [])


async def test_a_regions_market_settings_are_kept_once_and_the_first_stays(store: LedgerStore) -> None:
    first, later = '{"MICROTE_PRICING_RULE": "pay_as_bid"}', '{"MICROTE_PRICING_RULE": "midpoint"}'
    assert await store.market_settings("north") is None
    await store.write(RecordBatch(market_settings=[("north", first)]))
    await store.write(RecordBatch(market_settings=[("north", later), ("south", later)]))
    assert await store.market_settings("north") == first
    assert await store.market_settings("south") == later
    assert await store.regions() == ["north", "south"]
    with pytest.raises(InvalidRecord):
        await store.write(RecordBatch(market_settings=[("west", None)]))  # type: ignore[list-item]


async def test_a_regions_community_is_kept_once_the_first_stays_and_makes_no_region(store: LedgerStore) -> None:
    first, later = '{"households": [{"id": "h000"}]}', '{"households": []}'
    assert await store.community("north") is None
    await store.write(RecordBatch(communities=[("north", first)]))
    await store.write(RecordBatch(communities=[("north", later), ("south", later)]))
    assert await store.community("north") == first
    assert await store.community("south") == later
    assert await store.regions() == []  # a description of who trades is no run of the market
    with pytest.raises(InvalidRecord):
        await store.write(RecordBatch(communities=[("west", None)]))  # type: ignore[list-item]


async def test_entries_can_be_filtered_by_slot_bounds(store: LedgerStore) -> None:
    s1, s2, s3, s4 = Slot(T0, T0 + 60), Slot(T0 + 60, T0 + 120), Slot(T0, T0 + 120), Slot(T0 + 120, T0 + 180)
    written = {s: entry("north", s, n) for n, s in enumerate((s4, s2, s3, s1))}
    await store.write(RecordBatch(entries=list(written.values())))

    async def slots(start: int | None = None, end: int | None = None) -> list[Slot]:
        return [e.slot for e in await store.entries("north", start, end)]

    assert await slots() == [s1, s3, s2, s4]
    assert await slots(start=T0 + 60) == [s2, s4]
    assert await slots(end=T0 + 120) == [s1, s3, s2]
    assert await slots(start=T0 + 60, end=T0 + 120) == [s2]
    assert await slots(start=T0, end=T0 + 60) == [s1]
    assert await slots(start=T0 + 180) == []


# --- Exact numbers -------------------------------------------------------------------


async def test_exact_decimals_and_large_quantities_survive(store: LedgerStore) -> None:
    prices = ["0.10725", "0.00005", "0.1449", "0.0690", "0", "10.0000", "123456789012345678.123456789012345678"]
    entries = [entry("north", SLOT, n, wh=10**12 + n, buy=p, sell=prices[-1 - n]) for n, p in enumerate(prices)]
    big = dataclasses.replace(entries[0], entry_id="big", quantity_wh=2**63 - 1)
    settlements = [
        dataclasses.replace(
            settlement("north", 1), buy_price=Decimal("0.10725"), sell_price=Decimal("0.00005"), quantity_wh=10**12
        )
    ]
    reading = Reading("alice", SLOT, import_wh=10**12, export_wh={"solar": 10**15}, self_consumed_wh={"bess": 0})

    await store.write(RecordBatch(entries=[*entries, big], settlements=settlements, readings=[("north", reading, 1)]))

    back = await store.entries("north")
    assert back == [*entries, big]
    assert [(str(e.buy_price), str(e.sell_price)) for e in back[:-1]] == [
        (p, prices[-1 - n]) for n, p in enumerate(prices)
    ]
    assert all(type(e.buy_price) is Decimal and type(e.quantity_wh) is int for e in back)
    assert back[-1].quantity_wh == 2**63 - 1
    assert bills(back) == bills([*entries, big])
    (s,) = await store.settlements("north")
    assert (str(s.buy_price), str(s.sell_price), s.quantity_wh) == ("0.10725", "0.00005", 10**12)
    assert await store.readings("north") == [reading]


async def test_a_quantity_beyond_64_bits_is_refused(store: LedgerStore) -> None:
    with pytest.raises(InvalidRecord):
        await store.write(RecordBatch(entries=[entry("north", SLOT, 1, wh=2**63)]))
    assert await store.entries("north") == []


# --- Durability and concurrency ------------------------------------------------------


async def test_a_reopened_store_still_has_the_data(store: LedgerStore, another: Callable[[], LedgerStore]) -> None:
    batch = market_batch()
    await store.write(batch)
    before = await everything(store, "north")
    await store.close()

    reopened = another()
    await reopened.open()
    try:
        assert await everything(reopened, "north") == before
        assert await reopened.regions() == ["north"]
        assert await reopened.write(batch) == WriteResult()
    finally:
        await reopened.close()


async def test_opening_a_second_store_on_the_same_ledger_keeps_schema_and_data(
    store: LedgerStore, another: Callable[[], LedgerStore]
) -> None:
    await store.write(market_batch())
    second = another()
    await second.open()
    await second.open()  # idempotent
    try:
        assert await everything(second, "north") == await everything(store, "north")
    finally:
        await second.close()


@pytest.mark.parametrize("shared", [True, False], ids=["one store", "a store each"])
async def test_concurrent_overlapping_writers_leave_exactly_one_copy_of_each_row(
    store: LedgerStore, another: Callable[[], LedgerStore], shared: bool
) -> None:
    slots = [Slot(T0 + 60 * i, T0 + 60 * (i + 1)) for i in range(3)]
    entries = [entry("north", slots[n % 3], n) for n in range(240)]
    orders = [order("north", f"o{n}", f"p{n}", Side.BID, 10 + n, "0.0500", "solar", n) for n in range(240)]
    settlements = [settlement("north", n) for n in range(240)]
    readings = [("north", Reading(f"p{n}", SLOT, import_wh=n), n) for n in range(240)]

    def batch(i: int) -> RecordBatch:  # writer i overlaps its neighbours by two thirds
        part = slice(i * 20, i * 20 + 60)
        return RecordBatch(
            entries[part],
            orders[part],
            settlements[part],
            readings[part],
            [("north", s, 80) for s in slots],
            [("north", o.order_id, o.slot) for _, o in orders[part]],
        )

    writers = [store if shared else another() for _ in range(10)]
    if not shared:
        await asyncio.gather(*(w.open() for w in writers))
    try:
        results = await asyncio.gather(*(w.write(batch(i)) for i, w in enumerate(writers)))
    finally:
        if not shared:
            await asyncio.gather(*(w.close() for w in writers))

    union = 9 * 20 + 60
    assert sum(r.entries for r in results) == union
    assert sum(r.orders for r in results) == sum(r.settlements for r in results) == union
    assert sum(r.readings for r in results) == union
    assert sum(r.reconciled for r in results) == 3
    assert sum(r.cancellations for r in results) == union
    back = await store.entries("north")
    assert sorted(e.entry_id for e in back) == sorted(e.entry_id for e in entries[:union])
    assert sorted(o.order_id for o in await store.orders("north")) == sorted(o.order_id for _, o in orders[:union])
    assert len(await store.settlements("north")) == len(await store.readings("north")) == union
    assert await store.reconciled_slots("north") == slots
    assert sorted(await store.cancelled_orders("north")) == sorted(o.order_id for _, o in orders[:union])


async def test_a_large_batch_goes_in_whole_and_in_order(store: LedgerStore) -> None:
    entries = [entry("north", SLOT, n) for n in range(5000)]

    assert (await store.write(RecordBatch(entries=entries))).entries == 5000
    assert (await store.write(RecordBatch(entries=entries))).entries == 0
    assert await store.entries("north") == entries


# --- True-up -----------------------------------------------------------------------


async def test_a_true_ups_revisions_reversals_and_final_slot_come_back_exactly(store: LedgerStore) -> None:
    """alice's reading arrives after the slot was reconciled: revision 1 reverses part of
    revision 0 and adds the rest; the window closes with one revision."""
    base = market_batch()
    readings = [r for _, r, _ in base.readings]
    settlements = list(base.settlements)
    provisional, adjustment = true_up(region="north", slot=SLOT, settlements=settlements, readings=readings[1:],
                                      late=readings[:1], grid=Tariff().prices_at(SLOT.start))
    assert any(e.reverses for e in adjustment) and any(not e.reverses for e in adjustment)
    first = dataclasses.replace(base, entries=provisional, readings=base.readings[1:],
                                reconciled=[("north", SLOT, len(provisional))])
    late = RecordBatch(entries=adjustment, readings=base.readings[:1], adjusted=[("north", SLOT, 1, "alice",
                                                                                   len(adjustment))])
    final = RecordBatch(finalized=[("north", SLOT, 1)])
    for batch in (first, late, final):
        await store.write(batch)
    again = await store.write(late)
    assert (again.entries, again.adjusted) == (0, 0)
    assert (await store.write(final)).finalized == 0

    assert await store.entries("north") == provisional + adjustment
    assert await store.adjustments("north") == [(SLOT, 1, "alice")]
    assert await store.final_slots("north") == [(SLOT, 1)]
    assert await store.adjustments("south") == [] and await store.final_slots("south") == []
    assert violations(settlements, readings, await store.entries("north")) == []


async def test_a_ledger_written_before_true_up_gets_its_columns_when_opened(ledger_url: str, tmp_path: Path,
                                                                            request: pytest.FixtureRequest) -> None:
    """Its entries read as revision 0, none a reversal, and a reversal can be written beside them."""
    if ledger_url.startswith("memory://"):
        return  # nothing is kept across processes: there is no older ledger to open
    store = _store(ledger_url, request)
    await store.open()
    await store.write(market_batch())
    before = await store.entries("north")
    await store.close()
    old = [c for c in ENTRY_COLUMNS if c not in ("revision", "reverses")]
    if ledger_url.startswith("sqlite"):
        conn = sqlite3.connect(ledger_url.removeprefix("sqlite:///"))
        rest = [c for c in old if c != "entry_id"]
        conn.executescript(f"CREATE TABLE old (inserted_seq INTEGER PRIMARY KEY AUTOINCREMENT, entry_id TEXT NOT NULL "
                           f"UNIQUE, {', '.join(rest)}); INSERT INTO old SELECT inserted_seq, {', '.join(old)} FROM "
                           "ledger_entries; DROP TABLE ledger_entries; ALTER TABLE old RENAME TO ledger_entries;")
        conn.close()
        assert "revision" not in ledger_columns_sqlite(ledger_url)
    else:
        pg = await asyncpg.connect(ledger_url)
        try:
            await pg.execute("ALTER TABLE ledger_entries DROP COLUMN revision, DROP COLUMN reverses")
        finally:
            await pg.close()
    reopened = _store(ledger_url, request)
    await reopened.open()
    try:
        assert await reopened.entries("north") == before
        assert all(e.revision == 0 and not e.reverses for e in before)
        taken_back = dataclasses.replace(before[0], entry_id="r1", revision=1, reverses=True)
        assert (await reopened.write(RecordBatch(entries=[taken_back]))).entries == 1
        assert (await reopened.entries("north"))[-1] == taken_back
    finally:
        await reopened.close()


def ledger_columns_sqlite(url: str) -> set[str]:
    conn = sqlite3.connect(url.removeprefix("sqlite:///"))
    try:
        return {str(r[1]) for r in conn.execute("PRAGMA table_info(ledger_entries)")}
    finally:
        conn.close()
