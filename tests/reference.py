"""A deliberately naive clearing, written plainly from docs/market.md section 5.

This is the oracle the differential tests and the benchmark compare ``shared.market.clear``
with. It is the seed's bids x asks walk: O(bids x asks), no cleverness, no numpy, and it
uses nothing from ``shared.market`` except the ``Order`` values it reads.

For each pool (dispatch first, then non-dispatch), bids are sorted by price descending and
asks by price ascending, equal prices by acceptance sequence and then order id. Each bid
walks every ask in that order, skipping asks that are used up, belong to the bidder or have
another source, and stops at the first ask priced above the bid. Under ``equal_price`` a
pair trades only when the two prices are equal.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from decimal import Decimal
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shared.market import Order

# The pools of docs/market.md section 4, in the order section 5 matches them.
POOLS = (("bess",), ("solar", "wind"))

Fill = tuple[str, str, int, Decimal, Decimal]  # bid_id, ask_id, quantity_wh, buy_price, sell_price


def _ticks(price: Decimal) -> int:
    return int(price.scaleb(4))


def naive_clear(orders: Iterable[Order], rule: str = "midpoint") -> list[Fill]:
    """Fills in matching order. ``orders`` are ``shared.market.Order`` values of one slot."""
    book = list(orders)
    fills: list[Fill] = []
    for pool in POOLS:
        bids = [o for o in book if o.side == "bid" and o.source in pool]
        asks = [o for o in book if o.side == "ask" and o.source in pool]
        bids.sort(key=lambda o: (-_ticks(o.price), o.seq, o.order_id))
        asks.sort(key=lambda o: (_ticks(o.price), o.seq, o.order_id))
        ask_price = [_ticks(a.price) for a in asks]
        ask_left = [a.quantity_wh for a in asks]
        for bid in bids:
            bid_price = _ticks(bid.price)
            bid_left = bid.quantity_wh
            for j, ask in enumerate(asks):
                if bid_left == 0:
                    break
                if ask_left[j] == 0:
                    continue
                if ask.participant_id == bid.participant_id:
                    continue
                if ask.source != bid.source:
                    continue
                if ask_price[j] > bid_price:
                    break
                if rule == "equal_price" and ask_price[j] != bid_price:
                    continue
                quantity = min(bid_left, ask_left[j])
                bid_left -= quantity
                ask_left[j] -= quantity
                if rule in ("midpoint", "uniform"):
                    buy = sell = (bid.price + ask.price) / 2
                elif rule == "pay_as_bid":
                    buy, sell = bid.price, ask.price
                elif rule == "equal_price":
                    buy = sell = bid.price
                else:
                    raise ValueError(f"unknown pricing rule {rule!r}")
                fills.append((bid.order_id, ask.order_id, quantity, buy, sell))
    return _uniform(book, fills) if rule == "uniform" else fills


def _uniform(book: list[Order], fills: list[Fill]) -> list[Fill]:
    """Every fill of a source at the midpoint of the last pair the walk matched for that
    source, or, where that would cross the pair's own bid or ask, at the nearest of them."""
    order = {o.order_id: o for o in book}
    last: dict[str, Decimal] = {}
    for bid_id, ask_id, _, _, _ in fills:
        last[order[bid_id].source] = (order[bid_id].price + order[ask_id].price) / 2
    priced = []
    for b, a, q, _, _ in fills:
        price = min(max(last[order[b].source], order[a].price), order[b].price)
        priced.append((b, a, q, price, price))
    return priced


def seed_walk(orders: Iterable[Order], rule: str = "midpoint") -> list[Fill]:
    """The seed's own loop, literally: every (bid, ask) pair of a pool, ``itertools.product``,
    skipping (never stopping at) the pairs that cannot trade. Same fills as ``naive_clear``;
    it is the O(bids x asks) baseline that the issue's speed target is stated against."""
    book = list(orders)
    fills: list[Fill] = []
    for pool in POOLS:
        bids = sorted((o for o in book if o.side == "bid" and o.source in pool),
                      key=lambda o: (-_ticks(o.price), o.seq, o.order_id))
        asks = sorted((o for o in book if o.side == "ask" and o.source in pool),
                      key=lambda o: (_ticks(o.price), o.seq, o.order_id))
        left = {o.order_id: o.quantity_wh for o in bids + asks}
        for bid, ask in itertools.product(bids, asks):
            if ask.price != bid.price and rule == "equal_price":
                continue
            if ask.price > bid.price or bid.participant_id == ask.participant_id or bid.source != ask.source:
                continue
            if left[bid.order_id] <= 0 or left[ask.order_id] <= 0:
                continue
            quantity = min(left[bid.order_id], left[ask.order_id])
            left[bid.order_id] -= quantity
            left[ask.order_id] -= quantity
            if rule in ("midpoint", "uniform"):
                buy = sell = (bid.price + ask.price) / 2
            elif rule == "pay_as_bid":
                buy, sell = bid.price, ask.price
            else:
                buy = sell = bid.price
            fills.append((bid.order_id, ask.order_id, quantity, buy, sell))
    return _uniform(book, fills) if rule == "uniform" else fills
