"""Clearing stays exact for any quantity a book can hold (1 Wh to 2**63 - 1 Wh).

Validation keeps new orders at or under ``MAX_ORDER_WH``, but the core must not give a
wrong answer, an exception or a hang for larger ones (an order stored before the limit,
or a caller of the core that skips validation): here cumulative sums pass int64 and the
fast walk must still agree with the naive reference, which adds up in Python ints.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from builders import REGION, SLOT, order
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import naive_clear
from strategies import INT64_MAX, books, huge_books, price_of

from shared.market import Order, PricingRule, clear

RULES = list(PricingRule)


def fills(orders: list[Order], rule: PricingRule) -> list[tuple[str, str, int]]:
    return [(s.bid_id, s.ask_id, s.quantity_wh)
            for s in clear(orders, region=REGION, slot=SLOT, rule=rule, matched_at_ms=0)]


def naive(orders: list[Order], rule: PricingRule) -> list[tuple[str, str, int]]:
    return [(b, a, q) for b, a, q, _, _ in naive_clear(orders, str(rule))]


@contextmanager
def merges(limit: int | None = None) -> Iterator[list[int]]:
    """Fills made by each bulk (numpy) merge of the walk. White-box: shows which path ran.

    With ``limit``, more merges than that fail the example: a walk that stops making
    progress would otherwise hang the test instead of failing it.
    """
    from shared.market import walk

    made: list[int] = []
    merge = walk._Walk._merge

    def spy(self: walk._Walk, window: int) -> tuple[int, bool]:
        if limit is not None and len(made) >= limit:
            raise AssertionError(f"{len(made)} bulk merges: the walk is not making progress")
        produced, conflict = merge(self, window)
        made.append(produced)
        return produced, conflict

    walk._Walk._merge = spy  # type: ignore[method-assign]
    try:
        yield made
    finally:
        walk._Walk._merge = merge  # type: ignore[method-assign]


@pytest.mark.parametrize("rule", RULES)
@given(book=huge_books())
def test_clear_matches_the_naive_walk_with_quantities_up_to_int64(rule: PricingRule, book: list[Order]) -> None:
    # Each merge either hands a bid to the plain walk or uses up a side of its window,
    # which grows fourfold: far fewer merges than this, however the walk goes.
    with merges(limit=70 * (len(book) + 1)):
        got = fills(book, rule)
    assert got == naive(book, rule)
    filled: dict[str, int] = {}
    for bid, ask, q in got:
        assert 0 < q <= INT64_MAX
        filled[bid] = filled.get(bid, 0) + q
        filled[ask] = filled.get(ask, 0) + q
    assert all(filled[o.order_id] <= o.quantity_wh for o in book if o.order_id in filled)


@given(book=books(), data=st.data())
def test_a_book_with_a_quantity_beyond_int64_or_below_1_wh_is_refused_naming_the_order_and_the_range(
    book: list[Order], data: st.DataObject
) -> None:
    bad = data.draw(st.one_of(st.integers(INT64_MAX + 1, 2**80), st.integers(-(2**70), 0)))
    odd = order("odd", "p-odd", data.draw(st.sampled_from(["bid", "ask"])), 1, "0.1", seq=0)
    position = data.draw(st.integers(0, len(book)))
    orders = [*book[:position], dataclasses.replace(odd, quantity_wh=bad), *book[position:]]
    with pytest.raises(ValueError, match=r"order odd has quantity_wh .*1 to 2\*\*63 - 1 Wh"):
        clear(orders, region=REGION, slot=SLOT, matched_at_ms=0)


@st.composite
def edge_books(draw: st.DrawFn) -> tuple[list[Order], bool]:
    """A crossing book of 256+ orders a side whose totals sit just inside or just past int64.

    Owners are distinct, so the bulk merge can run the whole book in one go when it may.
    Returns the book and whether both sides' ``max * count`` fits int64.
    """
    n = draw(st.integers(256, 320))
    top = INT64_MAX // n
    fits = draw(st.booleans())
    rng = draw(st.randoms(use_true_random=False))  # one draw for the whole book
    quantities = [top - rng.randrange(4) for _ in range(2 * n)]
    if not fits:
        quantities[rng.randrange(2 * n)] = top + rng.randint(1, 2**40)
    rows = [(f"b{i}", "bid", 20_000 - i) for i in range(n)] + [(f"s{i}", "ask", 1_000 + i) for i in range(n)]
    book = [order(f"o{i}", who, side, q, price_of(ticks), seq=i)
            for i, ((who, side, ticks), q) in enumerate(zip(rows, quantities, strict=True))]
    return book, fits


@settings(max_examples=12)
@given(case=edge_books(), rule=st.sampled_from([PricingRule.MIDPOINT, PricingRule.PAY_AS_BID]))
def test_at_the_int64_edge_the_bulk_merge_runs_only_when_its_sums_fit_and_both_paths_are_exact(
    case: tuple[list[Order], bool], rule: PricingRule
) -> None:
    book, fits = case
    with merges() as made:
        got = fills(book, rule)
    assert got == naive(book, rule)
    assert len(got) >= 256
    assert (sum(made) >= 256) if fits else made == []
