"""Delivery reconciliation, one scenario at a time (docs/market.md section 7).

Every expected entry list below was worked out by hand from section 7: take the
settlement's quantity off the seller's export (the battery covering a non-dispatch gap),
then off the buyer's import, price what is left as ``unconsumed`` or ``shortfall``, then
self-consumption, then residuals to and from the grid. Entries come out in that order
(section 7's steps); within steps 2 and 3, participant by participant in id order and
source by source (solar, wind, bess), so that a replay is identical.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import pytest
from builders import GRID, GRID_BUY, GRID_SELL, MATCHED_AT_MS, REGION, SLOT, reading, rows, settlement

from shared.market import GRID as GRID_ID
from shared.market import (
    MARKET,
    MAX_READING_SOURCES,
    MAX_READING_WH,
    SOURCES,
    LedgerEntry,
    Reading,
    RejectReason,
    Settlement,
    Slot,
    check_reading,
    reconcile,
    violations,
)

P = Decimal("0.1")
ZERO = Decimal(0)


def run(settlements: Sequence[Settlement], readings: Sequence[Reading]) -> list[LedgerEntry]:
    entries = reconcile(region=REGION, slot=SLOT, settlements=settlements, readings=readings, grid=GRID)
    assert violations(settlements, readings, entries) == []
    return entries


# --- the seller's side -----------------------------------------------------------------


def test_a_seller_who_delivers_exactly_the_settled_quantity_makes_one_p2p_entry() -> None:
    entries = run([settlement("S", "B", "solar", 1000)],
                  [reading("S", export_wh={"solar": 1000}), reading("B", import_wh=1000)])
    assert rows(entries) == [("p2p", "S", "B", "solar", 1000, P, P)]


def test_a_seller_who_delivers_less_pays_the_shortfall_penalty() -> None:
    entries = run([settlement("S", "B", "solar", 1000)],
                  [reading("S", export_wh={"solar": 600}), reading("B", import_wh=1000)])
    assert rows(entries) == [
        ("p2p", "S", "B", "solar", 600, P, P),
        # The contract is firm: the buyer pays for the missing 400 Wh...
        ("shortfall", "S", "B", "solar", 400, P, P),
        # ...and the seller pays the buyer the grid price of the 400 Wh it must import.
        ("shortfall_penalty", "B", "S", "solar", 400, GRID_BUY, GRID_BUY),
        ("grid_import", GRID_ID, "B", "grid", 400, GRID_BUY, GRID_BUY),
    ]


def test_a_seller_who_delivers_more_sells_the_surplus_to_the_grid() -> None:
    entries = run([settlement("S", "B", "solar", 1000)],
                  [reading("S", export_wh={"solar": 1500}), reading("B", import_wh=1000)])
    assert rows(entries) == [
        ("p2p", "S", "B", "solar", 1000, P, P),
        ("grid_export", "S", GRID_ID, "solar", 500, GRID_SELL, GRID_SELL),
    ]


# --- the buyer's side ------------------------------------------------------------------


def test_a_buyer_who_consumes_exactly_the_settled_quantity_imports_nothing_from_the_grid() -> None:
    entries = run([settlement("S", "B", "wind", 700)],
                  [reading("S", export_wh={"wind": 700}), reading("B", import_wh=700)])
    assert rows(entries) == [("p2p", "S", "B", "wind", 700, P, P)]


def test_a_buyer_who_consumes_less_pays_for_all_and_exports_the_rest_once_for_itself() -> None:
    entries = run([settlement("S", "B", "solar", 1000)],
                  [reading("S", export_wh={"solar": 1000}), reading("B", import_wh=700)])
    assert rows(entries) == [
        ("p2p", "S", "B", "solar", 700, P, P),
        ("unconsumed", "S", "B", "solar", 300, P, P),
        # The buyer owns the 300 Wh; the seller does not sell them to the grid again.
        ("unconsumed_export", "B", GRID_ID, "solar", 300, GRID_SELL, GRID_SELL),
    ]


def test_a_buyer_who_consumes_more_buys_the_rest_from_the_grid() -> None:
    entries = run([settlement("S", "B", "solar", 1000)],
                  [reading("S", export_wh={"solar": 1000}), reading("B", import_wh=1300)])
    assert rows(entries) == [
        ("p2p", "S", "B", "solar", 1000, P, P),
        ("grid_import", GRID_ID, "B", "grid", 300, GRID_BUY, GRID_BUY),
    ]


# --- both sides off at once ------------------------------------------------------------


def test_a_shortfall_together_with_under_consumption_handles_both_and_nothing_goes_negative() -> None:
    # Supplied 600 of 1000; the buyer took only 400 of those 600.
    entries = run([settlement("S", "B", "solar", 1000)],
                  [reading("S", export_wh={"solar": 600}), reading("B", import_wh=400)])
    assert rows(entries) == [
        ("p2p", "S", "B", "solar", 400, P, P),
        ("unconsumed", "S", "B", "solar", 200, P, P),
        ("unconsumed_export", "B", GRID_ID, "solar", 200, GRID_SELL, GRID_SELL),
        ("shortfall", "S", "B", "solar", 400, P, P),
        ("shortfall_penalty", "B", "S", "solar", 400, GRID_BUY, GRID_BUY),
    ]


def test_over_delivery_together_with_under_consumption_exports_for_both_parties_separately() -> None:
    entries = run([settlement("S", "B", "solar", 1000)],
                  [reading("S", export_wh={"solar": 1500}), reading("B", import_wh=700)])
    assert rows(entries) == [
        ("p2p", "S", "B", "solar", 700, P, P),
        ("unconsumed", "S", "B", "solar", 300, P, P),
        ("unconsumed_export", "B", GRID_ID, "solar", 300, GRID_SELL, GRID_SELL),
        ("grid_export", "S", GRID_ID, "solar", 500, GRID_SELL, GRID_SELL),
    ]


def test_a_shortfall_together_with_over_consumption_buys_shortfall_and_extra_from_the_grid() -> None:
    entries = run([settlement("S", "B", "solar", 1000)],
                  [reading("S", export_wh={"solar": 800}), reading("B", import_wh=1500)])
    assert rows(entries) == [
        ("p2p", "S", "B", "solar", 800, P, P),
        ("shortfall", "S", "B", "solar", 200, P, P),
        ("shortfall_penalty", "B", "S", "solar", 200, GRID_BUY, GRID_BUY),
        ("grid_import", GRID_ID, "B", "grid", 700, GRID_BUY, GRID_BUY),
    ]


# --- the seller's battery --------------------------------------------------------------


def test_the_sellers_battery_covers_a_solar_shortfall_and_the_rest_of_the_battery_goes_to_the_grid() -> None:
    entries = run([settlement("S", "B", "solar", 1000)],
                  [reading("S", export_wh={"solar": 400, "bess": 800}), reading("B", import_wh=1000)])
    assert rows(entries) == [
        ("p2p", "S", "B", "solar", 400, P, P),
        ("bess_cover", "S", "B", "bess", 600, P, P),
        ("grid_export", "S", GRID_ID, "bess", 200, GRID_SELL, GRID_SELL),
    ]


def test_the_sellers_battery_covers_a_wind_shortfall_too() -> None:
    entries = run([settlement("S", "B", "wind", 1000)],
                  [reading("S", export_wh={"wind": 100, "bess": 900}), reading("B", import_wh=1000)])
    assert rows(entries) == [
        ("p2p", "S", "B", "wind", 100, P, P),
        ("bess_cover", "S", "B", "bess", 900, P, P),
    ]


def test_a_battery_too_small_covers_part_of_the_shortfall_and_the_seller_pays_the_rest() -> None:
    entries = run([settlement("S", "B", "solar", 1000)],
                  [reading("S", export_wh={"solar": 300, "bess": 500}), reading("B", import_wh=1000)])
    assert rows(entries) == [
        ("p2p", "S", "B", "solar", 300, P, P),
        ("bess_cover", "S", "B", "bess", 500, P, P),
        ("shortfall", "S", "B", "solar", 200, P, P),
        ("shortfall_penalty", "B", "S", "solar", 200, GRID_BUY, GRID_BUY),
        ("grid_import", GRID_ID, "B", "grid", 200, GRID_BUY, GRID_BUY),
    ]


def test_a_buyer_consumes_the_sources_energy_before_the_batterys() -> None:
    # 300 solar + 700 battery supplied, 500 consumed: all 300 solar, then 200 battery.
    entries = run([settlement("S", "B", "solar", 1000)],
                  [reading("S", export_wh={"solar": 300, "bess": 700}), reading("B", import_wh=500)])
    assert rows(entries) == [
        ("p2p", "S", "B", "solar", 300, P, P),
        ("bess_cover", "S", "B", "bess", 200, P, P),
        ("unconsumed", "S", "B", "bess", 500, P, P),
        ("unconsumed_export", "B", GRID_ID, "bess", 500, GRID_SELL, GRID_SELL),
    ]


def test_unconsumed_energy_gets_one_entry_per_origin_source_and_battery() -> None:
    entries = run([settlement("S", "B", "solar", 1000)],
                  [reading("S", export_wh={"solar": 300, "bess": 700}), reading("B", import_wh=200)])
    assert rows(entries) == [
        ("p2p", "S", "B", "solar", 200, P, P),
        ("unconsumed", "S", "B", "solar", 100, P, P),
        ("unconsumed_export", "B", GRID_ID, "solar", 100, GRID_SELL, GRID_SELL),
        ("unconsumed", "S", "B", "bess", 700, P, P),
        ("unconsumed_export", "B", GRID_ID, "bess", 700, GRID_SELL, GRID_SELL),
    ]


def test_a_dispatch_settlement_gets_no_cover_from_the_sellers_other_sources() -> None:
    # Only a battery covers, and only non-dispatch settlements: the solar is not used.
    entries = run([settlement("S", "B", "bess", 1000)],
                  [reading("S", export_wh={"bess": 400, "solar": 2000}), reading("B", import_wh=1000)])
    assert rows(entries) == [
        ("p2p", "S", "B", "bess", 400, P, P),
        ("shortfall", "S", "B", "bess", 600, P, P),
        ("shortfall_penalty", "B", "S", "bess", 600, GRID_BUY, GRID_BUY),
        # Residuals go participant by participant, in id order: B, then S.
        ("grid_import", GRID_ID, "B", "grid", 600, GRID_BUY, GRID_BUY),
        ("grid_export", "S", GRID_ID, "solar", 2000, GRID_SELL, GRID_SELL),
    ]


# --- missing readings ------------------------------------------------------------------


def test_a_seller_without_a_reading_counts_as_exporting_nothing() -> None:
    entries = run([settlement("S", "B", "solar", 1000)], [reading("B", import_wh=1000)])
    assert rows(entries) == [
        ("shortfall", "S", "B", "solar", 1000, P, P),
        ("shortfall_penalty", "B", "S", "solar", 1000, GRID_BUY, GRID_BUY),
        ("grid_import", GRID_ID, "B", "grid", 1000, GRID_BUY, GRID_BUY),
    ]


def test_a_buyer_without_a_reading_counts_as_importing_nothing() -> None:
    entries = run([settlement("S", "B", "solar", 1000)], [reading("S", export_wh={"solar": 1000})])
    assert rows(entries) == [
        ("unconsumed", "S", "B", "solar", 1000, P, P),
        ("unconsumed_export", "B", GRID_ID, "solar", 1000, GRID_SELL, GRID_SELL),
    ]


def test_a_settlement_whose_parties_both_sent_no_reading_is_still_reconciled() -> None:
    entries = run([settlement("S", "B", "solar", 1000)], [])
    assert rows(entries) == [
        ("shortfall", "S", "B", "solar", 1000, P, P),
        ("shortfall_penalty", "B", "S", "solar", 1000, GRID_BUY, GRID_BUY),
    ]


# --- self-consumption and residuals ----------------------------------------------------


def test_self_consumption_is_recorded_per_source_at_price_zero_and_moves_no_meter() -> None:
    readings = [
        reading("A", import_wh=50, export_wh={"solar": 100},
                self_consumed_wh={"solar": 250, "wind": 0, "bess": 100}),
        reading("C", self_consumed_wh={"wind": 30}),
    ]
    entries = run([], readings)
    assert rows(entries) == [
        ("self_consumption", "A", "A", "solar", 250, ZERO, ZERO),
        ("self_consumption", "A", "A", "bess", 100, ZERO, ZERO),
        ("self_consumption", "C", "C", "wind", 30, ZERO, ZERO),
        ("grid_export", "A", GRID_ID, "solar", 100, GRID_SELL, GRID_SELL),
        ("grid_import", GRID_ID, "A", "grid", 50, GRID_BUY, GRID_BUY),
    ]


def test_without_settlements_every_export_goes_to_the_grid_per_source_and_every_import_comes_from_it() -> None:
    readings = [
        reading("A", import_wh=50, export_wh={"solar": 300, "wind": 200, "bess": 100}),
        reading("B", import_wh=900),
        reading("Z"),
    ]
    entries = run([], readings)
    assert rows(entries) == [
        ("grid_export", "A", GRID_ID, "solar", 300, GRID_SELL, GRID_SELL),
        ("grid_export", "A", GRID_ID, "wind", 200, GRID_SELL, GRID_SELL),
        ("grid_export", "A", GRID_ID, "bess", 100, GRID_SELL, GRID_SELL),
        ("grid_import", GRID_ID, "A", "grid", 50, GRID_BUY, GRID_BUY),
        ("grid_import", GRID_ID, "B", "grid", 900, GRID_BUY, GRID_BUY),
    ]


def test_a_buyer_with_two_sellers_uses_its_import_on_the_first_settlement_first() -> None:
    settlements = [settlement("S1", "B", "solar", 600), settlement("S2", "B", "solar", 600)]
    readings = [reading("S1", export_wh={"solar": 600}), reading("S2", export_wh={"solar": 600}),
                reading("B", import_wh=1000)]
    entries = run(settlements, readings)
    assert rows(entries) == [
        ("p2p", "S1", "B", "solar", 600, P, P),
        ("p2p", "S2", "B", "solar", 400, P, P),
        ("unconsumed", "S2", "B", "solar", 200, P, P),
        ("unconsumed_export", "B", GRID_ID, "solar", 200, GRID_SELL, GRID_SELL),
    ]


# --- processing order ------------------------------------------------------------------


def test_dispatch_settlements_are_processed_first_even_when_listed_later() -> None:
    # The seller's 1000 Wh battery export goes to its battery contract; if the solar
    # settlement came first, the battery would cover it instead and the bess one would fall short.
    settlements = [settlement("S", "B1", "solar", 1000), settlement("S", "B2", "bess", 1000)]
    readings = [reading("S", export_wh={"bess": 1000}), reading("B1", import_wh=1000), reading("B2", import_wh=1000)]
    entries = run(settlements, readings)
    assert rows(entries) == [
        ("p2p", "S", "B2", "bess", 1000, P, P),
        ("shortfall", "S", "B1", "solar", 1000, P, P),
        ("shortfall_penalty", "B1", "S", "solar", 1000, GRID_BUY, GRID_BUY),
        ("grid_import", GRID_ID, "B1", "grid", 1000, GRID_BUY, GRID_BUY),
    ]
    assert rows(reconcile(region=REGION, slot=SLOT, settlements=settlements[::-1], readings=readings,
                          grid=GRID)) == rows(entries)


def test_settlements_of_one_pool_are_processed_in_the_order_given() -> None:
    first, second = settlement("S", "B1", "solar", 1000), settlement("S", "B2", "wind", 1000, name="w")
    readings = [reading("S", export_wh={"solar": 500, "wind": 500, "bess": 500}),
                reading("B1", import_wh=1000), reading("B2", import_wh=1000)]
    # Whichever settlement comes first gets the seller's battery.
    entries = run([first, second], readings)
    assert rows(entries) == [
        ("p2p", "S", "B1", "solar", 500, P, P),
        ("bess_cover", "S", "B1", "bess", 500, P, P),
        ("p2p", "S", "B2", "wind", 500, P, P),
        ("shortfall", "S", "B2", "wind", 500, P, P),
        ("shortfall_penalty", "B2", "S", "wind", 500, GRID_BUY, GRID_BUY),
        ("grid_import", GRID_ID, "B2", "grid", 500, GRID_BUY, GRID_BUY),
    ]
    entries = run([second, first], readings)
    assert rows(entries) == [
        ("p2p", "S", "B2", "wind", 500, P, P),
        ("bess_cover", "S", "B2", "bess", 500, P, P),
        ("p2p", "S", "B1", "solar", 500, P, P),
        ("shortfall", "S", "B1", "solar", 500, P, P),
        ("shortfall_penalty", "B1", "S", "solar", 500, GRID_BUY, GRID_BUY),
        ("grid_import", GRID_ID, "B1", "grid", 500, GRID_BUY, GRID_BUY),
    ]


# --- money -----------------------------------------------------------------------------


def test_under_pay_as_bid_the_spread_goes_to_the_market_operator_in_bills() -> None:
    from shared.market import bills

    s = settlement("S", "B", "solar", 1000, buy_price="0.12", sell_price="0.10")
    entries = run([s], [reading("S", export_wh={"solar": 500}), reading("B", import_wh=1000)])
    buy, sell = Decimal("0.12"), Decimal("0.10")
    assert rows(entries) == [
        ("p2p", "S", "B", "solar", 500, buy, sell),
        ("shortfall", "S", "B", "solar", 500, buy, sell),
        ("shortfall_penalty", "B", "S", "solar", 500, GRID_BUY, GRID_BUY),
        ("grid_import", GRID_ID, "B", "grid", 500, GRID_BUY, GRID_BUY),
    ]
    b = bills(entries)
    # 500 Wh at 0.12 twice; the penalty and the import are 500 Wh at 0.1449 = 0.07245.
    assert (b["B"].paid, b["B"].received) == (Decimal("0.19245"), Decimal("0.07245"))
    assert (b["S"].paid, b["S"].received) == (Decimal("0.07245"), Decimal("0.1"))
    assert (b[MARKET].paid, b[MARKET].received) == (ZERO, Decimal("0.02"))
    assert (b[GRID_ID].paid, b[GRID_ID].received) == (ZERO, Decimal("0.07245"))
    # Only p2p and grid_import move energy; shortfall and its penalty move money only.
    assert (b["B"].bought_wh, b["S"].sold_wh, b[GRID_ID].sold_wh) == (1000, 500, 500)
    assert sum((x.received - x.paid for x in b.values()), ZERO) == ZERO


def test_the_penalty_is_paid_by_the_seller_to_the_buyer() -> None:
    from shared.market import bills

    entries = run([settlement("S", "B", "solar", 1000)], [reading("B", import_wh=1000)])
    b = bills(entries)
    # Firm contract: 1000 Wh at 0.1 = 0.1 from the buyer; penalty 1000 Wh at 0.1449 back to it.
    assert (b["S"].paid, b["S"].received) == (Decimal("0.1449"), Decimal("0.1"))
    assert (b["B"].paid, b["B"].received) == (Decimal("0.1") + Decimal("0.1449"), Decimal("0.1449"))


# --- bookkeeping -----------------------------------------------------------------------


def test_settlement_entries_carry_the_settlement_and_the_others_do_not() -> None:
    s = settlement("S", "B", "solar", 1000)
    entries = run([s], [reading("S", export_wh={"solar": 1200}, self_consumed_wh={"solar": 5}),
                        reading("B", import_wh=900)])
    assert [(str(e.kind), e.settlement_id, e.matched_at_ms) for e in entries] == [
        ("p2p", s.settlement_id, MATCHED_AT_MS),
        ("unconsumed", s.settlement_id, MATCHED_AT_MS),
        ("unconsumed_export", s.settlement_id, MATCHED_AT_MS),
        ("self_consumption", None, None),
        ("grid_export", None, None),
    ]
    assert {(e.region, e.slot, e.delivered_at) for e in entries} == {(REGION, SLOT, SLOT.end)}


def test_reconciling_the_same_inputs_twice_gives_the_same_entries_with_the_same_ids() -> None:
    settlements = [settlement("S", "B", "solar", 1000), settlement("S", "C", "bess", 300)]
    readings = [reading("S", export_wh={"solar": 200, "bess": 900}), reading("B", import_wh=100),
                reading("C", import_wh=50, self_consumed_wh={"bess": 7})]
    first, second = run(settlements, readings), run(settlements, readings[::-1])
    assert first == second
    assert len({e.entry_id for e in first}) == len(first)


def test_violations_reports_a_settlement_whose_entries_do_not_add_up() -> None:
    settlements = [settlement("S", "B", "solar", 1000)]
    readings = [reading("S", export_wh={"solar": 600}), reading("B", import_wh=1000)]
    entries = reconcile(region=REGION, slot=SLOT, settlements=settlements, readings=readings, grid=GRID)
    tampered = [e for e in entries if str(e.kind) != "shortfall"]
    problems = violations(settlements, readings, tampered)
    assert any("p2p+bess_cover+unconsumed+shortfall=600 != 1000" in p for p in problems)
    assert any("import" in p for p in violations(settlements, readings, entries[:-1]))


def test_reconcile_refuses_inputs_of_another_slot_and_duplicate_readings() -> None:
    other = Slot(660, 720)
    with pytest.raises(ValueError, match="not"):
        reconcile(region=REGION, slot=SLOT, settlements=[], readings=[reading("A", slot=other)], grid=GRID)
    with pytest.raises(ValueError, match="two readings"):
        reconcile(region=REGION, slot=SLOT, settlements=[], readings=[reading("A"), reading("A")], grid=GRID)
    with pytest.raises(ValueError, match="not"):
        reconcile(region=REGION, slot=SLOT, settlements=[settlement("S", "B", "solar", 1, slot=other)],
                  readings=[], grid=GRID)


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (reading("A", import_wh=-1), RejectReason.INVALID_READING),
        (reading("A", export_wh={"solar": -5}), RejectReason.INVALID_READING),
        (reading("A", self_consumed_wh={"bess": True}), RejectReason.INVALID_READING),
        (reading("A", export_wh={"grid": 5}), RejectReason.UNKNOWN_SOURCE),
        (Reading("A", SLOT, import_wh="5"), RejectReason.INVALID_READING),  # type: ignore[arg-type]
    ],
)
def test_a_reading_with_a_negative_non_integer_or_unknown_value_is_refused(bad: Reading, reason: RejectReason) -> None:
    problem = check_reading(bad)
    assert problem is not None and problem[0] is reason


def test_a_reading_of_zeros_is_acceptable() -> None:
    assert check_reading(reading("A", export_wh={"solar": 0}, self_consumed_wh={"bess": 0})) is None


# --- bounds -----------------------------------------------------------------------------

FIELDS = [
    pytest.param(lambda wh: reading("A", import_wh=wh), "import_wh", id="import"),
    pytest.param(lambda wh: reading("A", export_wh={"solar": 1, "wind": wh}), "export_wh[wind]", id="export"),
    pytest.param(lambda wh: reading("A", self_consumed_wh={"bess": wh}), "self_consumed_wh[bess]", id="self"),
]


@pytest.mark.parametrize(("make", "name"), FIELDS)
@pytest.mark.parametrize("wh", [0, 1, MAX_READING_WH - 1, MAX_READING_WH])
def test_every_reading_value_from_zero_up_to_the_limit_is_acceptable(make: Any, name: str, wh: int) -> None:
    assert check_reading(make(wh)) is None


@pytest.mark.parametrize(("make", "name"), FIELDS)
@pytest.mark.parametrize("wh", [MAX_READING_WH + 1, 2**53, 2**62, 2**63 - 1, 2**63, 2**64])
def test_a_reading_value_above_the_limit_is_reading_too_large_and_the_detail_names_field_and_limit(
    make: Any, name: str, wh: int
) -> None:
    problem = check_reading(make(wh))
    assert problem is not None and problem[0] is RejectReason.READING_TOO_LARGE
    assert name in problem[1] and str(MAX_READING_WH) in problem[1]


def test_a_negative_value_is_invalid_reading_even_when_another_value_is_too_large() -> None:
    problem = check_reading(reading("A", import_wh=MAX_READING_WH + 1, export_wh={"solar": -1}))
    assert problem is not None and problem[0] is RejectReason.INVALID_READING


def test_the_source_limit_is_the_number_of_known_sources_and_a_map_of_them_all_is_acceptable() -> None:
    assert MAX_READING_SOURCES == len(SOURCES) == 3
    every = dict.fromkeys(SOURCES, MAX_READING_WH)
    assert check_reading(reading("A", export_wh=every, self_consumed_wh=every)) is None


@pytest.mark.parametrize("field", ["export_wh", "self_consumed_wh"])
def test_a_meter_map_naming_more_sources_than_there_are_is_invalid_reading_and_names_the_limit(field: str) -> None:
    too_many = {**dict.fromkeys(SOURCES, 1), "tidal": 1}
    bad = reading("A", export_wh=too_many) if field == "export_wh" else reading("A", self_consumed_wh=too_many)
    problem = check_reading(bad)
    assert problem is not None and problem[0] is RejectReason.INVALID_READING
    assert field in problem[1] and f"at most {MAX_READING_SOURCES}" in problem[1]


def test_reconciliation_sums_are_exact_far_beyond_int64() -> None:
    # Stored data from before the limits: the core must still add these up exactly.
    big = 2**63 - 1
    settlements = [settlement("S", "B", "solar", big, name="1"), settlement("S", "B", "solar", big, name="2"),
                   settlement("S", "B", "bess", big, name="3")]
    readings = [reading("S", export_wh={"solar": big, "bess": 2 * big}), reading("B", import_wh=4 * big)]
    entries = run(settlements, readings)
    by_kind: dict[str, int] = {}
    for e in entries:
        assert e.quantity_wh > 0
        by_kind[str(e.kind)] = by_kind.get(str(e.kind), 0) + e.quantity_wh
    assert by_kind == {"p2p": 2 * big, "bess_cover": big, "grid_import": big}
