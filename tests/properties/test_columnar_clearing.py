"""The matcher's columnar path against the object path, from the bytes Redis holds.

A slot's book is stored as one MessagePack ``OrderAccepted`` per order. The object path
decodes each, makes an ``Order`` and calls ``clear``; the columnar path
(``clear_wire_book``) goes straight to columns. On every book, valid or not, both must
give the same: the same settlement records (ids, prices as text, matching order), the
same notices per party, the same ``SlotCleared`` bytes, or the same failure (the
exception and its text, which the held slot carries). ``clear_wire_book_columns`` is the
columnar path without its fallback to the object path: it must succeed on every book the
object path clears, or the comparison would prove nothing.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from builders import REGION, SLOT
from hypothesis import given
from hypothesis import strategies as st
from strategies import books, huge_books, random_book, random_large_book

from shared.market import Order, PricingRule
from shared.messages import encode
from shared.messages import types as t
from shared.messages.convert import (
    _PATTERNS,
    ClearedBook,
    _all_match,
    clear_wire_book,
    clear_wire_book_columns,
    clear_wire_book_objects,
    order_to_wire,
    slot_to_wire,
)

RULES = list(PricingRule)
MATCHED_AT_MS = 540_000
Outcome = ClearedBook | tuple[type[BaseException], str]


def wire(book: list[Order]) -> list[bytes]:
    return [encode(order_to_wire(o, region=REGION)) for o in book]


def outcome(run: Callable[[], ClearedBook]) -> Outcome:
    try:
        return run()
    except Exception as exc:
        return type(exc), str(exc)


def fact(cleared: ClearedBook, rule: PricingRule) -> bytes:
    return encode(t.SlotCleared(region=REGION, slot=slot_to_wire(SLOT), rule=str(rule), matched_at_ms=MATCHED_AT_MS,
                                order_count=cleared.order_count, settlements=cleared.records))


def notices(cleared: ClearedBook) -> list[bytes]:
    return [encode(t.SettlementsNotice(region=REGION, participant_id=p, slot=slot_to_wire(SLOT), settlements=mine))
            for p, mine in cleared.by_party]


def assert_same(raws: list[bytes], rule: PricingRule) -> Outcome:
    args: dict[str, Any] = {"region": REGION, "slot": SLOT, "rule": rule}
    expected = outcome(lambda: clear_wire_book_objects(raws, matched_at_ms=MATCHED_AT_MS, **args))
    got = outcome(lambda: clear_wire_book(raws, matched_at_ms=MATCHED_AT_MS, **args))
    columns = outcome(lambda: clear_wire_book_columns(raws, **args))
    assert got == expected
    if isinstance(expected, ClearedBook):
        assert columns == expected, "the columnar path itself must clear what the object path clears"
        assert isinstance(got, ClearedBook)
        assert fact(got, rule) == fact(expected, rule)
        assert notices(got) == notices(expected)
    else:
        assert not isinstance(columns, ClearedBook), f"the columnar path cleared a book that fails: {expected}"
    return expected


# --- valid books ----------------------------------------------------------------------------


@pytest.mark.parametrize("rule", RULES)
@given(book=books())
def test_the_columnar_path_gives_the_object_paths_records_notices_and_bytes(
    rule: PricingRule, book: list[Order]
) -> None:
    assert isinstance(assert_same(wire(book), rule), ClearedBook)


@pytest.mark.parametrize("rule", RULES)
@given(book=huge_books())
def test_books_with_huge_quantities_clear_or_fail_alike(rule: PricingRule, book: list[Order]) -> None:
    # Quantities above the wire's 2**53 Wh do not decode: the slot is held, either way.
    assert_same(wire(book), rule)


@pytest.mark.parametrize("rule", RULES)
def test_the_columnar_path_agrees_on_hundreds_of_seeded_books(rule: PricingRule) -> None:
    rng = random.Random(f"columnar-{rule}")
    for n in range(300):
        book = random_book(rng)
        try:
            assert isinstance(assert_same(wire(book), rule), ClearedBook)
        except AssertionError as exc:
            raise AssertionError(f"book {n} of seed columnar-{rule}: {exc}") from None


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("layout", ["random", "one_source", "runs"])
def test_the_columnar_path_agrees_on_large_books(rule: PricingRule, layout: str) -> None:
    rng = random.Random(f"columnar-large-{rule}-{layout}")
    for participants in (3, 50, 1000):
        book = random_large_book(rng, 4000, participants, layout, levels=8 if rule is PricingRule.EQUAL_PRICE else 0)
        cleared = assert_same(wire(book), rule)
        assert isinstance(cleared, ClearedBook) and cleared.records


@pytest.mark.parametrize("rule", RULES)
@given(book=books(), seed=st.integers(0, 2**32 - 1))
def test_the_order_the_book_is_stored_in_changes_nothing(rule: PricingRule, book: list[Order], seed: int) -> None:
    raws = wire(book)
    stored = raws[:]
    random.Random(seed).shuffle(stored)
    args: dict[str, Any] = {"region": REGION, "slot": SLOT, "rule": rule, "matched_at_ms": MATCHED_AT_MS}
    assert clear_wire_book(stored, **args) == clear_wire_book(raws, **args)


# --- books that do not clear (held) ------------------------------------------------------------

# Values for one field of one stored order: most break it, some are valid on purpose.
BAD_VALUES: dict[str, list[Any]] = {
    "price": ["0.00005", "0.12345", "1e-4", "0.1 ", " 0.1", "+0.1", "0x1", "", "1.", ".5", "\u0661", "NaN", "-0.0001",
              "-0", "999999999.999900000000", "1000000000", "0.100000000000", "0.1000000000001", 1, None],
    "side": ["buy", "BID", "", "ask ", "bid", "ask", 1],
    "source": ["coal", "Solar", "", "bess", "wind", "x" * 33, None],
    "quantity_wh": [0, -1, 1, 2**53, 2**53 + 1, -(2**53) - 1, "5", 1.5, True, None],
    "slot": [[600, 720], [660, 600], [600, 600], [600], [600, 660, 1], "600-660", {"start": 600, "end": 660}],
    "seq": [-1, 0, 2**53, 2**53 + 1, "1", 1.0, None],
    "submitted_at_ms": [-(2**53), 2**60, "0"],
    "duplicate": [True, "yes", 1, None],
    "order_id": ["", "a b", "a" * 64, "a" * 65, "\u00fc", "o1\n", "o-1_B", None, 5],
    "client_order_id": ["", "c\n", "c" * 65, 7],
    "participant_id": ["", "p 1", "p" * 64, "p" * 65, "\u00e9", "p1\n", None],
    "region": ["", "r 1", "r" * 65, "other-region", None],
    "type": ["SubmitOrder", "SlotCleared", "Nope", "", 1],
}
DROP = object()


def stored(o: Order) -> dict[str, Any]:
    fields: dict[str, Any] = msgspec.to_builtins(order_to_wire(o, region=REGION))
    return fields


@st.composite
def broken_books(draw: st.DrawFn) -> list[bytes]:
    book = draw(books().filter(bool))
    raws = wire(book)
    for _ in range(draw(st.integers(1, 2))):
        i = draw(st.integers(0, len(book) - 1))
        fields = stored(book[i])
        change = draw(st.sampled_from([*BAD_VALUES, "drop", "extra"]))
        if change == "drop":
            fields.pop(draw(st.sampled_from(sorted(fields))))
        elif change == "extra":
            fields[draw(st.sampled_from(["extra", "Order_id", "types"]))] = 1
        else:
            fields[change] = draw(st.sampled_from(BAD_VALUES[change]))
        raws[i] = msgspec.msgpack.encode(fields)
    return raws


@pytest.mark.parametrize("rule", RULES)
@given(raws=broken_books())
def test_a_book_with_a_broken_order_clears_or_is_held_exactly_as_on_the_object_path(
    rule: PricingRule, raws: list[bytes]
) -> None:
    assert_same(raws, rule)


@given(book=books().filter(bool), data=st.data())
def test_a_corrupted_stored_order_clears_or_is_held_exactly_as_on_the_object_path(
    book: list[Order], data: st.DataObject
) -> None:
    raws = wire(book)
    i = data.draw(st.integers(0, len(raws) - 1))
    raw = bytearray(raws[i])
    raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    raws[i] = bytes(raw)
    assert_same(raws, data.draw(st.sampled_from(RULES)))


POISONS = [b"\xc1 not msgpack", b"", b"\x90", b"\x80", msgspec.msgpack.encode({"type": "OrderAccepted"}),
           encode(t.SlotRecorded(region=REGION, slot=slot_to_wire(SLOT), entry_count=1))]


@pytest.mark.parametrize("poison", POISONS)
def test_a_poison_order_fails_the_book_with_the_object_paths_error(poison: bytes) -> None:
    book = [*wire(random_book(random.Random(7), 12)), poison]
    expected = assert_same(book, PricingRule.MIDPOINT)
    assert isinstance(expected, tuple)


def test_an_order_for_another_slot_or_a_price_off_the_tick_fails_the_book() -> None:
    book = random_book(random.Random(3), 12)
    assert book
    other = stored(book[0]) | {"slot": [660, 720]}
    off_tick = stored(book[0]) | {"price": "0.12345"}
    for fields, error in ((other, ValueError), (off_tick, ValueError)):
        expected = assert_same([*wire(book[1:]), msgspec.msgpack.encode(fields)], PricingRule.MIDPOINT)
        assert isinstance(expected, tuple) and issubclass(expected[0], error)


def test_an_empty_book_clears_to_nothing() -> None:
    cleared = assert_same([], PricingRule.MIDPOINT)
    assert isinstance(cleared, ClearedBook)
    assert (cleared.order_count, cleared.records, cleared.by_party, cleared.energy_wh) == (0, [], [], 0)


@given(values=st.lists(st.one_of(st.text(max_size=70), st.text("ab-_Z09\n \u00fc", max_size=70),
                                 st.text("ab-_Z09", min_size=60, max_size=70)), max_size=8))
def test_a_column_of_ids_is_checked_as_each_id_would_be(values: list[str]) -> None:
    pattern = _PATTERNS["order_id"]
    assert _all_match(pattern, values) == all(re.search(pattern.pattern, v) is not None for v in values)
