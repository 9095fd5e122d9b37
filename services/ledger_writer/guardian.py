"""The round state's guardian: it gives a new region its state's generation, and rebuilds
a lost state from the ledger (shared.runtime.rebuild).

Redis without the generation key means one of two things: a region with no history (its
state is born empty), or a region whose state Redis lost (a restart without persistence,
a flush, a failover to an empty replica). A Redis that holds an older round or a lower
acceptance sequence than the ledger recorded (a failover to a replica that lagged) is
stale: its state is dropped and rebuilt the same way. Every other service waits meanwhile. The
guardian first lets this ledger-writer record everything still in its queue, so that the
ledger holds every order, reading and fact published before the loss, then rebuilds."""

from __future__ import annotations

import asyncio
import secrets
import time

from services.ledger_writer.handlers import LedgerWriter
from shared.runtime.ledger import LedgerStore
from shared.runtime.queues import QueueInspector
from shared.runtime.rebuild import has_history, snapshot
from shared.runtime.service import Service, now_ms

GUARDIAN = "state-guardian"
LOOK_EVERY_S = 0.5
LOCK_MS = 120_000
QUIET_S = 1.0  # the queue must stay empty this long before a rebuild


class StateGuardian:
    def __init__(self, service: Service, store: LedgerStore, writer: LedgerWriter) -> None:
        self.svc = service
        self.store = store
        self.writer = writer
        self.inspector = QueueInspector(service.settings.amqp_url)

    async def run(self) -> None:
        while True:
            self.svc.beat(GUARDIAN)
            if await self.svc.state.generation() is None:
                await self.guard()
            else:
                await self.check_stale()
            await asyncio.sleep(LOOK_EVERY_S)

    async def check_stale(self) -> None:
        """A failover to a replica that lags: Redis holds an older round or a lower acceptance
        sequence than the ledger has recorded. Its state cannot be trusted: drop it, and the
        next look rebuilds it from the ledger."""
        state, writer = self.svc.state, self.writer
        current, seq = await state.current_round(), await state.seq()
        behind = (current is not None and current[0] < writer.latest_round) or seq < writer.max_seq
        if not behind:
            return
        self.svc.log.error("round_state_stale_dropped", redis_round=None if current is None else current[0],
                           recorded_round=writer.latest_round, redis_seq=seq, recorded_seq=writer.max_seq)
        await state.forget_everything()

    async def guard(self) -> None:
        svc, holder = self.svc, self.svc.instance
        if not await svc.state.lock_rebuild(holder, LOCK_MS):
            return  # another replica is on it
        try:
            if await svc.state.generation() is not None:
                return
            token = secrets.token_hex(8)
            if not await has_history(self.store, svc.region):
                if await svc.state.create_generation(token):
                    svc.log.info("round_state_born", generation=token)
                return
            svc.log.error("round_state_lost_rebuilding")
            began = time.monotonic()
            await self._drain()
            snap = await snapshot(self.store, svc.settings.market)
            await svc.state.restore(snap, token, now_ms())
            svc.metrics.state_rebuilds.labels(svc.region).inc()
            svc.log.warning("round_state_rebuilt", generation=token, round=snap.round_start, fence=snap.fence,
                            members=len(snap.members), open_books=len(snap.books), seconds=time.monotonic() - began)
        finally:
            await svc.state.unlock_rebuild(holder)

    async def _drain(self) -> None:
        """Until everything published before the loss is in the ledger: this service's queue
        empty and nothing in hand, for QUIET_S (the other services wait, so nothing new comes)."""
        quiet_since: float | None = None
        while True:
            self.svc.beat(GUARDIAN)
            idle = await self._queue_depth() == 0 and self.svc.in_flight == 0
            if not idle:
                quiet_since = None
            elif quiet_since is None:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= QUIET_S:
                return
            await asyncio.sleep(0.1)

    async def _queue_depth(self) -> int:
        name = f"microte.{self.svc.region}.{self.svc.name}"
        state = (await self.inspector.states([name]))[name]
        return 0 if state is None else state.messages

    async def close(self) -> None:
        await self.inspector.close()
