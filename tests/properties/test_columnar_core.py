"""The market core's columnar pieces against their object counterparts.

``text_to_ticks`` against ``price_to_ticks(Decimal(text))``, ``Book.from_columns`` against
``Book.from_orders``, and ``settlement_columns`` against ``settlements_of``: each must
give exactly what the other gives, or fail where it fails.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import numpy as np
import pytest
from builders import REGION, SLOT, order
from hypothesis import given
from hypothesis import strategies as st
from strategies import books, huge_books

from shared.market import Book, Order, PricingRule, match_book, price_to_ticks
from shared.market.matching import SettlementColumns, settlement_columns, settlements_of
from shared.market.numbers import text_to_ticks

RULES = st.sampled_from(list(PricingRule))
DIGITS = "0123456789"


def outcome(run: Callable[[], Any]) -> Any:
    try:
        return run()
    except Exception as exc:
        return type(exc), str(exc)


# --- prices as text -----------------------------------------------------------------------------

plain_prices = st.builds(
    lambda sign, whole, fraction: sign + whole + (f".{fraction}" if fraction is not None else ""),
    st.sampled_from(["", "-", "+"]),
    st.text(DIGITS, min_size=0, max_size=30),
    st.one_of(st.none(), st.text(DIGITS, min_size=0, max_size=20),
              st.builds(lambda a, z, b: a + z + b, st.text(DIGITS, max_size=4), st.text("0", max_size=60),
                        st.text(DIGITS, max_size=2))),
)


@given(text=st.one_of(plain_prices, st.text(max_size=12), st.sampled_from(
    ["NaN", "Infinity", "-inf", "1e3", "1E-4", "1_000", " 1", "1 ", "\u0661", "0.00010", "-0", "-0.0000",
     "123456789012345678901234.5", "1234567890123456789012345", "99999999999999999999999.99990000"])))
def test_text_to_ticks_is_price_to_ticks_of_the_decimal(text: str) -> None:
    assert outcome(lambda: text_to_ticks(text)) == outcome(lambda: price_to_ticks(Decimal(text)))


# --- books as columns -------------------------------------------------------------------------


def columns_of(book: list[Order]) -> Book:
    return Book.from_columns(
        order_ids=[o.order_id for o in book], participant_ids=[o.participant_id for o in book],
        sides=[str(o.side) for o in book], quantity_wh=[o.quantity_wh for o in book],
        price_ticks=[o.price_ticks for o in book], seq=[o.seq for o in book], sources=[o.source for o in book])


def same_book(a: Book, b: Book) -> None:
    for f in ("is_ask", "price", "qty", "seq", "owner", "source"):
        assert np.array_equal(getattr(a, f), getattr(b, f)), f
        assert getattr(a, f).dtype == getattr(b, f).dtype == np.int64
    assert (a.order_ids, a.parties, a.orders) == (b.order_ids, b.parties, [])


@given(book=huge_books())
def test_a_book_from_columns_is_the_book_from_orders(book: list[Order]) -> None:
    same_book(columns_of(book), Book.from_orders(book))


def test_a_book_from_columns_refuses_what_from_orders_refuses() -> None:
    good = order("o1", "p1", "bid", 10, "0.1", seq=1)
    for bad in (dataclasses.replace(good, quantity_wh=0), dataclasses.replace(good, quantity_wh=2**63),
                dataclasses.replace(good, seq=2**63)):
        with pytest.raises(ValueError):
            Book.from_orders([bad])
        with pytest.raises(ValueError):
            columns_of([bad])
    for change in ({"sides": ["buy"]}, {"sources": ["coal"]}, {"seq": []}):
        with pytest.raises(ValueError):
            Book.from_columns(**{**dict(order_ids=["o1"], participant_ids=["p1"], sides=["bid"], quantity_wh=[1],
                                        price_ticks=[1], seq=[1], sources=["solar"]), **change})


# --- settlements as columns -------------------------------------------------------------------


def check_settlements(book: list[Order], rule: PricingRule) -> SettlementColumns:
    objects = Book.from_orders(book)
    fills = match_book(objects, rule)
    expected = settlements_of(objects, fills, region=REGION, slot=SLOT, rule=rule, matched_at_ms=0)
    got = settlement_columns(columns_of(book), fills, region=REGION, slot=SLOT, rule=rule)
    rows = list(zip(got.settlement_id, got.source, got.buyer, got.seller, got.bid_id, got.ask_id, got.quantity_wh,
                    got.buy_price, got.sell_price, strict=True))
    assert rows == [(s.settlement_id, s.source, s.buyer, s.seller, s.bid_id, s.ask_id, s.quantity_wh,
                     str(s.buy_price), str(s.sell_price)) for s in expected]
    assert got.energy_wh == sum(s.quantity_wh for s in expected)
    by_source: dict[str, int] = defaultdict(int)
    for s in expected:
        by_source[s.source] += s.quantity_wh
    assert got.energy_by_source() == dict(by_source)
    assert got.paid() == sum((s.buy_price * s.quantity_wh for s in expected), Decimal(0))
    by_party: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(expected):
        by_party[s.buyer].append(i)
        by_party[s.seller].append(i)
    parties, rows_of, bounds = got.by_party()
    assert [(p, rows_of[bounds[k]:bounds[k + 1]].tolist()) for k, p in enumerate(parties)] == sorted(by_party.items())
    return got


@given(book=huge_books(), rule=RULES)
def test_settlement_columns_are_the_settlements_of_the_same_fills(book: list[Order], rule: PricingRule) -> None:
    check_settlements(book, rule)


@pytest.mark.parametrize("rule", list(PricingRule))
def test_settlement_columns_price_fills_whose_tick_sums_do_not_fit_int64(rule: PricingRule) -> None:
    top = Decimal(2**62 + 1).scaleb(-4)  # 2**62 + 1 ticks: a midpoint's sum of two wraps int64
    book = [order("b1", "p1", "bid", 10, top, seq=1), order("a1", "p2", "ask", 4, top, seq=2),
            order("b2", "p3", "bid", 5, "0.0003", seq=3), order("a2", "p4", "ask", 9, "0.0001", seq=4)]
    got = check_settlements(book, rule)
    assert len(got) == (1 if rule is PricingRule.EQUAL_PRICE else 2)  # equal price: 0.0003 meets no 0.0001


@given(book=books(), rule=RULES)
def test_party_ids_sort_as_text_not_by_first_appearance(book: list[Order], rule: PricingRule) -> None:
    renamed = [dataclasses.replace(o, participant_id=f"z{9 - int(o.participant_id[1:])}") for o in book]
    check_settlements(renamed, rule)
