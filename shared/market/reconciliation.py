"""Delivery reconciliation (docs/market.md section 7): settlements + meter readings -> entries.

Contracts are firm. Settlements are processed dispatch pool first, each pool in matching
order; each takes energy off the seller's reported export (its battery covering a
non-dispatch gap) and off the buyer's reported import, and what neither covers is priced
as ``unconsumed`` or ``shortfall``. What is left of every meter goes to the grid.

For every slot (checked by ``shared.market.invariants``):
- per settlement: p2p + bess_cover + unconsumed + shortfall = quantity;
- per participant and source: export = supplied to settlements + grid_export;
- per participant: import = consumed from settlements + grid_import;
- money sums to zero over all parties; no quantity is negative; a replay is identical.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal

from shared.market.ledger import GRID, EntryKind, LedgerEntry, entry_id
from shared.market.matching import Settlement
from shared.market.numbers import MAX_READING_SOURCES, MAX_READING_WH
from shared.market.orders import BESS, POOL_ORDER, SOURCE_POOLS, SOURCES, Pool
from shared.market.reasons import RejectReason
from shared.market.tariff import GridPrices
from shared.market.timing import Slot


@dataclass(frozen=True, slots=True)
class Reading:
    """What one participant's meter measured over one delivered slot, in Wh."""

    participant_id: str
    slot: Slot
    import_wh: int = 0
    export_wh: Mapping[str, int] = field(default_factory=dict)
    self_consumed_wh: Mapping[str, int] = field(default_factory=dict)


def check_reading(reading: Reading) -> tuple[RejectReason, str] | None:
    """Why a reading cannot be accepted, or None.

    Every value is an integer in [0, ``MAX_READING_WH``]; each map names at most
    ``MAX_READING_SOURCES`` sources, all of them known.
    """
    values: list[tuple[str, object]] = [("import_wh", reading.import_wh)]
    for name, by_source in (("export_wh", reading.export_wh), ("self_consumed_wh", reading.self_consumed_wh)):
        if len(by_source) > MAX_READING_SOURCES:
            return RejectReason.INVALID_READING, (
                f"{name} names {len(by_source)} sources; at most {MAX_READING_SOURCES} ({', '.join(SOURCES)})")
        for source, wh in by_source.items():
            if source not in SOURCE_POOLS:
                return RejectReason.UNKNOWN_SOURCE, f"{name} has unknown source {source!r}"
            values.append((f"{name}[{source}]", wh))
    for name, value in values:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return RejectReason.INVALID_READING, f"{name} must be an integer >= 0, got {value!r}"
    for name, value in values:
        if isinstance(value, int) and value > MAX_READING_WH:
            return RejectReason.READING_TOO_LARGE, f"{name} {value} is above the limit of {MAX_READING_WH} Wh"
    return None


class _Meters:
    """Remaining export per (participant, source) and import per participant."""

    def __init__(self, readings: Mapping[str, Reading]) -> None:
        self.export = {(p, s): v for p, r in readings.items() for s, v in r.export_wh.items()}
        self.import_ = {p: r.import_wh for p, r in readings.items()}

    def take_export(self, participant: str, source: str, wanted: int) -> int:
        key = (participant, source)
        taken = min(wanted, self.export.get(key, 0))
        self.export[key] = self.export.get(key, 0) - taken
        return taken

    def take_import(self, participant: str, wanted: int) -> int:
        taken = min(wanted, self.import_.get(participant, 0))
        self.import_[participant] = self.import_.get(participant, 0) - taken
        return taken


@dataclass(frozen=True, slots=True)
class _Context:
    region: str
    slot: Slot
    grid: GridPrices

    def entry(
        self,
        kind: EntryKind,
        seller: str,
        buyer: str,
        source: str,
        quantity_wh: int,
        buy_price: Decimal,
        sell_price: Decimal,
        settlement: Settlement | None = None,
    ) -> LedgerEntry:
        sid = settlement.settlement_id if settlement else None
        return LedgerEntry(
            entry_id=entry_id(self.region, self.slot, kind, sid, seller, buyer, source),
            region=self.region,
            slot=self.slot,
            kind=kind,
            seller=seller,
            buyer=buyer,
            source=source,
            quantity_wh=quantity_wh,
            buy_price=buy_price,
            sell_price=sell_price,
            settlement_id=sid,
            matched_at_ms=settlement.matched_at_ms if settlement else None,
            delivered_at=self.slot.end,
        )


def _settle(ctx: _Context, s: Settlement, meters: _Meters) -> list[LedgerEntry]:
    q = s.quantity_wh
    from_source = meters.take_export(s.seller, s.source, q)
    from_bess = 0
    if SOURCE_POOLS[s.source] is Pool.NON_DISPATCH and from_source < q:
        from_bess = meters.take_export(s.seller, BESS, q - from_source)
    supplied = from_source + from_bess
    consumed = meters.take_import(s.buyer, supplied)
    consumed_source = min(from_source, consumed)
    consumed_bess = consumed - consumed_source
    shortfall = q - supplied

    def trade(kind: EntryKind, source: str, wh: int) -> LedgerEntry:
        return ctx.entry(kind, s.seller, s.buyer, source, wh, s.buy_price, s.sell_price, s)

    def export(source: str, wh: int) -> LedgerEntry:
        # The buyer owns what it bought and did not use; it is exported once, for the buyer.
        g = ctx.grid.sell_price
        return ctx.entry(EntryKind.UNCONSUMED_EXPORT, s.buyer, GRID, source, wh, g, g, s)

    out: list[LedgerEntry] = []
    if consumed_source:
        out.append(trade(EntryKind.P2P, s.source, consumed_source))
    if consumed_bess:
        out.append(trade(EntryKind.BESS_COVER, BESS, consumed_bess))
    for origin, wh in ((s.source, from_source - consumed_source), (BESS, from_bess - consumed_bess)):
        if wh:
            out += [trade(EntryKind.UNCONSUMED, origin, wh), export(origin, wh)]
    if shortfall:
        g = ctx.grid.buy_price
        out.append(trade(EntryKind.SHORTFALL, s.source, shortfall))
        # The seller pays the buyer the grid price of the energy the buyer must import.
        out.append(ctx.entry(EntryKind.SHORTFALL_PENALTY, s.buyer, s.seller, s.source, shortfall, g, g, s))
    return out


def reconcile(
    *,
    region: str,
    slot: Slot,
    settlements: Sequence[Settlement],
    readings: Iterable[Reading],
    grid: GridPrices,
) -> list[LedgerEntry]:
    """Ledger entries for one delivered slot. A party without a reading counts as zeros.

    ``settlements`` are in matching order; they are taken dispatch pool first, then
    non-dispatch, keeping that order within each pool.
    """
    by_participant: dict[str, Reading] = {}
    for reading in readings:
        if reading.slot != slot:
            raise ValueError(f"reading of {reading.participant_id} is for {reading.slot}, not {slot}")
        if reading.participant_id in by_participant:
            raise ValueError(f"two readings for {reading.participant_id} in slot {slot}")
        by_participant[reading.participant_id] = reading
    ctx = _Context(region, slot, grid)
    meters = _Meters(by_participant)
    entries: list[LedgerEntry] = []
    for pool in POOL_ORDER:
        for s in settlements:
            if s.slot != slot:
                raise ValueError(f"settlement {s.settlement_id} is for {s.slot}, not {slot}")
            if SOURCE_POOLS[s.source] is pool:
                entries += _settle(ctx, s, meters)
    zero = Decimal(0)
    for pid in sorted(by_participant):
        for source in SOURCES:
            wh = by_participant[pid].self_consumed_wh.get(source, 0)
            if wh:
                entries.append(ctx.entry(EntryKind.SELF_CONSUMPTION, pid, pid, source, wh, zero, zero))
    g = grid
    parties = sorted({p for p, _ in meters.export} | set(meters.import_))
    for pid in parties:
        for source in SOURCES:
            wh = meters.export.get((pid, source), 0)
            if wh:
                entries.append(ctx.entry(EntryKind.GRID_EXPORT, pid, GRID, source, wh, g.sell_price, g.sell_price))
        wh = meters.import_.get(pid, 0)
        if wh:
            entries.append(ctx.entry(EntryKind.GRID_IMPORT, GRID, pid, "grid", wh, g.buy_price, g.buy_price))
    return entries


def _transfer(e: LedgerEntry) -> tuple[str, str | None, str, str, str]:
    return (e.kind, e.settlement_id, e.seller, e.buyer, e.source)


def adjust(previous: Sequence[LedgerEntry], revised: Sequence[LedgerEntry], revision: int) -> list[LedgerEntry]:
    """The entries of true-up revision ``revision`` (>= 1): what takes a slot's ledger from
    ``previous`` to ``revised``, two reconciliations of the same settlements, the second with
    one reading more. Per transfer (kind, settlement, seller, buyer, source): a reversal of
    what it lost, or an entry for what it gained, at the same prices; reversals first, in
    ``previous``'s order, then gains, in ``revised``'s. Unchanged transfers get nothing."""
    if revision < 1:
        raise ValueError("a true-up revision is 1 or more")
    before = {_transfer(e): e for e in previous}
    after = {_transfer(e): e for e in revised}
    out: list[LedgerEntry] = []
    for key, old in before.items():
        lost = old.quantity_wh - (after[key].quantity_wh if key in after else 0)
        if lost > 0:
            out.append(_revised(old, lost, revision, reverses=True))
    for key, new in after.items():
        old_e = before.get(key)
        if old_e is not None and (old_e.buy_price, old_e.sell_price) != (new.buy_price, new.sell_price):
            raise ValueError(f"entry {new.entry_id} changed its prices between two reconciliations")
        gained = new.quantity_wh - (old_e.quantity_wh if old_e is not None else 0)
        if gained > 0:
            out.append(_revised(new, gained, revision, reverses=False))
    return out


def _revised(e: LedgerEntry, quantity_wh: int, revision: int, *, reverses: bool) -> LedgerEntry:
    return replace(e, entry_id=entry_id(e.region, e.slot, e.kind, e.settlement_id, e.seller, e.buyer, e.source,
                                        revision),
                   quantity_wh=quantity_wh, revision=revision, reverses=reverses)


def true_up(
    *,
    region: str,
    slot: Slot,
    settlements: Sequence[Settlement],
    readings: Iterable[Reading],
    late: Sequence[Reading],
    grid: GridPrices,
) -> list[list[LedgerEntry]]:
    """Every revision of a slot's entries: revision 0 reconciles ``readings`` (those in by
    the reconciliation), revision k adjusts it for ``late[k - 1]``, the k-th reading to
    arrive late. Their sum is ``reconcile`` with every reading."""
    known = list(readings)
    revisions = [reconcile(region=region, slot=slot, settlements=settlements, readings=known, grid=grid)]
    previous = revisions[0]
    for k, reading in enumerate(late, 1):
        known.append(reading)
        revised = reconcile(region=region, slot=slot, settlements=settlements, readings=known, grid=grid)
        revisions.append(adjust(previous, revised, k))
        previous = revised
    return revisions


def in_true_up_window(slot: Slot, market_now: int, true_up_s: int) -> bool:
    """Whether a reading of ``slot`` that arrives after the slot was reconciled still counts
    (a true-up): before ``slot.end + true_up_s`` in market time; never with no window."""
    return true_up_s > 0 and market_now < slot.end + true_up_s
