"""Re-derive every recorded slot from the recorded orders and readings, with the market
core, and compare with what the ledger holds, entry for entry. Used by the report and
the end-to-end tests."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from shared.market import LedgerEntry, Order, Reading, Settlement, Slot, clear, reconcile, violations
from shared.runtime.ledger import HeldSlot, LedgerStore
from shared.runtime.settings import MarketSettings


@dataclass
class Audit:
    slots: int = 0
    entries: int = 0
    settlements: int = 0
    problems: list[str] = field(default_factory=list)
    held: list[HeldSlot] = field(default_factory=list)  # not replayed yet: no entries, not a problem

    @property
    def ok(self) -> bool:
        return not self.problems


def _settlement_key(s: Settlement) -> tuple[object, ...]:
    return (s.settlement_id, s.buyer, s.seller, s.source, s.quantity_wh, s.buy_price, s.sell_price, s.bid_id,
            s.ask_id)


def _entry_key(e: LedgerEntry) -> tuple[object, ...]:
    return (e.entry_id, e.kind, e.seller, e.buyer, e.source, e.quantity_wh, e.buy_price, e.sell_price,
            e.settlement_id)


async def audit(store: LedgerStore, market: MarketSettings) -> Audit:
    region = market.region
    cancelled = set(await store.cancelled_orders(region))
    by_slot_orders: dict[Slot, list[Order]] = defaultdict(list)
    for o in await store.orders(region):
        if o.order_id not in cancelled:
            by_slot_orders[o.slot].append(o)
    by_slot_settlements: dict[Slot, list[Settlement]] = defaultdict(list)
    for s in await store.settlements(region):
        by_slot_settlements[s.slot].append(s)
    by_slot_readings: dict[Slot, list[Reading]] = defaultdict(list)
    for r in await store.readings(region):
        by_slot_readings[r.slot].append(r)
    by_slot_entries: dict[Slot, list[LedgerEntry]] = defaultdict(list)
    for e in await store.entries(region):
        by_slot_entries[e.slot].append(e)
    result = Audit()
    for slot in sorted(await store.reconciled_slots(region)):
        result.slots += 1
        closed_at = market.schedule.closes_at(slot)
        expected = clear(by_slot_orders.get(slot, []), region=region, slot=slot, rule=market.rule,
                         matched_at_ms=closed_at * 1000)
        recorded = by_slot_settlements.get(slot, [])
        if [_settlement_key(s) for s in expected] != [_settlement_key(s) for s in recorded]:
            result.problems.append(f"slot {slot}: settlements differ from a re-clearing of the recorded orders "
                                   f"({len(recorded)} recorded, {len(expected)} re-derived)")
        readings = by_slot_readings.get(slot, [])
        entries = reconcile(region=region, slot=slot, settlements=expected, readings=readings,
                            grid=market.tariff.prices_at(slot.start))
        stored = by_slot_entries.get(slot, [])
        if [_entry_key(e) for e in entries] != [_entry_key(e) for e in stored]:
            result.problems.append(f"slot {slot}: ledger entries differ from a re-derivation "
                                   f"({len(stored)} stored, {len(entries)} re-derived)")
        result.problems += [f"slot {slot}: {v}" for v in violations(recorded, readings, stored)]
        result.entries += len(stored)
        result.settlements += len(recorded)
    reconciled = set(await store.reconciled_slots(region))
    result.held = [h for h in await store.held_slots(region) if h.slot not in reconciled]
    unreconciled = set(by_slot_entries) - reconciled
    if unreconciled:
        result.problems.append(f"entries for {len(unreconciled)} slots that are not marked reconciled")
    return result
