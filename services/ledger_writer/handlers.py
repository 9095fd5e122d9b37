"""ledger-writer: records every accepted order, settlement, reading and ledger entry once."""

from __future__ import annotations

from services.ledger_writer.batcher import Batcher, merge
from shared.market import EntryKind, bills
from shared.market.numbers import ZERO
from shared.messages import types as t
from shared.messages.convert import (
    entries_from_wire,
    order_from_wire,
    reading_from_wire,
    settlements_from_wire,
    slot_from_wire,
    slot_to_wire,
)
from shared.runtime.ledger import RecordBatch, WriteResult
from shared.runtime.metrics import JOULES_PER_WH
from shared.runtime.service import Service
from shared.runtime.topology import SLOT_RECORDED

_SETTLED = (EntryKind.P2P, EntryKind.BESS_COVER, EntryKind.UNCONSUMED, EntryKind.SHORTFALL)


class LedgerWriter:
    def __init__(self, service: Service) -> None:
        self.svc = service
        self.batcher: Batcher | None = None
        self._settled_wh: dict[tuple[str, int, int], int] = {}
        # The newest round and the highest acceptance sequence recorded: Redis never holds
        # less, unless it is a stale copy (the guardian compares).
        self.latest_round = 0
        self.max_seq = 0

    def attach(self, batcher: Batcher) -> None:
        self.batcher = batcher

    async def _write(self, batch: RecordBatch) -> None:
        assert self.batcher is not None, "the ledger store is not open yet"
        self.svc.metrics.ledger_backlog.labels(self.svc.region).set(self.batcher.backlog)
        await self.batcher.write(batch)

    async def on_records(self, messages: list[t.Message]) -> None:
        """Everything drained together goes into one transaction (with what else the batcher
        holds); acknowledged only once it committed."""
        await self._write(merge([self.records(m) for m in messages]))
        for m in messages:
            if isinstance(m, t.RoundStarted):
                self.latest_round = max(self.latest_round, m.current_round.start)
            elif isinstance(m, t.RequestsAnswered):
                self.max_seq = max([self.max_seq] + [a.seq for a in m.accepted if isinstance(a, t.OrderAccepted)])

    def records(self, m: t.Message) -> RecordBatch:
        """The ledger's records of one message."""
        if isinstance(m, t.OrderAccepted):
            return RecordBatch(orders=[(m.region, order_from_wire(m))])
        if isinstance(m, t.OrderCancelled):
            return RecordBatch(cancellations=[(m.region, m.order_id, slot_from_wire(m.slot))])
        if isinstance(m, t.ReadingAccepted):
            return RecordBatch(readings=[(m.region, reading_from_wire(m), m.received_at_ms)])
        if isinstance(m, t.RequestsAnswered):  # each acceptance as if it had come alone (``records``)
            return RecordBatch(
                orders=[(a.region, order_from_wire(a)) for a in m.accepted if isinstance(a, t.OrderAccepted)],
                cancellations=[(a.region, a.order_id, slot_from_wire(a.slot)) for a in m.accepted
                               if isinstance(a, t.OrderCancelled)],
                readings=[(a.region, reading_from_wire(a), a.received_at_ms) for a in m.accepted
                          if isinstance(a, t.ReadingAccepted)])
        if isinstance(m, t.RoundStarted):
            return RecordBatch(rounds=[(m.region, m.current_round.start, m.fence, m.started_at_ms)])
        if isinstance(m, t.MemberJoined):
            held = m.import_w is not None or m.export_w is not None
            return RecordBatch(memberships=[(m.region, m.participant_id, "joined", m.joined_at_ms)],
                               agents=[(m.region, m.participant_id, m.agent, m.joined_at_ms)] if m.agent else [],
                               connections=[(m.region, m.participant_id, m.import_w, m.export_w, m.joined_at_ms)]
                               if held else [])
        if isinstance(m, t.MemberLeft):
            return RecordBatch(memberships=[(m.region, m.participant_id, "left", m.left_at_ms)])
        if isinstance(m, t.SlotCleared):
            # A held slot (m.failure) has no settlements; it is recorded as held once the
            # meter-collector reaches it, so that its readings are all in first.
            return RecordBatch(settlements=settlements_from_wire(m))
        if isinstance(m, t.SlotAdjusted):  # a true-up: the late reading with the entries it caused
            slot = slot_from_wire(m.slot)
            entries = entries_from_wire(m.region, slot, m.entries)
            return RecordBatch(entries=entries, readings=[(m.region, reading_from_wire(m.reading),
                                                           m.reading.received_at_ms)],
                               adjusted=[(m.region, slot, m.revision, m.reading.participant_id, len(entries))])
        if isinstance(m, t.SlotFinalized):
            return RecordBatch(finalized=[(m.region, slot_from_wire(m.slot), m.revisions)])
        if isinstance(m, t.SlotReconciled):
            slot = slot_from_wire(m.slot)
            if m.held:
                return RecordBatch(held=[(m.region, slot, m.held, m.failure)])
            entries = entries_from_wire(m.region, slot, m.entries)
            self._settled_wh[(m.region, slot.start, slot.end)] = m.settled_wh
            # The readings go in with the entries made from them (the first record of each stands).
            readings = [(m.region, reading_from_wire(r), r.received_at_ms) for r in m.readings]
            return RecordBatch(entries=entries, readings=readings, reconciled=[(m.region, slot, len(entries))])
        raise TypeError(f"the ledger keeps no record of a {type(m).__name__}")

    async def after_commit(self, batch: RecordBatch, result: WriteResult, seconds: float) -> None:
        """Runs after each commit, before any message of the batch is acknowledged."""
        region, metrics = self.svc.region, self.svc.metrics
        metrics.ledger_write_duration.labels(region).observe(seconds)
        for table in ("entries", "orders", "settlements", "readings", "reconciled"):
            metrics.ledger_rows.labels(region, table).inc(getattr(result, table))
        for slot_region, slot, _count in batch.reconciled:
            entries = [e for e in batch.entries if e.slot == slot and e.region == slot_region and not e.revision]
            money = sum((b.received - b.paid for b in bills(entries).values()), ZERO)
            settled = self._settled_wh.pop((slot_region, slot.start, slot.end), 0)
            energy = settled - sum(e.quantity_wh for e in entries if e.kind in _SETTLED)
            metrics.ledger_money_imbalance.labels(region).set(float(money))
            metrics.ledger_energy_imbalance.labels(region).set(energy * JOULES_PER_WH)
            if money or energy:
                self.svc.log.error("ledger_imbalance", slot=str(slot), money=str(money), energy_wh=energy)
            metrics.slots_recorded.labels(region).inc()
            await self.svc.publish(t.SlotRecorded(region=slot_region, slot=slot_to_wire(slot),
                                                  entry_count=len(entries)), self.svc.keys.fact(SLOT_RECORDED))
        for slot_region, slot, revision, pid, _ in batch.adjusted:  # every revision balances on its own
            money = sum((b.received - b.paid for b in bills(
                e for e in batch.entries if e.slot == slot and e.region == slot_region and e.revision == revision
            ).values()), ZERO)
            metrics.ledger_money_imbalance.labels(region).set(float(money))
            if money:
                self.svc.log.error("ledger_imbalance", slot=str(slot), revision=revision, money=str(money))
            self.svc.log.info("slot_adjustment_recorded", slot=str(slot), revision=revision, participant_id=pid)
        for slot_region, slot, stage, _error in batch.held:  # recorded as held: the region goes on
            self.svc.log.error("slot_recorded_as_held", slot=str(slot), stage=stage)
            await self.svc.publish(t.SlotRecorded(region=slot_region, slot=slot_to_wire(slot), entry_count=0),
                                   self.svc.keys.fact(SLOT_RECORDED))
        if self.batcher is not None:
            metrics.ledger_backlog.labels(region).set(self.batcher.backlog)
