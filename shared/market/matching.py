"""Clearing one slot (MARKET.md section 5).

Each slot is cleared once, per source pool (dispatch first) and per source: a bid trades
only with an ask of its own source, never with its own participant. Priority: bids by
price descending, asks by price ascending, equal prices by acceptance sequence, then by
order id, so the result never depends on how the orders were stored or loaded.

Settlements come out in *matching order*: dispatch pool first, then by the bid's
priority within its pool, then by the ask's priority.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum

import numpy as np

from shared.market.numbers import half_ticks_to_price, ticks_to_price
from shared.market.orders import POOL_ORDER, SOURCE_POOLS, Order, Side
from shared.market.timing import Slot
from shared.market.walk import Fills, IntArray, walk


class PricingRule(StrEnum):
    MIDPOINT = "midpoint"
    EQUAL_PRICE = "equal_price"
    PAY_AS_BID = "pay_as_bid"


@dataclass(frozen=True, slots=True)
class Settlement:
    """A matched pair. The buyer pays ``buy_price``, the seller gets ``sell_price``."""

    settlement_id: str
    region: str
    slot: Slot
    source: str
    buyer: str
    seller: str
    bid_id: str
    ask_id: str
    quantity_wh: int
    buy_price: Decimal
    sell_price: Decimal
    matched_at_ms: int


def settlement_id(region: str, slot: Slot, bid_id: str, ask_id: str) -> str:
    """Deterministic: a bid and an ask meet at most once in a clearing."""
    return hashlib.blake2b(f"{region}|{slot}|{bid_id}|{ask_id}".encode(), digest_size=12).hexdigest()


_SOURCES = tuple(SOURCE_POOLS)
_SOURCE_CODES = {source: code for code, source in enumerate(_SOURCES)}
_POOL_OF_CODE = np.array([POOL_ORDER.index(SOURCE_POOLS[s]) for s in _SOURCES], dtype=np.int64)
_BID, _ASK = 0, 1
_INT64_MAX = 2**63 - 1


@dataclass(frozen=True, slots=True)
class Book:
    """One slot's orders as columns; row ``i`` is ``orders[i]``."""

    orders: list[Order]
    is_ask: IntArray
    price: IntArray  # ticks
    qty: IntArray
    seq: IntArray
    owner: IntArray
    source: IntArray

    @classmethod
    def from_orders(cls, orders: Iterable[Order]) -> Book:
        """Raises ValueError for an order whose quantity is not in [1, 2**63 - 1] Wh, or
        whose price ticks or sequence do not fit int64: the columns are int64.

        Quantities above ``MAX_ORDER_WH`` are cleared exactly: validation keeps new ones
        out, and an order already stored must not stop its whole slot from clearing.
        """
        rows = list(orders)
        n = len(rows)
        owners: dict[str, int] = {}

        def column(values: Iterable[int]) -> IntArray:
            return np.fromiter(values, dtype=np.int64, count=n)

        try:
            book = cls(
                orders=rows,
                is_ask=column(o.side == Side.ASK for o in rows),
                price=column(o.price_ticks for o in rows),
                qty=column(o.quantity_wh for o in rows),
                seq=column(o.seq for o in rows),
                owner=column(owners.setdefault(o.participant_id, len(owners)) for o in rows),
                source=column(_SOURCE_CODES[o.source] for o in rows),
            )
        except OverflowError:
            book = None
        if book is None or (n and int(book.qty.min()) < 1):
            raise ValueError(_out_of_range(rows))
        return book

    def ranked(self) -> dict[tuple[int, bool], IntArray]:
        """Rows of each (pool, side) in priority order, from one sort of the whole book."""
        pool = _POOL_OF_CODE[self.source]
        signed = np.where(self.is_ask == 1, self.price, -self.price)  # asks cheapest first, bids dearest
        group = pool * 2 + self.is_ask
        rows = self._sort(group, signed)
        bounds = np.searchsorted(group[rows], np.arange(2 * len(POOL_ORDER) + 1)).tolist()
        return {(p, bool(a)): rows[bounds[2 * p + a]:bounds[2 * p + a + 1]]
                for p in range(len(POOL_ORDER)) for a in (0, 1)}

    def _sort(self, group: IntArray, signed: IntArray) -> IntArray:
        n = len(self.orders)
        if not n:
            return np.zeros(0, dtype=np.int64)
        # One int64 key (group | price | sequence) sorts in one pass when the values fit;
        # equal keys are exactly the ties that the order id must break.
        if (int(self.seq.min()) >= 0 and int(self.seq.max()) < 1 << 40
                and int(signed.min()) > -(1 << 19) and int(signed.max()) < 1 << 19):
            key = (group << 60) | ((signed + (1 << 19)) << 40) | self.seq
            rows = np.argsort(key, kind="stable")
            ordered = key[rows]
            if not bool((ordered[1:] == ordered[:-1]).any()):
                return rows
        keys: list[IntArray] = [self.seq, signed, group]
        ids = np.array([o.order_id for o in self.orders])
        keys.insert(0, np.unique(ids, return_inverse=True)[1].astype(np.int64))
        return np.lexsort(keys)


def _out_of_range(rows: list[Order]) -> str:
    for o in rows:
        if not 1 <= o.quantity_wh <= _INT64_MAX:
            return f"order {o.order_id} has quantity_wh {o.quantity_wh}; a book holds 1 to 2**63 - 1 Wh"
        if not -_INT64_MAX <= o.price_ticks <= _INT64_MAX:
            return f"order {o.order_id} has price {o.price}: its ticks do not fit int64"
        if not -_INT64_MAX <= o.seq <= _INT64_MAX:
            return f"order {o.order_id} has seq {o.seq}, which does not fit int64"
    return "an order does not fit the book's int64 columns"


def _walk_rows(book: Book, bids: IntArray, asks: IntArray) -> Fills:
    fb, fa, fq = walk(book.price[bids], book.qty[bids], book.owner[bids],
                      book.price[asks], book.qty[asks], book.owner[asks])
    return bids[fb], asks[fa], fq


def _source_fills(book: Book, bids: IntArray, asks: IntArray, rule: PricingRule) -> Fills:
    """One source's fills, as book rows, in walk order; ``bids``/``asks`` ranked rows."""
    if rule is not PricingRule.EQUAL_PRICE:
        return _walk_rows(book, bids, asks)
    # Equal price: a bid meets only the asks of its own price, so each level is a walk
    # of its own; levels in bid priority order (highest price first) keep matching order.
    parts: list[Fills] = []
    bid_prices, ask_prices = book.price[bids], book.price[asks]
    for level in np.unique(bid_prices)[::-1].tolist():
        lo, hi = np.searchsorted(ask_prices, level, "left"), np.searchsorted(ask_prices, level, "right")
        if hi > lo:
            parts.append(_walk_rows(book, bids[bid_prices == level], asks[lo:hi]))
    return _concat(parts)


def _concat(parts: list[Fills]) -> Fills:
    if not parts:
        return _NONE
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
            np.concatenate([p[2] for p in parts]))


_NONE: Fills = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64))


def match_book(book: Book, rule: PricingRule) -> Fills:
    """Fills (bid row, ask row, Wh) of a slot's book, in matching order."""
    result: list[Fills] = []
    ranked = book.ranked()
    for pool in range(len(POOL_ORDER)):
        bids, asks = ranked[(pool, False)], ranked[(pool, True)]
        if not len(bids) or not len(asks):
            continue
        rank = np.empty(len(book.orders), dtype=np.int64)
        rank[bids] = np.arange(len(bids))
        parts = []
        present = (np.bincount(book.source[bids], minlength=len(_SOURCES)) > 0) & (
            np.bincount(book.source[asks], minlength=len(_SOURCES)) > 0)
        for source in np.flatnonzero(present).tolist():
            part = _source_fills(book, bids[book.source[bids] == source], asks[book.source[asks] == source], rule)
            if len(part[0]):
                parts.append(part)
        if parts:
            fb, fa, fq = _concat(parts)
            # A bid has one source, and each source's fills are in walk order already.
            order = np.argsort(rank[fb], kind="stable")
            result.append((fb[order], fa[order], fq[order]))
    return _concat(result)


def _prices(rule: PricingRule, bid_ticks: int, ask_ticks: int) -> tuple[Decimal, Decimal]:
    if rule is PricingRule.MIDPOINT:
        mid = half_ticks_to_price(bid_ticks + ask_ticks)
        return mid, mid
    if rule is PricingRule.PAY_AS_BID:
        return ticks_to_price(bid_ticks), ticks_to_price(ask_ticks)
    return ticks_to_price(bid_ticks), ticks_to_price(bid_ticks)


def clear(
    orders: Iterable[Order],
    *,
    region: str,
    slot: Slot,
    rule: PricingRule = PricingRule.MIDPOINT,
    matched_at_ms: int,
) -> list[Settlement]:
    """Clear one slot's book into settlements, in matching order.

    Invariants: no bid trades with a cheaper-than-ask price (none with a different price
    under ``equal_price``); no self-trade; no cross-source trade; no order filled beyond
    its quantity; the result does not depend on the order of ``orders``.
    """
    book = Book.from_orders(orders)
    for order in book.orders:
        if order.slot != slot:
            raise ValueError(f"order {order.order_id} is for slot {order.slot}, not {slot}")
    return settlements_of(book, match_book(book, rule), region=region, slot=slot, rule=rule,
                          matched_at_ms=matched_at_ms)


def settlements_of(
    book: Book, fills: Fills, *, region: str, slot: Slot, rule: PricingRule, matched_at_ms: int
) -> list[Settlement]:
    settlements: list[Settlement] = []
    prices: dict[tuple[int, int], tuple[Decimal, Decimal]] = {}
    for b, a, q in zip(*(x.tolist() for x in fills), strict=True):
        bid, ask = book.orders[b], book.orders[a]
        key = (bid.price_ticks, ask.price_ticks)
        if key not in prices:
            prices[key] = _prices(rule, *key)
        buy, sell = prices[key]
        settlements.append(
                Settlement(
                    settlement_id=settlement_id(region, slot, bid.order_id, ask.order_id),
                    region=region,
                    slot=slot,
                    source=bid.source,
                    buyer=bid.participant_id,
                    seller=ask.participant_id,
                    bid_id=bid.order_id,
                    ask_id=ask.order_id,
                    quantity_wh=q,
                    buy_price=buy,
                    sell_price=sell,
                    matched_at_ms=matched_at_ms,
                )
            )
    return settlements
