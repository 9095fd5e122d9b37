"""``microte export``'s rows, from a ledger built with the market core: exact numbers, and
files that say the same in CSV and Parquet."""

from __future__ import annotations

import csv
from decimal import Decimal
from pathlib import Path

import pyarrow.parquet as pq

from services.export import HOUSEHOLD_COLUMNS, SLOT_COLUMNS, Export, household_rows, slot_rows, write
from shared.market import Reading, Schedule, Slot, accept, clear, reconcile, validate_order
from shared.market.orders import OrderTerms
from shared.runtime.settings import from_env

SLOT = Slot(1782064800, 1782064860)  # 2026-06-21 11:00 in Vancouver
MARKET = from_env({"MICROTE_REGION": "r1", "MICROTE_TIMEZONE": "America/Vancouver",
                   "MICROTE_PRICING_RULE": "pay_as_bid"}).market


def order(oid: str, who: str, side: str, wh: int, price: str, seq: int) -> object:
    schedule = Schedule()
    round_start = schedule.closes_at(SLOT) - schedule.duration
    terms = validate_order(participant_id=who, side=side, quantity_wh=wh, price=Decimal(price), source="solar",
                           slot=SLOT, schedule=schedule, round_start=round_start)
    assert isinstance(terms, OrderTerms), terms
    return accept(terms, order_id=oid, client_order_id=f"c-{oid}", seq=seq, submitted_at_ms=round_start * 1000)


def ledger() -> tuple[list, list, list]:  # type: ignore[type-arg]
    """alice sells bob 1000 Wh at 0.0900/0.1100 (pay as bid); bob uses 800 of it and
    imports 100 more; alice exports 1200 Wh in all; carol only imports 50 Wh."""
    settlements = clear([order("a", "alice", "ask", 1000, "0.0900", 1), order("b", "bob", "bid", 1000, "0.1100", 2)],
                        region="r1", slot=SLOT, rule=MARKET.rule, matched_at_ms=0)
    readings = [Reading("alice", SLOT, 0, {"solar": 1200}, {"solar": 300}),
                Reading("bob", SLOT, 900, {}, {}), Reading("carol", SLOT, 50, {}, {})]
    entries = reconcile(region="r1", slot=SLOT, settlements=settlements, readings=readings,
                        grid=MARKET.tariff.prices_at(SLOT.start))
    return entries, settlements, readings


def test_a_slots_row_adds_up_its_ledger() -> None:
    (row,) = slot_rows(MARKET, *ledger())
    assert list(row) == list(SLOT_COLUMNS)
    assert row["local_start"] == "2026-06-21T11:00:00-07:00"
    assert (row["settlements"], row["p2p_settled_wh"]) == (1, 1000)
    assert (row["p2p_buy_price"], row["p2p_sell_price"]) == (Decimal("0.11"), Decimal("0.09"))
    assert (row["grid_buy_price"], row["grid_sell_price"]) == (Decimal("0.1449"), Decimal("0.069"))
    assert (row["readings"], row["metered_import_wh"], row["metered_export_wh"], row["metered_self_consumed_wh"]) \
        == (3, 950, 1200, 300)
    assert row["shortfall_wh"] == 0
    assert row["p2p_delivered_wh"] + row["unconsumed_wh"] == 1000
    assert row["grid_import_wh"] == 950 - row["p2p_delivered_wh"]
    # bob used less than he bought: he paid 0.11 for it, the grid pays him 0.069 back
    unused = row["unconsumed_wh"]
    assert unused > 0
    assert row["unconsumed_loss_usd"] == Decimal(unused) * (Decimal("0.11") - Decimal("0.069")) / 1000
    assert row["shortfall_penalty_usd"] == 0  # alice delivered all she sold
    assert row["battery_stored_wh"] is None  # not recorded: a live region


def test_a_slots_row_has_what_a_simulated_communitys_batteries_held_at_its_end() -> None:
    community = {"households": [], "battery": {"capacity_wh": 20000, "charge": [
        [SLOT.start - 60, SLOT.start, 9000, 100, 800], [SLOT.start, SLOT.end, 12345, 200, 900]]}}
    (row,) = slot_rows(MARKET, *ledger(), community)
    assert row["battery_stored_wh"] == 12345


def test_a_households_bill_and_saving_are_exact() -> None:
    rows = {r["participant"]: r for r in household_rows(MARKET, *ledger())}
    assert sorted(rows) == ["alice", "bob", "carol"]
    assert all(list(r) == list(HOUSEHOLD_COLUMNS) for r in rows.values())
    carol = rows["carol"]
    assert carol["bill_usd"] == carol["grid_only_usd"] == Decimal("50") * Decimal("0.1449") / 1000
    assert carol["saving_usd"] == 0
    assert (rows["alice"]["p2p_sold_wh"], rows["bob"]["p2p_bought_wh"]) == (1000, 1000)
    assert rows["bob"]["grid_only_usd"] == Decimal(900) * Decimal("0.1449") / 1000
    assert rows["alice"]["grid_only_usd"] == -Decimal(1200) * Decimal("0.069") / 1000


def test_csv_and_parquet_say_the_same(tmp_path: Path) -> None:
    alice = {"id": "alice", "pv_kw": "4.5", "battery_kwh": "13.5", "battery_kw": "5", "base_load_w": 420,
             "strategy": "bandit"}  # what alice owns; the others' is not recorded
    community = {"households": [alice], "battery": {"capacity_wh": 13500, "charge": [[SLOT.start, SLOT.end, 6750, 500,
                                                                                       500]]}}
    done = Export(slot_rows(MARKET, *ledger(), community), household_rows(MARKET, *ledger(), community))
    assert [r["battery_stored_wh"] for r in done.slots] == [6750]
    owned = {str(r["participant"]): r for r in done.households}
    assert [owned["alice"][c] for c in ("pv_w", "battery_wh", "battery_w", "base_load_w", "strategy")] == \
           [4500, 13500, 5000, 420, "bandit"]
    assert owned["bob"]["pv_w"] is None and owned["bob"]["strategy"] is None
    write(done, tmp_path / "csv", "csv")
    write(done, tmp_path / "parquet", "parquet")
    for name, columns, rows in (("slots", SLOT_COLUMNS, done.slots), ("households", HOUSEHOLD_COLUMNS,
                                                                      done.households)):
        with (tmp_path / "csv" / f"{name}.csv").open() as f:
            text = list(csv.DictReader(f))
        table = pq.read_table(tmp_path / "parquet" / f"{name}.parquet")
        assert table.column_names == list(columns)
        parquet = table.to_pylist()
        assert len(text) == len(parquet) == len(rows)
        for t_row, p_row, row in zip(text, parquet, rows, strict=True):
            for c in columns:
                if isinstance(row[c], Decimal):
                    assert Decimal(t_row[c]) == p_row[c] == row[c], c  # exact both ways
                else:
                    assert t_row[c] == ("" if row[c] is None else str(row[c])) and p_row[c] == row[c], c
