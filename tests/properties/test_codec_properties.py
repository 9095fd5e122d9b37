"""Every message type round-trips, and no input bytes crash the decoder.

The strategies are derived from each message type's own declaration (``msgspec.inspect``),
constraints included, so a new message type or field is covered without touching this file.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.messages import Undecodable, decode, encode
from shared.messages import types as t

inspect = msgspec.inspect
FEWER = max(settings.default.max_examples // 3, 10)  # per message type; 19 types add up
DIGITS = "0123456789"

# from_regex is slow; the two patterns the contract uses get equivalent cheap strategies.
# Any other pattern falls back to from_regex, so a new pattern is still covered correctly.
KNOWN_PATTERNS: dict[str, st.SearchStrategy[str]] = {
    r"^[A-Za-z0-9_-]{1,64}\Z": st.text("ABCXYZabcxyz0189_-", min_size=1, max_size=64),
    r"^-?[0-9]{1,9}(\.[0-9]{1,12})?\Z": st.builds(
        lambda sign, whole, fraction: sign + whole + (f".{fraction}" if fraction else ""),
        st.sampled_from(["", "-"]), st.text(DIGITS, min_size=1, max_size=9),
        st.one_of(st.just(""), st.text(DIGITS, min_size=1, max_size=12)),
    ),
}


def integers(kind: inspect.IntType) -> st.SearchStrategy[int]:
    """Integers within the field's declared bounds, their edges often: int64 if it has none."""
    lo = kind.ge if kind.ge is not None else (kind.gt + 1 if kind.gt is not None else -(2**63))
    hi = kind.le if kind.le is not None else (kind.lt - 1 if kind.lt is not None else 2**63 - 1)
    return st.one_of(st.integers(lo, hi), st.sampled_from([lo, hi, 0, 1, -1]).filter(lambda x: lo <= x <= hi))


def strategy(kind: inspect.Type) -> st.SearchStrategy[Any]:
    if isinstance(kind, inspect.StrType):
        if kind.pattern is not None:
            known = KNOWN_PATTERNS.get(kind.pattern)
            text = known if known is not None else st.from_regex(kind.pattern, fullmatch=True)
            return text.filter(lambda s: kind.max_length is None or len(s) <= kind.max_length)
        return st.text(max_size=min(kind.max_length or 50, 50))
    if isinstance(kind, inspect.IntType):
        return integers(kind)
    if isinstance(kind, inspect.BoolType):
        return st.booleans()
    if isinstance(kind, inspect.NoneType):
        return st.none()
    if isinstance(kind, inspect.UnionType):
        return st.one_of(*(strategy(k) for k in kind.types))
    if isinstance(kind, inspect.DictType):
        return st.dictionaries(strategy(kind.key_type), strategy(kind.value_type),
                               max_size=min(4, kind.max_length if kind.max_length is not None else 4))
    if isinstance(kind, inspect.ListType):
        return st.lists(strategy(kind.item_type),
                        max_size=min(3, kind.max_length if kind.max_length is not None else 3))
    if isinstance(kind, inspect.StructType):
        return messages(kind.cls)
    raise NotImplementedError(f"no strategy for {kind!r}: add one here")


@cache
def messages(cls: type[msgspec.Struct]) -> st.SearchStrategy[Any]:
    info = inspect.type_info(cls)
    assert isinstance(info, inspect.StructType)
    return st.builds(cls, **{f.name: strategy(f.type) for f in info.fields})


def patterns_of(cls: type[msgspec.Struct]) -> set[str]:
    info = inspect.type_info(cls)
    assert isinstance(info, inspect.StructType)
    return {f.type.pattern for f in info.fields if isinstance(f.type, inspect.StrType) and f.type.pattern}


def test_the_cheap_strategies_stand_for_patterns_the_contract_really_uses() -> None:
    used = set().union(*(patterns_of(kind) for kind in t.ALL_MESSAGES))
    assert set(KNOWN_PATTERNS) <= used


@given(data=st.data())
def test_the_cheap_strategies_make_only_strings_their_pattern_accepts(data: st.DataObject) -> None:
    for pattern, text in KNOWN_PATTERNS.items():
        assert re.search(pattern, data.draw(text))


@pytest.mark.parametrize("kind", t.ALL_MESSAGES, ids=lambda k: k.__name__)
@settings(max_examples=FEWER)
@given(data=st.data())
def test_every_message_round_trips_and_re_encodes_to_the_same_bytes(kind: type[t.Message], data: st.DataObject) -> None:
    message = data.draw(messages(kind))
    raw = encode(message)
    decoded = decode(raw)
    assert decoded == message
    assert type(decoded) is kind
    assert encode(decoded) == raw


@given(raw=st.binary(max_size=200))
def test_arbitrary_bytes_decode_to_a_message_or_raise_undecodable_and_nothing_else(raw: bytes) -> None:
    try:
        message = decode(raw)
    except Undecodable:
        return
    assert isinstance(message, t.ALL_MESSAGES)


@given(data=st.data(), kind=st.sampled_from(t.ALL_MESSAGES))
def test_a_corrupted_message_decodes_to_a_valid_message_or_raises_undecodable(
    data: st.DataObject, kind: type[t.Message]
) -> None:
    raw = bytearray(encode(data.draw(messages(kind))))
    position = data.draw(st.integers(0, len(raw) - 1))
    raw[position] = data.draw(st.integers(0, 255))
    try:
        message = decode(bytes(raw))
    except Undecodable:
        return
    # Whatever got through is a well-formed message: it survives its own round trip.
    assert decode(encode(message)) == message


def int_fields(cls: type[msgspec.Struct]) -> list[tuple[str, inspect.IntType]]:
    """The message's own integer fields (optional ones included), with their bounds."""
    info = inspect.type_info(cls)
    assert isinstance(info, inspect.StructType)
    out = []
    for f in info.fields:
        kinds = f.type.types if isinstance(f.type, inspect.UnionType) else (f.type,)
        out += [(f.name, k) for k in kinds if isinstance(k, inspect.IntType)]
    return out


BOUNDED_FIELDS = [(kind, name, bounds) for kind in t.ALL_MESSAGES for name, bounds in int_fields(kind)]


def test_the_messages_have_integer_fields_to_check() -> None:
    assert {(kind, name) for kind, name, _ in BOUNDED_FIELDS} >= {(t.SubmitOrder, "quantity_wh"),
                                                                  (t.SlotReconciled, "settled_wh")}


@settings(max_examples=FEWER)
@given(data=st.data(), field=st.sampled_from(BOUNDED_FIELDS))
def test_an_integer_outside_its_fields_bounds_is_undecodable(
    data: st.DataObject, field: tuple[type[t.Message], str, inspect.IntType]
) -> None:
    kind, name, bounds = field
    assert bounds.ge is not None and bounds.le is not None
    value = data.draw(st.one_of(st.integers(bounds.le + 1, 2**64 - 1), st.integers(-(2**63), bounds.ge - 1)))
    fields = msgspec.to_builtins(data.draw(messages(kind)))
    raw = msgspec.msgpack.encode({**fields, name: value})
    with pytest.raises(Undecodable):
        decode(raw)
