"""Clearing with quantities near and past int64 (issue 7): exact answers, or a clear refusal.

Validation keeps orders at or under ``MAX_ORDER_WH``; these books go past it on purpose,
as an order stored before the limit would, and must still clear exactly and promptly.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from builders import REGION, SLOT, order
from reference import naive_clear

from shared.market import MAX_ORDER_WH, Book, Order, PricingRule, Settlement, clear, match_book
from shared.market.walk import _Walk, walk

INT64_MAX = 2**63 - 1
RULES = list(PricingRule)


def run(book: list[Order], rule: PricingRule = PricingRule.MIDPOINT) -> list[Settlement]:
    return clear(book, region=REGION, slot=SLOT, rule=rule, matched_at_ms=0)


def same_as_naive(book: list[Order], rule: PricingRule) -> list[tuple[str, str, int]]:
    got = [(s.bid_id, s.ask_id, s.quantity_wh) for s in run(book, rule)]
    assert got == [(b, a, q) for b, a, q, _, _ in naive_clear(book, str(rule))]
    return got


@pytest.mark.parametrize("rule", RULES)
def test_a_bid_of_1_wh_against_asks_of_1_wh_and_int64_max_wh_gives_one_1_wh_trade_never_an_exception(
    rule: PricingRule
) -> None:
    book = [order("b", "B", "bid", 1, "0.1", seq=0),
            order("a1", "S1", "ask", 1, "0.1", seq=1), order("a2", "S2", "ask", INT64_MAX, "0.1", seq=2)]
    assert same_as_naive(book, rule) == [("b", "a1", 1)]


@pytest.mark.parametrize("rule", RULES)
def test_a_bid_of_1_wh_against_asks_of_2_62_and_twice_int64_max_wh_gives_no_negative_or_overflowed_settlement(
    rule: PricingRule
) -> None:
    book = [order("b", "B", "bid", 1, "0.1", seq=0), order("a1", "S1", "ask", 2**62, "0.1", seq=1),
            order("a2", "S2", "ask", INT64_MAX, "0.1", seq=2), order("a3", "S3", "ask", INT64_MAX, "0.1", seq=3)]
    assert same_as_naive(book, rule) == [("b", "a1", 1)]


@pytest.mark.timeout(20)
@pytest.mark.parametrize("rule", RULES)
def test_a_book_whose_ask_total_passes_int64_clears_promptly_instead_of_looping_forever(rule: PricingRule) -> None:
    # Found by search: the wrapped ask total made the bulk merge stand still, claiming no
    # owner conflict, and the walk widened its window for ever. (Ticks as in the search.)
    asks = [(2, 11, "p3"), (2, 11, "p2"), (27, 12, "p0"), (45, 13, "p2"), (3 * 2**61, 15, "p1"), (43, 18, "p0"),
            (2**61, 19, "p4")]
    book = [order("b", "p1", "bid", 12, "0.0011", seq=0)] + [
        order(f"a{i}", who, "ask", q, f"0.00{ticks}", seq=i + 1) for i, (q, ticks, who) in enumerate(asks)]
    assert same_as_naive(book, rule) == [("b", "a0", 2), ("b", "a1", 2)]


@pytest.mark.parametrize("rule", RULES)
def test_huge_bids_and_asks_fill_exactly_and_each_fill_fits_int64(rule: PricingRule) -> None:
    book = [order("b1", "B1", "bid", INT64_MAX, "0.3", seq=0), order("b2", "B2", "bid", INT64_MAX, "0.3", seq=1),
            order("a1", "S1", "ask", INT64_MAX - 5, "0.3", seq=2), order("a2", "S2", "ask", 2**62, "0.3", seq=3),
            order("a3", "B1", "ask", 3 * 2**61, "0.3", seq=4), order("a4", "S4", "ask", 7, "0.3", seq=5)]
    got = same_as_naive(book, rule)
    # b1 takes all of a1 and 5 Wh of a2; b2 the rest of a2 and 2**62 + 4 Wh of a3; a4 is left over.
    assert got == [("b1", "a1", INT64_MAX - 5), ("b1", "a2", 5), ("b2", "a2", 2**62 - 5), ("b2", "a3", 2**62 + 4)]
    assert sum(q for _, _, q in got) > INT64_MAX  # the total is past int64, each fill is not
    # Settlements carry Python ints, so reconciliation's sums never go through int64.
    assert all(type(s.quantity_wh) is int for s in run(book, rule))


def test_a_quantity_beyond_int64_is_refused_when_the_book_is_built_naming_the_order_and_the_range() -> None:
    book = [order("b", "B", "bid", 1, "0.2", seq=0), order("a", "S", "ask", 2**63, "0.1", seq=1)]
    with pytest.raises(ValueError, match=r"order a has quantity_wh 9223372036854775808; a book holds 1 to 2\*\*63 - 1"):
        Book.from_orders(book)
    with pytest.raises(ValueError, match="order a has quantity_wh"):
        run(book)


@pytest.mark.parametrize("quantity", [0, -1, -(2**63)])
def test_a_quantity_below_1_wh_is_refused_when_the_book_is_built(quantity: int) -> None:
    book = [order("b", "B", "bid", 5, "0.2", seq=0), order("a", "S", "ask", quantity, "0.1", seq=1)]
    with pytest.raises(ValueError, match=f"order a has quantity_wh {quantity}; a book holds 1 to"):
        Book.from_orders(book)


def test_a_book_at_the_largest_quantity_it_can_hold_is_built() -> None:
    book = Book.from_orders([order("a", "S", "ask", INT64_MAX, "0.1", seq=0)])
    assert book.qty.tolist() == [INT64_MAX]


def test_a_sequence_beyond_int64_is_refused_when_the_book_is_built() -> None:
    odd = dataclasses.replace(order("a", "S", "ask", 5, "0.1", seq=0), seq=2**64)
    with pytest.raises(ValueError, match="order a has seq 18446744073709551616"):
        Book.from_orders([odd])


def test_the_walk_refuses_a_quantity_below_1_wh_given_to_it_directly() -> None:
    one = np.array([1], dtype=np.int64)
    zero = np.array([0], dtype=np.int64)
    with pytest.raises(ValueError, match="at least 1 Wh"):
        walk(one, one, zero, one, zero, one)
    with pytest.raises(ValueError, match="at least 1 Wh"):
        walk(one, zero, zero, one, one, one)


def test_a_book_of_orders_at_the_limit_still_clears_through_the_bulk_merge(monkeypatch: pytest.MonkeyPatch) -> None:
    # A thousand orders a side at the limit: totals of 10**12 Wh, far inside int64.
    n = 1000
    book = [order(f"b{i}", f"B{i}", "bid", MAX_ORDER_WH, "0.2", seq=i) for i in range(n)] + [
        order(f"a{i}", f"S{i}", "ask", MAX_ORDER_WH - i, "0.1", seq=n + i) for i in range(n)]
    merged: list[int] = []
    merge = _Walk._merge

    def spy(self: _Walk, window: int) -> tuple[int, bool]:
        produced, conflict = merge(self, window)
        merged.append(produced)
        return produced, conflict

    monkeypatch.setattr(_Walk, "_merge", spy)
    fills = match_book(Book.from_orders(book), PricingRule.MIDPOINT)
    assert sum(merged) == len(fills[2]) > n  # every fill came from the bulk merge
    assert int(fills[2].sum()) == sum(MAX_ORDER_WH - i for i in range(n))
    assert same_as_naive(book, PricingRule.PAY_AS_BID)[0] == ("b0", "a0", MAX_ORDER_WH)
