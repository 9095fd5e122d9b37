"""Provisional and final settlement (docs/market.md section 7, "True-up"), entry by entry.

One settlement: S sold B 1000 Wh of solar at 0.1 $/kWh in slot [600, 660); grid prices are
the defaults (buy 0.1449, sell 0.069). The window is an hour. Each case has a reading
arrive late and gives the provisional entries, the adjustment and the money at each step,
worked out by hand from section 7."""

from __future__ import annotations

from decimal import Decimal

import pytest
from builders import GRID, GRID_BUY, GRID_SELL, REGION, SLOT, reading, rows, settlement

from shared.market import LedgerEntry, Reading, adjust, bills, in_true_up_window, reconcile, true_up, violations

P = Decimal("0.1")
WINDOW_S = 3600
SOLD = settlement("S", "B", "solar", 1000)


def money(entries: list[LedgerEntry]) -> dict[str, Decimal]:
    """Each party's net (received minus paid)."""
    return {p: b.received - b.paid for p, b in bills(entries).items() if b.received - b.paid}


def revisions(on_time: list[Reading], late: list[Reading]) -> list[list[LedgerEntry]]:
    found = true_up(region=REGION, slot=SLOT, settlements=[SOLD], readings=on_time, late=late, grid=GRID)
    for revision in found:
        assert sum(money(revision).values(), Decimal(0)) == 0
    return found


def reversed_rows(entries: list[LedgerEntry]) -> list[tuple[bool, tuple[object, ...]]]:
    return [(e.reverses, row) for e, row in zip(entries, rows(entries), strict=True)]


@pytest.mark.parametrize("minutes", [1, 5, 30])
def test_a_sellers_reading_that_arrives_minutes_late_turns_its_shortfall_into_the_trade(minutes: int) -> None:
    assert in_true_up_window(SLOT, SLOT.end + minutes * 60, WINDOW_S)
    provisional, adjustment = revisions([reading("B", import_wh=1000)], [reading("S", export_wh={"solar": 1000})])
    assert rows(provisional) == [
        ("shortfall", "S", "B", "solar", 1000, P, P),
        ("shortfall_penalty", "B", "S", "solar", 1000, GRID_BUY, GRID_BUY),
        ("grid_import", "grid", "B", "grid", 1000, GRID_BUY, GRID_BUY),
    ]
    # B paid S 0.1 for energy it did not get, S paid B 0.1449 for it, B paid the grid 0.1449
    assert money(provisional) == {"S": Decimal("-0.0449"), "B": Decimal("-0.1000"), "grid": Decimal("0.1449")}
    assert reversed_rows(adjustment) == [
        (True, ("shortfall", "S", "B", "solar", 1000, P, P)),
        (True, ("shortfall_penalty", "B", "S", "solar", 1000, GRID_BUY, GRID_BUY)),
        (True, ("grid_import", "grid", "B", "grid", 1000, GRID_BUY, GRID_BUY)),
        (False, ("p2p", "S", "B", "solar", 1000, P, P)),
    ]
    assert all(e.revision == 1 for e in adjustment)
    # S gets its penalty back; B's money does not change (it paid 0.1 either way), the grid's import goes
    assert money(adjustment) == {"S": Decimal("0.1449"), "grid": Decimal("-0.1449")}
    assert money(provisional + adjustment) == {"S": Decimal("0.1"), "B": Decimal("-0.1")}


def test_a_buyers_reading_that_arrives_late_turns_what_it_did_not_use_into_the_trade() -> None:
    provisional, adjustment = revisions([reading("S", export_wh={"solar": 1000})], [reading("B", import_wh=1000)])
    assert rows(provisional) == [
        ("unconsumed", "S", "B", "solar", 1000, P, P),
        ("unconsumed_export", "B", "grid", "solar", 1000, GRID_SELL, GRID_SELL),
    ]
    assert reversed_rows(adjustment) == [
        (True, ("unconsumed", "S", "B", "solar", 1000, P, P)),
        (True, ("unconsumed_export", "B", "grid", "solar", 1000, GRID_SELL, GRID_SELL)),
        (False, ("p2p", "S", "B", "solar", 1000, P, P)),
    ]
    assert money(adjustment) == {"B": Decimal("-0.069"), "grid": Decimal("0.069")}


def test_a_late_reading_of_a_member_without_trades_books_only_its_grid_exchange() -> None:
    on_time = [reading("S", export_wh={"solar": 1000}), reading("B", import_wh=1000)]
    provisional, adjustment = revisions(on_time, [reading("C", import_wh=500, export_wh={"solar": 200})])
    assert rows(provisional) == [("p2p", "S", "B", "solar", 1000, P, P)]
    assert reversed_rows(adjustment) == [
        (False, ("grid_export", "C", "grid", "solar", 200, GRID_SELL, GRID_SELL)),
        (False, ("grid_import", "grid", "C", "grid", 500, GRID_BUY, GRID_BUY)),
    ]
    assert money(adjustment) == {"C": Decimal("-0.05865"), "grid": Decimal("0.05865")}


def test_two_late_readings_are_two_revisions_and_the_net_is_the_reconciliation_with_both() -> None:
    late = [reading("S", export_wh={"solar": 600}), reading("B", import_wh=1000)]
    provisional, first, second = revisions([], late)
    assert rows(provisional) == [
        ("shortfall", "S", "B", "solar", 1000, P, P),
        ("shortfall_penalty", "B", "S", "solar", 1000, GRID_BUY, GRID_BUY),
    ]
    assert reversed_rows(first) == [
        (True, ("shortfall", "S", "B", "solar", 600, P, P)),
        (True, ("shortfall_penalty", "B", "S", "solar", 600, GRID_BUY, GRID_BUY)),
        (False, ("unconsumed", "S", "B", "solar", 600, P, P)),
        (False, ("unconsumed_export", "B", "grid", "solar", 600, GRID_SELL, GRID_SELL)),
    ]
    assert reversed_rows(second) == [
        (True, ("unconsumed", "S", "B", "solar", 600, P, P)),
        (True, ("unconsumed_export", "B", "grid", "solar", 600, GRID_SELL, GRID_SELL)),
        (False, ("p2p", "S", "B", "solar", 600, P, P)),
        (False, ("grid_import", "grid", "B", "grid", 400, GRID_BUY, GRID_BUY)),
    ]
    every = provisional + first + second
    assert len({e.entry_id for e in every}) == len(every)
    everything = reconcile(region=REGION, slot=SLOT, settlements=[SOLD], readings=late, grid=GRID)
    assert money(every) == money(everything)
    assert violations([SOLD], late, every) == []


def test_a_reading_past_the_window_changes_nothing_and_the_provisional_entries_are_final() -> None:
    assert not in_true_up_window(SLOT, SLOT.end + WINDOW_S, WINDOW_S)
    assert not in_true_up_window(SLOT, SLOT.end + 31 * 60, 30 * 60)
    assert not in_true_up_window(SLOT, SLOT.end + 1, 0)  # no window: a reconciliation is final at once
    assert in_true_up_window(SLOT, SLOT.end + WINDOW_S - 1, WINDOW_S)


def test_an_unchanged_reconciliation_needs_no_adjustment_and_a_revision_is_one_or_more() -> None:
    entries = reconcile(region=REGION, slot=SLOT, settlements=[SOLD], readings=[reading("B", import_wh=10)],
                        grid=GRID)
    assert adjust(entries, entries, 3) == []
    with pytest.raises(ValueError):
        adjust(entries, entries, 0)
