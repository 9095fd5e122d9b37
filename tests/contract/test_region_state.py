"""The atomic steps of a region's round state, against the real Redis."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from shared.market import Slot
from shared.runtime.state import RegionState

REDIS_URL = os.environ.get("MICROTE_REDIS_URL", "redis://127.0.0.1:6379/0")
D = 60


@pytest.fixture
async def state() -> AsyncIterator[RegionState]:
    redis = Redis.from_url(REDIS_URL)
    try:
        await redis.ping()
    except OSError as exc:
        pytest.fail(f"Redis is not reachable at {REDIS_URL} ({exc}); run scripts/services.sh redis")
    region = "t" + secrets.token_hex(4)
    yield RegionState(redis, region)
    keys = [k async for k in redis.scan_iter(match=f"mt:\\{{{region}\\}}:*")]
    if keys:
        await redis.delete(*keys)
    await redis.aclose()


async def test_no_order_slips_in_after_its_round_moved_on(state: RegionState) -> None:
    assert await state.advance_round(600, 1, 0)
    slot = Slot(720, 780)
    outcomes = await asyncio.gather(
        *(state.insert_order(slot, 600, "p", f"c{i}", f"o{i}", b"x") for i in range(30)),
        state.advance_round(660, 1, 0),
        *(state.insert_order(slot, 600, "p", f"d{i}", f"q{i}", b"x") for i in range(30)),
    )
    inserted = {o[1] for o in outcomes if isinstance(o, tuple) and o[0] == "ok"}
    moved = [o for o in outcomes if isinstance(o, tuple) and o[0] == "moved"]
    assert len(inserted) + len(moved) == 60
    assert len(await state.book(slot)) == len(inserted)  # every ok is in the book, nothing else


async def test_a_client_order_id_is_stored_once(state: RegionState) -> None:
    await state.advance_round(600, 1, 0)
    slot = Slot(720, 780)
    first = await state.insert_order(slot, 600, "p", "c1", "o1", b"x")
    again = await state.insert_order(slot, 600, "p", "c1", "o2", b"y")
    assert first == ("ok", "o1")
    assert again == ("duplicate", "o1")
    assert await state.book(slot) == [b"x"]


async def test_a_round_start_with_a_lower_fence_is_refused(state: RegionState) -> None:
    assert await state.advance_round(600, 2, 0)
    assert not await state.advance_round(660, 1, 0)
    assert await state.advance_round(600, 2, 0)  # the same holder restating its round (a restarted loop) ...
    assert await state.current_round() == (600, 2)  # ... moves nothing
    assert await state.advance_round(600, 3, 0)  # a new clock may restate the round under a higher fence
    assert not await state.advance_round(540, 4, 0)  # but never move the market back
    assert await state.current_round() == (600, 3)


async def test_the_lease_has_one_holder_and_every_taking_raises_the_fence(state: RegionState) -> None:
    first = await state.take_lease("a", 10_000)
    assert first is not None
    assert await state.take_lease("b", 10_000) is None
    assert await state.take_lease("a", 10_000) == first  # renewal keeps the fence
    await state.release_lease("a")
    second = await state.take_lease("b", 10_000)
    assert second is not None and second > first


async def test_readings_are_refused_once_their_slot_is_claimed_for_reconciliation(state: RegionState) -> None:
    await state.advance_round(600, 1, 0)
    slot = Slot(600, 660)
    assert await state.add_reading(slot, "p1", b"r1") == "ok"
    assert await state.add_reading(slot, "p1", b"r1-again") == "duplicate"
    assert await state.claim("reconcile", slot, "replica-a") == "new"
    assert await state.add_reading(slot, "p2", b"r2") == "reconciled"
    assert await state.readings(slot) == {"p1": b"r1"}


async def test_a_claim_belongs_to_one_replica_until_it_finishes(state: RegionState) -> None:
    await state.advance_round(600, 1, 0)
    slot = Slot(600, 660)
    assert await state.claim("reconcile", slot, "a") == "new"
    assert await state.claim("reconcile", slot, "b") == "busy"
    assert await state.claim("reconcile", slot, "a") == "again"
    await state.finish_reconciling(slot)
    assert await state.claim("reconcile", slot, "b") == "done"
    assert await state.reconciled_upto() == 660
    assert await state.add_reading(slot, "p3", b"r3") == "reconciled"


async def test_finishing_a_slot_that_was_cleaned_up_leaves_no_key(state: RegionState) -> None:
    await state.advance_round(600, 1, 0)
    slot = Slot(600, 660)
    await state.claim("reconcile", slot, "a")
    await state.drop_delivery(slot)
    await state.finish_reconciling(slot)
    assert await state.redis.exists(state.key("claim", "reconcile", "600:660")) == 0


async def test_a_slot_reconciled_and_cleaned_up_is_never_claimed_anew(state: RegionState) -> None:
    slot = Slot(600, 660)
    assert await state.claim("reconcile", slot, "a") == "new"
    await state.finish_reconciling(slot)
    await state.drop_delivery(slot)  # the ledger recorded it: its claim keys are gone
    assert await state.claim("reconcile", slot, "b") == "done"
    assert await state.claim("clear", slot, "b") == "done"


async def test_the_clock_sees_a_recorded_slot_until_it_forgets_the_round(state: RegionState) -> None:
    slot = Slot(600, 660)
    assert not await state.is_recorded(slot)
    await state.mark_recorded(slot)
    assert await state.is_recorded(slot)
    await state.forget_round(600, 60)
    assert not await state.is_recorded(slot)


async def test_bad_input_is_counted_per_sender_and_day_worst_first(state: RegionState) -> None:
    for sender, times in (("anonymous", 3), ("user:h001", 1), ("claims:h002", 5)):
        for _ in range(times):
            await state.count_bad_input(sender, "2026-12-06")
    await state.count_bad_input("anonymous", "2026-12-07")

    assert await state.bad_input("2026-12-06") == [("claims:h002", 5), ("anonymous", 3), ("user:h001", 1)]
    assert await state.bad_input("2026-12-07") == [("anonymous", 1)]
    assert await state.bad_input("2026-12-06", most=1) == [("claims:h002", 5)]


async def test_forgetting_everything_keeps_only_a_rebuild_in_progress(state: RegionState) -> None:
    await state.advance_round(600, 1, 0)
    await state.join("p", 0)
    await state.create_generation("g1")
    assert await state.lock_rebuild("me", 10_000)
    assert await state.forget_everything() >= 3
    assert await state.generation() is None and await state.current_round() is None
    assert await state.key_count() == 1  # the lock
    await state.unlock_rebuild("me")
    assert await state.key_count() == 0


async def test_a_reading_accepted_before_is_a_duplicate_even_once_its_slot_is_reconciled(state: RegionState) -> None:
    """Its first answer may have been lost in an outage: the repeat must be answered alike."""
    slot = Slot(600, 660)
    assert await state.add_reading(slot, "p", b"r1") == "ok"
    assert await state.claim("reconcile", slot, "a") == "new"
    await state.finish_reconciling(slot)
    assert await state.add_reading(slot, "p", b"r2") == "duplicate"
    assert await state.add_reading(slot, "q", b"r3") == "reconciled"
    assert (await state.readings(slot))["p"] == b"r1"
