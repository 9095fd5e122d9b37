"""Ledger entries, bills and exact money (docs/market.md sections 9 and 10)."""

from __future__ import annotations

import os
import subprocess
import sys
from decimal import Decimal

import pytest
from builders import REGION, SLOT

from shared.market import (
    GRID,
    MARKET,
    PRICE_TICK,
    Bill,
    EntryKind,
    LedgerEntry,
    Slot,
    amount,
    bills,
    entry_id,
    parse_price,
    price_to_ticks,
)

ZERO = Decimal(0)


def entry(kind: EntryKind, seller: str, buyer: str, quantity_wh: int, buy: str, sell: str | None = None,
          source: str = "solar") -> LedgerEntry:
    return LedgerEntry(
        entry_id=entry_id(REGION, SLOT, kind, None, seller, buyer, source),
        region=REGION,
        slot=SLOT,
        kind=kind,
        seller=seller,
        buyer=buyer,
        source=source,
        quantity_wh=quantity_wh,
        buy_price=Decimal(buy),
        sell_price=Decimal(sell if sell is not None else buy),
        settlement_id=None,
        matched_at_ms=None,
        delivered_at=SLOT.end,
    )


# --- entry ids -------------------------------------------------------------------------

ID_INPUTS = (REGION, SLOT, "p2p", "s-1", "A", "B", "solar")


def test_the_same_inputs_always_give_the_same_entry_id() -> None:
    assert entry_id(*ID_INPUTS) == entry_id(*ID_INPUTS)
    assert entry_id(*ID_INPUTS) == entry_id(REGION, Slot(600, 660), EntryKind.P2P, "s-1", "A", "B", "solar")


def test_an_entry_id_does_not_depend_on_the_process_that_computed_it() -> None:
    # A replay runs in another process; str hashing is salted per process, ids must not be.
    code = (
        "from shared.market import Slot, entry_id;"
        "print(entry_id('r1', Slot(600, 660), 'p2p', 's-1', 'A', 'B', 'solar'))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == entry_id(*ID_INPUTS)


@pytest.mark.parametrize(
    "changed",
    [
        ("r2", SLOT, "p2p", "s-1", "A", "B", "solar"),
        (REGION, Slot(660, 720), "p2p", "s-1", "A", "B", "solar"),
        (REGION, SLOT, "unconsumed", "s-1", "A", "B", "solar"),
        (REGION, SLOT, "p2p", "s-2", "A", "B", "solar"),
        (REGION, SLOT, "p2p", None, "A", "B", "solar"),
        (REGION, SLOT, "p2p", "s-1", "B", "A", "solar"),
        (REGION, SLOT, "p2p", "s-1", "A", "C", "solar"),
        (REGION, SLOT, "p2p", "s-1", "A", "B", "bess"),
    ],
)
def test_changing_any_input_changes_the_entry_id(changed: tuple[str, Slot, str, str | None, str, str, str]) -> None:
    assert entry_id(*changed) != entry_id(*ID_INPUTS)


def test_an_entry_id_is_hex_text_that_fits_a_wire_id() -> None:
    value = entry_id(*ID_INPUTS)
    assert len(value) == 32 and int(value, 16) >= 0


# --- bills -----------------------------------------------------------------------------


def test_bills_add_up_what_each_party_paid_received_bought_and_sold() -> None:
    entries = [
        entry(EntryKind.P2P, "A", "B", 1000, "0.1"),
        entry(EntryKind.P2P, "C", "B", 500, "0.12", "0.1", source="wind"),  # pay-as-bid spread 0.02
        entry(EntryKind.GRID_EXPORT, "A", GRID, 200, "0.069"),
        entry(EntryKind.GRID_IMPORT, GRID, "B", 300, "0.1449", source="grid"),
        entry(EntryKind.SHORTFALL, "C", "B", 100, "0.12", "0.1", source="wind"),
        entry(EntryKind.SHORTFALL_PENALTY, "B", "C", 100, "0.1449", source="wind"),
        entry(EntryKind.SELF_CONSUMPTION, "A", "A", 400, "0"),
    ]
    b = bills(entries)
    # B: 0.1 + 0.06 + 0.04347 + 0.012 paid; the penalty 0.01449 received.
    assert b["B"] == Bill(paid=Decimal("0.21547"), received=Decimal("0.01449"), bought_wh=1800, sold_wh=0)
    # A: 0.1 + 0.0138 received; self-consumption is no transfer and is left out.
    assert b["A"] == Bill(paid=ZERO, received=Decimal("0.1138"), bought_wh=0, sold_wh=1200)
    # C: 0.05 + 0.01 received at its ask price; the penalty 0.01449 paid.
    assert b["C"] == Bill(paid=Decimal("0.01449"), received=Decimal("0.06"), bought_wh=0, sold_wh=500)
    assert b[GRID] == Bill(paid=Decimal("0.0138"), received=Decimal("0.04347"), bought_wh=200, sold_wh=300)
    # The operator keeps (0.12 - 0.1) on 500 Wh and on 100 Wh.
    assert b[MARKET] == Bill(paid=ZERO, received=Decimal("0.012"), bought_wh=0, sold_wh=0)
    assert set(b) == {"A", "B", "C", GRID, MARKET}
    assert sum((x.received - x.paid for x in b.values()), ZERO) == ZERO
    assert b["B"].net_cost == Decimal("0.20098")


def test_without_a_spread_the_market_operator_has_no_bill() -> None:
    assert MARKET not in bills([entry(EntryKind.P2P, "A", "B", 1000, "0.1")])


def test_bills_of_no_entries_are_empty() -> None:
    assert bills([]) == {}


def test_bills_are_exact_where_binary_floats_are_not() -> None:
    # 0.1 + 0.2 is not 0.3 in binary floating point; here it is.
    b = bills([entry(EntryKind.P2P, "A", "B", 1000, "0.1"), entry(EntryKind.P2P, "C", "B", 1000, "0.2")])
    assert b["B"].paid == Decimal("0.3")
    assert 0.1 + 0.2 != 0.3


# --- amounts ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("quantity_wh", "price", "expected"),
    [
        (1, "0.00005", "0.00000005"),  # 1 Wh at half a tick, as a midpoint can be
        (1, "0.0001", "0.0000001"),
        (1, "0.1449", "0.0001449"),
        (1000, "0.069", "0.069"),
        (1234567, "0.1449", "178.8887583"),
        (3, "0.33335", "0.00100005"),
        (10**15, "9.99995", "9999950000000"),
        (0, "0.1449", "0"),
    ],
)
def test_an_amount_is_quantity_over_a_thousand_times_price_exactly(quantity_wh: int, price: str, expected: str) -> None:
    result = amount(quantity_wh, Decimal(price))
    assert isinstance(result, Decimal)
    assert result == Decimal(expected)


def test_an_amount_refuses_a_binary_float() -> None:
    with pytest.raises(TypeError):
        amount(1, 0.1)  # type: ignore[arg-type]


def test_bill_amounts_are_decimals_never_floats() -> None:
    b = bills([entry(EntryKind.P2P, "A", "B", 7, "0.00005")])
    values = [b["A"].received, b["A"].paid, b["B"].paid, b["B"].received, b["B"].net_cost]
    assert all(type(v) is Decimal for v in values)
    assert b["B"].paid == Decimal("3.5E-7")


# --- prices ----------------------------------------------------------------------------


def test_the_price_tick_is_a_ten_thousandth() -> None:
    assert Decimal("0.0001") == PRICE_TICK
    assert price_to_ticks(Decimal("0.1449")) == 1449
    assert price_to_ticks(Decimal("10")) == 100_000


@pytest.mark.parametrize("bad", [0.1, True, None, b"0.1", "abc", "0.00001"])
def test_parse_price_refuses_floats_and_anything_that_is_not_an_exact_tick_price(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_price(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(("text", "expected"), [("0.1449", "0.1449"), ("1", "1"), (Decimal("0.5"), "0.5"), (2, "2")])
def test_parse_price_reads_exact_text_decimals_and_integers(text: str | Decimal | int, expected: str) -> None:
    assert parse_price(text) == Decimal(expected)
