"""The checks of docs/market.md section 7, as a function the tests and the report both use."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

from shared.market.ledger import EntryKind, LedgerEntry, bills
from shared.market.matching import Settlement
from shared.market.numbers import ZERO
from shared.market.orders import SOURCES
from shared.market.reconciliation import Reading

_SETTLED = (EntryKind.P2P, EntryKind.BESS_COVER, EntryKind.UNCONSUMED, EntryKind.SHORTFALL)
_SUPPLIED = (EntryKind.P2P, EntryKind.BESS_COVER, EntryKind.UNCONSUMED)
_CONSUMED = (EntryKind.P2P, EntryKind.BESS_COVER)


def violations(
    settlements: Sequence[Settlement], readings: Iterable[Reading], entries: Sequence[LedgerEntry]
) -> list[str]:
    """Every broken invariant for one slot, as readable text; empty when all hold. With a
    true-up's revisions among ``entries``, they hold for the net (reversals counted
    negative) against every reading."""
    problems: list[str] = []
    by_settlement: dict[str, int] = defaultdict(int)
    supplied: dict[tuple[str, str], int] = defaultdict(int)
    consumed: dict[str, int] = defaultdict(int)
    grid_export: dict[tuple[str, str], int] = defaultdict(int)
    grid_import: dict[str, int] = defaultdict(int)
    for e in entries:
        if e.quantity_wh <= 0 or e.buy_price < 0 or e.sell_price < 0:
            problems.append(f"entry {e.entry_id} has a non-positive quantity or a negative price")
        if e.kind in _SETTLED and e.settlement_id is not None:
            by_settlement[e.settlement_id] += e.signed_wh
        if e.kind in _SUPPLIED:
            supplied[(e.seller, e.source)] += e.signed_wh
        if e.kind in _CONSUMED:
            consumed[e.buyer] += e.signed_wh
        if e.kind is EntryKind.GRID_EXPORT:
            grid_export[(e.seller, e.source)] += e.signed_wh
        if e.kind is EntryKind.GRID_IMPORT:
            grid_import[e.buyer] += e.signed_wh
    for s in settlements:
        if by_settlement.get(s.settlement_id, 0) != s.quantity_wh:
            problems.append(
                f"settlement {s.settlement_id}: p2p+bess_cover+unconsumed+shortfall="
                f"{by_settlement.get(s.settlement_id, 0)} != {s.quantity_wh}"
            )
    reported = {r.participant_id: r for r in readings}
    parties = set(reported) | {s.buyer for s in settlements} | {s.seller for s in settlements}
    for pid in sorted(parties):
        reading = reported.get(pid)
        for source in SOURCES:
            exported = reading.export_wh.get(source, 0) if reading else 0
            accounted = supplied[(pid, source)] + grid_export[(pid, source)]
            if exported != accounted:
                problems.append(f"{pid} {source}: export {exported} != supplied+grid_export {accounted}")
        imported = reading.import_wh if reading else 0
        if imported != consumed[pid] + grid_import[pid]:
            problems.append(f"{pid}: import {imported} != consumed+grid_import {consumed[pid] + grid_import[pid]}")
    total = sum((b.received - b.paid for b in bills(entries).values()), ZERO)
    if total != ZERO:
        problems.append(f"money does not sum to zero: {total}")
    if len({e.entry_id for e in entries}) != len(entries):
        problems.append("entry ids are not unique")
    return problems
