"""The atomic steps of a region's round state, against the real Redis."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
from redis.asyncio import Redis

from shared.market import Reading, Slot
from shared.messages import decode_as
from shared.messages import types as t
from shared.runtime.ledger import RecordBatch
from shared.runtime.ledger.memory import MemoryLedgerStore
from shared.runtime.rebuild import snapshot
from shared.runtime.settings import MarketSettings
from shared.runtime.state import IntakeLimits, IntakeOp, Joined, ReadingOp, RegionState, RegionStateLost
from tests.builders import order

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
    state = RegionState(redis, region)
    await state.create_generation("g0")
    await state.join([Joined(p) for p in ("p", "p1", "p2", "p3", "q")], 0)
    yield state
    keys = [k async for k in redis.scan_iter(match=f"mt:\\{{{region}\\}}:*")]
    if keys:
        await redis.delete(*keys)
    await redis.aclose()


async def insert(state: RegionState, slot: Slot, round_start: int, pid: str, coid: str, oid: str, body: bytes
                 ) -> tuple[str, str]:
    """One order, as order-intake writes it: ("ok" | "duplicate" | "moved", the order's body)."""
    found = await state.apply_intake([IntakeOp("o", pid, slot, client_order_id=coid, order_id=oid, body=body)],
                                     round_start=round_start, now_ms=0)
    if found is None:
        return "moved", ""
    status, value = found[0]
    return status, value.decode()


async def add_reading(state: RegionState, slot: Slot, pid: str, body: bytes, sender: str = "") -> str:
    _, found = await state.apply_readings([ReadingOp(pid, slot, body, sender=sender)])
    return found[0][0]


async def test_no_order_slips_in_after_its_round_moved_on(state: RegionState) -> None:
    assert await state.advance_round(600, 1, 0)
    slot = Slot(720, 780)
    outcomes = await asyncio.gather(
        *(insert(state, slot, 600, "p", f"c{i}", f"o{i}", b"x") for i in range(30)),
        state.advance_round(660, 1, 0),
        *(insert(state, slot, 600, "p", f"d{i}", f"q{i}", b"x") for i in range(30)),
    )
    inserted = [o for o in outcomes if isinstance(o, tuple) and o[0] == "ok"]
    moved = [o for o in outcomes if isinstance(o, tuple) and o[0] == "moved"]
    assert len(inserted) + len(moved) == 60
    assert len(await state.book(slot)) == len(inserted)  # every ok is in the book, nothing else


async def test_a_client_order_id_is_stored_once(state: RegionState) -> None:
    await state.advance_round(600, 1, 0)
    slot = Slot(720, 780)
    first = await insert(state, slot, 600, "p", "c1", "o1", b"x")
    again = await insert(state, slot, 600, "p", "c1", "o2", b"y")
    assert first == ("ok", "")
    assert again == ("duplicate", "x")  # the order that stands
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
    assert await add_reading(state, slot, "p1", b"r1") == "ok"
    assert await add_reading(state, slot, "p1", b"r1-again") == "duplicate"
    assert await state.claim("reconcile", slot, "replica-a") == "new"
    assert await add_reading(state, slot, "p2", b"r2") == "reconciled"
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
    assert await add_reading(state, slot, "p3", b"r3") == "reconciled"


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


async def test_a_slot_the_ledger_recorded_counts_as_reconciled_even_if_its_finish_was_lost(
        state: RegionState) -> None:
    """The meter-collector published a slot's SlotReconciled, then lost Redis before it could
    finish it; the ledger recorded the slot and its SlotRecorded dropped the slot's inputs.
    The slot is reconciled: no replica claims it again, and the next slot comes next."""
    await state.advance_round(600, 1, 0)
    assert await state.reconciled_upto() == 600
    slot = Slot(600, 660)
    assert await state.claim("reconcile", slot, "a") == "new"
    await state.store_settlements(slot, b"cleared")
    # (finish_reconciling never ran)
    await state.drop_delivery(slot)
    assert await state.reconciled_upto() == 660
    assert await state.settlements(slot) is None
    assert await state.claim("reconcile", slot, "b") == "done"
    await state.drop_delivery(Slot(540, 600))  # a late, repeated SlotRecorded never moves it back
    assert await state.reconciled_upto() == 660


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
    await state.join([Joined("p")], 0)
    assert await state.lock_rebuild("me", 10_000)
    assert await state.forget_everything() >= 3
    assert await state.generation() is None and await state.current_round() is None
    assert await state.key_count() == 1  # the lock
    await state.unlock_rebuild("me")
    assert await state.key_count() == 0


async def test_a_reading_accepted_before_is_a_duplicate_even_once_its_slot_is_reconciled(state: RegionState) -> None:
    """Its first answer may have been lost in an outage: the repeat must be answered alike."""
    slot = Slot(600, 660)
    assert await add_reading(state, slot, "p", b"r1") == "ok"
    assert await state.claim("reconcile", slot, "a") == "new"
    await state.finish_reconciling(slot)
    assert await add_reading(state, slot, "p", b"r2") == "duplicate"
    assert await add_reading(state, slot, "q", b"r3") == "reconciled"
    assert (await state.readings(slot))["p"] == b"r1"


async def test_a_batch_is_written_whole_or_not_at_all_when_its_round_moved(state: RegionState) -> None:
    await state.advance_round(600, 1, 0)
    slot = Slot(720, 780)
    ops = [IntakeOp("o", "p1", slot, client_order_id="c1", order_id="o1", body=b"x"),
           IntakeOp("f", "p1", round_start=600)]
    assert await state.apply_intake(ops, round_start=540, now_ms=0) is None
    assert await state.book(slot) == [] and await state.finished_count(600) == 0
    assert await state.apply_intake(ops, round_start=600, now_ms=0) == [("ok", b""), ("ok", b"")]
    assert await state.book(slot) == [b"x"] and await state.finished(600) == {"p1"}


async def test_an_agent_acts_only_for_the_members_registered_to_it(state: RegionState) -> None:
    await state.advance_round(600, 1, 0)
    await state.join([Joined("h1", "agg1"), Joined("h2", "agg2")], 0)
    slot = Slot(720, 780)
    ops = [IntakeOp("o", pid, slot, client_order_id="c1", order_id=f"o-{pid}", body=pid.encode(), sender="agg1")
           for pid in ("h1", "h2", "stranger")] + [IntakeOp("f", "h2", round_start=600, sender="agg1")]
    found = await state.apply_intake(ops, round_start=600, now_ms=0)
    assert [status for status, _ in found or []] == ["ok", "not_entitled", "not_entitled", "not_entitled"]
    assert await state.book(slot) == [b"h1"] and await state.finished_count(600) == 0
    assert await add_reading(state, Slot(600, 660), "h2", b"r", sender="agg1") == "not_entitled"
    assert await add_reading(state, Slot(600, 660), "h1", b"r", sender="agg1") == "ok"
    await state.leave("h1")  # leaving ends the agent's right too
    await state.join([Joined("h1")], 0)
    assert await add_reading(state, Slot(660, 720), "h1", b"r", sender="agg1") == "not_entitled"


async def test_non_members_are_refused_and_nothing_is_written(state: RegionState) -> None:
    await state.advance_round(600, 1, 0)
    slot = Slot(720, 780)
    found = await state.apply_intake([IntakeOp("o", "nobody", slot, client_order_id="c", order_id="o", body=b"x"),
                                      IntakeOp("f", "nobody", round_start=600)], round_start=600, now_ms=0)
    assert found == [("not_a_member", b""), ("not_a_member", b"")]
    assert await add_reading(state, Slot(600, 660), "nobody", b"r") == "not_a_member"
    assert await state.book(slot) == [] and await state.readings(Slot(600, 660)) == {}


async def test_cancels_answer_unknown_closed_ok_and_gone(state: RegionState) -> None:
    await state.advance_round(600, 1, 0)
    slot = Slot(720, 780)
    await insert(state, slot, 600, "p", "c1", "o1", b"x")

    def cancel(coid: str, closed: bool = False) -> IntakeOp:
        return IntakeOp("c", "p", slot, client_order_id=coid, gate_closed=closed)

    found = await state.apply_intake([cancel("nope"), cancel("c1", closed=True), cancel("c1"), cancel("c1")],
                                     round_start=600, now_ms=0)
    assert found == [("unknown", b""), ("closed", b"o1"), ("ok", b"o1"), ("gone", b"o1")]
    assert await state.book(slot) == []
    assert (await insert(state, slot, 600, "p", "c1", "o1", b"x"))[0] == "cancelled"  # its id stays used


async def test_the_finish_the_clock_waits_for_wakes_it_and_earlier_ones_do_not(state: RegionState) -> None:
    assert not await state.wait_wake(0.1)
    await state.await_finishes(600, 2)
    await state.apply_intake([IntakeOp("f", "p", round_start=600)], round_start=None, now_ms=0)
    assert not await state.wait_wake(0.1)
    await state.apply_intake([IntakeOp("f", "q", round_start=600)], round_start=None, now_ms=0)
    assert await state.wait_wake(1.0)
    assert await state.finished_count(600) == 2


async def test_sequence_numbers_are_reserved_in_blocks_that_never_overlap(state: RegionState) -> None:
    views = await asyncio.gather(*(state.intake_view(n) for n in (3, 1, 5, 2)))
    numbers = [x for (_, _, first), n in zip(views, (3, 1, 5, 2), strict=True) for x in range(first, first + n)]
    assert sorted(numbers) == list(range(1, 12))


async def test_a_state_without_its_generation_is_never_written(state: RegionState) -> None:
    await state.redis.delete(state.key("gen"))
    with pytest.raises(RegionStateLost):
        await state.apply_intake([IntakeOp("f", "p", round_start=600)], round_start=None, now_ms=0)
    with pytest.raises(RegionStateLost):
        await state.apply_readings([ReadingOp("p", Slot(600, 660), b"r")])
    assert await state.finished_count(600) == 0 and await state.readings(Slot(600, 660)) == {}


async def test_a_participant_may_submit_only_so_many_orders_for_one_slot(state: RegionState) -> None:
    await state.advance_round(600, 1, 0)
    slot, later = Slot(720, 780), Slot(780, 840)
    limits = IntakeLimits(orders_per_slot=2)

    def order(pid: str, coid: str, at: Slot = slot) -> IntakeOp:
        return IntakeOp("o", pid, at, client_order_id=coid, order_id=f"{pid}-{coid}-{at.start}", body=coid.encode())

    found = await state.apply_intake([order("p", "c1"), order("p", "c2"), order("p", "c3"), order("p", "c1"),
                                      order("q", "c1"), order("p", "c3", later)],
                                     round_start=600, now_ms=0, limits=limits)
    # The third is one too many; a repeat of the first is still its duplicate; others are free.
    assert [status for status, _ in found or []] == ["ok", "ok", "too_many_orders", "duplicate", "ok", "ok"]
    cancel = IntakeOp("c", "p", slot, client_order_id="c1")
    assert await state.apply_intake([cancel, order("p", "c4")], round_start=600, now_ms=0, limits=limits) == [
        ("ok", b"p-c1-720"), ("too_many_orders", b"")]  # a cancelled order still counts
    assert sorted(await state.book(slot)) == [b"c1", b"c2"]
    await state.drop_book(slot)
    assert await state.redis.exists(state.key("orders-of", "720-780")) == 0


async def test_a_service_that_says_it_holds_work_is_busy_until_its_mark_runs_out(state: RegionState) -> None:
    """The simulation clock waits for a service with work delivered and not yet handled,
    which the broker no longer counts as waiting (Service._say_busy)."""
    assert await state.busy(["order-intake", "matcher"]) == []
    await state.mark_busy("order-intake", 60_000)
    assert await state.busy(["order-intake", "matcher"]) == ["order-intake"]
    await state.mark_busy("matcher", 1)  # a mark runs out by itself: a service that died says nothing
    deadline = asyncio.get_running_loop().time() + 5
    while await state.busy(["matcher"]) and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)
    assert await state.busy(["order-intake", "matcher"]) == ["order-intake"]


async def test_a_key_count_can_leave_out_the_busy_marks(state: RegionState) -> None:
    await state.advance_round(600, 1, 0)
    lasting = await state.key_count()
    await state.mark_busy("order-intake", 60_000)
    await state.mark_busy("matcher", 60_000)
    assert await state.key_count() == lasting + 2
    assert await state.key_count(but=("busy",)) == lasting > 0


async def test_a_participant_beyond_its_request_rate_is_refused_until_its_bucket_refills(state: RegionState) -> None:
    await state.advance_round(600, 1, 0)
    slot = Slot(720, 780)
    limits = IntakeLimits(requests_per_s=2.0, burst=3)

    async def orders(pid: str, now_ms: int, n: int) -> list[str]:
        ops = [IntakeOp("o", pid, slot, client_order_id=secrets.token_hex(4), order_id=secrets.token_hex(4), body=b"x")
               for _ in range(n)]
        found = await state.apply_intake(ops, round_start=600, now_ms=now_ms, limits=limits)
        return [status for status, _ in found or []]

    assert await orders("p", 10_000, 4) == ["ok", "ok", "ok", "rate_limited"]  # the burst, then empty
    assert await orders("q", 10_000, 1) == ["ok"]  # every participant has its own bucket
    assert await orders("p", 10_400, 1) == ["rate_limited"]  # 0.8 of a token back
    assert await orders("p", 10_500, 2) == ["ok", "rate_limited"]  # one token back after 0.5 s at 2/s
    assert await orders("p", 20_000, 4) == ["ok", "ok", "ok", "rate_limited"]  # never more than the burst
    cancel = IntakeOp("c", "p", slot, client_order_id="nope")
    assert await state.apply_intake([cancel], round_start=600, now_ms=20_000, limits=limits) == [
        ("rate_limited", b"")]  # cancels count as requests too


async def test_a_repeated_order_or_cancel_takes_no_token_and_gets_its_first_answer(state: RegionState) -> None:
    """A request sent again (its answer lost in a broker restart) is answered as it was, even
    with the participant's bucket empty, and leaves the bucket as it was."""
    await state.advance_round(600, 1, 0)
    slot = Slot(720, 780)
    limits = IntakeLimits(requests_per_s=1.0, burst=2)

    def order(coid: str) -> IntakeOp:
        return IntakeOp("o", "p", slot, client_order_id=coid, order_id=f"o-{coid}", body=coid.encode())

    def cancel(coid: str) -> IntakeOp:
        return IntakeOp("c", "p", slot, client_order_id=coid)

    async def statuses(ops: list[IntakeOp], now_ms: int) -> list[tuple[str, bytes]]:
        return await state.apply_intake(ops, round_start=600, now_ms=now_ms, limits=limits) or []

    assert await statuses([order("c1"), cancel("c1")], 10_000) == [("ok", b""), ("ok", b"o-c1")]  # the burst
    assert await statuses([order("c2")], 10_000) == [("rate_limited", b"")]  # empty
    assert await statuses([order("c1"), cancel("c1")], 10_000) == [  # repeats: answered as before
        ("cancelled", b""), ("gone", b"o-c1")]
    assert await statuses([order("c2")], 11_000) == [("ok", b"")]  # the token of 1 s, not spent on repeats
    assert await statuses([order("c2")], 11_000) == [("duplicate", b"c2")]  # a repeat of an order in the book


async def test_the_sequence_counter_is_raised_to_the_floor_of_a_simulated_round_and_never_lowered(
        state: RegionState) -> None:
    """A simulated round's orders take numbers of their own (``simultaneous_seq``), not from
    the counter: the intake raises the counter above them, so that the ledger-writer's check
    for a lagging replica (a counter below the highest recorded number) still holds."""
    await state.advance_round(600, 1, 0)
    ops = [IntakeOp("o", "p1", Slot(720, 780), client_order_id="c1", order_id="o1", body=b"x")]
    floor = (601 << 20) - 1
    assert await state.apply_intake(ops, round_start=600, now_ms=0, seq_floor=floor) == [("ok", b"")]
    assert await state.seq() == floor
    await state.apply_intake([], round_start=600, now_ms=0, seq_floor=5)
    assert await state.seq() == floor  # never lowered
    assert (await state.intake_view(1))[2] == floor + 1  # a real-time number after it is higher still


async def test_a_members_offers_and_bids_for_a_slot_stay_within_its_connection(state: RegionState) -> None:
    """3 kW of export is 50 Wh in a minute's slot, 1.2 kW of import 20 Wh; a cancel gives its energy back."""
    await state.advance_round(600, 1, 0)
    await state.join([Joined("h", import_w=1200, export_w=3000), Joined("free")], 0)
    slot, later = Slot(720, 780), Slot(780, 840)
    limits = IntakeLimits(slot_seconds=D)

    def order(pid: str, coid: str, share: str, at: Slot = slot) -> IntakeOp:
        return IntakeOp("o", pid, at, client_order_id=coid, order_id=f"{pid}-{coid}", body=coid.encode(), share=share)

    found = await state.apply_intake([order("h", "a1", "a30"), order("h", "a2", "a21"), order("h", "a3", "a20"),
                                      order("h", "b1", "b20"), order("h", "b2", "b1"), order("h", "a4", "a20", later),
                                      order("free", "a1", "a1000000")], round_start=600, now_ms=0, limits=limits)
    assert [status for status, _ in found or []] == ["ok", "beyond_connection", "ok", "ok", "beyond_connection",
                                                     "ok", "ok"]
    assert sorted(await state.book(slot)) == [b"a1", b"a1", b"a3", b"b1"]
    # the same order again is its duplicate, not counted twice
    found = await state.apply_intake([order("h", "a1", "a30")], round_start=600, now_ms=0, limits=limits)
    assert found == [("duplicate", b"a1")]
    cancel = IntakeOp("c", "h", slot, client_order_id="a1")
    assert (await state.apply_intake([cancel], round_start=600, now_ms=0, limits=limits) or [])[0][0] == "ok"
    found = await state.apply_intake([order("h", "a5", "a30"), order("h", "a6", "a1")], round_start=600, now_ms=0,
                                     limits=limits)
    assert [status for status, _ in found or []] == ["ok", "beyond_connection"]
    # joined again without a connection: no limit
    await state.join([Joined("h")], 0)
    found = await state.apply_intake([order("h", "a7", "a999")], round_start=600, now_ms=0, limits=limits)
    assert [status for status, _ in found or []] == ["ok"]


async def test_a_reading_beyond_the_members_connection_is_refused_and_not_stored(state: RegionState) -> None:
    await state.join([Joined("h", import_w=1200, export_w=3000), Joined("x", export_w=0), Joined("y", import_w=5000)],
                     0)
    slot = Slot(600, 660)

    async def reading(pid: str, import_wh: int, export_wh: int) -> str:
        _, found = await state.apply_readings([ReadingOp(pid, slot, f"{pid}{import_wh}".encode(), import_wh=import_wh,
                                                         export_wh=export_wh)])
        return found[0][0]

    assert await reading("h", 21, 0) == "beyond_connection"
    assert await reading("h", 0, 51) == "beyond_connection"
    assert await reading("x", 10**9, 1) == "beyond_connection"
    assert await state.readings(slot) == {}
    assert await reading("h", 20, 50) == "ok"
    assert await reading("x", 10**9, 0) == "ok"
    assert await reading("y", 84, 0) == "beyond_connection"  # 5 kW for 60 s is 83.33 Wh: no rounding up
    assert await reading("y", 83, 0) == "ok"


async def test_a_rebuilt_state_holds_members_to_their_connections_and_spending_with_their_orders_counted(
        state: RegionState) -> None:
    """Redis lost: the connection, the energy of the open orders and what the day's bids may
    cost come back from the ledger."""
    store = MemoryLedgerStore()
    await store.open()
    region, slot = state.region, Slot(720, 780)
    orders = [order(oid, "h", side, wh, "0.1", seq=n, slot=slot)
              for n, (oid, side, wh) in enumerate((("o1", "ask", 30), ("o2", "ask", 15), ("o3", "bid", 20)), 1)]
    await store.write(RecordBatch(rounds=[(region, 600, 1, 0)], memberships=[(region, "h", "joined", 5)],
                                  connections=[(region, "h", 1200, 3000, 5)], orders=[(region, o) for o in orders],
                                  cancellations=[(region, "o2", slot)]))
    await state.forget_everything()
    # 0.0021 $ a day: the open bid (20 Wh at 0.1000) is 0.002 $ of it
    market = MarketSettings(region=region, max_spend_per_day=Decimal("0.0021"))
    await state.restore(await snapshot(store, market), "g1", 0)

    limits = IntakeLimits(slot_seconds=D, spend_per_day=21_000)
    day = "1970-01-01"
    found = await state.apply_intake([IntakeOp("o", "h", slot, client_order_id="s1", order_id="s1", body=b"x",
                                               day=day, worth=1001),
                                      IntakeOp("o", "h", slot, client_order_id="s2", order_id="s2", body=b"x",
                                               day=day, worth=1000)], round_start=600, now_ms=0, limits=limits)
    assert [status for status, _ in found or []] == ["beyond_spend_limit", "ok"]
    ops = [IntakeOp("o", "h", slot, client_order_id=c, order_id=c, body=b"x", share=share)
           for c, share in (("n1", "a21"), ("n2", "a20"), ("n3", "b1"))]
    found = await state.apply_intake(ops, round_start=600, now_ms=0, limits=limits)
    assert [status for status, _ in found or []] == ["beyond_connection", "ok", "beyond_connection"]
    cancel = IntakeOp("c", "h", slot, client_order_id=orders[0].client_order_id)
    assert (await state.apply_intake([cancel], round_start=600, now_ms=0, limits=limits) or [])[0][0] == "ok"
    found = await state.apply_intake([IntakeOp("o", "h", slot, client_order_id="n4", order_id="n4", body=b"x",
                                               share="a30")], round_start=600, now_ms=0, limits=limits)
    assert [status for status, _ in found or []] == ["ok"]


async def test_a_members_bids_for_one_day_stay_within_its_spending_limit(state: RegionState) -> None:
    """A limit of 0.02 $ is 200,000 units of 10**-7 $: 100 Wh at 0.1000 $/kWh (1000 ticks) is 100,000."""
    await state.advance_round(600, 1, 0)
    limits = IntakeLimits(spend_per_day=200_000)
    slot, later = Slot(720, 780), Slot(780, 840)

    def bid(coid: str, worth: int, day: str = "d1", at: Slot = slot) -> IntakeOp:
        return IntakeOp("o", "p", at, client_order_id=coid, order_id=coid, body=coid.encode(), day=day, worth=worth)

    found = await state.apply_intake([bid("b1", 100_000), bid("b2", 100_001, at=later), bid("b3", 100_000, at=later),
                                      IntakeOp("o", "p", slot, client_order_id="a1", order_id="a1", body=b"a",
                                               day="d1"),
                                      bid("b4", 1), bid("o1", 200_000, day="d2"), bid("x1", 200_001, day="d3")],
                                     round_start=600, now_ms=0, limits=limits)
    assert [status for status, _ in found or []] == ["ok", "beyond_spend_limit", "ok", "ok", "beyond_spend_limit",
                                                     "ok", "beyond_spend_limit"]
    cancel = IntakeOp("c", "p", slot, client_order_id="b1", day="d1")
    assert (await state.apply_intake([cancel], round_start=600, now_ms=0, limits=limits) or [])[0][0] == "ok"
    found = await state.apply_intake([bid("b5", 100_000), bid("b6", 1)], round_start=600, now_ms=0, limits=limits)
    assert [status for status, _ in found or []] == ["ok", "beyond_spend_limit"]


async def test_a_rebuilt_state_keeps_provisional_slots_open_to_true_up_with_their_late_readings(
        state: RegionState) -> None:
    """Redis lost during a true-up window: the slot's inputs, its late reading (adjusted for
    already) and its window come back; another late reading is kept; the slot is due final
    when the window ends, and a slot final already is not kept."""
    store = MemoryLedgerStore()
    await store.open()
    region, slot, done = state.region, Slot(600, 660), Slot(540, 600)
    readings = [(region, Reading("b", slot, import_wh=10), 1), (region, Reading("s", slot, export_wh={"solar": 5}), 2)]
    await store.write(RecordBatch(rounds=[(region, 660, 1, 0)], memberships=[(region, p, "joined", 1) for p in "bsxq"],
                                  readings=readings, reconciled=[(region, slot, 1), (region, done, 0)],
                                  adjusted=[(region, slot, 1, "s", 0)], finalized=[(region, done, 0)]))
    await state.forget_everything()
    await state.restore(await snapshot(store, MarketSettings(region=region, true_up_s=3600)), "g1", 0)

    assert list(await state.readings(slot)) == ["b"]
    assert [decode_as(b, t.ReadingAccepted).participant_id for b in await state.late_readings(slot)] == ["s"]
    assert await state.revised(slot) == 1 and await state.settlements(slot) is not None
    assert await state.due_final(slot.end + 3599) == [] and await state.due_final(slot.end + 3600) == [slot]
    _, found = await state.apply_readings([ReadingOp("x", slot, b"late-x", late_ok=True)])
    assert found[0][0] == "late" and await state.to_adjust() == [slot]
    assert not await state.begin_final(slot)  # x's adjustment is not out yet
    await state.set_revised(slot, 2)
    assert await state.done_adjusting(slot) and await state.begin_final(slot)
    _, found = await state.apply_readings([ReadingOp("q", slot, b"too-late", late_ok=True)])
    assert found[0][0] == "reconciled"  # closed to late readings
    await state.end_final(slot)
    assert await state.late_readings(slot) == [] and await state.due_final(10**10) == []


async def test_a_recorded_slot_becomes_provisional_even_if_its_reconciler_stopped_before_finishing(
        state: RegionState) -> None:
    """SlotRecorded can come before finish_reconciling (a crash between them): the slot must
    still be open to late readings; a held slot has nothing to true up and drops its inputs."""
    slot, held = Slot(600, 660), Slot(660, 720)
    await state.join([Joined("late")], 0)
    for s in (slot, held):
        assert await add_reading(state, s, "p", b"r") == "ok"
        await state.store_settlements(s, b"cleared")
        assert await state.claim("reconcile", s, "a") == "new"
    await state.mark_held(held)
    await state.drop_delivery(slot, window_end=slot.end + 3600)
    await state.drop_delivery(held, window_end=held.end + 3600)
    assert await state.settlements(slot) == b"cleared" and await state.readings(slot) == {"p": b"r"}
    assert await state.settlements(held) is None and await state.readings(held) == {}
    assert await state.due_final(slot.end + 3600) == [slot]
    _, found = await state.apply_readings([ReadingOp("late", slot, b"l1", late_ok=True),
                                           ReadingOp("late", held, b"l2", late_ok=True)])
    assert [status for status, _ in found] == ["late", "reconciled"]
    _, found = await state.apply_readings([ReadingOp("late", slot, b"l1-again", late_ok=True)])
    assert found == [("late_duplicate", b"l1")]


async def test_a_late_reading_waits_while_its_slot_is_reconciled_and_a_final_slot_stays_final(
        state: RegionState) -> None:
    slot = Slot(600, 660)
    await state.join([Joined("late")], 0)
    assert await state.claim("reconcile", slot, "a") == "new"
    _, found = await state.apply_readings([ReadingOp("late", slot, b"l", late_ok=True)])
    assert found == [("reconciling", b"")] and await state.late_readings(slot) == []
    _, found = await state.apply_readings([ReadingOp("late", slot, b"l", late_ok=False)])
    assert found == [("reconciled", b"")]  # no window: too late
    await state.finish_reconciling(slot, slot.end + 3600)
    _, found = await state.apply_readings([ReadingOp("late", slot, b"l", late_ok=True)])
    assert found == [("late", b"")]
    await state.set_revised(slot, 1)
    assert await state.begin_final(slot)
    await state.end_final(slot)
    await state.drop_delivery(slot, window_end=slot.end + 3600)  # its SlotRecorded, seen again
    assert await state.due_final(10**10) == []
