"""The matching walk over one source's bids and asks, already in priority order.

The rule (docs/market.md section 5): take bids in priority order; for each, take asks in
priority order, skipping asks that are used up or belong to the bidder, and stop at the
first ask priced above the bid. Written plainly this is O(bids x asks). Here it is
O((n + k) log n) for n orders and k fills:

- asks never reached are read through one pointer, ``main``;
- an ask skipped because the bidder owns it waits in its owner's queue; the owners'
  queue heads sit in a heap, so the best waiting ask *not* owned by the bidder is the
  heap's root or one of its two children;
- a waiting ask always precedes ``main`` in priority, so it is taken first.

While no ask is waiting, the walk is a merge of the two cumulative-quantity sequences,
which numpy does in bulk (``_merge``) until the first pair with the same owner; the
plain walk resolves that pair and hands back once nothing waits.

Quantities are exact for any int64 value >= 1. The bulk merge adds quantities up in
int64, so it runs only when no side's total can exceed the int64 range (``_fits``);
otherwise the whole walk is the plain one, in Python ints, which never overflow. (Before
this check a wrapped cumulative sum made the merge report negative fills, index past its
arrays, or make no progress while claiming no conflict: the driver then widened its
window, forever.)
"""

from __future__ import annotations

import heapq
from collections import deque

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]
Fills = tuple[IntArray, IntArray, IntArray]  # bid index, ask index, quantity

_EMPTY = np.zeros(0, dtype=np.int64)
_INT64_MAX = 2**63 - 1


def _fits(quantities: IntArray) -> bool:
    """Every cumulative sum of ``quantities`` fits in int64 (checked in Python ints)."""
    return int(quantities.max()) * len(quantities) <= _INT64_MAX


def _sift_down(heap: list[tuple[int, int]], pos: int) -> None:
    size, item = len(heap), heap[pos]
    while (child := 2 * pos + 1) < size:
        if child + 1 < size and heap[child + 1] < heap[child]:
            child += 1
        if heap[child] < item:
            heap[pos] = heap[child]
            pos = child
        else:
            break
    heap[pos] = item


class _Walk:
    """Mutable state of one walk; arrays are priority-ordered, owners are small ints."""

    def __init__(
        self,
        bid_price: IntArray,
        bid_qty: IntArray,
        bid_owner: IntArray,
        ask_price: IntArray,
        ask_qty: IntArray,
        ask_owner: IntArray,
    ) -> None:
        self.bp, self.bq, self.bo = bid_price, bid_qty, bid_owner
        self.ap, self.aq, self.ao = ask_price, ask_qty, ask_owner
        self._lists: tuple[list[int], ...] | None = None
        self.bid = 0
        self.bid_left = int(bid_qty[0]) if len(bid_qty) else 0
        self.main = 0
        self.ask_left: dict[int, int] = {}  # partly filled asks only
        self.waiting: dict[int, deque[int]] = {}
        self.heap: list[tuple[int, int]] = []  # (head ask index, owner)
        self.chunks: list[Fills] = []
        self.fills_b: list[int] = []
        self.fills_a: list[int] = []
        self.fills_q: list[int] = []
        self.bulk = _fits(bid_qty) and _fits(ask_qty)  # else the int64 merge could wrap

    def run(self) -> Fills:
        nb, na = len(self.bp), len(self.ap)
        window, plain_bids = 256, 0
        while self.bid < nb and (self.main < na or self.heap):
            if self.heap or plain_bids > 0 or not self.bulk:
                self._walk_bid()
                plain_bids = max(plain_bids - 1, 0)
                continue
            produced, conflict = self._merge(window)
            if conflict:
                # The plain walk settles the conflicting bid; when conflicts come close
                # together it keeps the walk for a while, as the bulk path would not pay.
                plain_bids = 1 if produced >= 64 else 32
                window = max(256, window // 2)
            else:
                window *= 4
        self._flush()
        if not self.chunks:
            return _EMPTY, _EMPTY, _EMPTY
        return (
            np.concatenate([c[0] for c in self.chunks]),
            np.concatenate([c[1] for c in self.chunks]),
            np.concatenate([c[2] for c in self.chunks]),
        )

    def _flush(self) -> None:
        if self.fills_q:
            self.chunks.append(
                (
                    np.array(self.fills_b, dtype=np.int64),
                    np.array(self.fills_a, dtype=np.int64),
                    np.array(self.fills_q, dtype=np.int64),
                )
            )
            self.fills_b, self.fills_a, self.fills_q = [], [], []

    def _left(self, ask: int) -> int:
        return self.ask_left.get(ask, int(self.aq[ask]))

    def _fill(self, ask: int, quantity: int) -> bool:
        """Record a fill; True when the ask is used up."""
        self.fills_b.append(self.bid)
        self.fills_a.append(ask)
        self.fills_q.append(quantity)
        self.bid_left -= quantity
        left = self.ask_left.get(ask, self._plain()[4][ask]) - quantity
        if left:
            self.ask_left[ask] = left
            return False
        self.ask_left.pop(ask, None)
        return True

    def _next_bid(self) -> None:
        self.bid += 1
        self.bid_left = int(self.bq[self.bid]) if self.bid < len(self.bq) else 0

    def _plain(self) -> tuple[list[int], ...]:
        # Python ints index far faster than numpy scalars in the per-fill loop.
        if self._lists is None:
            self._lists = (self.bp.tolist(), self.bo.tolist(), self.ap.tolist(), self.ao.tolist(), self.aq.tolist())
        return self._lists

    def _walk_bid(self) -> None:
        """Walk the current bid to its end with the full rule, then move to the next bid."""
        bp, bo, ap, ao, aq = self._plain()
        owner, price = bo[self.bid], bp[self.bid]
        heap, na, ask_left = self.heap, len(ap), self.ask_left
        while self.bid_left > 0:
            pos = -1
            if heap:
                if heap[0][1] != owner:
                    pos = 0
                elif len(heap) > 1:
                    pos = 2 if len(heap) > 2 and heap[2] < heap[1] else 1
            if pos >= 0:
                ask, ask_owner = heap[pos]
                if ap[ask] > price:
                    break
                if self._fill(ask, min(self.bid_left, ask_left.get(ask, aq[ask]))):
                    queue = self.waiting[ask_owner]
                    queue.popleft()
                    if queue:
                        heap[pos] = (queue[0], ask_owner)
                    else:
                        del self.waiting[ask_owner]
                        last = heap.pop()
                        if pos == len(heap):
                            continue
                        heap[pos] = last
                    _sift_down(heap, pos)
                continue
            while self.main < na and ao[self.main] == owner:
                queue = self.waiting.setdefault(owner, deque())
                if not queue:
                    heapq.heappush(heap, (self.main, owner))
                queue.append(self.main)
                self.main += 1
            if self.main >= na or ap[self.main] > price:
                break
            if self._fill(self.main, min(self.bid_left, ask_left.get(self.main, aq[self.main]))):
                self.main += 1
        self._next_bid()

    def _merge(self, window: int) -> tuple[int, bool]:
        """Bulk walk while nothing waits; returns (fills made, stopped on an owner conflict)."""
        b0, a0 = self.bid, self.main
        bq = self.bq[b0 : b0 + window].copy()
        aq = self.aq[a0 : a0 + window].copy()
        bq[0] = self.bid_left
        aq[0] = self._left(a0)
        bcum, acum = np.cumsum(bq), np.cumsum(aq)
        total = min(int(bcum[-1]), int(acum[-1]))
        ends = np.sort(np.concatenate((bcum[bcum <= total], acum[acum <= total])), kind="stable")
        ends = ends[np.concatenate(([True], ends[1:] != ends[:-1]))]  # both runs are strictly increasing
        starts = np.concatenate(([0], ends[:-1]))
        bi = np.searchsorted(bcum, starts, side="right")
        ai = np.searchsorted(acum, starts, side="right")
        price_stop = self.ap[a0 + ai] > self.bp[b0 + bi]
        conflict = self.ao[a0 + ai] == self.bo[b0 + bi]
        bad = price_stop | conflict
        cut = int(np.argmax(bad)) if bool(bad.any()) else len(ends)
        if cut:
            self._flush()
            self.chunks.append((bi[:cut] + b0, ai[:cut] + a0, (ends - starts)[:cut]))
        if cut < len(ends):
            done = int(starts[cut])
            stop_bid, stop_ask = int(bi[cut]), int(ai[cut])
        else:
            done = total
            stop_bid = int(np.searchsorted(bcum, done, side="right"))
            stop_ask = int(np.searchsorted(acum, done, side="right"))
        self.bid = b0 + stop_bid
        self.bid_left = int(bcum[stop_bid]) - done if stop_bid < len(bcum) else (
            int(self.bq[self.bid]) if self.bid < len(self.bq) else 0
        )
        self.ask_left.pop(a0, None)
        self.main = a0 + stop_ask
        if stop_ask < len(acum):
            left = int(acum[stop_ask]) - done
            if left != int(self.aq[self.main]):
                self.ask_left[self.main] = left
        if cut < len(ends) and bool(price_stop[cut]):
            # Bids only get cheaper and nothing waits: no later bid can trade.
            self.bid = len(self.bp)
            return cut, False
        return cut, cut < len(ends)


def walk(
    bid_price: IntArray,
    bid_qty: IntArray,
    bid_owner: IntArray,
    ask_price: IntArray,
    ask_qty: IntArray,
    ask_owner: IntArray,
) -> Fills:
    """Fills of the walk, in the order the walk makes them. Inputs in priority order.

    Every quantity must be at least 1 Wh (raises ValueError otherwise); any int64 value
    above that is walked exactly.
    """
    if len(bid_price) == 0 or len(ask_price) == 0:
        return _EMPTY, _EMPTY, _EMPTY
    if int(bid_qty.min()) < 1 or int(ask_qty.min()) < 1:
        raise ValueError("every order quantity must be at least 1 Wh")
    return _Walk(bid_price, bid_qty, bid_owner, ask_price, ask_qty, ask_owner).run()
