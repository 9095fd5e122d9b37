"""``shared.market.clear`` against the naive walk of docs/market.md section 5 (tests/reference.py).

Small generated books (hypothesis, then thousands more from seeded generators) test the
rule in all its corners; a few dozen large books make the fast matcher take its numpy bulk
path (stretches of 256+ orders without an owner conflict) and switch back and forth.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal

import pytest
from builders import REGION, SLOT, order
from hypothesis import given
from reference import naive_clear, seed_walk
from strategies import books, price_of, random_book, random_large_book

from shared.market import Order, PricingRule, clear

RULES = list(PricingRule)

Fill = tuple[str, str, int, Decimal, Decimal]


def fast_fills(orders: list[Order], rule: PricingRule) -> list[Fill]:
    settlements = clear(orders, region=REGION, slot=SLOT, rule=rule, matched_at_ms=0)
    return [(s.bid_id, s.ask_id, s.quantity_wh, s.buy_price, s.sell_price) for s in settlements]


def assert_same(orders: list[Order], rule: PricingRule) -> None:
    expected = naive_clear(orders, str(rule))
    got = fast_fills(orders, rule)
    if got != expected:
        first = next((i for i, (g, e) in enumerate(zip(got, expected, strict=False)) if g != e),
                     min(len(got), len(expected)))
        raise AssertionError(
            f"{rule}: {len(got)} fills, reference {len(expected)}; first difference at {first}: "
            f"{got[first:first + 3]} != {expected[first:first + 3]}"
        )


@pytest.mark.parametrize("rule", RULES)
@given(book=books())
def test_clear_makes_the_same_fills_as_the_naive_walk(rule: PricingRule, book: list[Order]) -> None:
    assert_same(book, rule)


@pytest.mark.parametrize("rule", RULES)
def test_clear_makes_the_same_fills_as_the_naive_walk_on_thousands_of_seeded_books(rule: PricingRule) -> None:
    rng = random.Random(f"differential-{rule}")
    for n in range(1500):
        book = random_book(rng)
        try:
            assert_same(book, rule)
        except AssertionError as exc:
            raise AssertionError(f"book {n} of seed differential-{rule}: {exc}") from None


LARGE = [
    # (orders, participants, layout): few and many participants, several sizes from 500 to 4000.
    (500, 3, "random"), (500, 100, "one_source"), (800, 2, "one_source"), (1000, 200, "random"),
    (1200, 20, "one_source"), (1500, 300, "one_source"), (2000, 5, "random"), (2000, 400, "one_source"),
    (2000, 400, "runs"), (2500, 50, "one_source"), (3000, 600, "random"), (3000, 600, "runs"),
    (3000, 20, "runs"), (4000, 800, "one_source"), (4000, 800, "runs"), (4000, 10, "one_source"),
]


@contextmanager
def walk_paths() -> Iterator[dict[str, list[int]]]:
    """Record how the fast walk ran: fills per bulk merge, hand-backs on an owner conflict,
    and bids walked plainly.

    White-box on purpose: it only checks that the large books below reach both paths.
    """
    from shared.market import walk

    seen: dict[str, list[int]] = {"merge": [], "handback": [], "plain": []}
    merge, plain = walk._Walk._merge, walk._Walk._walk_bid

    def spy_merge(self: walk._Walk, window: int) -> tuple[int, bool]:
        produced, conflict = merge(self, window)
        seen["merge"].append(produced)
        if conflict:
            seen["handback"].append(self.bid)
        return produced, conflict

    def spy_plain(self: walk._Walk) -> None:
        seen["plain"].append(self.bid)
        plain(self)

    walk._Walk._merge, walk._Walk._walk_bid = spy_merge, spy_plain  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        walk._Walk._merge, walk._Walk._walk_bid = merge, plain  # type: ignore[method-assign]


@pytest.mark.parametrize("rule", RULES)
def test_clear_matches_the_naive_walk_on_large_books_through_both_of_its_paths(rule: PricingRule) -> None:
    rng = random.Random(f"large-{rule}")
    # Equal price walks each price level on its own: few levels make those walks long.
    levels = 6 if rule is PricingRule.EQUAL_PRICE else 0
    with walk_paths() as seen:
        for n, participants, layout in LARGE:
            assert_same(random_large_book(rng, n, participants, layout, levels), rule)
    assert max(seen["merge"]) >= 256, "no large bulk merge: the bulk path was not covered"
    assert len(seen["handback"]) > 10, "the bulk path hardly ever handed back to the plain walk"
    assert len(seen["plain"]) > 100, "the plain walk was hardly covered"


def test_a_bulk_run_followed_by_repeated_owner_conflicts_matches_the_naive_walk() -> None:
    # 400 distinct buyers and sellers trade in bulk; then the same parties meet again and again.
    rows = [(f"b{i}", "bid", 10, 5000 - i) for i in range(400)] + [(f"s{i}", "ask", 10, 1000 + i) for i in range(400)]
    rows += [("x", "bid", 7, 4000 - i) for i in range(100)]
    rows += [("x" if i % 3 else "y", "ask", 5, 1400 + i) for i in range(100)]
    book = [order(f"o{seq}", who, side, q, price_of(ticks), seq=seq) for seq, (who, side, q, ticks) in enumerate(rows)]
    for rule in RULES:
        assert_same(book, rule)


@pytest.mark.parametrize("rule", RULES)
def test_the_seeds_literal_pair_loop_gives_the_same_fills_as_the_naive_walk(rule: PricingRule) -> None:
    import random

    rng = random.Random(f"seed-walk-{rule}")
    for _ in range(300):
        orders = [
            Order(order_id=f"o{i}", client_order_id=f"c{i}", participant_id=f"p{rng.randrange(4)}",
                  side=rng.choice(("bid", "ask")), quantity_wh=rng.randint(1, 40),  # type: ignore[arg-type]
                  price=Decimal(rng.randint(0, 12)) / 100, source=rng.choice(("solar", "wind", "bess")),
                  slot=SLOT, seq=rng.randrange(30), submitted_at_ms=0)
            for i in range(rng.randint(0, 30))
        ]
        assert seed_walk(orders, str(rule)) == naive_clear(orders, str(rule))
