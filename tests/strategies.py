"""Generated order books: hypothesis strategies, and plain seeded generators for bulk runs.

Books are built to be hard on a matcher: few price levels (so equal prices are common),
all three sources on both sides, a handful of participants (so self-trades are common
candidates), partial fills, and acceptance sequences given in random order, sometimes
with duplicates (the order id then decides).
"""

from __future__ import annotations

import dataclasses
import random
from decimal import Decimal

from builders import SLOT, order
from hypothesis import strategies as st

from shared.market import MAX_ORDER_WH, Order

SOURCES = ("solar", "wind", "bess")
MAX_TICKS = 100_000  # the default cap, 10 $/kWh
INT64_MAX = 2**63 - 1

# Quantities at and beyond the order limit, up to int64: where cumulative sums wrap.
HUGE_WH = (MAX_ORDER_WH - 1, MAX_ORDER_WH, MAX_ORDER_WH + 1, 2**31, 2**53, 2**61, 2**62 - 1, 2**62, 2**62 + 1,
           3 * 2**61, INT64_MAX - 1, INT64_MAX)


def price_of(ticks: int) -> Decimal:
    return Decimal(ticks).scaleb(-4)


def build(rows: list[tuple[int, str, int, int, str]], seqs: list[int]) -> list[Order]:
    """Orders from (participant, side, quantity_wh, price ticks, source) rows."""
    return [
        order(f"o{i}", f"p{who}", side, quantity, price_of(ticks), source, seq=seq, slot=SLOT)
        for i, ((who, side, quantity, ticks, source), seq) in enumerate(zip(rows, seqs, strict=True))
    ]


@st.composite
def books(draw: st.DrawFn, max_orders: int = 40) -> list[Order]:
    participants = draw(st.integers(1, 6))
    base = draw(st.integers(0, MAX_TICKS - 12))
    levels = draw(st.lists(st.one_of(st.integers(base, base + 12), st.sampled_from([0, MAX_TICKS])),
                           min_size=1, max_size=6))
    # One integer per order, unpacked into its fields: a fifth of the draws of a tuple
    # strategy, and it still shrinks towards participant 0, bid, level 0, solar, 1 Wh.
    size = draw(st.integers(0, max_orders))  # lists() alone would mostly make tiny books
    codes = draw(st.lists(st.integers(0, 2**32 - 1), min_size=size, max_size=size))
    rows = []
    for code in codes:
        who, code = code % participants, code // participants
        side, code = ("bid", "ask")[code % 2], code // 2
        ticks, code = levels[code % len(levels)], code // len(levels)
        source, code = SOURCES[code % 3], code // 3
        quantity = 1 + (code % 20 if code % 2 else (code // 2) % 5000)
        rows.append((who, side, quantity, ticks, source))
    n = len(rows)
    seqs = draw(st.one_of(st.permutations(range(n)),
                          st.lists(st.integers(0, max(n // 2, 1)), min_size=n, max_size=n)))
    return build(rows, list(seqs))


def huge_quantities() -> st.SearchStrategy[int]:
    """Any quantity a book can hold (1 to int64), the edges and the near-int64 values often."""
    return st.one_of(st.integers(1, 50), st.sampled_from(HUGE_WH), st.integers(2**62, INT64_MAX),
                     st.integers(1, INT64_MAX))


@st.composite
def huge_books(draw: st.DrawFn, max_orders: int = 40) -> list[Order]:
    """A ``books()`` book in which some quantities are huge: no total needs to fit int64."""
    book = draw(books(max_orders))
    huge = draw(st.lists(st.one_of(st.none(), huge_quantities()), min_size=len(book), max_size=len(book)))
    return [o if q is None else dataclasses.replace(o, quantity_wh=q) for o, q in zip(book, huge, strict=True)]


def random_book(rng: random.Random, max_orders: int = 40) -> list[Order]:
    """The same kind of book as ``books()``, from a seeded generator, for bulk runs."""
    n = rng.randint(0, max_orders)
    participants = rng.randint(1, 6)
    base = rng.randint(0, MAX_TICKS - 12)
    levels = [rng.choice([0, MAX_TICKS]) if rng.random() < 0.1 else base + rng.randint(0, 12)
              for _ in range(rng.randint(1, 6))]
    rows = [
        (rng.randrange(participants), rng.choice(["bid", "ask"]),
         rng.randint(1, 20) if rng.random() < 0.5 else rng.randint(1, 5000),
         rng.choice(levels), rng.choice(SOURCES))
        for _ in range(n)
    ]
    seqs = rng.sample(range(n), n) if rng.random() < 0.8 else [rng.randint(0, max(n // 2, 1)) for _ in range(n)]
    return build(rows, seqs)


def random_large_book(rng: random.Random, n: int, participants: int, layout: str, levels: int = 0) -> list[Order]:
    """A large crossing book whose owners are laid out by priority rank.

    ``layout`` is ``random`` (random owners, all three sources), ``one_source`` (random
    owners, all solar) or ``runs`` (all solar; long stretches of distinct owners broken by
    dense stretches of two owners, so the matcher has to switch between its bulk and its
    plain walk). With ``levels``, both sides share that many price levels, so that long
    stretches trade under ``equal_price`` too.
    """
    shared_levels = [1000 + 50 * k for k in range(levels)]
    rows: list[tuple[int, str, int, int, str]] = []
    for side in ("bid", "ask"):
        count = n // 2
        # Bids mostly above asks, with an overlap, so most of the book trades.
        lo, hi = (1000, 2000) if side == "bid" else (600, 1600)
        if levels:
            ticks = [rng.choice(shared_levels) for _ in range(count)]
        else:
            ticks = [rng.randint(lo, hi) for _ in range(count)]
        ticks.sort(reverse=side == "bid")
        for rank, tick in enumerate(ticks):
            if layout == "runs" and (rank // 300) % 2 == 1:
                who = rank % 2  # a dense stretch of conflicts between two owners
            elif layout == "runs":
                who = 2 + rng.randrange(max(participants - 2, 1))
            else:
                who = rng.randrange(participants)
            source = rng.choice(SOURCES) if layout == "random" else "solar"
            rows.append((who, side, rng.randint(1, 3000), tick, source))
    rng.shuffle(rows)
    return build(rows, rng.sample(range(len(rows)), len(rows)))
