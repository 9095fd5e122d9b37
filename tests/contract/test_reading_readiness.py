"""When the meter-collector counts a delivered slot as ready to reconcile, against the real
Redis: once every member has reported, and not before. As many readings as members is not
enough on its own: a reading of a member who has left since, or a field that is nobody's,
must not stand in for a member's reading (a slot reconciled early freezes its inputs and
refuses the missing member's reading for good)."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
from redis.asyncio import Redis

from services.meter_collector.handlers import MeterCollector
from shared.market import Slot
from shared.runtime.service import now_ms
from shared.runtime.settings import from_env
from shared.runtime.state import Joined, ReadingOp, RegionState

REDIS_URL = os.environ.get("MICROTE_REDIS_URL", "redis://127.0.0.1:6379/0")
SLOT = Slot(600, 660)


@pytest.fixture
async def collector() -> AsyncIterator[MeterCollector]:
    redis = Redis.from_url(REDIS_URL)
    region = "t" + secrets.token_hex(4)
    state = RegionState(redis, region)
    await state.create_generation("g0")
    await state.join([Joined(p) for p in ("p1", "p2", "p3")], now_ms())
    await state.advance_round(600, 1, 0)  # the round of slot 600-660: its readings come now
    service: Any = SimpleNamespace(settings=from_env({"MICROTE_REGION": region}), state=state)
    yield MeterCollector(service)
    keys = [k async for k in redis.scan_iter(match=f"mt:\\{{{region}\\}}:*")]
    if keys:
        await redis.delete(*keys)
    await redis.aclose()


async def report(collector: MeterCollector, *participants: str) -> None:
    _, results = await collector.state.apply_readings([ReadingOp(p, SLOT, f"r-{p}".encode()) for p in participants])
    assert [status for status, _ in results] == ["ok"] * len(participants)


async def test_a_slot_is_ready_once_every_member_has_reported(collector: MeterCollector) -> None:
    await report(collector, "p1", "p2")
    assert await collector._next_ready() is None
    await report(collector, "p3")
    assert await collector._next_ready() == SLOT


async def test_a_field_that_is_no_members_reading_does_not_make_a_slot_ready(collector: MeterCollector) -> None:
    await report(collector, "p1", "p2")
    await collector.state.redis.hset(collector.state.key("readings", "600:660"), "poison", b"\xc1")
    assert await collector._next_ready() is None  # three readings for three members, but not p3's
    await report(collector, "p3")
    assert await collector._next_ready() == SLOT


async def test_the_reading_of_a_member_who_left_does_not_stand_in_for_anothers(collector: MeterCollector) -> None:
    await report(collector, "p1", "p3")
    assert await collector.state.leave("p3")
    assert await collector._next_ready() is None  # two readings for two members, but not p2's
    await report(collector, "p2")
    assert await collector._next_ready() == SLOT


async def test_a_late_reading_of_a_slot_being_reconciled_waits_until_the_slot_is_provisional(
        collector: MeterCollector) -> None:
    state = collector.state
    assert await state.claim("reconcile", SLOT, "another replica") == "new"
    ops = [ReadingOp("p1", SLOT, b"r-p1", late_ok=True)]
    _, results = await state.apply_readings(ops)
    assert results == [("reconciling", b"")]

    async def finish() -> None:  # the other replica finishes the slot's reconciliation a little later
        await asyncio.sleep(0.3)
        await state.finish_reconciling(SLOT, SLOT.end + 3600)

    done = asyncio.create_task(finish())
    await collector._while_reconciling(ops, results)
    assert results == [("late", b"")]  # what only the slot's end of reconciliation gives
    await done  # its own reply may come after the collector saw the slot provisional


async def test_a_true_up_waits_for_another_replica_that_holds_its_slot(collector: MeterCollector) -> None:
    state = collector.state
    collector.svc.instance = "me"
    assert await state.lock("true-up:600:660", "another replica")
    assert not await collector.adjust(SLOT)  # the tick does not wait: it looks again later
    waiting = asyncio.create_task(collector.adjust(SLOT, wait=True))
    await asyncio.sleep(0.3)
    assert not waiting.done()  # a late reading's answer waits for its adjustment
    await state.unlock("true-up:600:660", "another replica")
    assert await asyncio.wait_for(waiting, 5)
