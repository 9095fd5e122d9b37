"""meter-collector: takes meter readings and reconciles each delivered slot, in order, once.

With a true-up window (``MICROTE_TRUE_UP_S``) a slot's reconciliation is provisional: a
reading that arrives later, within the window, is kept and answered only once the
adjustment it causes is published (``SlotAdjusted``, one revision); when the window has
closed, every party gets its final statement (``SlotFinalized``)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict

import msgspec

from shared.market import (
    EntryKind,
    LedgerEntry,
    RejectReason,
    Slot,
    check_reading,
    in_true_up_window,
    reconcile,
    true_up,
)
from shared.messages import decode_as
from shared.messages import types as t
from shared.messages.codec import encode
from shared.messages.convert import (
    SourceRepeated,
    by_agent,
    entry_to_wire,
    reading_from_wire,
    reading_to_wire,
    settlements_from_wire,
    slot_from_wire,
    slot_to_wire,
)
from shared.runtime.metrics import JOULES_PER_WH
from shared.runtime.outages import is_outage
from shared.runtime.service import Service, now_ms
from shared.runtime.state import CLAIM_LEASE_MS, ReadingOp
from shared.runtime.topology import ANSWERED, BATCH, READING_ACCEPTED, REJECTED, SLOT_RECONCILED, STATEMENT


class MeterCollector:
    def __init__(self, service: Service) -> None:
        self.svc = service
        self.market = service.settings.market
        self.state = service.state
        realtime = service.settings.clock_mode == "realtime"
        # In simulation the clock's round timeout is the deadline: a slot waits at most
        # until the next round starts. In real time, readings have their own deadline.
        self.deadline_s = self.market.reading_deadline_s if realtime else 0
        self.realtime = realtime
        self._reconciling = asyncio.Lock()
        self._active: set[str] = set()  # active members, as last read (see _next_ready)
        self._active_at = -1e9
        self.true_up_s = self.market.true_up_s
        self._truing = asyncio.Lock()

    def market_now(self, current: tuple[int, int] | None) -> int:
        """Market time: the current round's start in simulation; in real time the wall clock too."""
        start = current[0] if current is not None else 0
        return max(start, int(time.time())) if self.realtime else start

    async def on_readings(self, messages: list[t.SubmitReading | t.SubmitBatch]) -> None:
        """Every reading drained together, single requests and batches alike: checked by the
        market core, then written in one Redis script, answered with one wait for confirms."""
        svc, region, schedule = self.svc, self.svc.region, self.market.schedule
        items: list[tuple[t.SubmitReading, str, int]] = []  # reading, sender ("" for itself), batch index
        batches: list[t.SubmitBatch] = []
        for m in messages:
            if isinstance(m, t.SubmitReading):
                items.append((m, "", -1))
                continue
            batches.append(m)
            for part in m.items:
                if part.reading is not None:
                    r = part.reading
                    items.append((t.SubmitReading(region=m.region, participant_id=part.participant_id, slot=r.slot,
                                                  import_wh=r.import_wh, export_wh=r.export_wh,
                                                  self_consumed_wh=r.self_consumed_wh),
                                  m.participant_id, len(batches) - 1))
        exists, current, _ = await self.state.intake_view(0)
        svc.state_seen(exists, None if current is None else current[0])
        received = now_ms()
        market_now = self.market_now(current)
        ops: list[ReadingOp] = []
        answers: list[t.ReadingAccepted | t.Rejected] = []
        for m, sender, _ in items:
            answer = self._check(m, current, received)
            answers.append(answer)
            if isinstance(answer, t.ReadingAccepted):
                slot = slot_from_wire(m.slot)
                ops.append(ReadingOp(m.participant_id, slot, encode(answer), sender=sender,
                                     import_wh=answer.import_wh, export_wh=sum(answer.export_wh.values()),
                                     late_ok=in_true_up_window(slot, market_now, self.true_up_s)))
            else:  # the core's refusal stands, unless the participant is unknown
                ops.append(ReadingOp(m.participant_id, sender=sender))
        members, results = await self.state.apply_readings(ops)
        await self._while_reconciling(ops, results)
        ready = False
        adjust: set[Slot] = set()
        for n, ((m, sender, _), op, (status, value)) in enumerate(zip(items, ops, results, strict=True)):
            if status == "not_a_member":
                answers[n] = self._rejection(m, RejectReason.NOT_A_MEMBER, "join the market first")
            elif status == "not_entitled":
                answers[n] = self._rejection(m, RejectReason.NOT_ENTITLED,
                                             f"{sender} is not the agent of {m.participant_id}")
            elif op.body and status == "reconciled":
                answers[n] = self._rejection(m, RejectReason.ALREADY_RECONCILED, f"slot {m.slot.start}-{m.slot.end} "
                                             "was reconciled")
            elif op.body and status == "beyond_connection":
                answers[n] = self._rejection(m, RejectReason.BEYOND_CONNECTION, "the reading's import or export is "
                                             "more than the member's connection carries in a slot")
            elif op.body and status == "duplicate":  # the first reading stands: answer with it
                answers[n] = _as_duplicate(decode_as(value, t.ReadingAccepted))
                svc.metrics.readings.labels(region, "duplicate").inc()
            elif op.body and status in ("late", "late_duplicate"):  # kept for a true-up: answered (late) once
                assert op.slot is not None                              # its adjustment is published
                kept = decode_as(value if status == "late_duplicate" else op.body, t.ReadingAccepted)
                answers[n] = msgspec.structs.replace(kept, late=True, duplicate=status == "late_duplicate")
                adjust.add(op.slot)
                svc.metrics.readings.labels(region, "true_up" if status == "late" else "duplicate").inc()
            elif op.body and status == "ok":
                assert current is not None and op.slot is not None
                late = op.slot.end + self.deadline_s < current[0] + schedule.duration
                svc.metrics.readings.labels(region, "late" if late else "on_time").inc()
                ready = ready or int(value) >= members  # cheap test first: the full check once all may be in
        for slot in sorted(adjust):  # a late reading is answered only once its adjustment is out
            await self.adjust(slot, wait=True)
        await self._publish(items, batches, answers)
        if ready:
            await self.reconcile_ready()

    async def _while_reconciling(self, ops: list[ReadingOp], results: list[tuple[str, bytes]]) -> None:
        """A late reading of a slot whose reconciliation is under way is asked again until it
        is done (then it is kept as late), at most a claim's lease and a little more."""
        deadline = time.monotonic() + CLAIM_LEASE_MS / 1000 + 5
        waiting = [n for n, (status, _) in enumerate(results) if status == "reconciling"]
        while waiting:
            if time.monotonic() > deadline:
                self.svc.log.warning("late_readings_refused_while_reconciling", count=len(waiting))
                for n in waiting:
                    results[n] = ("reconciled", b"")
                return
            await asyncio.sleep(0.1)
            _, again = await self.state.apply_readings([ops[n] for n in waiting])
            for n, found in zip(waiting, again, strict=True):
                results[n] = found
            waiting = [n for n in waiting if results[n][0] == "reconciling"]

    def _check(self, m: t.SubmitReading, current: tuple[int, int] | None, received: int
               ) -> t.ReadingAccepted | t.Rejected:
        """The reading as it would be accepted, or the market core's refusal."""
        try:
            reading = reading_from_wire(m)
        except SourceRepeated as exc:
            return self._rejection(m, RejectReason.INVALID_READING, str(exc))
        except ValueError as exc:
            return self._rejection(m, RejectReason.MISALIGNED_SLOT, str(exc))
        problem = check_reading(reading)
        if problem is not None:
            return self._rejection(m, *problem)
        schedule = self.market.schedule
        if not schedule.is_aligned(reading.slot) or reading.slot.seconds != schedule.duration:
            return self._rejection(m, RejectReason.MISALIGNED_SLOT, "readings are for one aligned round")
        if current is None or reading.slot.start > current[0]:
            return self._rejection(m, RejectReason.SLOT_NOT_DELIVERED, f"slot {reading.slot} is not delivered yet")
        return reading_to_wire(reading, region=m.region, received_at_ms=received)

    def _rejection(self, m: t.SubmitReading, reason: RejectReason, detail: str) -> t.Rejected:
        return t.Rejected(region=m.region, participant_id=m.participant_id, request="SubmitReading",
                          reason=str(reason), detail=detail, reference=f"{m.slot.start}-{m.slot.end}")

    async def _publish(self, items: list[tuple[t.SubmitReading, str, int]], batches: list[t.SubmitBatch],
                       answers: list[t.ReadingAccepted | t.Rejected]) -> None:
        svc, region, keys = self.svc, self.svc.region, self.svc.keys
        singles: list[tuple[str, t.ReadingAccepted | t.Rejected]] = []
        per_batch: list[list[t.BatchAnswer]] = [[] for _ in batches]
        rejected: Counter[str] = Counter()
        for (m, _, batch), answer in zip(items, answers, strict=True):
            if isinstance(answer, t.Rejected):
                rejected[answer.reason] += 1
                svc.log.debug("reading_rejected", participant_id=m.participant_id, reason=answer.reason,
                              detail=answer.detail)
            if batch >= 0:
                per_batch[batch].append(answer)
            else:
                singles.append((m.participant_id, answer))
        answered = [(b.participant_id, t.BatchAnswered(region=region, participant_id=b.participant_id,
                                                       batch_id=b.batch_id, service=svc.name, answers=mine))
                    for b, mine in zip(batches, per_batch, strict=True)
                    if mine]  # a batch with no readings: nothing to answer here
        # A late reading goes into the ledger with its adjustment (SlotAdjusted), in one transaction.
        recordable: list[t.Recordable] = [a for a in answers if isinstance(a, t.ReadingAccepted) and not a.late]
        await svc.publish_all([
            *((a, keys.to(p, REJECTED) if isinstance(a, t.Rejected) else keys.to(p, READING_ACCEPTED))
              for p, a in singles),
            *((a, keys.to(p, BATCH)) for p, a in answered),
            *([(t.RequestsAnswered(region=region, service=svc.name, accepted=recordable), keys.fact(ANSWERED))]
              if recordable else [])])
        for reason, count in rejected.items():
            svc.metrics.readings.labels(region, "rejected").inc(count)
            svc.metrics.rejected_requests.labels(region, svc.name, "SubmitReading", reason).inc(count)
        if rejected:  # one line per run; each rejection is logged at debug level
            svc.log.info("readings_rejected", counts=dict(rejected))

    async def on_slot_cleared(self, m: t.SlotCleared) -> None:
        await self.state.store_settlements(slot_from_wire(m.slot), encode(m))
        await self.reconcile_ready()

    async def on_round_started(self, m: t.RoundStarted) -> None:
        await self.reconcile_ready()

    async def on_slot_recorded(self, m: t.SlotRecorded) -> None:
        slot = slot_from_wire(m.slot)
        await self.state.drop_delivery(slot, window_end=slot.end + self.true_up_s if self.true_up_s else 0)

    async def tick(self) -> None:
        """Look again every second: a deadline passes, or a member times out, without a message."""
        while True:
            self.svc.beat("reconcile-tick")
            await asyncio.sleep(1.0)
            await self.svc.state_ready()
            await self.reconcile_ready()  # a failure restarts the loop (Service._supervise)
            if self.true_up_s:
                await self.true_up_due()

    async def reconcile_ready(self) -> None:
        """Reconcile every delivered slot that is ready, oldest first, stopping at the first that is not."""
        async with self._reconciling:
            while (slot := await self._next_ready()) is not None:
                if not await self.reconcile_slot(slot):
                    return

    async def _next_ready(self) -> Slot | None:
        current, upto, first = (await self.state.current_round(), await self.state.reconciled_upto(),
                                await self.state.first_round())
        if current is None or upto is None or first is None:
            return None
        d = self.market.schedule.duration
        slot = Slot(upto, upto + d)
        if slot.start > current[0]:
            return None
        if self.market.schedule.closes_at(slot) >= first and await self.state.settlements(slot) is None:
            return None  # its clearing has not arrived yet
        market_now = max(current[0], int(time.time())) if self.realtime else current[0]
        if market_now >= slot.end + self.deadline_s:
            return slot
        # Counters first (one round trip, O(1)): when there are as many readings as members,
        # make sure they are the members' (a reading of one who has left since, or a field
        # that is nobody's, must not stand in for a member's). Else the active members (read
        # again at most every second) against who reported.
        reported_count, member_count = await self.state.reading_and_member_count(slot)
        if reported_count >= member_count and await self.state.members() <= await self.state.reporters(slot):
            return slot
        now = time.monotonic()
        if now - self._active_at >= 1.0:
            self._active = await self.state.active_members(now_ms(), self.market.member_timeout_s * 1000)
            self._active_at = now
        if reported_count < len(self._active):
            return None
        return slot if self._active <= await self.state.reporters(slot) else None

    async def reconcile_slot(self, slot: Slot) -> bool:
        """False when another replica holds the slot."""
        region, metrics = self.svc.region, self.svc.metrics
        claim = await self.state.claim("reconcile", slot, self.svc.instance)
        if claim in ("done", "busy"):
            return claim == "done"  # busy: another replica is on it; if it dies, a later event retries
        # From here on the slot's readings are frozen: a redo computes the same entries.
        raw, stored = await self.state.settlements(slot), await self.state.readings(slot)
        started = time.perf_counter()
        try:
            cleared = decode_as(raw, t.SlotCleared) if raw else None
            if cleared is not None and cleared.failure:
                await self.svc.state_ready()
                await self.hold(slot, "clearing", cleared.failure)
                return True
            settlements = settlements_from_wire(cleared) if cleared else []
            accepted = [decode_as(b, t.ReadingAccepted) for _, b in sorted(stored.items())]
            readings = [reading_from_wire(a) for a in accepted]
            entries = reconcile(region=region, slot=slot, settlements=settlements, readings=readings,
                                grid=self.market.tariff.prices_at(slot.start))
        except Exception as exc:  # a poison slot fails every time: hold it, go on with the next
            await self.svc.state_ready()  # unless what failed was read from a state lost meanwhile
            await self.hold(slot, "reconciliation", f"{type(exc).__name__}: {exc}")
            return True
        metrics.reconciliation_duration.labels(region).observe(time.perf_counter() - started)
        await self.svc.state_ready()  # the inputs were read from the state it still has
        active = await self.state.active_members(now_ms(), self.market.member_timeout_s * 1000)
        missing = sorted(active - {r.participant_id for r in readings})
        metrics.readings_missing.labels(region).inc(len(missing))
        records = [entry_to_wire(e) for e in entries]
        wire_slot = slot_to_wire(slot)
        reconciled = t.SlotReconciled(region=region, slot=wire_slot, reconciled_at_ms=slot.end * 1000,
                                      missing_readings=missing, entries=records,
                                      settled_wh=sum(s.quantity_wh for s in settlements),
                                      readings=[_as_original(a) for a in accepted])
        stage = "provisional" if self.true_up_s else "final"
        # One batch of confirms: the broker syncs them to disk together.
        await self.svc.publish_all([(reconciled, self.svc.keys.fact(SLOT_RECONCILED)),
                                    *((m, self.svc.keys.to(m.participant_id, STATEMENT))
                                      for m in await self._statements(slot, records, stage))])
        await self.state.finish_reconciling(slot, slot.end + self.true_up_s if self.true_up_s else 0)
        for e in entries:
            if e.kind is EntryKind.GRID_IMPORT:
                metrics.grid_energy.labels(region, "import").inc(e.quantity_wh * JOULES_PER_WH)
            elif e.kind in (EntryKind.GRID_EXPORT, EntryKind.UNCONSUMED_EXPORT):
                metrics.grid_energy.labels(region, "export").inc(e.quantity_wh * JOULES_PER_WH)
        self.svc.log.info("slot_reconciled", slot=str(slot), entries=len(entries), missing=len(missing))
        return True


    async def _statements(self, slot: Slot, records: list[t.EntryRecord], stage: str
                          ) -> list[t.Statement | t.AgentBundle]:
        """Each party's statement of ``records`` (its agent's bundle where it acts through one),
        each for its ``participant_id``."""
        region, wire_slot = self.svc.region, slot_to_wire(slot)
        by_party: dict[str, list[t.EntryRecord]] = defaultdict(list)
        for r in records:  # one pass: each party's entries, in the slot's order
            for p in {r.seller, r.buyer} - {"grid", "market"}:
                by_party[p].append(r)
        statements = [t.Statement(region=region, participant_id=p, slot=wire_slot, entries=by_party[p], stage=stage)
                      for p in sorted(by_party)]
        direct, bundled = by_agent(statements, await self.state.agents())
        return [*direct, *(t.AgentBundle(region=region, participant_id=agent, slot=wire_slot, statements=mine)
                           for agent, mine in bundled)]

    # --- true-up -------------------------------------------------------------------------

    async def _revisions(self, slot: Slot, late: list[t.ReadingAccepted]) -> list[list[LedgerEntry]]:
        """Every revision of a provisional slot from what it kept: its settlements, the readings
        of its reconciliation and ``late``, its late readings in the order they came."""
        raw, stored = await self.state.settlements(slot), await self.state.readings(slot)
        cleared = decode_as(raw, t.SlotCleared) if raw else None
        settlements = settlements_from_wire(cleared) if cleared else []
        readings = [reading_from_wire(decode_as(b, t.ReadingAccepted)) for _, b in sorted(stored.items())]
        return true_up(region=self.svc.region, slot=slot, settlements=settlements, readings=readings,
                       late=[reading_from_wire(r) for r in late], grid=self.market.tariff.prices_at(slot.start))

    async def adjust(self, slot: Slot, *, wait: bool = False) -> bool:
        """Publish the adjustment of each late reading of ``slot`` that has none yet, in order.
        False when another replica holds the slot (it publishes them; the tick looks again);
        with ``wait``, until the slot is free (its holder finishes, or its lease lapses)."""
        async with self._truing:  # the tick and the readings of this process take turns
            return await self._adjust(slot, wait)

    async def _adjust(self, slot: Slot, wait: bool) -> bool:
        holder, since = self.svc.instance, time.monotonic()
        while not await self.state.lock(f"true-up:{_name(slot)}", holder):
            if not wait:
                return False
            if time.monotonic() - since > CLAIM_LEASE_MS / 1000:
                self.svc.log.warning("true_up_waiting_for_another_replica", slot=str(slot))
                since = time.monotonic()
            await asyncio.sleep(0.1)
        try:
            late = [decode_as(b, t.ReadingAccepted) for b in await self.state.late_readings(slot)]
            done = await self.state.revised(slot)
            if done < len(late):
                revisions = await self._revisions(slot, late)
                for k in range(done + 1, len(late) + 1):
                    records = [entry_to_wire(e) for e in revisions[k]]
                    reading = msgspec.structs.replace(late[k - 1], duplicate=False, late=True)
                    await self.svc.publish_all([
                        (t.SlotAdjusted(region=self.svc.region, slot=slot_to_wire(slot), revision=k, reading=reading,
                                        entries=records), self.svc.keys.fact(SLOT_RECONCILED)),
                        *((m, self.svc.keys.to(m.participant_id, STATEMENT))
                          for m in await self._statements(slot, records, "adjustment"))])
                    await self.state.set_revised(slot, k)
                    self.svc.log.info("slot_adjusted", slot=str(slot), revision=k,
                                      participant_id=reading.participant_id, entries=len(records))
            await self.state.done_adjusting(slot)
            return True
        finally:
            await self.state.unlock(f"true-up:{_name(slot)}", holder)

    async def true_up_due(self) -> None:
        """Adjust for late readings left waiting (a crash), then give the slots whose window
        has closed their final statements. A slot that fails is logged and counted, and
        the others go on (it is tried again at the next tick)."""
        current = await self.state.current_round()
        for slot, work in [*((s, self.adjust) for s in await self.state.to_adjust()),
                           *((s, self.finalize) for s in await self.state.due_final(self.market_now(current)))]:
            try:
                await work(slot)
            except Exception as exc:
                if is_outage(exc):
                    raise
                self.svc.metrics.handler_failures.labels(self.svc.region, self.svc.name).inc()
                self.svc.log.exception("true_up_failed", slot=str(slot), step=work.__name__)

    async def finalize(self, slot: Slot) -> bool:
        async with self._truing:
            return await self._finalize(slot)

    async def _finalize(self, slot: Slot) -> bool:
        holder = self.svc.instance
        if not await self.state.lock(f"true-up:{_name(slot)}", holder):
            return False
        try:
            if not await self.state.is_finalizing(slot) and not await self.state.begin_final(slot):
                return False  # a late reading still waits for its adjustment: the next tick
            late = [decode_as(b, t.ReadingAccepted) for b in await self.state.late_readings(slot)]
            revisions = await self._revisions(slot, late)
            records = [entry_to_wire(e) for revision in revisions for e in revision]
            await self.svc.publish_all([
                (t.SlotFinalized(region=self.svc.region, slot=slot_to_wire(slot), revisions=len(late)),
                 self.svc.keys.fact(SLOT_RECONCILED)),
                *((m, self.svc.keys.to(m.participant_id, STATEMENT))
                  for m in await self._statements(slot, records, "final"))])
            await self.state.end_final(slot)
            self.svc.log.info("slot_final", slot=str(slot), revisions=len(late))
            return True
        finally:
            await self.state.unlock(f"true-up:{_name(slot)}", holder)

    async def hold(self, slot: Slot, stage: str, error: str) -> None:
        """No entries for the slot until an operator replays it; the readings it has are in
        the ledger already (each was recorded when it was accepted)."""
        log = self.svc.log.error if stage == "clearing" else self.svc.log.exception
        log("slot_held", slot=str(slot), stage=stage, error=error[:500])
        if stage == "reconciliation":
            self.svc.metrics.slots_held.labels(self.svc.region, stage).inc()
        if self.true_up_s:  # no entries: nothing to true up
            await self.state.mark_held(slot)
        await self.svc.publish(t.SlotReconciled(region=self.svc.region, slot=slot_to_wire(slot),
                                                reconciled_at_ms=slot.end * 1000, missing_readings=[], entries=[],
                                                held=stage, failure=error[:1000]),
                               self.svc.keys.fact(SLOT_RECONCILED))
        await self.state.finish_reconciling(slot)


def _name(slot: Slot) -> str:
    return f"{slot.start}:{slot.end}"


def _as_original(stored: t.ReadingAccepted) -> t.ReadingAccepted:
    return msgspec.structs.replace(stored, duplicate=False)


def _as_duplicate(stored: t.ReadingAccepted) -> t.ReadingAccepted:
    return msgspec.structs.replace(stored, duplicate=True)
