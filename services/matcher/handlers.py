"""matcher: clears the slot whose gate has just closed, once, and tells both parties."""

from __future__ import annotations

import asyncio
import time

from shared.market import Slot
from shared.messages import types as t
from shared.messages.convert import by_agent, clear_wire_book, slot_from_wire, slot_to_wire
from shared.runtime.metrics import JOULES_PER_WH
from shared.runtime.service import Service
from shared.runtime.state import CLAIM_LEASE_MS, RegionStateLost
from shared.runtime.topology import SETTLEMENTS, SLOT_CLEARED


class SlotBusy(Exception):
    pass


class Matcher:
    def __init__(self, service: Service) -> None:
        self.svc = service
        self.market = service.settings.market
        self.state = service.state

    async def is_stale(self, m: t.RoundStarted) -> bool:
        """Only a round the lease holder really started counts: the round and fence in
        Redis, written by the clock before it broadcast, are the authority, not the message.

        A round newer than the one in Redis means Redis went back (lost, or replaced by a
        lagging replica, since the scaffold's check before this handler): wait for its
        rebuild, which records the round from the ledger, rather than drop a real round."""
        current = await self.state.current_round()
        start = m.current_round.start
        if current is None or start > current[0]:
            raise RegionStateLost(f"Redis holds round {None if current is None else current[0]}, older than the "
                                  f"round {start} just started: waiting for its rebuild")
        if start < current[0] or (start, m.fence) == current:
            return False
        self.svc.metrics.stale_fence.labels(self.svc.region, self.svc.name).inc()
        self.svc.log.warning("round_not_from_lease_ignored", fence=m.fence, round=start,
                             current=None if current is None else list(current))
        return True

    async def on_round_started(self, m: t.RoundStarted) -> None:
        if await self.is_stale(m):
            return
        # The slot to clear follows from the round's start, never from what the message says.
        slot = self.market.schedule.windows(m.current_round.start).last_settle
        upto = await self.state.reconciled_upto()
        if upto is not None and slot.end <= upto:
            return
        claim = await self.state.claim("clear", slot, self.svc.instance)
        waited = 0.0
        while claim == "busy":
            # With one active consumer, "busy" means the matcher before this one died while
            # clearing: wait for its claim's lease to lapse, then redo the slot.
            if waited > CLAIM_LEASE_MS / 1000 + 5:
                raise SlotBusy(f"{slot} is still claimed by another matcher")
            await asyncio.sleep(1.0)
            waited += 1.0
            claim = await self.state.claim("clear", slot, self.svc.instance)
        if claim != "done":
            await self.clear_slot(slot, matched_at_ms=self.market.schedule.closes_at(slot) * 1000)

    async def clear_slot(self, slot: Slot, matched_at_ms: int) -> None:
        """Deterministic: the book is frozen once its gate closed, so a redo gives the same bytes.

        The book is cleared as columns (``clear_wire_book``), straight from its stored bytes.
        A book that cannot be cleared (it fails to decode, or clearing raises) fails every
        time: the slot is held instead (no settlements; see ``microte replay-slot``), and
        the region goes on."""
        metrics, region = self.svc.metrics, self.svc.region
        book = await self.state.book(slot)
        started = time.perf_counter()
        try:
            cleared = clear_wire_book(book, region=region, slot=slot, rule=self.market.rule,
                                      matched_at_ms=matched_at_ms)
        except Exception as exc:
            await self.svc.state_ready()  # unless what failed was read from a state lost meanwhile
            await self.hold(slot, matched_at_ms, len(book), f"{type(exc).__name__}: {exc}")
            return
        metrics.clearing_duration.labels(region).observe(time.perf_counter() - started)
        await self.svc.state_ready()  # the book was read from the state it still has
        wire_slot = slot_to_wire(slot)
        fact = t.SlotCleared(region=region, slot=wire_slot, rule=str(self.market.rule), matched_at_ms=matched_at_ms,
                             order_count=cleared.order_count, settlements=cleared.records)
        notices = [t.SettlementsNotice(region=region, participant_id=p, slot=wire_slot, settlements=mine)
                   for p, mine in cleared.by_party]
        # Households that act through an agent: one bundle for each agent.
        direct, bundled = by_agent(notices, await self.state.agents())
        keys = self.svc.keys
        # One batch of confirms: the broker syncs them to disk together.
        await self.svc.publish_all([
            (fact, keys.fact(SLOT_CLEARED)),
            *((n, keys.to(n.participant_id, SETTLEMENTS)) for n in direct),
            *((t.AgentBundle(region=region, participant_id=agent, slot=wire_slot, notices=mine),
               keys.to(agent, SETTLEMENTS)) for agent, mine in bundled)])
        await self.state.finish_clearing(slot)
        energy = cleared.energy_wh
        metrics.book_orders.labels(region, "bid").set(cleared.bids)
        metrics.book_orders.labels(region, "ask").set(cleared.asks)
        for source, wh in cleared.energy_by_source.items():
            metrics.matched_energy.labels(region, source).inc(wh * JOULES_PER_WH)
        metrics.settlements.labels(region).inc(len(cleared.records))
        metrics.slot_matched_energy.labels(region).set(energy * JOULES_PER_WH)
        if energy:
            metrics.slot_price.labels(region).set(float(cleared.paid / energy))  # display only
        self.svc.log.info("slot_cleared", slot=str(slot), orders=cleared.order_count,
                          settlements=len(cleared.records), energy_wh=energy)

    async def hold(self, slot: Slot, matched_at_ms: int, order_count: int, error: str) -> None:
        """A poison slot: say it is held, with why, so that the region goes on without it."""
        self.svc.log.exception("slot_held", slot=str(slot), stage="clearing", error=error[:500])
        self.svc.metrics.slots_held.labels(self.svc.region, "clearing").inc()
        held = t.SlotCleared(region=self.svc.region, slot=slot_to_wire(slot), rule=str(self.market.rule),
                             matched_at_ms=matched_at_ms, order_count=order_count, settlements=[],
                             failure=error[:1000])
        await self.svc.publish(held, self.svc.keys.fact(SLOT_CLEARED))
        await self.state.finish_clearing(slot)

    async def on_slot_recorded(self, m: t.SlotRecorded) -> None:
        await self.state.drop_claim("clear", slot_from_wire(m.slot))
