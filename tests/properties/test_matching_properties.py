"""Invariants of clearing a slot (docs/market.md section 5), on generated books.

These check what must hold whatever the walk does; test_differential.py checks the walk
itself against a naive reference.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import astuple
from decimal import Decimal

from builders import REGION, SLOT
from hypothesis import given
from hypothesis import strategies as st
from strategies import books

from shared.market import Order, PricingRule, Settlement, clear

RULES = st.sampled_from(list(PricingRule))
POOL_RANK = {"bess": 0, "solar": 1, "wind": 1}  # dispatch first


def run(book: list[Order], rule: PricingRule) -> list[Settlement]:
    return clear(book, region=REGION, slot=SLOT, rule=rule, matched_at_ms=123)


def by_id(book: list[Order]) -> dict[str, Order]:
    return {o.order_id: o for o in book}


def filled(settlements: list[Settlement]) -> dict[str, int]:
    total: dict[str, int] = defaultdict(int)
    for s in settlements:
        total[s.bid_id] += s.quantity_wh
        total[s.ask_id] += s.quantity_wh
    return total


@given(book=books(), rule=RULES)
def test_every_settlement_joins_a_bid_and_an_ask_of_the_same_source_and_different_participants(
    book: list[Order], rule: PricingRule
) -> None:
    orders = by_id(book)
    for s in run(book, rule):
        bid, ask = orders[s.bid_id], orders[s.ask_id]
        assert (bid.side, ask.side) == ("bid", "ask")
        assert bid.source == ask.source == s.source  # never a cross-source trade
        assert (s.buyer, s.seller) == (bid.participant_id, ask.participant_id)
        assert s.buyer != s.seller  # never a self-trade
        assert s.quantity_wh > 0
        assert (s.region, s.slot, s.matched_at_ms) == (REGION, SLOT, 123)


@given(book=books(), rule=RULES)
def test_no_bid_trades_with_a_dearer_ask(book: list[Order], rule: PricingRule) -> None:
    orders = by_id(book)
    for s in run(book, rule):
        assert orders[s.bid_id].price >= orders[s.ask_id].price


@given(book=books(), rule=RULES)
def test_no_buyer_pays_more_than_its_bid_and_no_seller_gets_less_than_its_ask(
        book: list[Order], rule: PricingRule) -> None:
    orders = by_id(book)
    for s in run(book, rule):
        assert s.buy_price <= orders[s.bid_id].price
        assert s.sell_price >= orders[s.ask_id].price


@given(book=books())
def test_under_uniform_a_source_clears_at_its_last_pairs_midpoint_within_each_pairs_limits(
        book: list[Order]) -> None:
    uniform, midpoint = run(book, PricingRule.UNIFORM), run(book, PricingRule.MIDPOINT)
    assert [(s.bid_id, s.ask_id, s.quantity_wh) for s in uniform] == [
        (s.bid_id, s.ask_id, s.quantity_wh) for s in midpoint]
    orders = by_id(book)
    last = {s.source: s for s in midpoint}  # the last pair the walk matched for each source
    for s in uniform:  # that pair's midpoint, unless it would cross this pair's own bid or ask
        bid, ask = orders[s.bid_id].price, orders[s.ask_id].price
        assert s.buy_price == s.sell_price == min(max(last[s.source].buy_price, ask), bid)


@given(book=books())
def test_under_equal_price_only_equal_prices_trade(book: list[Order]) -> None:
    orders = by_id(book)
    for s in run(book, PricingRule.EQUAL_PRICE):
        assert orders[s.bid_id].price == orders[s.ask_id].price == s.buy_price == s.sell_price


@given(book=books(), rule=RULES)
def test_no_order_is_filled_beyond_its_quantity(book: list[Order], rule: PricingRule) -> None:
    orders = by_id(book)
    for order_id, quantity in filled(run(book, rule)).items():
        assert quantity <= orders[order_id].quantity_wh


@given(book=books(), rule=RULES)
def test_a_bid_and_an_ask_meet_at_most_once_and_settlement_ids_are_unique(book: list[Order], rule: PricingRule) -> None:
    settlements = run(book, rule)
    assert len({(s.bid_id, s.ask_id) for s in settlements}) == len(settlements)
    assert len({s.settlement_id for s in settlements}) == len(settlements)


@given(book=books(), rule=RULES)
def test_nothing_that_could_still_trade_is_left_over(book: list[Order], rule: PricingRule) -> None:
    # A bid with quantity left walked every eligible ask it could afford, so no such ask has any left.
    used = filled(run(book, rule))
    left = {o.order_id: o.quantity_wh - used.get(o.order_id, 0) for o in book}
    bids = [o for o in book if o.side == "bid" and left[o.order_id]]
    asks = [o for o in book if o.side == "ask" and left[o.order_id]]
    for bid in bids:
        for ask in asks:
            if bid.source != ask.source or bid.participant_id == ask.participant_id:
                continue
            if rule is PricingRule.EQUAL_PRICE:
                assert bid.price != ask.price, (bid, ask)
            else:
                assert bid.price < ask.price, (bid, ask)


@given(book=books(), rule=RULES)
def test_settlements_come_in_matching_order_dispatch_pool_first_then_bid_then_ask_priority(
    book: list[Order], rule: PricingRule
) -> None:
    orders = by_id(book)
    bids = sorted((o for o in book if o.side == "bid"),
                  key=lambda o: (POOL_RANK[o.source], -o.price, o.seq, o.order_id))
    asks = sorted((o for o in book if o.side == "ask"),
                  key=lambda o: (POOL_RANK[o.source], o.price, o.seq, o.order_id))
    bid_rank = {o.order_id: i for i, o in enumerate(bids)}
    ask_rank = {o.order_id: i for i, o in enumerate(asks)}
    keys = [(POOL_RANK[s.source], bid_rank[s.bid_id], ask_rank[s.ask_id]) for s in run(book, rule)]
    assert keys == sorted(keys)
    assert len(set(keys)) == len(keys)
    assert all(orders[s.bid_id].source == s.source for s in run(book, rule))


@given(book=books(), rule=RULES, data=st.data())
def test_the_result_is_the_same_byte_for_byte_however_the_book_is_ordered(
    book: list[Order], rule: PricingRule, data: st.DataObject
) -> None:
    shuffled = data.draw(st.permutations(book))
    first, second = run(book, rule), run(list(shuffled), rule)
    assert [astuple(s) for s in first] == [astuple(s) for s in second]
    assert repr(first) == repr(second)  # the same Decimal digits too, not only equal values
    assert [str(s.buy_price) for s in first] == [str(s.buy_price) for s in second]


@given(book=books())
def test_under_pay_as_bid_the_buyer_pays_its_bid_and_the_seller_gets_its_ask(book: list[Order]) -> None:
    orders = by_id(book)
    for s in run(book, PricingRule.PAY_AS_BID):
        assert (s.buy_price, s.sell_price) == (orders[s.bid_id].price, orders[s.ask_id].price)


@given(book=books())
def test_the_midpoint_is_exactly_half_the_sum_of_bid_and_ask(book: list[Order]) -> None:
    orders = by_id(book)
    for s in run(book, PricingRule.MIDPOINT):
        bid, ask = orders[s.bid_id].price, orders[s.ask_id].price
        assert s.buy_price == s.sell_price == (bid + ask) / 2
        assert s.buy_price * 2 == bid + ask  # exact, not a rounded quotient
        # On the tick, or half a tick: at most one more digit (docs/market.md section 10).
        assert (s.buy_price * 20_000) == (s.buy_price * 20_000).to_integral_value()
        assert isinstance(s.buy_price, Decimal)


def test_a_midpoint_of_neighbouring_ticks_keeps_its_fifth_digit() -> None:
    from builders import order

    book = [order("b", "B", "bid", 10, "0.1001", seq=1), order("a", "A", "ask", 10, "0.1000", seq=2)]
    [s] = run(book, PricingRule.MIDPOINT)
    assert s.buy_price == s.sell_price == Decimal("0.10005")
    assert str(s.buy_price) == "0.10005"


def test_the_dispatch_pool_is_matched_first_even_when_its_orders_come_later() -> None:
    from builders import order

    book = [order("b1", "B", "bid", 10, "0.2", "solar", seq=1), order("a1", "A", "ask", 10, "0.1", "solar", seq=2),
            order("b2", "B", "bid", 10, "0.1", "bess", seq=3), order("a2", "A", "ask", 10, "0.1", "bess", seq=4)]
    assert [(s.bid_id, s.ask_id) for s in run(book, PricingRule.MIDPOINT)] == [("b2", "a2"), ("b1", "a1")]
