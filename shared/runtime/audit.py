"""Re-derive every recorded slot from the recorded orders and readings, with the market
core, and compare with what the ledger holds, entry for entry. Used by the report and
the end-to-end tests.

A slot with true-up adjustments is re-derived revision by revision: revision 0 from the
readings that were in when it was reconciled (all but the late ones), revision k from the
k-th late reading (``slot_adjustments`` says whose), and the net of every revision must
meet every invariant against every reading."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from shared.market import LedgerEntry, Order, Reading, Settlement, Slot, clear, true_up, violations
from shared.runtime.ledger import HeldSlot, LedgerStore
from shared.runtime.settings import MarketSettings


@dataclass
class Audit:
    slots: int = 0
    entries: int = 0
    settlements: int = 0
    problems: list[str] = field(default_factory=list)
    held: list[HeldSlot] = field(default_factory=list)  # not replayed yet: no entries, not a problem
    adjustments: int = 0  # true-up revisions re-derived
    final: int = 0  # slots whose true-up window closed

    @property
    def ok(self) -> bool:
        return not self.problems


def _settlement_key(s: Settlement) -> tuple[object, ...]:
    return (s.settlement_id, s.buyer, s.seller, s.source, s.quantity_wh, s.buy_price, s.sell_price, s.bid_id,
            s.ask_id)


def _entry_key(e: LedgerEntry) -> tuple[object, ...]:
    return (e.entry_id, e.kind, e.seller, e.buyer, e.source, e.quantity_wh, e.buy_price, e.sell_price,
            e.settlement_id, e.revision, e.reverses)


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
    late_by_slot: dict[Slot, list[str]] = defaultdict(list)  # whose readings came late, by revision
    for slot, _, pid in await store.adjustments(region):
        late_by_slot[slot].append(pid)
    result = Audit(final=len(await store.final_slots(region)))
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
        late_ids = late_by_slot.get(slot, [])
        by_id = {r.participant_id: r for r in readings}
        if not set(late_ids) <= set(by_id) or len(set(late_ids)) != len(late_ids):
            result.problems.append(f"slot {slot}: its adjustments name late readings the ledger does not hold once")
            late_ids = []
        revisions = true_up(region=region, slot=slot, settlements=expected,
                            readings=[r for r in readings if r.participant_id not in late_ids],
                            late=[by_id[p] for p in late_ids], grid=market.tariff.prices_at(slot.start))
        entries = [e for revision in revisions for e in revision]
        result.adjustments += len(late_ids)
        # revision by revision (two ledger-writers may commit a slot's revisions in any order)
        stored = sorted(by_slot_entries.get(slot, []), key=lambda e: e.revision)
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
