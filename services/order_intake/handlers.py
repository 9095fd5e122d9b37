"""order-intake: membership, order validation, the books. Each decision comes from shared.market.

Orders, cancels and finishes are handled in runs: everything the queue's prefetch window
holds, single requests and batches alike, is validated against the round read once, then
written in one Redis script (membership, entitlement, duplicate check, round check and
insertion, atomically), and answered with one wait for the broker's confirms.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from shared.market import Rejection, RejectReason, Side, Slot, accept, simultaneous_seq, validate_order
from shared.market.numbers import MAX_CONNECTION_W, check_spend_limit, held_connection, spend_units
from shared.market.orders import LOTTERY_BITS
from shared.market.timezones import zone
from shared.messages import decode_as
from shared.messages import types as t
from shared.messages.codec import encode
from shared.messages.convert import order_from_wire, order_to_wire, slot_from_wire
from shared.runtime.service import Service, now_ms
from shared.runtime.state import IntakeLimits, IntakeOp, Joined, OpResults
from shared.runtime.topology import ANSWERED, BATCH, MEMBERSHIP, ORDER_ACCEPTED, ORDER_CANCELLED, REJECTED

_MAX_TRIES = 5  # a round that moves while orders are validated: validate again

Answer = t.OrderAccepted | t.OrderCancelled | t.Rejected | t.RoundFinished


def order_id(region: str, participant_id: str, client_order_id: str, slot: Slot) -> str:
    """Deterministic, so that a duplicate submission can never make a second order."""
    key = f"{region}|{participant_id}|{client_order_id}|{slot}"
    return hashlib.blake2b(key.encode(), digest_size=12).hexdigest()


@dataclass
class _Item:
    """One order, cancel or finish of a run, and where its answer goes."""

    request: str  # SubmitOrder, CancelOrder or FinishRound: the request it stands for
    participant_id: str
    sender: str  # "" for a single request, else the batch's sender
    batch: int  # index of its batch in the run, -1 for a single request
    order: t.OrderItem | None = None
    cancel: t.CancelItem | None = None
    finish_round: int = 0
    answer: Answer | None = None

    @property
    def reference(self) -> str:
        item = self.order or self.cancel
        return item.client_order_id if item is not None else str(self.finish_round)


@dataclass
class _Run:
    items: list[_Item] = field(default_factory=list)
    batches: list[t.SubmitBatch] = field(default_factory=list)


class OrderIntake:
    def __init__(self, service: Service) -> None:
        self.svc = service
        self.market = service.settings.market
        self.simultaneous = service.settings.clock_mode == "simulation"
        self.state = service.state
        rate = self.market.max_requests_per_s
        self.limits = IntakeLimits(orders_per_slot=self.market.max_orders_per_slot, requests_per_s=float(rate),
                                   burst=self.market.request_burst or max(1, int(2 * rate)),
                                   slot_seconds=self.market.schedule.duration,
                                   spend_per_day=check_spend_limit(self.market.max_spend_per_day))
        self.zone = zone(self.market.tariff.timezone)

    # --- membership ------------------------------------------------------------------------

    async def on_joins(self, joins: list[t.JoinMarket]) -> None:
        joined = now_ms()
        valid: list[t.JoinMarket] = []
        for m in joins:
            bad = [f"{name} {w}" for name, w in (("import_w", m.import_w), ("export_w", m.export_w))
                   if w is not None and not 0 <= w <= MAX_CONNECTION_W]
            if bad:  # nothing changes: not even a member's earlier join
                await self._reject_single(m, RejectReason.INVALID_CONNECTION,
                                          f"a connection is 0 to {MAX_CONNECTION_W} W: {', '.join(bad)}")
            else:
                valid.append(m)
        members = [Joined(m.participant_id, m.agent, held_connection(m.import_w, self.market.max_import_w),
                          held_connection(m.export_w, self.market.max_export_w)) for m in valid]
        if not members:
            return
        await self.state.join(members, joined)
        await self.svc.publish_all([
            (t.MemberJoined(region=self.svc.region, participant_id=j.participant_id, joined_at_ms=joined,
                            agent=j.agent, import_w=j.import_w, export_w=j.export_w),
             self.svc.keys.to(j.participant_id, MEMBERSHIP))
            for j in members])

    async def on_leave(self, m: t.LeaveMarket) -> None:
        if not await self.state.leave(m.participant_id):
            await self._reject_single(m, RejectReason.NOT_A_MEMBER, "participant never joined")
            return
        await self.svc.publish(t.MemberLeft(region=m.region, participant_id=m.participant_id, left_at_ms=now_ms()),
                               self.svc.keys.to(m.participant_id, MEMBERSHIP))

    async def on_heartbeat(self, m: t.Heartbeat) -> None:
        if not await self.state.touch(m.participant_id, now_ms()):
            await self._reject_single(m, RejectReason.NOT_A_MEMBER, "participant never joined")

    async def _reject_single(self, m: t.JoinMarket | t.LeaveMarket | t.Heartbeat, reason: RejectReason,
                             detail: str) -> None:
        await self.svc.state_ready()  # a refusal read from a state lost meanwhile is no refusal: retry
        kind = type(m).__name__
        self.svc.log.info("request_rejected", request=kind, reason=str(reason), detail=detail)
        self.svc.metrics.rejected_requests.labels(self.svc.region, self.svc.name, kind, str(reason)).inc()
        await self.svc.publish(t.Rejected(region=m.region, participant_id=m.participant_id, request=kind,
                                          reason=str(reason), detail=detail),
                               self.svc.keys.to(m.participant_id, REJECTED))

    # --- orders, cancels and finishes, in runs ----------------------------------------------

    async def on_requests(self, messages: list[t.SubmitOrder | t.CancelOrder | t.SubmitBatch]) -> None:
        run = self._items(messages)
        started = now_ms()
        orders = sum(1 for i in run.items if i.order is not None)
        for _ in range(_MAX_TRIES):
            exists, current, first_seq = await self.state.intake_view(orders)
            self.svc.state_seen(exists, None if current is None else current[0])
            ops = self._ops(run.items, current, first_seq, started)
            results = await self.state.apply_intake(
                ops, round_start=None if current is None else current[0], now_ms=started, limits=self.limits,
                seq_floor=((current[0] + 1) << LOTTERY_BITS) - 1 if self.simultaneous and current else 0)
            if results is not None:
                self._answer(run.items, ops, results)
                break
        else:  # the round kept moving: orders and cancels meet a closed gate, finishes count
            finishes = [i for i in run.items if i.finish_round]
            ops = [IntakeOp("f", i.participant_id, round_start=i.finish_round, sender=i.sender) for i in finishes]
            results = await self.state.apply_intake(ops, round_start=None, now_ms=started)
            assert results is not None
            self._answer(finishes, ops, results)
            for item in run.items:
                if not item.finish_round:
                    item.answer = self._rejection(item, RejectReason.GATE_CLOSED, "the round moved on while validating")
        await self._publish(run, started)

    def _items(self, messages: list[t.SubmitOrder | t.CancelOrder | t.SubmitBatch]) -> _Run:
        run = _Run()
        for m in messages:
            if isinstance(m, t.SubmitOrder):
                run.items.append(_Item("SubmitOrder", m.participant_id, "", -1, order=t.OrderItem(
                    client_order_id=m.client_order_id, side=m.side, quantity_wh=m.quantity_wh, price=m.price,
                    source=m.source, slot=m.slot)))
            elif isinstance(m, t.CancelOrder):
                run.items.append(_Item("CancelOrder", m.participant_id, "", -1,
                                       cancel=t.CancelItem(client_order_id=m.client_order_id, slot=m.slot)))
            else:
                b = len(run.batches)
                run.batches.append(m)
                for part in m.items:  # cancels first, then orders, then the finish
                    pid = part.participant_id
                    run.items += [_Item("CancelOrder", pid, m.participant_id, b, cancel=c) for c in part.cancels]
                    run.items += [_Item("SubmitOrder", pid, m.participant_id, b, order=o) for o in part.orders]
                    if part.finish_round:
                        run.items.append(_Item("FinishRound", pid, m.participant_id, b,
                                               finish_round=part.finish_round))
        return run

    def _slot(self, wire: t.Slot) -> Slot | Rejection:
        try:
            slot = slot_from_wire(wire)
        except ValueError as exc:
            return Rejection(RejectReason.MISALIGNED_SLOT, str(exc))
        if slot.seconds != self.market.schedule.duration:
            return Rejection(RejectReason.MISALIGNED_SLOT, "this exchange trades slots of one round")
        return slot

    def _ops(self, items: list[_Item], current: tuple[int, int] | None, first_seq: int, started: int) -> list[IntakeOp]:
        """One op per item, validated against ``current``; a refusal is kept on the item and
        stands unless the script finds the participant unknown or the order a duplicate."""
        ops: list[IntakeOp] = []
        seq = first_seq
        region, schedule = self.svc.region, self.market.schedule
        for item in items:
            item.answer = None
            pid = item.participant_id
            if item.finish_round:
                ops.append(IntakeOp("f", pid, round_start=item.finish_round, sender=item.sender))
                continue
            wire = item.order or item.cancel
            assert wire is not None
            slot = self._slot(wire.slot)
            if isinstance(slot, Rejection):
                item.answer = self._rejection(item, slot.reason, slot.detail)
                ops.append(IntakeOp("m", pid, sender=item.sender))
                continue
            if item.cancel is not None:
                if current is None:
                    item.answer = self._rejection(item, RejectReason.UNKNOWN_ORDER, "no such order")
                    ops.append(IntakeOp("m", pid, sender=item.sender))
                else:
                    ops.append(IntakeOp("c", pid, slot, client_order_id=item.cancel.client_order_id,
                                        gate_closed=schedule.gate_closed(slot, current[0]), sender=item.sender,
                                        day=self._day(slot)))
                continue
            o = item.order
            assert o is not None
            seq += 1
            if current is None:
                item.answer = self._rejection(item, RejectReason.MARKET_NOT_OPEN, "no round has started")
                ops.append(IntakeOp("d", pid, slot, client_order_id=o.client_order_id, sender=item.sender))
                continue
            terms = validate_order(participant_id=pid, side=o.side, quantity_wh=o.quantity_wh, price=Decimal(o.price),
                                   source=o.source, slot=slot, schedule=schedule, round_start=current[0],
                                   price_cap=self.market.price_cap)
            if isinstance(terms, Rejection):
                item.answer = self._rejection(item, terms.reason, terms.detail)
                ops.append(IntakeOp("d", pid, slot, client_order_id=o.client_order_id, sender=item.sender))
                continue
            oid = order_id(region, pid, o.client_order_id, slot)
            # In simulation a round's requests are simultaneous: their sequence is a
            # lottery, not their arrival (docs/market.md, "Acceptance").
            number = simultaneous_seq(slot, pid, o.client_order_id, current[0]) \
                if self.simultaneous else seq - 1
            accepted = order_to_wire(accept(terms, order_id=oid, client_order_id=o.client_order_id, seq=number,
                                            submitted_at_ms=started), region=region)
            item.answer = accepted
            ops.append(IntakeOp("o", pid, slot, client_order_id=o.client_order_id, order_id=oid,
                                body=encode(accepted), sender=item.sender,
                                share=f"{'b' if terms.side == Side.BID else 'a'}{terms.quantity_wh}",
                                day=self._day(slot),
                                worth=spend_units(terms.quantity_wh, terms.price) if terms.side == Side.BID else 0))
        return ops

    def _day(self, slot: Slot) -> str:
        """The local day a slot belongs to, for the spending limit ('' when there is none)."""
        if not self.limits.spend_per_day:
            return ""
        return datetime.fromtimestamp(slot.start, self.zone).date().isoformat()

    def _answer(self, items: list[_Item], ops: list[IntakeOp], results: OpResults) -> None:
        region = self.svc.region
        for item, op, (status, value) in zip(items, ops, results, strict=True):
            if status == "not_a_member":
                item.answer = self._rejection(item, RejectReason.NOT_A_MEMBER, "join the market first")
            elif status == "not_entitled":
                item.answer = self._rejection(item, RejectReason.NOT_ENTITLED,
                                              f"{item.sender} is not the agent of {item.participant_id}")
            elif status == "rate_limited":
                item.answer = self._rejection(item, RejectReason.RATE_LIMITED,
                                              f"at most {self.market.max_requests_per_s} orders and cancels a second "
                                              f"(burst {self.limits.burst}); send it again later")
            elif status == "too_many_orders":
                item.answer = self._rejection(item, RejectReason.TOO_MANY_ORDERS,
                                              f"at most {self.limits.orders_per_slot} orders for one slot")
            elif status == "beyond_spend_limit":
                item.answer = self._rejection(item, RejectReason.BEYOND_SPEND_LIMIT,
                                              f"with this bid the member's bids for the slots of one day would cost "
                                              f"more than {self.market.max_spend_per_day} $ at their prices")
            elif status == "beyond_connection":
                item.answer = self._rejection(item, RejectReason.BEYOND_CONNECTION,
                                              "with this order the member's open offers (or bids) for the slot "
                                              "would carry more energy than its connection does in a slot")
            elif op.kind in ("o", "d"):
                if status == "duplicate":
                    original = order_from_wire(decode_as(value, t.OrderAccepted))
                    item.answer = order_to_wire(original, region=region, duplicate=True)
                elif status == "cancelled":
                    item.answer = self._rejection(item, RejectReason.UNKNOWN_ORDER,
                                                  "this client order id was cancelled")
                # ok: the OrderAccepted made in _ops; none: the core's refusal stands
            elif op.kind == "c":
                assert item.cancel is not None
                if status == "unknown":
                    item.answer = self._rejection(item, RejectReason.UNKNOWN_ORDER, "no such order")
                elif status == "closed":
                    item.answer = self._rejection(item, RejectReason.GATE_CLOSED,
                                                  f"slot {item.cancel.slot.start}-{item.cancel.slot.end} has closed")
                else:  # gone: cancelled before; a repeated cancel gets the same answer
                    self.svc.metrics.cancels.labels(region, "cancelled" if status == "ok" else "repeated").inc()
                    item.answer = t.OrderCancelled(region=region, participant_id=item.participant_id,
                                                   client_order_id=item.cancel.client_order_id,
                                                   order_id=value.decode(), slot=item.cancel.slot)
            elif op.kind == "f":
                item.answer = t.RoundFinished(region=region, participant_id=item.participant_id,
                                              round_start=item.finish_round)

    def _rejection(self, item: _Item, reason: RejectReason, detail: str) -> t.Rejected:
        return t.Rejected(region=self.svc.region, participant_id=item.participant_id, request=item.request,
                          reason=str(reason), detail=detail, reference=item.reference)

    async def _publish(self, run: _Run, started: int) -> None:
        svc, region, keys = self.svc, self.svc.region, self.svc.keys
        singles: list[tuple[str, Answer]] = []
        per_batch: list[list[t.BatchAnswer]] = [[] for _ in run.batches]
        rejected: Counter[tuple[str, str]] = Counter()
        accepted = 0
        recordable: list[t.Recordable] = []  # for the ledger, in one fact
        for item in run.items:
            answer = item.answer
            assert answer is not None
            if isinstance(answer, t.OrderAccepted | t.OrderCancelled):
                recordable.append(answer)
            if isinstance(answer, t.Rejected):
                rejected[(answer.request, answer.reason)] += 1
                svc.log.debug("request_rejected", participant_id=item.participant_id, request=answer.request,
                              reason=answer.reason, detail=answer.detail, reference=answer.reference)
            elif isinstance(answer, t.OrderAccepted) and not answer.duplicate:
                accepted += 1
            if item.batch >= 0:
                per_batch[item.batch].append(answer)
            elif not isinstance(answer, t.RoundFinished):
                singles.append((item.participant_id, answer))
        answered = [(b.participant_id, t.BatchAnswered(region=region, participant_id=b.participant_id,
                                                       batch_id=b.batch_id, service=svc.name, answers=answers))
                    for b, answers in zip(run.batches, per_batch, strict=True)
                    if answers]  # a batch of readings only: the meter-collector answers it
        await svc.publish_all([
            *((a, keys.to(p, REJECTED) if isinstance(a, t.Rejected) else keys.to(p, ORDER_CANCELLED)
               if isinstance(a, t.OrderCancelled) else keys.to(p, ORDER_ACCEPTED)) for p, a in singles),
            *((a, keys.to(p, BATCH)) for p, a in answered),
            *([(t.RequestsAnswered(region=region, service=svc.name, accepted=recordable), keys.fact(ANSWERED))]
              if recordable else [])])
        metrics = svc.metrics
        if accepted:
            metrics.orders.labels(region, "accepted", "").inc(accepted)
            latency = (now_ms() - started) / 1000
            for _ in range(accepted):
                metrics.order_ack_latency.labels(region).observe(latency)
        for (request, reason), count in rejected.items():
            metrics.rejected_requests.labels(region, svc.name, request, reason).inc(count)
            if request == "SubmitOrder":
                metrics.orders.labels(region, "rejected", reason).inc(count)
        if rejected:  # one line per run; each rejection is logged at debug level
            svc.log.info("requests_rejected", counts={f"{r}:{why}": n for (r, why), n in rejected.items()})

    async def on_slot_recorded(self, m: t.SlotRecorded) -> None:
        await self.state.drop_book(slot_from_wire(m.slot))

