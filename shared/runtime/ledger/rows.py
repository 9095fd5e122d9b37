"""Rows of the SQL ledger tables: one column order, shared by SQLite and PostgreSQL.

Values are built from the market core's records and read back into them exactly:
prices stay ``Decimal`` (NUMERIC in PostgreSQL, TEXT in SQLite), quantities and times
``int``, meter maps JSON objects of integers. Reading back refuses any float.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from decimal import Decimal

from shared.market.ledger import EntryKind, LedgerEntry
from shared.market.matching import Settlement
from shared.market.orders import Order, Side
from shared.market.reconciliation import Reading
from shared.market.timing import Slot
from shared.runtime.ledger.base import InvalidRecord

Row = tuple[object, ...]

ENTRY_COLUMNS = (
    "entry_id",
    "region",
    "slot_start",
    "slot_end",
    "kind",
    "seller",
    "buyer",
    "source",
    "quantity_wh",
    "buy_price",
    "sell_price",
    "settlement_id",
    "matched_at_ms",
    "delivered_at",
    "revision",
    "reverses",
)
ORDER_COLUMNS = (
    "region",
    "order_id",
    "client_order_id",
    "participant_id",
    "side",
    "quantity_wh",
    "price",
    "source",
    "slot_start",
    "slot_end",
    "seq",
    "submitted_at_ms",
)
SETTLEMENT_COLUMNS = (
    "region",
    "settlement_id",
    "slot_start",
    "slot_end",
    "source",
    "buyer",
    "seller",
    "bid_id",
    "ask_id",
    "quantity_wh",
    "buy_price",
    "sell_price",
    "matched_at_ms",
)
READING_COLUMNS = (
    "region",
    "participant_id",
    "slot_start",
    "slot_end",
    "import_wh",
    "export_wh",
    "self_consumed_wh",
    "received_at_ms",
)
RECONCILED_COLUMNS = ("region", "slot_start", "slot_end", "entry_count")
ADJUSTED_COLUMNS = ("region", "slot_start", "slot_end", "revision", "participant_id", "entry_count")
FINALIZED_COLUMNS = ("region", "slot_start", "slot_end", "revisions")
CANCELLATION_COLUMNS = ("region", "order_id", "slot_start", "slot_end")
HELD_COLUMNS = ("region", "slot_start", "slot_end", "stage", "error")
ROUND_COLUMNS = ("region", "round_start", "fence", "started_at_ms")
MEMBERSHIP_COLUMNS = ("region", "participant_id", "event", "at_ms")
AGENT_COLUMNS = ("region", "participant_id", "agent", "joined_at_ms")
CONNECTION_COLUMNS = ("region", "participant_id", "import_w", "export_w", "joined_at_ms")

# Column positions (in the *_COLUMNS order) holding a price; the rest are text or int.
ENTRY_PRICES = (9, 10)
ORDER_PRICES = (6,)
SETTLEMENT_PRICES = (10, 11)


def _zero_unsigned(price: Decimal) -> Decimal:
    # Decimal("-0") equals 0 but would read as negative to a text check.
    return price.copy_abs() if price.is_zero() else price


def entry_row(e: LedgerEntry) -> Row:
    return (
        e.entry_id,
        e.region,
        e.slot.start,
        e.slot.end,
        str(e.kind),
        e.seller,
        e.buyer,
        e.source,
        e.quantity_wh,
        _zero_unsigned(e.buy_price),
        _zero_unsigned(e.sell_price),
        e.settlement_id,
        e.matched_at_ms,
        e.delivered_at,
        e.revision,
        e.reverses,
    )


def order_row(region: str, o: Order) -> Row:
    return (
        region,
        o.order_id,
        o.client_order_id,
        o.participant_id,
        str(o.side),
        o.quantity_wh,
        _zero_unsigned(o.price),
        o.source,
        o.slot.start,
        o.slot.end,
        o.seq,
        o.submitted_at_ms,
    )


def settlement_row(s: Settlement) -> Row:
    return (
        s.region,
        s.settlement_id,
        s.slot.start,
        s.slot.end,
        s.source,
        s.buyer,
        s.seller,
        s.bid_id,
        s.ask_id,
        s.quantity_wh,
        _zero_unsigned(s.buy_price),
        _zero_unsigned(s.sell_price),
        s.matched_at_ms,
    )


def meter_json(by_source: Mapping[str, int]) -> str:
    return json.dumps(dict(by_source), sort_keys=True, separators=(",", ":"))


def reading_row(region: str, r: Reading, received_at_ms: int) -> Row:
    return (
        region,
        r.participant_id,
        r.slot.start,
        r.slot.end,
        r.import_wh,
        meter_json(r.export_wh),
        meter_json(r.self_consumed_wh),
        received_at_ms,
    )


def reconciled_row(region: str, slot: Slot, entry_count: int) -> Row:
    return (region, slot.start, slot.end, entry_count)


def cancellation_row(region: str, order_id: str, slot: Slot) -> Row:
    return (region, order_id, slot.start, slot.end)


def adjusted_row(region: str, slot: Slot, revision: int, participant_id: str, entry_count: int) -> Row:
    return (region, slot.start, slot.end, revision, participant_id, entry_count)


def finalized_row(region: str, slot: Slot, revisions: int) -> Row:
    return (region, slot.start, slot.end, revisions)


def held_row(region: str, slot: Slot, stage: str, error: str) -> Row:
    return (region, slot.start, slot.end, stage, error)


def _refuse_float(text: str) -> int:
    raise InvalidRecord(f"a meter map holds a non-integer {text}")


def meter_from_json(text: str) -> dict[str, int]:
    loaded = json.loads(text, parse_float=_refuse_float)
    return {str(k): int(v) for k, v in loaded.items()}


def price_from(value: object) -> Decimal:
    """A stored price back as a Decimal: from NUMERIC (Decimal) or TEXT, never a float."""
    if isinstance(value, Decimal):
        return value
    if isinstance(value, str):
        return Decimal(value)
    raise InvalidRecord(f"a stored price came back as {type(value).__name__}")


def optional_text(value: object) -> str | None:
    return None if value is None else str(value)


def optional_int(value: object) -> int | None:
    return None if value is None else as_int(value)


def as_int(value: object) -> int:
    if type(value) is not int:
        raise InvalidRecord(f"a stored integer came back as {type(value).__name__}")
    return value


def as_int_or_none(value: object) -> int | None:
    return None if value is None else as_int(value)


def entry_from(row: Sequence[object]) -> LedgerEntry:
    return LedgerEntry(
        entry_id=str(row[0]),
        region=str(row[1]),
        slot=Slot(as_int(row[2]), as_int(row[3])),
        kind=EntryKind(str(row[4])),
        seller=str(row[5]),
        buyer=str(row[6]),
        source=str(row[7]),
        quantity_wh=as_int(row[8]),
        buy_price=price_from(row[9]),
        sell_price=price_from(row[10]),
        settlement_id=optional_text(row[11]),
        matched_at_ms=optional_int(row[12]),
        delivered_at=as_int(row[13]),
        revision=as_int(row[14]),
        reverses=bool(row[15]),
    )


def order_from(row: Sequence[object]) -> Order:
    return Order(
        order_id=str(row[1]),
        client_order_id=str(row[2]),
        participant_id=str(row[3]),
        side=Side(str(row[4])),
        quantity_wh=as_int(row[5]),
        price=price_from(row[6]),
        source=str(row[7]),
        slot=Slot(as_int(row[8]), as_int(row[9])),
        seq=as_int(row[10]),
        submitted_at_ms=as_int(row[11]),
    )


def settlement_from(row: Sequence[object]) -> Settlement:
    return Settlement(
        settlement_id=str(row[1]),
        region=str(row[0]),
        slot=Slot(as_int(row[2]), as_int(row[3])),
        source=str(row[4]),
        buyer=str(row[5]),
        seller=str(row[6]),
        bid_id=str(row[7]),
        ask_id=str(row[8]),
        quantity_wh=as_int(row[9]),
        buy_price=price_from(row[10]),
        sell_price=price_from(row[11]),
        matched_at_ms=as_int(row[12]),
    )


def reading_from(row: Sequence[object]) -> Reading:
    return Reading(
        participant_id=str(row[1]),
        slot=Slot(as_int(row[2]), as_int(row[3])),
        import_wh=as_int(row[4]),
        export_wh=meter_from_json(str(row[5])),
        self_consumed_wh=meter_from_json(str(row[6])),
    )
