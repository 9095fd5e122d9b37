"""Replaying a held slot from the ledger's own records (in-memory store)."""

from __future__ import annotations

import pytest

from shared.market import Schedule, clear, reconcile
from shared.runtime.audit import audit
from shared.runtime.ledger import MemoryLedgerStore, RecordBatch
from shared.runtime.replay import ReplayRefused, replay_slot
from shared.runtime.settings import MarketSettings
from tests.builders import REGION, SLOT, order, reading

MARKET = MarketSettings(region=REGION, schedule=Schedule(duration=60, close_steps=2))
ORDERS = [order("b1", "h1", "bid", 500, "0.12", seq=1), order("a1", "h2", "ask", 300, "0.08", seq=2),
          order("a2", "h3", "ask", 400, "0.09", seq=3), order("a3", "h3", "ask", 50, "0.05", seq=4)]
READINGS = [reading("h1", import_wh=450), reading("h2", export_wh={"solar": 300}),
            reading("h3", export_wh={"solar": 100}, import_wh=20)]


async def held_store(stage: str = "clearing") -> MemoryLedgerStore:
    store = MemoryLedgerStore()
    await store.open()
    await store.write(RecordBatch(orders=[(REGION, o) for o in ORDERS], readings=[(REGION, r, 0) for r in READINGS],
                                  cancellations=[(REGION, "a3", SLOT)],
                                  held=[(REGION, SLOT, stage, "Undecodable: bad book entry")]))
    return store


@pytest.mark.parametrize("stage", ["clearing", "reconciliation"])
async def test_a_replay_writes_what_the_services_would_have_written_on_time(stage: str) -> None:
    store = await held_store(stage)
    before = await audit(store, MARKET)
    assert [h.slot for h in before.held] == [SLOT] and before.ok

    done = await replay_slot(store, MARKET, SLOT.start)

    live = [o for o in ORDERS if o.order_id != "a3"]  # cancelled before its gate
    closes_ms = MARKET.schedule.closes_at(SLOT) * 1000
    expected = clear(live, region=REGION, slot=SLOT, rule=MARKET.rule, matched_at_ms=closes_ms)
    assert done.settlements == expected and expected
    assert done.entries == reconcile(region=REGION, slot=SLOT, settlements=expected, readings=READINGS,
                                     grid=MARKET.tariff.prices_at(SLOT.start))
    assert await store.settlements(REGION) == expected
    assert await store.entries(REGION) == done.entries
    assert await store.reconciled_slots(REGION) == [SLOT]
    after = await audit(store, MARKET)
    assert after.ok and after.held == [] and after.slots == 1, after.problems


async def test_a_slot_is_replayed_once() -> None:
    store = await held_store()
    await replay_slot(store, MARKET, SLOT.start)
    with pytest.raises(ReplayRefused, match="replayed already"):
        await replay_slot(store, MARKET, SLOT.start)


async def test_a_slot_that_is_not_held_is_not_replayed() -> None:
    store = await held_store()
    with pytest.raises(ReplayRefused, match="not held"):
        await replay_slot(store, MARKET, SLOT.start + 60)
    assert await store.entries(REGION) == []
