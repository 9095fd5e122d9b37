"""Data exports of a region (``microte export``): a row per slot and a row per household,
derived from the ledger alone (the ledger stays the source of truth), as CSV or Parquet.

Energy is integer Wh and money exact decimal $: in CSV as written (``0.10025``), in
Parquet as ``decimal128(38, 10)``. Averages of prices are the only rounded values (to 10
decimals). The columns are documented in docs/exports.md; ``SLOT_COLUMNS`` and
``HOUSEHOLD_COLUMNS`` name them in file order.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from shared.market import GRID, MARKET, EntryKind, LedgerEntry, Reading, Settlement, Slot, amount, bills
from shared.market.numbers import ZERO
from shared.market.timezones import zone
from shared.runtime.ledger import LedgerStore
from shared.runtime.settings import MarketSettings

SLOT_COLUMNS = (
    "slot_start", "slot_end", "local_start",
    "settlements", "p2p_settled_wh", "p2p_buy_price", "p2p_sell_price",
    "grid_buy_price", "grid_sell_price",
    "p2p_delivered_wh", "bess_cover_wh", "unconsumed_wh", "shortfall_wh",
    "grid_import_wh", "grid_export_wh", "self_consumption_wh",
    "readings", "metered_import_wh", "metered_export_wh", "metered_self_consumed_wh",
    "paid_usd", "shortfall_penalty_usd", "unconsumed_loss_usd",
    "battery_stored_wh",  # simulated regions only
)
HOUSEHOLD_COLUMNS = (
    "participant", "readings", "metered_import_wh", "metered_export_wh", "metered_self_consumed_wh",
    "p2p_bought_wh", "p2p_sold_wh", "grid_import_wh", "grid_export_wh", "shortfall_wh",
    "bill_usd", "grid_only_usd", "saving_usd",
    "pv_w", "battery_wh", "battery_w", "base_load_w", "strategy",  # what it owns: simulated regions only
)
_OWNS = {"pv_w": "pv_kw", "battery_wh": "battery_kwh", "battery_w": "battery_kw"}  # column -> community key, in k
INTEGERS = frozenset({c for c in SLOT_COLUMNS + HOUSEHOLD_COLUMNS if c.endswith(("_wh", "_w"))}
                     | {"slot_start", "slot_end", "settlements", "readings"})
MONEY = frozenset({c for c in SLOT_COLUMNS + HOUSEHOLD_COLUMNS if c.endswith(("_usd", "_price"))})
_AVERAGE = Decimal("1e-10")
FORMATS = ("csv", "parquet")

Row = dict[str, object]


@dataclass(frozen=True)
class Export:
    slots: list[Row]
    households: list[Row]
    community: dict[str, Any] | None = None  # a simulated region's households, as its ledger keeps them


def _average(total: Decimal, wh: int) -> Decimal | None:
    """$/kWh over ``wh``, rounded to 10 decimals; None when nothing traded."""
    return (total * 1000 / wh).quantize(_AVERAGE).normalize() if wh else None


def _exported(e: LedgerEntry) -> bool:
    return e.kind in (EntryKind.GRID_EXPORT, EntryKind.UNCONSUMED_EXPORT)


def slot_rows(market: MarketSettings, entries: Iterable[LedgerEntry], settlements: Iterable[Settlement],
              readings: Iterable[Reading], community: dict[str, Any] | None = None) -> list[Row]:
    """A row per slot that has a settlement, an entry or a reading, by slot start; what the
    batteries hold at its end from ``community`` (the region's, as the ledger keeps it), else empty."""
    stored = {(start, end): wh for start, end, wh, *_ in battery_charge(community)}
    by_kind: dict[Slot, dict[EntryKind, int]] = defaultdict(lambda: defaultdict(int))
    exported: dict[Slot, int] = defaultdict(int)
    paid: dict[Slot, Decimal] = defaultdict(Decimal)
    penalties: dict[Slot, Decimal] = defaultdict(Decimal)
    unconsumed: dict[Slot, Decimal] = defaultdict(Decimal)  # paid for, less what the grid paid back
    for e in entries:  # a true-up's reversals count negative: the net of every revision
        by_kind[e.slot][e.kind] += e.signed_wh
        exported[e.slot] += e.signed_wh if _exported(e) else 0
        paid[e.slot] += e.paid if e.buyer not in (GRID, MARKET) else ZERO
        if e.kind is EntryKind.SHORTFALL_PENALTY:
            penalties[e.slot] += e.paid
        elif e.kind is EntryKind.UNCONSUMED:
            unconsumed[e.slot] += e.paid
        elif e.kind is EntryKind.UNCONSUMED_EXPORT:
            unconsumed[e.slot] -= e.received
    traded: dict[Slot, list[Settlement]] = defaultdict(list)
    for s in settlements:
        traded[s.slot].append(s)
    metered: dict[Slot, list[Reading]] = defaultdict(list)
    for r in readings:
        metered[r.slot].append(r)
    tz = zone(market.tariff.timezone)
    rows = []
    for slot in sorted(set(by_kind) | set(traded) | set(metered), key=lambda s: (s.start, s.end)):
        mine, kinds, grid = traded[slot], by_kind[slot], market.tariff.prices_at(slot.start)
        settled = sum(s.quantity_wh for s in mine)
        rows.append({
            "slot_start": slot.start,
            "slot_end": slot.end,
            "local_start": datetime.fromtimestamp(slot.start, tz).isoformat(),
            "settlements": len(mine),
            "p2p_settled_wh": settled,
            "p2p_buy_price": _average(sum((amount(s.quantity_wh, s.buy_price) for s in mine), ZERO), settled),
            "p2p_sell_price": _average(sum((amount(s.quantity_wh, s.sell_price) for s in mine), ZERO), settled),
            "grid_buy_price": grid.buy_price,
            "grid_sell_price": grid.sell_price,
            "p2p_delivered_wh": kinds[EntryKind.P2P],
            "bess_cover_wh": kinds[EntryKind.BESS_COVER],
            "unconsumed_wh": kinds[EntryKind.UNCONSUMED],
            "shortfall_wh": kinds[EntryKind.SHORTFALL],
            "grid_import_wh": kinds[EntryKind.GRID_IMPORT],
            "grid_export_wh": exported[slot],
            "self_consumption_wh": kinds[EntryKind.SELF_CONSUMPTION],
            "readings": len(metered[slot]),
            "metered_import_wh": sum(r.import_wh for r in metered[slot]),
            "metered_export_wh": sum(sum(r.export_wh.values()) for r in metered[slot]),
            "metered_self_consumed_wh": sum(sum(r.self_consumed_wh.values()) for r in metered[slot]),
            "paid_usd": paid[slot],
            "shortfall_penalty_usd": penalties[slot],
            "unconsumed_loss_usd": unconsumed[slot],
            "battery_stored_wh": stored.get((slot.start, slot.end)),
        })
    return rows


def battery_charge(community: dict[str, Any] | None) -> list[list[int]]:
    """The batteries' charge at the end of each slot a simulated community recorded:
    ``[start, end, stored Wh, lowest and highest household's charge in per mille]``."""
    return list((community or {}).get("battery", {}).get("charge", []))


def household_rows(market: MarketSettings, entries: Iterable[LedgerEntry], settlements: Iterable[Settlement],
                   readings: Iterable[Reading], community: dict[str, Any] | None = None) -> list[Row]:
    """A row per participant (not the grid, not the market operator), by id; what it owns
    from ``community`` (the region's, as the ledger keeps it), else empty."""
    owns = {h["id"]: h for h in (community or {}).get("households", [])}
    entries = list(entries)
    energy: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    grid_only: dict[str, Decimal] = defaultdict(Decimal)
    for r in readings:
        mine, prices = energy[r.participant_id], market.tariff.prices_at(r.slot.start)
        mine["readings"] += 1
        mine["metered_import_wh"] += r.import_wh
        mine["metered_export_wh"] += sum(r.export_wh.values())
        mine["metered_self_consumed_wh"] += sum(r.self_consumed_wh.values())
        grid_only[r.participant_id] += (amount(r.import_wh, prices.buy_price)
                                        - amount(sum(r.export_wh.values()), prices.sell_price))
    for s in settlements:
        energy[s.buyer]["p2p_bought_wh"] += s.quantity_wh
        energy[s.seller]["p2p_sold_wh"] += s.quantity_wh
    for e in entries:
        if e.kind is EntryKind.GRID_IMPORT:
            energy[e.buyer]["grid_import_wh"] += e.signed_wh
        elif _exported(e):
            energy[e.seller]["grid_export_wh"] += e.signed_wh
        elif e.kind is EntryKind.SHORTFALL:
            energy[e.seller]["shortfall_wh"] += e.signed_wh
    party_bills = bills(entries)
    rows = []
    for pid in sorted((set(energy) | set(party_bills)) - {GRID, MARKET}):
        bill = party_bills[pid].net_cost if pid in party_bills else ZERO
        alone = grid_only.get(pid, ZERO)
        home = owns.get(pid)
        equipment: Row = {c: None if home is None else int(Decimal(home[k]) * 1000) for c, k in _OWNS.items()}
        equipment.update(base_load_w=None if home is None else int(home["base_load_w"]),
                         strategy=None if home is None else str(home["strategy"]))
        rows.append({"participant": pid, **{c: energy[pid][c] for c in HOUSEHOLD_COLUMNS[1:10]},
                     "bill_usd": bill, "grid_only_usd": alone, "saving_usd": alone - bill, **equipment})
    return rows


async def export(store: LedgerStore, market: MarketSettings) -> Export:
    region = market.region
    entries, settlements = await store.entries(region), await store.settlements(region)
    readings = await store.readings(region)
    kept = await store.community(region)
    community = None if kept is None else json.loads(kept)
    return Export(slot_rows(market, entries, settlements, readings, community),
                  household_rows(market, entries, settlements, readings, community), community)


def write(done: Export, folder: Path, fmt: str) -> list[Path]:
    """``slots.<fmt>`` and ``households.<fmt>`` in ``folder``; the paths written."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, columns, rows in (("slots", SLOT_COLUMNS, done.slots), ("households", HOUSEHOLD_COLUMNS,
                                                                      done.households)):
        path = folder / f"{name}.{fmt}"
        (_write_csv if fmt == "csv" else _write_parquet)(path, columns, rows)
        written.append(path)
    return written


def _write_csv(path: Path, columns: tuple[str, ...], rows: list[Row]) -> None:
    with path.open("w", newline="") as out:
        table = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
        table.writeheader()
        table.writerows({c: "" if row[c] is None else row[c] for c in columns} for row in rows)


def _write_parquet(path: Path, columns: tuple[str, ...], rows: list[Row]) -> None:
    import pyarrow as pa  # the optional extra "parquet" (in .[dev])
    import pyarrow.parquet as pq

    money = pa.decimal128(38, 10)
    fields = [pa.field(c, money if c in MONEY else pa.int64() if c in INTEGERS else pa.string()) for c in columns]
    table = pa.Table.from_pylist([{c: row[c] for c in columns} for row in rows], schema=pa.schema(fields))
    pq.write_table(table, path)
