"""clock: one per region (a Redis lease with a fencing number), broadcasts round starts.

Simulation mode starts the next round as soon as the current one is complete: every
active participant finished it, the closing slot is cleared, the delivered slot is
recorded in the ledger. The round timeout applies to participants only, and only while
every service is consuming: a service that is down or behind delays the round, never
changes its outcome. Real-time mode starts rounds on wall-clock boundaries, whatever is
outstanding, and logs and counts what each round left undone.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid

from shared.messages import types as t
from shared.messages.convert import slot_from_wire, slot_to_wire
from shared.runtime.queues import QueueInspector
from shared.runtime.service import Service, now_ms
from shared.runtime.state import IntakeOp
from shared.runtime.topology import ROUND_STARTED

# The queues whose consumers a simulated round waits for (the clock's own is not among them).
WORKERS = ("order-intake", "matcher", "meter-collector", "ledger-writer")
LOOP = "clock"
LISTEN = "finish-listener"

LEASE_TTL_MS = 10_000
RENEW_EVERY_S = 3.0


class Clock:
    def __init__(self, service: Service) -> None:
        self.svc = service
        self.settings = service.settings
        self.market = service.settings.market
        self.state = service.state
        self.holder = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.wake = asyncio.Event()
        self.renewed = 0.0
        self.inspector = QueueInspector(service.settings.amqp_url)
        self.leading = False
        self._active: set[str] = set()  # active members, as last read (see _missing)
        self._active_round = -1
        self._active_at = 0.0

    async def close(self) -> None:
        await self.inspector.close()

    # --- inbound -------------------------------------------------------------------------

    async def on_finishes(self, finishes: list[t.FinishRound]) -> None:
        """Single "finished" requests, in one script call (a batch's are counted by order-intake,
        with its orders); one from a participant that is not a member is not counted."""
        ops = [IntakeOp("f", m.participant_id, round_start=m.round_start) for m in finishes]
        await self.state.apply_intake(ops, round_start=None, now_ms=now_ms())  # checks the state's generation
        # The last one wakes the round's wait (through Redis, as order-intake's do).

    async def listen(self) -> None:
        """Wake the round's wait when the finishes it waits for are counted (by order-intake
        for batches, by this service for single requests), through a Redis list."""
        while True:
            self.svc.beat(LISTEN)
            if not self.leading:  # a standby clock leaves the signal to the leader
                await asyncio.sleep(1.0)
            elif await self.state.wait_wake(1.0):
                self.wake.set()

    async def on_slot_cleared(self, m: t.SlotCleared) -> None:
        self.wake.set()

    async def on_slot_recorded(self, m: t.SlotRecorded) -> None:
        await self.state.mark_recorded(slot_from_wire(m.slot))  # in Redis: a restarted clock still knows
        self.wake.set()

    # --- the loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        region, metrics = self.svc.region, self.svc.metrics
        while True:
            self.svc.beat(LOOP)
            await self.svc.state_ready()  # never take a lease in a Redis that lost the round state
            if await self.state.simulation_finished():
                self.svc.log.info("simulation_finished_before", holder=self.holder)
                return  # a standby clock has nothing to lead any more
            fence = await self.state.take_lease(self.holder, LEASE_TTL_MS)
            metrics.clock_leader.labels(region).set(1 if fence else 0)
            if fence is None:
                await asyncio.sleep(RENEW_EVERY_S)  # another clock leads; try again when its lease may lapse
                continue
            metrics.clock_fence.labels(region).set(fence)
            self.svc.log.info("clock_leading", fence=fence, holder=self.holder)
            self.leading = True
            try:
                await self._lead(fence)
            except _LostLease:
                self.svc.log.warning("clock_lost_lease", fence=fence)
                metrics.clock_leader.labels(region).set(0)
                continue
            finally:
                self.leading = False
            return  # simulation finished

    async def _lead(self, fence: int) -> None:
        d = self.market.schedule.duration
        if self.settings.clock_mode == "simulation":  # real time starts on the wall clock, whatever is there
            await self._wait_for_queues(fence)
        await self.svc.state_ready()
        current = await self.state.current_round()
        if current is not None:
            start = current[0]  # resume: broadcast the current round again under the new fence
        elif self.settings.clock_mode == "realtime" or not self.settings.start_time:
            start = self.market.schedule.round_containing(int(time.time())).start
        else:
            start = self.settings.start_time - self.settings.start_time % d
        while True:
            await self.svc.state_ready()
            first = await self.state.first_round() or start
            final = first + (self.settings.rounds - 1) * d if self.settings.rounds else 0
            if final and start > final:
                self.svc.log.info("simulation_finished", rounds=self.settings.rounds)
                await self.state.finish_simulation()
                await self.state.release_lease(self.holder)
                return
            await self._renew(fence)
            await self._wait_members(fence)
            if not await self.state.advance_round(start, fence, now_ms()):
                raise _LostLease
            began = time.monotonic()
            await self._broadcast(start, fence, final)
            if self.settings.clock_mode == "realtime":
                await self._sleep_until_wall(start + d, fence)
                await self.report_skipped(start)
            else:
                await self._wait_complete(start, fence)
            self.svc.metrics.round_duration.labels(self.svc.region).observe(time.monotonic() - began)
            await self.state.forget_round(start - d, d)
            start += d

    async def _broadcast(self, start: int, fence: int, final: int) -> None:
        w = self.market.schedule.windows(start)
        quotes = []
        for slot in (w.current_round, w.next_settle):
            prices = self.market.tariff.prices_at(slot.start)
            quotes.append(t.GridQuote(slot=slot_to_wire(slot), buy_price=str(prices.buy_price),
                                      sell_price=str(prices.sell_price)))
        message = t.RoundStarted(
            region=self.svc.region, fence=fence, started_at_ms=now_ms(), duration=self.market.schedule.duration,
            close_steps=self.market.schedule.close_steps, timezone=self.market.tariff.timezone,
            current_round=slot_to_wire(w.current_round), last_settle=slot_to_wire(w.last_settle),
            next_settle=slot_to_wire(w.next_settle), grid=quotes, final_round_start=final)
        await self.svc.publish(message, self.svc.keys.fact(ROUND_STARTED))
        self.svc.metrics.rounds.labels(self.svc.region).inc()
        self.svc.metrics.round_start.labels(self.svc.region).set(start)
        self.svc.log.info("round_started", round=start, fence=fence)

    async def _renew(self, fence: int) -> None:
        self.svc.beat(LOOP)
        if await self.state.take_lease(self.holder, LEASE_TTL_MS) != fence:
            raise _LostLease
        self.renewed = time.monotonic()

    async def _missing(self, start: int) -> list[str]:
        """What the round still waits for. Counters first, in one round trip: the member list
        is read again at most every few seconds, and the finished set only once its size
        says it may be complete, so a round costs O(members), not O(members x wake-ups)."""
        w = self.market.schedule.windows(start)
        now = time.monotonic()
        if self._active_round != start or now - self._active_at >= RENEW_EVERY_S:
            self._active = await self.state.active_members(now_ms(), self.market.member_timeout_s * 1000)
            self._active_round, self._active_at = start, now
            self.svc.metrics.members_active.labels(self.svc.region).set(len(self._active))
            await self.state.await_finishes(start, len(self._active))  # finishes wake the clock from then on
        finished, cleared, recorded = await self.state.round_progress(start, w.last_settle, w.current_round)
        missing = []
        if finished < len(self._active) or not self._active <= await self.state.finished(start):
            missing.append("participants")
        if not cleared:
            missing.append("clearing")
        if not recorded:
            missing.append("ledger")
        return missing

    async def _wait_complete(self, start: int, fence: int) -> None:
        """Simulation: wait for the round's participants (at most the timeout, counted only
        while every service consumes) and for its services (as long as it takes)."""
        timeout = self.settings.round_timeout_s
        deadline = time.monotonic() + timeout
        told = time.monotonic()  # say it after 30 s of waiting, and every 30 s then
        absent: list[str] = []
        # When the broker was last asked which services consume: first after a second of
        # waiting, so that a round that completes sooner costs the broker nothing.
        asked = time.monotonic()
        while True:
            self.wake.clear()  # before looking, so that no fact arriving meanwhile is missed
            await self.svc.state_ready()
            missing = await self._missing(start)
            if not missing:
                return
            now = time.monotonic()
            # Asking the broker costs a channel per queue: at most every second of waiting,
            # and always right before the participants' timeout is declared.
            if now - asked >= 1.0 or (missing == ["participants"] and now >= deadline):
                absent, asked = await self._absent_services(), now
            if absent or missing != ["participants"]:
                # A service is down, behind, or still working: the participants' timeout waits too.
                deadline = max(deadline, now + timeout) if absent else deadline
                if now - told >= 30:
                    self.svc.log.warning("round_waiting_for_services", round=start, missing=missing, absent=absent)
                    told = now
            elif now >= deadline:
                self.svc.log.warning("round_timed_out", round=start, missing=missing)
                self.svc.metrics.round_timeouts.labels(self.svc.region, "participants").inc()
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=max(0.05, min(deadline - now, RENEW_EVERY_S)))
            if time.monotonic() - self.renewed >= RENEW_EVERY_S:
                await self._renew(fence)

    async def _absent_services(self) -> list[str]:
        """The worker services with no consumer on their queue, or messages waiting beyond their prefetch."""
        names = {f"microte.{self.svc.region}.{name}": name for name in WORKERS}
        states = await self.inspector.states(list(names))
        away = [names[q] for q, st in states.items() if st is None or not st.consumers or st.messages]
        # Behind also with work delivered and not yet handled, which the broker does not count.
        return away + [s for s in await self.state.busy(list(WORKERS)) if s not in away]

    async def report_skipped(self, start: int) -> None:
        """Real time: what the round that just ended left undone, in the log and the metrics."""
        missing = await self._missing(start)
        for what in missing:
            self.svc.metrics.round_timeouts.labels(self.svc.region, what).inc()
        if missing:
            self.svc.log.warning("round_ended_incomplete", round=start, missing=missing)

    async def _wait_for_queues(self, fence: int) -> None:
        """Simulation: until every worker service consumes its queue. A round start published
        before the matcher's queue exists, or is bound, reaches no matcher, and the round
        would wait for its clearing for ever (services started by hand start in any order); a
        service consumes only once its queue is declared and bound. A simulated round waits
        for its services anyway. (In real time a missing service's work is left undone and
        reported each round: ``report_skipped``.)"""
        names = {f"microte.{self.svc.region}.{name}": name for name in WORKERS}
        told = 0.0
        while missing := [names[q] for q, st in (await self.inspector.states(list(names))).items()
                          if st is None or not st.consumers]:
            if time.monotonic() - told >= 30:
                self.svc.log.warning("clock_waiting_for_services", services=missing)
                told = time.monotonic()
            await asyncio.sleep(1.0)
            await self._renew(fence)

    async def _wait_members(self, fence: int) -> None:
        """Simulation: hold the market until enough participants have joined."""
        timeout_ms = self.market.member_timeout_s * 1000
        while (self.settings.clock_mode == "simulation" and self.settings.min_members and
               len(await self.state.active_members(now_ms(), timeout_ms)) < self.settings.min_members):
            await asyncio.sleep(1.0)  # joins are not signalled to the clock; look again shortly
            await self._renew(fence)

    async def _sleep_until_wall(self, boundary: int, fence: int) -> None:
        while (wait := boundary - time.time()) > 0:
            await asyncio.sleep(min(wait, RENEW_EVERY_S))
            await self._renew(fence)


class _LostLease(Exception):
    pass


