"""Replaying a held slot: clear and reconcile it from the ledger's own records.

A slot is held when the services could not clear or reconcile it (``held_slots``). Once
the cause is fixed, an operator replays it: its accepted orders less cancellations are
cleared and its readings reconciled with the market core, exactly as the services would
have done on time (the same ids, so the result is what the audit re-derives), and the
settlements, entries and the slot's ``reconciled_slots`` row go into the ledger in one
transaction. A replay that fails writes nothing; a slot already reconciled is left alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.market import LedgerEntry, Settlement, Slot, clear, reconcile
from shared.runtime.ledger import LedgerStore, RecordBatch
from shared.runtime.settings import MarketSettings


class ReplayRefused(ValueError):
    """The slot cannot be replayed (not held, or reconciled already)."""


@dataclass(frozen=True)
class Replayed:
    slot: Slot
    settlements: list[Settlement]
    entries: list[LedgerEntry]


async def replay_slot(store: LedgerStore, market: MarketSettings, slot_start: int) -> Replayed:
    region = market.region
    held = {h.slot.start: h for h in await store.held_slots(region)}
    if slot_start not in held:
        raise ReplayRefused(f"slot {slot_start} of region {region} is not held: nothing to replay")
    slot = held[slot_start].slot
    if slot in await store.reconciled_slots(region):
        raise ReplayRefused(f"slot {slot} of region {region} was replayed already")
    cancelled = set(await store.cancelled_orders(region))
    orders = [o for o in await store.orders(region) if o.slot == slot and o.order_id not in cancelled]
    readings = [r for r in await store.readings(region) if r.slot == slot]
    settlements = clear(orders, region=region, slot=slot, rule=market.rule,
                        matched_at_ms=market.schedule.closes_at(slot) * 1000)
    entries = reconcile(region=region, slot=slot, settlements=settlements, readings=readings,
                        grid=market.tariff.prices_at(slot.start))
    await store.write(RecordBatch(settlements=settlements, entries=entries,
                                  reconciled=[(region, slot, len(entries))]))
    return Replayed(slot, settlements, entries)
