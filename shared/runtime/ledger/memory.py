"""The in-memory twin of the SQL ledger stores, for unit and service tests.

Same contract, same ordering, same duplicate rules, same constraints (checked by
``check_constraints`` before anything changes, so a refused batch leaves nothing).
``memory://`` is a fresh, private store; ``memory://NAME`` names a store shared by every
instance in this process, so closing and reopening it keeps the data, as a file would.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import count

from shared.market.ledger import LedgerEntry
from shared.market.matching import Settlement
from shared.market.orders import Order
from shared.market.reconciliation import Reading
from shared.market.timing import Slot
from shared.runtime.ledger.base import (
    HeldSlot,
    RecordBatch,
    StoreNotOpen,
    WriteResult,
    check_constraints,
    check_types,
    current_members,
    current_registrations,
)


@dataclass
class _Tables:
    """Rows by key; ``seq`` is the per-row insertion sequence the SQL stores keep too."""

    seq: count[int] = field(default_factory=lambda: count(1))
    regions: set[str] = field(default_factory=set)
    entries: dict[str, tuple[int, LedgerEntry]] = field(default_factory=dict)
    orders: dict[tuple[str, str], Order] = field(default_factory=dict)
    settlements: dict[tuple[str, str], tuple[int, Settlement]] = field(default_factory=dict)
    readings: dict[tuple[str, str, int, int], Reading] = field(default_factory=dict)
    reconciled: dict[tuple[str, int, int], int] = field(default_factory=dict)
    adjusted: dict[tuple[str, int, int, int], tuple[str, int]] = field(default_factory=dict)
    finalized: dict[tuple[str, int, int], int] = field(default_factory=dict)
    cancellations: dict[tuple[str, str], Slot] = field(default_factory=dict)
    held: dict[tuple[str, int, int], tuple[str, str]] = field(default_factory=dict)
    rounds: dict[tuple[str, int, int], int] = field(default_factory=dict)
    memberships: set[tuple[str, str, str, int]] = field(default_factory=set)
    agents: dict[tuple[str, str, int], str] = field(default_factory=dict)
    connections: dict[tuple[str, str, int], tuple[int | None, int | None]] = field(default_factory=dict)
    market_settings: dict[str, str] = field(default_factory=dict)
    communities: dict[str, str] = field(default_factory=dict)


_NAMED: dict[str, _Tables] = {}


def _copy(r: Reading) -> Reading:
    # Readings hold mappings: keep the store's copy out of the caller's reach.
    return Reading(r.participant_id, r.slot, r.import_wh, dict(r.export_wh), dict(r.self_consumed_wh))


class MemoryLedgerStore:
    def __init__(self, name: str = "") -> None:
        self._tables = _NAMED.setdefault(name, _Tables()) if name else _Tables()
        self._open = False

    async def open(self) -> None:
        self._open = True

    async def close(self) -> None:
        self._open = False

    async def ping(self) -> bool:
        return self._open

    def _ready(self) -> _Tables:
        if not self._open:
            raise StoreNotOpen("the ledger store is not open")
        return self._tables

    async def write(self, batch: RecordBatch) -> WriteResult:
        t = self._ready()
        check_types(batch)
        check_constraints(batch)
        # Nothing below can fail, and nothing awaits: the batch is applied all at once.
        t.regions |= batch.regions()
        for region, settings in batch.market_settings:
            t.market_settings.setdefault(region, settings)
        for region, described in batch.communities:
            t.communities.setdefault(region, described)
        orders = 0
        for region, o in batch.orders:
            if (region, o.order_id) not in t.orders:
                t.orders[region, o.order_id] = o
                orders += 1
        cancellations = 0
        for region, order_id, slot in batch.cancellations:
            if (region, order_id) not in t.cancellations:
                t.cancellations[region, order_id] = slot
                cancellations += 1
        settlements = 0
        for s in batch.settlements:
            if (s.region, s.settlement_id) not in t.settlements:
                t.settlements[s.region, s.settlement_id] = (next(t.seq), s)
                settlements += 1
        readings = 0
        for region, r, _ in batch.readings:
            key = (region, r.participant_id, r.slot.start, r.slot.end)
            if key not in t.readings:
                t.readings[key] = _copy(r)
                readings += 1
        entries = 0
        for e in batch.entries:
            if e.entry_id not in t.entries:
                t.entries[e.entry_id] = (next(t.seq), e)
                entries += 1
        reconciled = 0
        for region, slot, entry_count in batch.reconciled:
            if (region, slot.start, slot.end) not in t.reconciled:
                t.reconciled[region, slot.start, slot.end] = entry_count
                reconciled += 1
        held = 0
        for region, slot, stage, error in batch.held:
            if (region, slot.start, slot.end) not in t.held:
                t.held[region, slot.start, slot.end] = (stage, error)
                held += 1
        rounds = 0
        for region, start, fence, at_ms in batch.rounds:
            if (region, start, fence) not in t.rounds:
                t.rounds[region, start, fence] = at_ms
                rounds += 1
        memberships = len(set(batch.memberships) - t.memberships)
        t.memberships |= set(batch.memberships)
        agents = 0
        for region, pid, agent, at_ms in batch.agents:
            if (region, pid, at_ms) not in t.agents:
                t.agents[region, pid, at_ms] = agent
                agents += 1
        adjusted = 0
        for region, slot, revision, pid, entry_count in batch.adjusted:
            if (region, slot.start, slot.end, revision) not in t.adjusted:
                t.adjusted[region, slot.start, slot.end, revision] = (pid, entry_count)
                adjusted += 1
        finalized = 0
        for region, slot, revisions in batch.finalized:
            if (region, slot.start, slot.end) not in t.finalized:
                t.finalized[region, slot.start, slot.end] = revisions
                finalized += 1
        connections = 0
        for region, pid, import_w, export_w, at_ms in batch.connections:
            if (region, pid, at_ms) not in t.connections:
                t.connections[region, pid, at_ms] = (import_w, export_w)
                connections += 1
        return WriteResult(entries, orders, settlements, readings, reconciled, cancellations, held, rounds,
                           memberships, agents, connections, adjusted, finalized)

    async def entries(self, region: str, start: int | None = None, end: int | None = None) -> list[LedgerEntry]:
        rows = [
            (e.slot.start, e.slot.end, seq, e)
            for seq, e in self._ready().entries.values()
            if e.region == region and (start is None or e.slot.start >= start) and (end is None or e.slot.end <= end)
        ]
        return [e for *_, e in sorted(rows, key=lambda row: row[:3])]

    async def orders(self, region: str) -> list[Order]:
        rows = [o for (r, _), o in self._ready().orders.items() if r == region]
        return sorted(rows, key=lambda o: (o.slot.start, o.slot.end, o.seq, o.order_id))

    async def settlements(self, region: str) -> list[Settlement]:
        rows = [
            (s.slot.start, s.slot.end, seq, s) for seq, s in self._ready().settlements.values() if s.region == region
        ]
        return [s for *_, s in sorted(rows, key=lambda row: row[:3])]

    async def readings(self, region: str) -> list[Reading]:
        rows = [r for (reg, *_), r in self._ready().readings.items() if reg == region]
        return [_copy(r) for r in sorted(rows, key=lambda r: (r.slot.start, r.slot.end, r.participant_id))]

    async def reconciled_slots(self, region: str) -> list[Slot]:
        return sorted(Slot(start, end) for (r, start, end) in self._ready().reconciled if r == region)

    async def adjustments(self, region: str) -> list[tuple[Slot, int, str]]:
        return [(Slot(start, end), revision, pid)
                for (r, start, end, revision), (pid, _) in sorted(self._ready().adjusted.items()) if r == region]

    async def final_slots(self, region: str) -> list[tuple[Slot, int]]:
        return [(Slot(start, end), revisions)
                for (r, start, end), revisions in sorted(self._ready().finalized.items()) if r == region]

    async def held_slots(self, region: str) -> list[HeldSlot]:
        return [HeldSlot(Slot(start, end), stage, error)
                for (r, start, end), (stage, error) in sorted(self._ready().held.items()) if r == region]

    async def rounds(self, region: str) -> list[tuple[int, int]]:
        return sorted((start, fence) for (r, start, fence) in self._ready().rounds if r == region)

    async def members(self, region: str) -> list[str]:
        return current_members((pid, event, at_ms) for r, pid, event, at_ms in self._ready().memberships
                               if r == region)

    async def agents(self, region: str) -> dict[str, str]:
        t = self._ready()
        return current_registrations(((pid, event, at_ms) for r, pid, event, at_ms in t.memberships if r == region),
                                     ((pid, agent, at_ms) for (r, pid, at_ms), agent in t.agents.items()
                                      if r == region))

    async def connections(self, region: str) -> dict[str, tuple[int | None, int | None]]:
        t = self._ready()
        return current_registrations(((pid, event, at_ms) for r, pid, event, at_ms in t.memberships if r == region),
                                     ((pid, held, at_ms) for (r, pid, at_ms), held in t.connections.items()
                                      if r == region))

    async def cancelled_orders(self, region: str) -> list[str]:
        found = [(slot.start, slot.end, oid) for (r, oid), slot in self._ready().cancellations.items() if r == region]
        return [oid for *_, oid in sorted(found)]

    async def regions(self) -> list[str]:
        return sorted(self._ready().regions)

    async def market_settings(self, region: str) -> str | None:
        return self._ready().market_settings.get(region)

    async def community(self, region: str) -> str | None:
        return self._ready().communities.get(region)
