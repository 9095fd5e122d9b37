"""order-intake: membership, order validation, the books. Each decision comes from shared.market."""

from __future__ import annotations

import hashlib
from decimal import Decimal

from shared.market import Rejection, RejectReason, Slot, accept, validate_order
from shared.messages import decode_as
from shared.messages import types as t
from shared.messages.codec import encode
from shared.messages.convert import order_from_wire, order_to_wire, slot_from_wire
from shared.runtime.service import Service, now_ms
from shared.runtime.topology import MEMBERSHIP, ORDER_ACCEPTED, ORDER_CANCELLED, REJECTED

_MAX_TRIES = 5  # a round that moves while an order is validated: validate again


def order_id(region: str, participant_id: str, client_order_id: str, slot: Slot) -> str:
    """Deterministic, so that a duplicate submission can never make a second order."""
    key = f"{region}|{participant_id}|{client_order_id}|{slot}"
    return hashlib.blake2b(key.encode(), digest_size=12).hexdigest()


class OrderIntake:
    def __init__(self, service: Service) -> None:
        self.svc = service
        self.market = service.settings.market
        self.state = service.state

    async def reject(self, request: t.Message, participant_id: str, reason: RejectReason, detail: str,
                     reference: str = "") -> None:
        kind = type(request).__name__
        await self.svc.state_ready()  # a refusal read from a state lost meanwhile is no refusal: retry
        self.svc.log.info("request_rejected", request=kind, reason=str(reason), detail=detail)
        self.svc.metrics.rejected_requests.labels(self.svc.region, self.svc.name, kind, str(reason)).inc()
        if isinstance(request, t.SubmitOrder):
            self.svc.metrics.orders.labels(self.svc.region, "rejected", str(reason)).inc()
        await self.svc.publish(
            t.Rejected(region=self.svc.region, participant_id=participant_id, request=kind, reason=str(reason),
                       detail=detail, reference=reference),
            self.svc.keys.to(participant_id, REJECTED),
        )

    async def on_join(self, m: t.JoinMarket) -> None:
        joined = now_ms()
        await self.state.join(m.participant_id, joined)
        await self.svc.publish(t.MemberJoined(region=m.region, participant_id=m.participant_id, joined_at_ms=joined),
                               self.svc.keys.to(m.participant_id, MEMBERSHIP))

    async def on_leave(self, m: t.LeaveMarket) -> None:
        if not await self.state.leave(m.participant_id):
            await self.reject(m, m.participant_id, RejectReason.NOT_A_MEMBER, "participant never joined")
            return
        await self.svc.publish(t.MemberLeft(region=m.region, participant_id=m.participant_id, left_at_ms=now_ms()),
                               self.svc.keys.to(m.participant_id, MEMBERSHIP))

    async def on_heartbeat(self, m: t.Heartbeat) -> None:
        if not await self.state.touch(m.participant_id, now_ms()):
            await self.reject(m, m.participant_id, RejectReason.NOT_A_MEMBER, "participant never joined")

    async def _slot(self, m: t.SubmitOrder | t.CancelOrder) -> Slot | Rejection:
        try:
            slot = slot_from_wire(m.slot)
        except ValueError as exc:
            return Rejection(RejectReason.MISALIGNED_SLOT, str(exc))
        if slot.seconds != self.market.schedule.duration:
            return Rejection(RejectReason.MISALIGNED_SLOT, "this exchange trades slots of one round")
        return slot

    async def on_order(self, m: t.SubmitOrder) -> None:
        started = now_ms()
        pid = m.participant_id
        if not await self.state.is_member(pid):
            await self.reject(m, pid, RejectReason.NOT_A_MEMBER, "join the market first", m.client_order_id)
            return
        slot = await self._slot(m)
        if isinstance(slot, Rejection):
            await self.reject(m, pid, slot.reason, slot.detail, m.client_order_id)
            return
        for _ in range(_MAX_TRIES):
            if await self._answer_duplicate(m, slot):
                return
            current = await self.state.current_round()
            if current is None:
                await self.reject(m, pid, RejectReason.MARKET_NOT_OPEN, "no round has started", m.client_order_id)
                return
            terms = validate_order(participant_id=pid, side=m.side, quantity_wh=m.quantity_wh,
                                   price=Decimal(m.price), source=m.source, slot=slot,
                                   schedule=self.market.schedule, round_start=current[0],
                                   price_cap=self.market.price_cap)
            if isinstance(terms, Rejection):
                await self.reject(m, pid, terms.reason, terms.detail, m.client_order_id)
                return
            oid = order_id(self.svc.region, pid, m.client_order_id, slot)
            order = accept(terms, order_id=oid, client_order_id=m.client_order_id,
                           seq=await self.state.next_seq(), submitted_at_ms=started)
            accepted = order_to_wire(order, region=self.svc.region)
            status, _ = await self.state.insert_order(slot, current[0], pid, m.client_order_id, oid,
                                                      encode(accepted))
            if status == "ok":
                await self.svc.publish(accepted, self.svc.keys.to(pid, ORDER_ACCEPTED))
                self.svc.metrics.orders.labels(self.svc.region, "accepted", "").inc()
                self.svc.metrics.order_ack_latency.labels(self.svc.region).observe((now_ms() - started) / 1000)
                return
        await self.reject(m, pid, RejectReason.GATE_CLOSED, "the round moved on while validating", m.client_order_id)

    async def _answer_duplicate(self, m: t.SubmitOrder, slot: Slot) -> bool:
        oid = await self.state.order_id_for(slot, m.participant_id, m.client_order_id)
        if oid is None:
            return False
        stored = await self.state.get_order(slot, oid)
        if stored is None:
            await self.reject(m, m.participant_id, RejectReason.UNKNOWN_ORDER,
                              "this client order id was cancelled", m.client_order_id)
            return True
        original = order_from_wire(decode_as(stored, t.OrderAccepted))
        await self.svc.publish(order_to_wire(original, region=self.svc.region, duplicate=True),
                               self.svc.keys.to(m.participant_id, ORDER_ACCEPTED))
        return True

    async def on_cancel(self, m: t.CancelOrder) -> None:
        pid, ref = m.participant_id, m.client_order_id
        slot = await self._slot(m)
        if isinstance(slot, Rejection):
            await self.reject(m, pid, slot.reason, slot.detail, ref)
            return
        for _ in range(_MAX_TRIES):
            oid = await self.state.order_id_for(slot, pid, ref)
            current = await self.state.current_round()
            if oid is None or current is None:
                await self.reject(m, pid, RejectReason.UNKNOWN_ORDER, "no such order", ref)
                return
            if self.market.schedule.gate_closed(slot, current[0]):
                await self.reject(m, pid, RejectReason.GATE_CLOSED, f"slot {slot} has closed", ref)
                return
            result = await self.state.cancel_order(slot, current[0], oid)
            if result in ("ok", "gone"):  # gone: cancelled before; a repeated cancel gets the same answer
                self.svc.metrics.cancels.labels(self.svc.region, "cancelled" if result == "ok" else "repeated").inc()
                await self.svc.publish(t.OrderCancelled(region=m.region, participant_id=pid, client_order_id=ref,
                                                        order_id=oid, slot=m.slot),
                                       self.svc.keys.to(pid, ORDER_CANCELLED))
                return
        await self.reject(m, pid, RejectReason.GATE_CLOSED, "the round moved on while cancelling", ref)

    async def on_slot_recorded(self, m: t.SlotRecorded) -> None:
        await self.state.drop_book(slot_from_wire(m.slot))
