"""The wire contract: every message round-trips, and decoding is strict (STYLE.md habit 3)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from shared.market import MAX_ORDER_WH, MAX_READING_SOURCES, MAX_READING_WH
from shared.messages import Undecodable, decode, decode_as, encode, sender_of
from shared.messages import types as t

SLOT = t.Slot(600, 660)
SETTLEMENT = t.SettlementRecord(
    settlement_id="s1", source="solar", buyer="b1", seller="a1", bid_id="o1", ask_id="o2",
    quantity_wh=1500, buy_price="0.11", sell_price="0.11",
)
ENTRY = t.EntryRecord(
    entry_id="e1", kind="p2p", seller="a1", buyer="b1", source="solar", quantity_wh=1500,
    buy_price="0.11", sell_price="0.11", settlement_id="s1", matched_at_ms=540_000,
)

SAMPLES: dict[type[t.Message], t.Message] = {
    t.JoinMarket: t.JoinMarket(region="r1", participant_id="p1"),
    t.Heartbeat: t.Heartbeat(region="r1", participant_id="p1"),
    t.LeaveMarket: t.LeaveMarket(region="r1", participant_id="p1"),
    t.SubmitOrder: t.SubmitOrder(region="r1", participant_id="p1", client_order_id="c1", side="bid",
                                 quantity_wh=1500, price="0.1449", source="solar", slot=SLOT),
    t.CancelOrder: t.CancelOrder(region="r1", participant_id="p1", client_order_id="c1", slot=SLOT),
    t.SubmitReading: t.SubmitReading(region="r1", participant_id="p1", slot=SLOT, import_wh=300,
                                     export_wh={"solar": 1200, "bess": 5}, self_consumed_wh={"solar": 40}),
    t.FinishRound: t.FinishRound(region="r1", participant_id="p1", round_start=540),
    t.MemberJoined: t.MemberJoined(region="r1", participant_id="p1", joined_at_ms=1_700_000_000_000),
    t.MemberLeft: t.MemberLeft(region="r1", participant_id="p1"),
    t.OrderAccepted: t.OrderAccepted(region="r1", order_id="o1", client_order_id="c1", participant_id="p1",
                                     side="ask", quantity_wh=1500, price="0.1", source="wind", slot=SLOT, seq=7,
                                     submitted_at_ms=1, duplicate=True),
    t.OrderCancelled: t.OrderCancelled(region="r1", participant_id="p1", client_order_id="c1", order_id="o1",
                                       slot=SLOT),
    t.Rejected: t.Rejected(region="r1", participant_id="p1", request="SubmitOrder", reason="gate_closed",
                           detail="slot 600-660 while round 600 is current", reference="c1"),
    t.ReadingAccepted: t.ReadingAccepted(region="r1", participant_id="p1", slot=SLOT, import_wh=0, export_wh={},
                                         self_consumed_wh={"wind": 3}, received_at_ms=9, duplicate=False),
    t.SettlementsNotice: t.SettlementsNotice(region="r1", participant_id="p1", slot=SLOT, settlements=[SETTLEMENT]),
    t.Statement: t.Statement(region="r1", participant_id="p1", slot=SLOT,
                             entries=[ENTRY, msgspec.structs.replace(ENTRY, entry_id="e2", settlement_id=None,
                                                                      matched_at_ms=None)]),
    t.RoundStarted: t.RoundStarted(region="r1", fence=3, started_at_ms=540_000, duration=60, close_steps=2,
                                   timezone="America/Vancouver", current_round=t.Slot(540, 600),
                                   last_settle=t.Slot(600, 660), next_settle=t.Slot(660, 720),
                                   grid=[t.GridQuote(slot=t.Slot(540, 600), buy_price="0.1449", sell_price="0.069"),
                                         t.GridQuote(slot=t.Slot(660, 720), buy_price="0.42", sell_price="0.2")]),
    t.SlotCleared: t.SlotCleared(region="r1", slot=SLOT, rule="midpoint", matched_at_ms=540_000, order_count=2,
                                 settlements=[SETTLEMENT]),
    t.SlotReconciled: t.SlotReconciled(region="r1", slot=SLOT, reconciled_at_ms=720_000, missing_readings=["p9"],
                                       entries=[ENTRY]),
    t.SlotAdjusted: t.SlotAdjusted(region="r1", slot=SLOT, revision=1, reading=t.ReadingAccepted(
        region="r1", participant_id="p9", slot=SLOT, import_wh=500, export_wh={}, self_consumed_wh={},
        received_at_ms=900_000, late=True), entries=[msgspec.structs.replace(ENTRY, revision=1, reverses=True)]),
    t.SlotFinalized: t.SlotFinalized(region="r1", slot=SLOT, revisions=1),
    t.SlotRecorded: t.SlotRecorded(region="r1", slot=SLOT, entry_count=1),
    t.SubmitBatch: t.SubmitBatch(region="r1", participant_id="agg1", batch_id="b1", items=[
        t.ParticipantRound(participant_id="p1", cancels=[t.CancelItem(client_order_id="c0", slot=SLOT)],
                           orders=[t.OrderItem(client_order_id="c1", side="bid", quantity_wh=1500, price="0.1449",
                                               source="solar", slot=SLOT)],
                           reading=t.ReadingItem(slot=SLOT, import_wh=300, export_wh={"solar": 2}),
                           finish_round=540),
        t.ParticipantRound(participant_id="p2", finish_round=540)]),
    t.RoundFinished: t.RoundFinished(region="r1", participant_id="p1", round_start=540),
    t.AgentBundle: t.AgentBundle(region="r1", participant_id="agg1", slot=SLOT, statements=[
        t.Statement(region="r1", participant_id="p1", slot=SLOT, entries=[ENTRY])]),
    t.BatchAnswered: t.BatchAnswered(region="r1", participant_id="agg1", batch_id="b1", service="order-intake",
                                     answers=[t.RoundFinished(region="r1", participant_id="p1", round_start=540),
                                              t.Rejected(region="r1", participant_id="p2", request="SubmitOrder",
                                                         reason="not_entitled")]),
    t.RequestsAnswered: t.RequestsAnswered(region="r1", service="order-intake", accepted=[
        t.OrderCancelled(region="r1", participant_id="p1", client_order_id="c1", order_id="o1", slot=SLOT),
        t.ReadingAccepted(region="r1", participant_id="p1", slot=SLOT, import_wh=1, export_wh={},
                          self_consumed_wh={}, received_at_ms=9)]),
}


def as_dict(message: t.Message) -> dict[str, Any]:
    data = msgspec.msgpack.decode(encode(message))
    assert isinstance(data, dict)
    return data


def decode_changed(message: t.Message, **changes: Any) -> t.Message:
    return decode(msgspec.msgpack.encode({**as_dict(message), **changes}))


def test_there_is_a_sample_of_every_message_type() -> None:
    assert set(SAMPLES) == set(t.ALL_MESSAGES)
    assert len(set(t.ALL_MESSAGES)) == len(t.ALL_MESSAGES)


@pytest.mark.parametrize("kind", t.ALL_MESSAGES, ids=lambda k: k.__name__)
def test_every_message_type_round_trips(kind: type[t.Message]) -> None:
    message = SAMPLES[kind]
    raw = encode(message)
    assert decode(raw) == message
    assert type(decode(raw)) is kind
    assert decode_as(raw, kind) == message
    assert as_dict(message)["type"] == kind.__name__


def test_decode_as_refuses_a_message_of_another_type() -> None:
    with pytest.raises(Undecodable, match="expected SubmitOrder or CancelOrder, got Heartbeat"):
        decode_as(encode(SAMPLES[t.Heartbeat]), t.SubmitOrder, t.CancelOrder)


def test_defaults_let_a_sender_leave_out_optional_fields() -> None:
    data = as_dict(SAMPLES[t.SubmitReading])
    del data["export_wh"], data["self_consumed_wh"]
    message = decode(msgspec.msgpack.encode(data))
    assert isinstance(message, t.SubmitReading) and (message.export_wh, message.self_consumed_wh) == ({}, {})


# --- strictness ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "field"),
    [(t.SubmitOrder, "quantity_wh"), (t.SubmitReading, "import_wh"), (t.FinishRound, "round_start"),
     (t.OrderAccepted, "seq")],
)
@pytest.mark.parametrize("value", ["1500", 1500.0, True, None, [1500]])
def test_a_value_that_is_not_an_integer_where_an_integer_belongs_is_undecodable(
    kind: type[t.Message], field: str, value: Any
) -> None:
    with pytest.raises(Undecodable):
        decode_changed(SAMPLES[kind], **{field: value})


@pytest.mark.parametrize("price", [0.1449, 1, 0, True, "0.1.2", "1e-3", "abc", "", " 0.1", "0,1", "0.1\n"])
def test_a_price_that_is_not_exact_decimal_text_is_undecodable(price: Any) -> None:
    with pytest.raises(Undecodable):
        decode_changed(SAMPLES[t.SubmitOrder], price=price)


def test_a_float_price_inside_a_nested_record_is_undecodable() -> None:
    data = as_dict(SAMPLES[t.SlotCleared])
    data["settlements"][0]["buy_price"] = 0.11
    with pytest.raises(Undecodable):
        decode(msgspec.msgpack.encode(data))


def test_a_reading_value_that_is_not_an_integer_is_undecodable() -> None:
    with pytest.raises(Undecodable):
        decode_changed(SAMPLES[t.SubmitReading], export_wh={"solar": "1200"})


@pytest.mark.parametrize("kind", t.ALL_MESSAGES, ids=lambda k: k.__name__)
def test_an_unknown_field_is_undecodable(kind: type[t.Message]) -> None:
    with pytest.raises(Undecodable, match="unknown field"):
        decode_changed(SAMPLES[kind], surprise=1)


def test_an_unknown_field_in_a_nested_record_is_undecodable() -> None:
    data = as_dict(SAMPLES[t.Statement])
    data["entries"][0]["surprise"] = 1
    with pytest.raises(Undecodable):
        decode(msgspec.msgpack.encode(data))


@pytest.mark.parametrize("slot", [[600], [600, 660, 720], ["600", 660], {"start": 600, "end": 660}])
def test_a_slot_that_is_not_exactly_two_integers_is_undecodable(slot: Any) -> None:
    with pytest.raises(Undecodable):
        decode_changed(SAMPLES[t.CancelOrder], slot=slot)


def test_a_missing_required_field_is_undecodable() -> None:
    data = as_dict(SAMPLES[t.SubmitOrder])
    del data["quantity_wh"]
    with pytest.raises(Undecodable, match="quantity_wh"):
        decode(msgspec.msgpack.encode(data))


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\xc1",  # never used in MessagePack
        b"not msgpack at all",
        b"\xd4\x01\x00",  # an extension type
        b"\x91" * 10_000,  # deeply nested arrays
        b"\xdd\xff\xff\xff\xff",  # an array claiming 4 billion items
        msgspec.msgpack.encode(1500),
        msgspec.msgpack.encode(["JoinMarket", "r1", "p1"]),
        msgspec.msgpack.encode({"region": "r1", "participant_id": "p1"}),  # no type tag
        msgspec.msgpack.encode({"type": "DropTables", "region": "r1"}),
        msgspec.msgpack.encode({"type": "Message", "region": "r1"}),  # the untagged base
        encode(SAMPLES[t.SubmitOrder])[:-3],  # truncated
    ],
)
def test_garbage_bytes_are_undecodable(raw: bytes) -> None:
    with pytest.raises(Undecodable):
        decode(raw)


# --- ids go into routing keys ----------------------------------------------------------


def id_fields(kind: type[msgspec.Struct]) -> list[str]:
    info = msgspec.inspect.type_info(kind)
    assert isinstance(info, msgspec.inspect.StructType)
    return [f.name for f in info.fields
            if isinstance(f.type, msgspec.inspect.StrType) and "A-Za-z" in (f.type.pattern or "")]


ID_FIELDS = [(kind, name) for kind in t.ALL_MESSAGES for name in id_fields(kind)]


def test_every_message_has_its_region_and_participant_ids_constrained() -> None:
    for kind in t.ALL_MESSAGES:
        assert "region" in id_fields(kind), kind.__name__
    assert (t.SubmitOrder, "client_order_id") in ID_FIELDS
    assert (t.OrderAccepted, "order_id") in ID_FIELDS


@pytest.mark.parametrize(("kind", "field"), ID_FIELDS, ids=lambda x: getattr(x, "__name__", x))
@pytest.mark.parametrize("bad", ["a.b", "a#b", "a*b", "#", "a b", "", "x" * 65, "a/b", "é", "p1\n", "\np1"])
def test_an_id_that_could_change_a_routing_key_is_undecodable(kind: type[t.Message], field: str, bad: str) -> None:
    with pytest.raises(Undecodable):
        decode_changed(SAMPLES[kind], **{field: bad})


@pytest.mark.parametrize("good", ["p1", "P-1_x", "x" * 64, "0"])
def test_ids_of_letters_digits_dashes_and_underscores_up_to_64_long_are_fine(good: str) -> None:
    message = decode_changed(SAMPLES[t.JoinMarket], participant_id=good)
    assert isinstance(message, t.JoinMarket) and message.participant_id == good


@pytest.mark.parametrize("bad", ["a.b", "a#b", "p1\n"])
def test_an_id_inside_a_nested_record_is_checked_too(bad: str) -> None:
    data = as_dict(SAMPLES[t.SlotCleared])
    data["settlements"][0]["buyer"] = bad
    with pytest.raises(Undecodable):
        decode(msgspec.msgpack.encode(data))
    data = as_dict(SAMPLES[t.SlotReconciled])
    data["missing_readings"] = [bad]
    with pytest.raises(Undecodable):
        decode(msgspec.msgpack.encode(data))


# --- addressing a rejection ------------------------------------------------------------


def test_the_sender_of_an_undecodable_message_is_found_when_it_can_be() -> None:
    raw = msgspec.msgpack.encode({**as_dict(SAMPLES[t.SubmitOrder]), "quantity_wh": "1500"})
    with pytest.raises(Undecodable):
        decode(raw)
    assert sender_of(raw) == ("p1", "c1")
    assert sender_of(msgspec.msgpack.encode({"participant_id": "p1"})) == ("p1", "")
    assert sender_of(msgspec.msgpack.encode({"participant_id": "p1", "client_order_id": 5})) == ("p1", "")


@pytest.mark.parametrize(
    "raw",
    [b"\xc1", msgspec.msgpack.encode([1, 2]), msgspec.msgpack.encode({"participant_id": "a.b"}),
     msgspec.msgpack.encode({"participant_id": 7}), msgspec.msgpack.encode({})],
)
def test_no_sender_is_made_up_for_garbage_or_a_bad_id(raw: bytes) -> None:
    assert sender_of(raw) is None


def test_a_reading_that_names_a_source_twice_in_different_cases_is_refused() -> None:
    from shared.messages.convert import SourceRepeated, reading_from_wire

    reading = t.SubmitReading(region="r1", participant_id="p1", slot=t.Slot(0, 60), import_wh=0,
                              export_wh={"SOLAR": 100, "solar": 5})
    with pytest.raises(SourceRepeated):
        reading_from_wire(reading)
    same = t.SubmitReading(region="r1", participant_id="p1", slot=t.Slot(0, 60), import_wh=0,
                           export_wh={"SOLAR": 100})
    assert dict(reading_from_wire(same).export_wh) == {"solar": 100}


# --- bounds: loose on the wire, so that the market core gives the reason ----------------

# Every energy field of every message, as (type, path): a path into the message's dict.
ENERGY = [
    (t.SubmitOrder, ("quantity_wh",)),
    (t.SubmitReading, ("import_wh",)),
    (t.SubmitReading, ("export_wh", "solar")),
    (t.SubmitReading, ("self_consumed_wh", "solar")),
    (t.OrderAccepted, ("quantity_wh",)),
    (t.ReadingAccepted, ("import_wh",)),
    (t.ReadingAccepted, ("self_consumed_wh", "wind")),
    (t.SettlementsNotice, ("settlements", 0, "quantity_wh")),
    (t.Statement, ("entries", 0, "quantity_wh")),
    (t.SlotCleared, ("settlements", 0, "quantity_wh")),
    (t.SlotReconciled, ("entries", 0, "quantity_wh")),
    (t.SlotReconciled, ("settled_wh",)),
]
# Times, sequence numbers and counts, slots included.
OTHER_INTS = [
    (t.SubmitOrder, ("slot", 0)), (t.SubmitOrder, ("slot", 1)), (t.SubmitReading, ("slot", 1)),
    (t.FinishRound, ("round_start",)), (t.MemberJoined, ("joined_at_ms",)), (t.OrderAccepted, ("seq",)),
    (t.OrderAccepted, ("submitted_at_ms",)), (t.ReadingAccepted, ("received_at_ms",)),
    (t.Statement, ("entries", 0, "matched_at_ms")), (t.RoundStarted, ("fence",)),
    (t.RoundStarted, ("started_at_ms",)), (t.RoundStarted, ("duration",)), (t.RoundStarted, ("close_steps",)),
    (t.RoundStarted, ("final_round_start",)), (t.RoundStarted, ("grid", 0, "slot", 0)),
    (t.SlotCleared, ("matched_at_ms",)), (t.SlotCleared, ("order_count",)),
    (t.SlotReconciled, ("reconciled_at_ms",)), (t.SlotRecorded, ("entry_count",)),
]
BOUNDED = [
    pytest.param(kind, path, bound, id=".".join([kind.__name__, *map(str, path)]))
    for fields, bound in ((ENERGY, t.WIRE_MAX_WH), (OTHER_INTS, t.WIRE_MAX_INT)) for kind, path in fields
]


def with_value(kind: type[t.Message], path: tuple[str | int, ...], value: int) -> bytes:
    data: Any = as_dict(SAMPLES[kind])
    inner = data
    for step in path[:-1]:
        inner = inner[step]
    inner[path[-1]] = value
    return msgspec.msgpack.encode(data)


def read_value(message: t.Message, path: tuple[str | int, ...]) -> Any:
    value: Any = msgspec.to_builtins(message)
    for step in path:
        value = value[step]
    return value


def test_the_wire_bounds_are_looser_than_the_market_limits_and_int64_safe() -> None:
    assert MAX_ORDER_WH < t.WIRE_MAX_WH and MAX_READING_WH < t.WIRE_MAX_WH
    assert MAX_READING_SOURCES < t.WIRE_MAX_SOURCES
    assert 1000 * max(t.WIRE_MAX_WH, t.WIRE_MAX_INT) <= 2**63 - 1


@pytest.mark.parametrize(("kind", "path", "bound"), BOUNDED)
@pytest.mark.parametrize("edge", ["zero", "minus one", "just inside", "at the bound", "negative bound"])
def test_an_integer_up_to_its_wire_bound_either_way_decodes(
    kind: type[t.Message], path: tuple[str | int, ...], bound: int, edge: str
) -> None:
    value = {"zero": 0, "minus one": -1, "just inside": bound - 1, "at the bound": bound,
             "negative bound": -bound}[edge]
    assert read_value(decode(with_value(kind, path, value)), path) == value


@pytest.mark.parametrize(("kind", "path", "bound"), BOUNDED)
@pytest.mark.parametrize("beyond", ["bound + 1", "bound + 2", "2**62", "int64 max", "uint64 max",
                                    "-bound - 1", "-2**62", "int64 min"])
def test_an_integer_beyond_its_wire_bound_is_undecodable(
    kind: type[t.Message], path: tuple[str | int, ...], bound: int, beyond: str
) -> None:
    value = {"bound + 1": bound + 1, "bound + 2": bound + 2, "2**62": 2**62, "int64 max": 2**63 - 1,
             "uint64 max": 2**64 - 1, "-bound - 1": -bound - 1, "-2**62": -(2**62), "int64 min": -(2**63)}[beyond]
    with pytest.raises(Undecodable):
        decode(with_value(kind, path, value))


@pytest.mark.parametrize("quantity", [MAX_ORDER_WH + 1, 2**40, t.WIRE_MAX_WH])
def test_an_order_just_or_far_above_the_market_limit_still_decodes_so_it_gets_its_own_reason(quantity: int) -> None:
    message = decode(with_value(t.SubmitOrder, ("quantity_wh",), quantity))
    assert isinstance(message, t.SubmitOrder) and message.quantity_wh == quantity


@pytest.mark.parametrize("kind", [t.SubmitReading, t.ReadingAccepted])
@pytest.mark.parametrize("field", ["export_wh", "self_consumed_wh"])
def test_a_meter_map_decodes_up_to_its_wire_size_and_is_undecodable_beyond(
    kind: type[t.Message], field: str
) -> None:
    def sources(n: int) -> dict[str, int]:
        return {f"s{i}": 1 for i in range(n)}

    message = decode_changed(SAMPLES[kind], **{field: sources(t.WIRE_MAX_SOURCES)})
    assert len(getattr(message, field)) == t.WIRE_MAX_SOURCES  # the core answers unknown_source
    with pytest.raises(Undecodable, match="length"):
        decode_changed(SAMPLES[kind], **{field: sources(t.WIRE_MAX_SOURCES + 1)})


def test_every_integer_of_every_message_is_bounded_on_the_wire() -> None:
    unbounded: list[str] = []

    def visit(kind: msgspec.inspect.Type, where: str, seen: set[type]) -> None:
        if isinstance(kind, msgspec.inspect.IntType):
            if kind.ge is None or kind.le is None or max(-kind.ge, kind.le) > 2**62:
                unbounded.append(where)
        elif isinstance(kind, msgspec.inspect.UnionType):
            for k in kind.types:
                visit(k, where, seen)
        elif isinstance(kind, msgspec.inspect.DictType):
            if kind.max_length is None:
                unbounded.append(f"{where} (size)")
            visit(kind.value_type, f"{where}[]", seen)
        elif isinstance(kind, msgspec.inspect.ListType):
            visit(kind.item_type, f"{where}[]", seen)
        elif isinstance(kind, msgspec.inspect.StructType) and kind.cls not in seen:
            for f in kind.fields:
                visit(f.type, f"{kind.cls.__name__}.{f.name}", seen | {kind.cls})

    for message in t.ALL_MESSAGES:
        visit(msgspec.inspect.type_info(message), message.__name__, set())
    assert unbounded == []
