"""The end-of-run report: energy and money from the ledger alone, and its audit."""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal

from shared.market import GRID, MARKET, EntryKind, amount, bills
from shared.market.numbers import ZERO
from shared.runtime.audit import audit
from shared.runtime.ledger import LedgerStore
from shared.runtime.settings import MarketSettings

_CENT = Decimal("0.01")


def _kwh(wh: int) -> str:
    return f"{Decimal(wh) / 1000:,.3f} kWh"


def _usd(value: Decimal) -> str:
    return f"{value.quantize(_CENT):,}"


async def report(store: LedgerStore, market: MarketSettings) -> tuple[str, bool]:
    region = market.region
    entries = await store.entries(region)
    settlements = await store.settlements(region)
    readings = await store.readings(region)
    total: dict[EntryKind, int] = defaultdict(int)
    for e in entries:
        total[e.kind] += e.signed_wh
    traded = sum(s.quantity_wh for s in settlements)
    paid = sum((amount(s.quantity_wh, s.buy_price) for s in settlements), ZERO)
    received = sum((amount(s.quantity_wh, s.sell_price) for s in settlements), ZERO)
    grid_only: dict[str, Decimal] = defaultdict(Decimal)
    for r in readings:
        prices = market.tariff.prices_at(r.slot.start)
        grid_only[r.participant_id] += amount(r.import_wh, prices.buy_price) - amount(
            sum(r.export_wh.values()), prices.sell_price)
    party_bills = bills(entries)
    checked = await audit(store, market)
    lines = [
        f"microte report: region {region}, {checked.slots} slots, rule {market.rule}",
        "",
        f"  energy traded peer to peer (settled)  {_kwh(traded)} in {len(settlements)} settlements",
        f"    delivered and used (p2p)            {_kwh(total[EntryKind.P2P])}",
        f"    covered by batteries                {_kwh(total[EntryKind.BESS_COVER])}",
        f"    bought but not used (exported)      {_kwh(total[EntryKind.UNCONSUMED])}",
        f"    not delivered (shortfall)           {_kwh(total[EntryKind.SHORTFALL])}",
        f"  imported from the grid                {_kwh(total[EntryKind.GRID_IMPORT])}",
        f"  exported to the grid                  "
        f"{_kwh(total[EntryKind.GRID_EXPORT] + total[EntryKind.UNCONSUMED_EXPORT])}",
        f"  self-consumed                         {_kwh(total[EntryKind.SELF_CONSUMPTION])}",
    ]
    if traded:
        lines.append(f"  average p2p price: buyers paid {paid * 1000 / traded:.4f} $/kWh, "
                     f"sellers got {received * 1000 / traded:.4f} $/kWh")
    lines += ["", f"  {'participant':<12} {'bill ($)':>10} {'grid only ($)':>14} {'saving ($)':>11}"]
    saved = ZERO
    for pid in sorted(set(grid_only) | {p for p in party_bills if p not in (GRID, MARKET)}):
        bill = party_bills[pid].net_cost if pid in party_bills else ZERO
        alone = grid_only.get(pid, ZERO)
        saved += alone - bill
        lines.append(f"  {pid:<12} {_usd(bill):>10} {_usd(alone):>14} {_usd(alone - bill):>11}")
    lines.append(f"  {'all':<12} {'':>10} {'':>14} {_usd(saved):>11}")
    money = sum((b.received - b.paid for b in party_bills.values()), ZERO)
    lines += ["", f"  money over all parties sums to {money.normalize() if money else 0} (must be 0)"]
    verdict = "PASS" if checked.ok and money == 0 else "FAIL"
    lines.append(f"  ledger invariants and re-derivation of {checked.slots} slots, "
                 f"{checked.entries} entries: {verdict}")
    lines += [f"    {p}" for p in checked.problems[:20]]
    if checked.adjustments or checked.final:
        lines.append(f"  true-up: {checked.adjustments} late readings adjusted for, {checked.final} slots final")
    if checked.held:
        lines.append(f"  held slots awaiting `microte replay-slot` (nobody is billed for them yet): "
                     f"{len(checked.held)}")
        lines += [f"    {h.slot.start}-{h.slot.end} ({h.stage}): {h.error[:200]}" for h in checked.held[:20]]
    return "\n".join(lines), verdict == "PASS"
