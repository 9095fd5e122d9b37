"""Clearing one slot (docs/market.md section 5).

Each slot is cleared once, per source pool (dispatch first) and per source: a bid trades
only with an ask of its own source, never with its own participant. Priority: bids by
price descending, asks by price ascending, equal prices by acceptance sequence, then by
order id, so the result never depends on how the orders were stored or loaded.

Settlements come out in *matching order*: dispatch pool first, then by the bid's
priority within its pool, then by the ask's priority.
"""

from __future__ import annotations

import hashlib
import operator
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from itertools import compress

import numpy as np

from shared.market.numbers import EXACT, TICKS_PER_DOLLAR, half_ticks_to_price, ticks_to_price
from shared.market.orders import POOL_ORDER, SOURCE_POOLS, Order, Side
from shared.market.timing import Slot
from shared.market.walk import Fills, IntArray, walk


class PricingRule(StrEnum):
    MIDPOINT = "midpoint"
    EQUAL_PRICE = "equal_price"
    PAY_AS_BID = "pay_as_bid"
    UNIFORM = "uniform"  # pay-as-clear: the midpoint pairs, each source at one price (within each pair's limits)


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
_ASK_TEXT = str(Side.ASK)
_SIDES = frozenset({str(Side.BID), str(Side.ASK)})


@dataclass(frozen=True, slots=True)
class Book:
    """One slot's orders as columns. Built by ``from_orders``, row ``i`` is ``orders[i]``;
    built by ``from_columns``, ``orders`` is empty and the columns are all there is."""

    orders: list[Order]
    is_ask: IntArray
    price: IntArray  # ticks
    qty: IntArray
    seq: IntArray
    owner: IntArray  # index into ``parties``
    source: IntArray  # index into ``SOURCES``
    order_ids: list[str]
    parties: list[str]  # participant ids, in order of first appearance

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
                order_ids=[o.order_id for o in rows],
                parties=list(owners),
            )
        except OverflowError:
            book = None
        if book is None or (n and int(book.qty.min()) < 1):
            raise ValueError(_out_of_range(rows))
        return book

    @classmethod
    def from_columns(
        cls,
        *,
        order_ids: list[str],
        participant_ids: Sequence[str],
        sides: Sequence[str],
        quantity_wh: Sequence[int],
        price_ticks: Sequence[int],
        seq: Sequence[int],
        sources: Sequence[str],
    ) -> Book:
        """The book ``from_orders`` builds from the same orders, row for row, straight
        from their columns: no ``Order`` values.

        Raises ValueError for a side that is not "bid" or "ask", a source that is not one
        of ``SOURCES``, a quantity not in [1, 2**63 - 1] Wh, or price ticks or a sequence
        that do not fit int64."""
        n = len(order_ids)
        if not (len(participant_ids) == len(sides) == len(quantity_wh) == len(price_ticks) == len(seq)
                == len(sources) == n):
            raise ValueError("the columns of a book must all have one row per order")
        if not set(sides) <= _SIDES:
            raise ValueError(f"a side must be 'bid' or 'ask', got {sorted(set(sides) - _SIDES)[:5]}")
        unknown = set(sources) - _SOURCE_CODES.keys()
        if unknown:
            raise ValueError(f"a source must be one of {', '.join(_SOURCES)}, got {sorted(unknown)[:5]}")
        parties = list(dict.fromkeys(participant_ids))  # in order of first appearance, as from_orders
        owners = {p: code for code, p in enumerate(parties)}
        try:
            book = cls(
                orders=[],
                is_ask=np.fromiter(map(_ASK_TEXT.__eq__, sides), dtype=np.int64, count=n),
                price=np.fromiter(price_ticks, dtype=np.int64, count=n),
                qty=np.fromiter(quantity_wh, dtype=np.int64, count=n),
                seq=np.fromiter(seq, dtype=np.int64, count=n),
                owner=np.array(list(map(owners.__getitem__, participant_ids)), dtype=np.int64),
                source=np.fromiter(map(_SOURCE_CODES.__getitem__, sources), dtype=np.int64, count=n),
                order_ids=order_ids,
                parties=parties,
            )
        except OverflowError:
            book = None
        if book is None or (n and int(book.qty.min()) < 1):
            raise ValueError(_columns_out_of_range(order_ids, quantity_wh, price_ticks, seq))
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
        n = len(self.order_ids)
        if not n:
            return np.zeros(0, dtype=np.int64)
        # One int64 key (group | price | sequence) sorts in one pass when the values fit
        # (the sequence counted from the book's lowest: a simulated round's numbers are
        # large, their spread within a book is not); equal keys are exactly the ties that
        # the order id must break.
        low = int(self.seq.min())
        if int(self.seq.max()) - low < 1 << 40 and int(signed.min()) > -(1 << 19) and int(signed.max()) < 1 << 19:
            key = (group << 60) | ((signed + (1 << 19)) << 40) | (self.seq - low)
            rows = np.argsort(key, kind="stable")
            ordered = key[rows]
            if not bool((ordered[1:] == ordered[:-1]).any()):
                return rows
        keys: list[IntArray] = [self.seq, signed, group]
        ids = np.array(self.order_ids)
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


def _columns_out_of_range(
    order_ids: list[str], quantity_wh: Sequence[int], price_ticks: Sequence[int], seq: Sequence[int]
) -> str:
    for i, order_id in enumerate(order_ids):
        if not 1 <= quantity_wh[i] <= _INT64_MAX:
            return f"order {order_id} has quantity_wh {quantity_wh[i]}; a book holds 1 to 2**63 - 1 Wh"
        if not -_INT64_MAX <= price_ticks[i] <= _INT64_MAX:
            return f"order {order_id} has price ticks {price_ticks[i]}, which do not fit int64"
        if not -_INT64_MAX <= seq[i] <= _INT64_MAX:
            return f"order {order_id} has seq {seq[i]}, which does not fit int64"
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
        rank = np.empty(len(book.order_ids), dtype=np.int64)
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


def _uniform_half_ticks(source: list[int], bid: list[int], ask: list[int]) -> list[int]:
    """``uniform``: each fill's price in half ticks. A source clears at the midpoint of the
    last pair the walk matched for it; a pair whose own bid or ask that price would cross
    (the walk can meet a cheaper ask late, after a bidder passed over its own) trades at
    the nearest price it allows instead. Python ints: no sum can wrap."""
    last: dict[int, int] = {}
    for s, b, a in zip(source, bid, ask, strict=True):
        last[s] = b + a
    return [min(max(last[s], 2 * a), 2 * b) for s, b, a in zip(source, bid, ask, strict=True)]


def _prices(rule: PricingRule, bid_ticks: int, ask_ticks: int) -> tuple[Decimal, Decimal]:
    if rule is PricingRule.MIDPOINT:
        mid = half_ticks_to_price(bid_ticks + ask_ticks)
        return mid, mid
    if rule is PricingRule.PAY_AS_BID:
        return ticks_to_price(bid_ticks), ticks_to_price(ask_ticks)
    return ticks_to_price(bid_ticks), ticks_to_price(bid_ticks)


@dataclass(frozen=True, slots=True)
class SettlementColumns:
    """The settlements ``settlements_of`` makes of the same fills, as columns, row for
    row: the same ids, and each price as its exact decimal text (``str(buy_price)``)."""

    settlement_id: list[str]
    source: list[str]
    buyer: list[str]
    seller: list[str]
    bid_id: list[str]
    ask_id: list[str]
    quantity_wh: list[int]
    buy_price: list[str]
    sell_price: list[str]
    buyer_code: IntArray  # index into the book's ``parties``
    seller_code: IntArray
    source_code: IntArray  # index into ``SOURCES``
    buy_half_ticks: list[int]  # the buy price in half ticks
    parties: list[str]

    def __len__(self) -> int:
        return len(self.settlement_id)

    @property
    def energy_wh(self) -> int:
        return sum(self.quantity_wh)

    def energy_by_source(self) -> dict[str, int]:
        """Wh matched per source, for the sources that matched any."""
        return {_SOURCES[code]: sum(compress(self.quantity_wh, (self.source_code == code).tolist()))
                for code in np.unique(self.source_code).tolist()}

    def paid(self) -> Decimal:
        """The sum of ``buy_price * quantity_wh`` over the settlements, exactly."""
        total = sum(map(operator.mul, self.buy_half_ticks, self.quantity_wh))
        return EXACT.divide(Decimal(total), Decimal(2 * TICKS_PER_DOLLAR))

    def by_party(self) -> tuple[list[str], IntArray, list[int]]:
        """Each party's settlements (as buyer or seller), parties sorted by id: returns the
        parties, the rows grouped by party in that order (each party's rows in matching
        order), and bounds, so that ``rows[bounds[k]:bounds[k + 1]]`` are ``parties[k]``'s."""
        # Buyer and seller of each row side by side: a stable sort by party keeps each
        # party's rows in matching order.
        codes = np.column_stack((self.buyer_code, self.seller_code)).ravel()
        present = sorted(np.unique(codes).tolist(), key=self.parties.__getitem__)
        rank = np.zeros(len(self.parties), dtype=np.int64)
        rank[present] = np.arange(len(present))
        party = rank[codes]
        order = np.argsort(party, kind="stable")
        bounds = np.searchsorted(party[order], np.arange(len(present) + 1)).tolist()
        return [self.parties[code] for code in present], order // 2, bounds


def settlement_columns(book: Book, fills: Fills, *, region: str, slot: Slot, rule: PricingRule) -> SettlementColumns:
    """What ``settlements_of`` gives for ``fills`` of ``book``, as columns, without a
    ``Settlement`` or a ``Decimal`` per fill: the prices are worked out once per value."""
    fb, fa, fq = fills
    ids, parties = np.array(book.order_ids, dtype=object), np.array(book.parties, dtype=object)
    bid_ids, ask_ids = ids[fb].tolist(), ids[fa].tolist()
    buyer_code, seller_code = book.owner[fb], book.owner[fa]
    source_code = book.source[fb]
    bid_ticks, ask_ticks = book.price[fb], book.price[fa]
    if rule is PricingRule.UNIFORM:
        buy_half = _uniform_half_ticks(source_code.tolist(), bid_ticks.tolist(), ask_ticks.tolist())
        texts = {h: str(half_ticks_to_price(h)) for h in set(buy_half)}
        buy = sell = [texts[h] for h in buy_half]
    else:
        buy, sell, buy_half = _price_texts(rule, bid_ticks, ask_ticks)
    # settlement_id() of each fill: the same text hashed the same way, the common prefix once.
    prefixed = hashlib.blake2b(f"{region}|{slot}|".encode(), digest_size=12)

    def fill_id(bid_id: str, ask_id: str) -> str:
        h = prefixed.copy()
        h.update(f"{bid_id}|{ask_id}".encode())
        return h.hexdigest()

    return SettlementColumns(
        settlement_id=list(map(fill_id, bid_ids, ask_ids)),
        source=np.array(_SOURCES, dtype=object)[source_code].tolist(),
        buyer=parties[buyer_code].tolist(),
        seller=parties[seller_code].tolist(),
        bid_id=bid_ids,
        ask_id=ask_ids,
        quantity_wh=fq.tolist(),
        buy_price=buy,
        sell_price=sell,
        buyer_code=buyer_code,
        seller_code=seller_code,
        source_code=source_code,
        buy_half_ticks=buy_half,
        parties=book.parties,
    )


def _price_texts(rule: PricingRule, bid: IntArray, ask: IntArray) -> tuple[list[str], list[str], list[int]]:
    """``str()`` of the prices ``_prices`` gives each fill, and the buy price in half ticks.

    Each price depends on one number (midpoint: the sum of the ticks, in half ticks;
    otherwise the bid's or the ask's ticks), so it is made once per distinct number. In
    step with ``_prices``: tests/properties/test_columnar_core.py holds them to it."""
    if rule is PricingRule.MIDPOINT:
        if len(bid) and not (min(int(bid.min()), int(ask.min())) > -(1 << 61)
                             and max(int(bid.max()), int(ask.max())) < 1 << 61):
            # Sums that could wrap int64: Python ints, one fill at a time.
            half = [b + a for b, a in zip(bid.tolist(), ask.tolist(), strict=True)]
            mids = {h: str(half_ticks_to_price(h)) for h in set(half)}
            texts = [mids[h] for h in half]
            return texts, texts, half
        sums = bid + ask
        texts = _texts(sums, half_ticks_to_price)
        return texts, texts, sums.tolist()
    buy = _texts(bid, ticks_to_price)
    sell = buy if rule is PricingRule.EQUAL_PRICE else _texts(ask, ticks_to_price)
    return buy, sell, [2 * b for b in bid.tolist()]


def _texts(values: IntArray, price: Callable[[int], Decimal]) -> list[str]:
    if not len(values):
        return []
    distinct, where = np.unique(values, return_inverse=True)
    texts = np.array([str(price(v)) for v in distinct.tolist()], dtype=object)
    result: list[str] = texts[where].tolist()
    return result


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
    fb, fa, fq = (x.tolist() for x in fills)
    uniform = (_uniform_half_ticks(book.source[fills[0]].tolist(), book.price[fills[0]].tolist(),
                                   book.price[fills[1]].tolist()) if rule is PricingRule.UNIFORM else None)
    for i, (b, a, q) in enumerate(zip(fb, fa, fq, strict=True)):
        bid, ask = book.orders[b], book.orders[a]
        if uniform is not None:  # keyed by the half ticks of the price: (h, None)
            key = (uniform[i], -1)
            if key not in prices:
                prices[key] = (half_ticks_to_price(uniform[i]),) * 2
        else:
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
