"""Between the wire types and the market core's values: the only place that does it."""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal

from shared.market import (
    EntryKind,
    LedgerEntry,
    Order,
    Reading,
    Settlement,
    Side,
    Slot,
)
from shared.messages import types as t


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
