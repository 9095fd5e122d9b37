"""Between the wire types and the market core's values: the only place that does it."""

from __future__ import annotations

import contextlib
import gc
import operator
import re
import typing
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

import msgspec

from shared.market import (
    SOURCES,
    Book,
    EntryKind,
    LedgerEntry,
    Order,
    PricingRule,
    Reading,
    Settlement,
    Side,
    Slot,
    clear,
    match_book,
)
from shared.market.matching import SettlementColumns, settlement_columns
from shared.market.numbers import text_to_ticks
from shared.messages import types as t
from shared.messages.codec import Undecodable, decode_as


def slot_to_wire(slot: Slot) -> t.Slot:
    return t.Slot(slot.start, slot.end)


def slot_from_wire(slot: t.Slot) -> Slot:
    """Raises ValueError for an empty or reversed slot."""
    return Slot(slot.start, slot.end)


def order_to_wire(order: Order, *, region: str, duplicate: bool = False) -> t.OrderAccepted:
    return t.OrderAccepted(
        region=region,
        order_id=order.order_id,
        client_order_id=order.client_order_id,
        participant_id=order.participant_id,
        side=str(order.side),
        quantity_wh=order.quantity_wh,
        price=str(order.price),
        source=order.source,
        slot=slot_to_wire(order.slot),
        seq=order.seq,
        submitted_at_ms=order.submitted_at_ms,
        duplicate=duplicate,
    )


def order_from_wire(msg: t.OrderAccepted) -> Order:
    return Order(
        order_id=msg.order_id,
        client_order_id=msg.client_order_id,
        participant_id=msg.participant_id,
        side=Side(msg.side),
        quantity_wh=msg.quantity_wh,
        price=Decimal(msg.price),
        source=msg.source,
        slot=slot_from_wire(msg.slot),
        seq=msg.seq,
        submitted_at_ms=msg.submitted_at_ms,
    )


def settlement_to_wire(s: Settlement) -> t.SettlementRecord:
    return t.SettlementRecord(
        settlement_id=s.settlement_id,
        source=s.source,
        buyer=s.buyer,
        seller=s.seller,
        bid_id=s.bid_id,
        ask_id=s.ask_id,
        quantity_wh=s.quantity_wh,
        buy_price=str(s.buy_price),
        sell_price=str(s.sell_price),
    )


def settlements_from_wire(msg: t.SlotCleared) -> list[Settlement]:
    slot = slot_from_wire(msg.slot)
    return [
        Settlement(
            settlement_id=r.settlement_id,
            region=msg.region,
            slot=slot,
            source=r.source,
            buyer=r.buyer,
            seller=r.seller,
            bid_id=r.bid_id,
            ask_id=r.ask_id,
            quantity_wh=r.quantity_wh,
            buy_price=Decimal(r.buy_price),
            sell_price=Decimal(r.sell_price),
            matched_at_ms=msg.matched_at_ms,
        )
        for r in msg.settlements
    ]


def entry_to_wire(e: LedgerEntry) -> t.EntryRecord:
    return t.EntryRecord(
        entry_id=e.entry_id,
        kind=str(e.kind),
        seller=e.seller,
        buyer=e.buyer,
        source=e.source,
        quantity_wh=e.quantity_wh,
        buy_price=str(e.buy_price),
        sell_price=str(e.sell_price),
        settlement_id=e.settlement_id,
        matched_at_ms=e.matched_at_ms,
        revision=e.revision,
        reverses=e.reverses,
    )


def entries_from_wire(region: str, slot: Slot, records: Iterable[t.EntryRecord]) -> list[LedgerEntry]:
    return [
        LedgerEntry(
            entry_id=r.entry_id,
            region=region,
            slot=slot,
            kind=EntryKind(r.kind),
            seller=r.seller,
            buyer=r.buyer,
            source=r.source,
            quantity_wh=r.quantity_wh,
            buy_price=Decimal(r.buy_price),
            sell_price=Decimal(r.sell_price),
            settlement_id=r.settlement_id,
            matched_at_ms=r.matched_at_ms,
            delivered_at=slot.end,
            revision=r.revision,
            reverses=r.reverses,
        )
        for r in records
    ]


class SourceRepeated(ValueError):
    """A meter map names one source twice in different cases ("SOLAR" and "solar")."""


def _by_source(values: dict[str, int], name: str) -> dict[str, int]:
    out = {k.lower(): v for k, v in values.items()}
    if len(out) != len(values):
        raise SourceRepeated(f"{name} names a source twice: {sorted(values)}")
    return out


def reading_from_wire(msg: t.SubmitReading | t.ReadingAccepted) -> Reading:
    """Raises ValueError for a bad slot, ``SourceRepeated`` for a source named twice."""
    return Reading(
        participant_id=msg.participant_id,
        slot=slot_from_wire(msg.slot),
        import_wh=msg.import_wh,
        export_wh=_by_source(msg.export_wh, "export_wh"),
        self_consumed_wh=_by_source(msg.self_consumed_wh, "self_consumed_wh"),
    )


def reading_to_wire(r: Reading, *, region: str, received_at_ms: int, duplicate: bool = False) -> t.ReadingAccepted:
    return t.ReadingAccepted(
        region=region,
        participant_id=r.participant_id,
        slot=slot_to_wire(r.slot),
        import_wh=r.import_wh,
        export_wh=dict(r.export_wh),
        self_consumed_wh=dict(r.self_consumed_wh),
        received_at_ms=received_at_ms,
        duplicate=duplicate,
    )


# --- a slot's book, cleared as columns ----------------------------------------------------
#
# The matcher's hot path: a book of 10**5 orders a side, read from Redis, is cleared
# without an ``OrderAccepted``, ``Order``, ``Decimal`` or ``Settlement`` per order or
# fill. The result is the object path's, byte for byte (tests/properties/
# test_columnar_clearing.py): the same book columns, so the same fills, ids and prices.
#
# Decoding: a struct with ``OrderAccepted``'s fields, types, tag and strictness, less the
# regular expressions of its text fields, which cost most of the decoding when run one
# value at a time; they are checked afterwards, on whole columns at once.


def _without_pattern(tp: Any) -> Any:
    """``Annotated[str, Meta(pattern=..., ...)]`` less the pattern; any other type as is."""
    if typing.get_origin(tp) is not typing.Annotated:
        return tp
    base, *metas = typing.get_args(tp)
    kept = []
    for meta in metas:
        if isinstance(meta, msgspec.Meta) and meta.pattern is not None:
            rest = {k: getattr(meta, k) for k in ("max_length", "min_length", "title", "description")
                    if getattr(meta, k) is not None}
            if rest:
                kept.append(msgspec.Meta(**rest))
        else:
            kept.append(meta)
    return typing.Annotated[(base, *kept)] if kept else base


def _pattern_of(tp: Any) -> re.Pattern[str] | None:
    if typing.get_origin(tp) is typing.Annotated:
        for meta in typing.get_args(tp)[1:]:
            if isinstance(meta, msgspec.Meta) and meta.pattern is not None:
                return re.compile(meta.pattern)
    return None


_ORDER_FIELDS = msgspec.structs.fields(t.OrderAccepted)
_ORDER_CONFIG = t.OrderAccepted.__struct_config__


# Sides and sources: only those the market core takes. Any other fails here, as it fails
# on the object path (``Side(...)``, ``Book.from_orders``), and needs no string of its own.
_NARROWED: dict[str, Any] = {"side": Literal[tuple(str(side) for side in Side)],
                             "source": Literal[SOURCES]}


def _field(f: msgspec.structs.FieldInfo) -> tuple[str, Any] | tuple[str, Any, Any]:
    kind = _NARROWED.get(f.name, _without_pattern(f.type))
    if f.required:
        return f.name, kind
    if f.default_factory is not msgspec.NODEFAULT:
        return f.name, kind, msgspec.field(default_factory=f.default_factory)
    return f.name, kind, f.default


_LooseOrder: Any = msgspec.defstruct(
    "_LooseOrder",
    [_field(f) for f in _ORDER_FIELDS],
    tag=_ORDER_CONFIG.tag, tag_field=_ORDER_CONFIG.tag_field, forbid_unknown_fields=True, frozen=True,
    kw_only=True, gc=False,
)
# A second tagged type, so that the decoder insists on the tag as the union of every
# message does (a tagged struct decoded alone takes a body without its tag too).
_NotAnOrder: Any = msgspec.defstruct("_NotAnOrder", [], tag="\0", tag_field=_ORDER_CONFIG.tag_field, gc=False)
_loose_decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(_LooseOrder | _NotAnOrder)
_PATTERNS = {f.name: p for f in _ORDER_FIELDS if (p := _pattern_of(f.type)) is not None}
_USED = ("order_id", "participant_id", "side", "quantity_wh", "price", "source", "slot", "seq")
# One getter per column: a tuple per row would be a container per order for the GC to track.
_GETTERS = {name: operator.attrgetter(name) for name in dict.fromkeys(_USED + tuple(_PATTERNS))}

# The pattern of ``types.Id``, checked on a whole column at once: the values, each ended
# by a newline (which no id holds), must be ids, each ended by a newline, and nothing else.
_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}\Z"
_ID_LINES = re.compile(rb"(?:[A-Za-z0-9_-]{1,64}+\n)*+")


def _all_match(pattern: re.Pattern[str], values: Sequence[str]) -> bool:
    """Every value matches ``pattern`` (searched, as msgspec does)."""
    if values and values[0] == values[-1] and values.count(values[0]) == len(values):  # one region, say
        values = values[:1]
    if pattern.pattern == _ID_PATTERN:
        try:
            lines = "\n".join([*values, ""]).encode("ascii")
        except UnicodeEncodeError:
            return False
        return lines.count(b"\n") == len(values) and _ID_LINES.fullmatch(lines) is not None
    search = pattern.search
    return all(search(v) is not None for v in set(values))


def book_from_wire(raws: Sequence[bytes], slot: Slot) -> Book:
    """The ``Book`` that ``clear`` builds of ``order_from_wire(decode_as(raw, OrderAccepted))``
    of each of ``raws`` for ``slot``, row for row, built straight from columns.

    Fails wherever that fails (its error may read differently): ``Undecodable`` for bytes
    that are not an ``OrderAccepted``; ``ValueError`` for an order of another slot, a
    side that is neither bid nor ask, a price off the tick (``InvalidPrice``), an unknown
    source or a quantity below 1 Wh."""
    try:
        rows = list(map(_loose_decoder.decode, raws))
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:
        raise Undecodable(str(exc)) from exc
    try:
        column: dict[str, list[Any]] = {name: list(map(get, rows)) for name, get in _GETTERS.items()}
    except AttributeError as exc:  # a _NotAnOrder
        raise Undecodable(f"expected OrderAccepted, got another type: {exc}") from exc
    for name, pattern in _PATTERNS.items():
        if not _all_match(pattern, column[name]):
            raise Undecodable(f"an order's {name} does not match {pattern.pattern!r}")
    wire_slot = slot_to_wire(slot)
    if column["slot"].count(wire_slot) != len(rows):
        raise ValueError(f"the book of slot {slot} holds an order for another slot")
    prices = column["price"]
    ticks_of = {text: text_to_ticks(text) for text in set(prices)}
    return Book.from_columns(
        order_ids=column["order_id"],
        participant_ids=column["participant_id"],
        sides=column["side"],
        quantity_wh=column["quantity_wh"],
        price_ticks=list(map(ticks_of.__getitem__, prices)),
        seq=column["seq"],
        sources=column["source"],
    )


def settlement_records(columns: SettlementColumns) -> list[t.SettlementRecord]:
    """``settlement_to_wire`` of each settlement the columns hold, in order."""
    record = t.SettlementRecord
    c = columns
    return [
        record(settlement_id=sid, source=source, buyer=buyer, seller=seller, bid_id=bid, ask_id=ask,
               quantity_wh=wh, buy_price=buy, sell_price=sell)
        for sid, source, buyer, seller, bid, ask, wh, buy, sell in zip(
            c.settlement_id, c.source, c.buyer, c.seller, c.bid_id, c.ask_id, c.quantity_wh, c.buy_price,
            c.sell_price, strict=True)
    ]


@dataclass(frozen=True)
class ClearedBook:
    """A slot's book cleared, as the matcher publishes it: the settlement records in
    matching order, and each party's (as buyer or seller), parties sorted by id."""

    order_count: int
    bids: int
    asks: int
    records: list[t.SettlementRecord]
    by_party: list[tuple[str, list[t.SettlementRecord]]]
    energy_wh: int
    energy_by_source: dict[str, int]  # sources that matched any energy
    paid: Decimal  # the sum of buy_price * quantity_wh ($/kWh x Wh)


def clear_wire_book(
    raws: Sequence[bytes], *, region: str, slot: Slot, rule: PricingRule, matched_at_ms: int
) -> ClearedBook:
    """Clear a slot's stored ``OrderAccepted`` messages, as columns.

    The result equals ``clear_wire_book_objects``'s. A book that does not clear as
    columns goes through ``clear_wire_book_objects`` too, so that it fails exactly as it
    always did (the same exception, the same text)."""
    with _gc_paused():
        try:
            return clear_wire_book_columns(raws, region=region, slot=slot, rule=rule)
        except Exception:
            pass  # leave the verdict, and its words, to the object path
        return clear_wire_book_objects(raws, region=region, slot=slot, rule=rule, matched_at_ms=matched_at_ms)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while a book is cleared (nothing in it makes cycles).

    Clearing allocates hundreds of thousands of objects next to a few lists of as many
    items; each collection that these allocations trigger walks those lists again, which
    took a fifth of the clearing time. Plain CPU work, no ``await``: nothing else runs
    meanwhile, and the collector picks up where it was once it is back."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def clear_wire_book_columns(raws: Sequence[bytes], *, region: str, slot: Slot, rule: PricingRule) -> ClearedBook:
    """The columnar path alone: raises (see ``book_from_wire``) where the object path does,
    though not always with the same words."""
    book = book_from_wire(raws, slot)
    columns = settlement_columns(book, match_book(book, rule), region=region, slot=slot, rule=rule)
    records = settlement_records(columns)
    parties, rows, bounds = columns.by_party()
    grouped = list(map(records.__getitem__, rows.tolist()))
    asks = int(book.is_ask.sum())
    return ClearedBook(
        order_count=len(raws),
        bids=len(book.order_ids) - asks,
        asks=asks,
        records=records,
        by_party=[(party, grouped[bounds[k]:bounds[k + 1]]) for k, party in enumerate(parties)],
        energy_wh=columns.energy_wh,
        energy_by_source=columns.energy_by_source(),
        paid=columns.paid(),
    )


def clear_wire_book_objects(
    raws: Sequence[bytes], *, region: str, slot: Slot, rule: PricingRule, matched_at_ms: int
) -> ClearedBook:
    """The object path: an ``OrderAccepted`` and an ``Order`` per order, ``clear``, and
    ``settlement_to_wire`` of each ``Settlement``. Slow on a large book; the reference."""
    orders = [order_from_wire(decode_as(raw, t.OrderAccepted)) for raw in raws]
    settlements = clear(orders, region=region, slot=slot, rule=rule, matched_at_ms=matched_at_ms)
    records = [settlement_to_wire(s) for s in settlements]
    by_party: dict[str, list[t.SettlementRecord]] = defaultdict(list)
    for record in records:
        by_party[record.buyer].append(record)
        by_party[record.seller].append(record)
    by_source: dict[str, int] = defaultdict(int)
    for s in settlements:
        by_source[s.source] += s.quantity_wh
    asks = sum(1 for o in orders if o.side == Side.ASK)
    return ClearedBook(
        order_count=len(raws),
        bids=len(orders) - asks,
        asks=asks,
        records=records,
        by_party=sorted(by_party.items()),
        energy_wh=sum(s.quantity_wh for s in settlements),
        energy_by_source=dict(by_source),
        paid=sum((s.buy_price * s.quantity_wh for s in settlements), Decimal(0)),
    )


M = typing.TypeVar("M", t.SettlementsNotice, t.Statement)


def by_agent(messages: list[M], agents: dict[str, str]) -> tuple[list[M], list[tuple[str, list[M]]]]:
    """Split per-participant messages into those that go to their participant and those that
    go to its agent (``agents``: participant -> agent), grouped by agent, agents sorted."""
    direct: list[M] = []
    bundled: dict[str, list[M]] = {}
    for m in messages:
        agent = agents.get(m.participant_id)
        if agent is None:
            direct.append(m)
        else:
            bundled.setdefault(agent, []).append(m)
    return direct, sorted(bundled.items())
