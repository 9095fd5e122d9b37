"""What the ledger-writer records of a drain's acceptances (``RequestsAnswered``): each
acceptance as if it had come alone, in the order answered."""

from __future__ import annotations

from dataclasses import fields
from typing import Any, cast

from services.ledger_writer.batcher import merge
from services.ledger_writer.handlers import LedgerWriter
from shared.messages import types as t

SLOT = t.Slot(1_782_064_800, 1_782_064_860)


def _order(pid: str, coid: str, seq: int) -> t.OrderAccepted:
    return t.OrderAccepted(region="r1", order_id=f"o-{coid}", client_order_id=coid, participant_id=pid, side="bid",
                           quantity_wh=1500, price="0.1449", source="solar", slot=SLOT, seq=seq, submitted_at_ms=5)


def test_a_drains_acceptances_are_recorded_as_if_each_had_come_alone_in_their_order() -> None:
    accepted: list[t.Recordable] = [
        _order("p1", "c1", 1),
        t.ReadingAccepted(region="r1", participant_id="p1", slot=SLOT, import_wh=300, export_wh={"solar": 2},
                          self_consumed_wh={}, received_at_ms=9),
        t.OrderCancelled(region="r1", participant_id="p1", client_order_id="c1", order_id="o-c1", slot=SLOT),
        _order("p2", "c2", 2),
        t.ReadingAccepted(region="r1", participant_id="p2", slot=SLOT, import_wh=0, export_wh={},
                          self_consumed_wh={}, received_at_ms=10, duplicate=True),
    ]
    writer = LedgerWriter(cast(Any, None))  # records() reads no service
    got = writer.records(t.RequestsAnswered(region="r1", service="order-intake", accepted=accepted))
    alone = merge([writer.records(a) for a in accepted])
    assert {f.name: list(getattr(got, f.name)) for f in fields(got)} == {
        f.name: list(getattr(alone, f.name)) for f in fields(alone)}
    assert [o.order_id for _, o in got.orders] == ["o-c1", "o-c2"]
    assert [r.participant_id for _, r, _ in got.readings] == ["p1", "p2"]
    assert [order_id for _, order_id, _ in got.cancellations] == ["o-c1"]
