"""Attacks from a connected household, at round 20-25 of a run: every one is refused and
the ledger is the fault-free run's, entry for entry, with a passing audit.

The household here shares the broker user of the simulated community (the local
default), so only the services' signatures and the rules of each routing key stand
between it and the ledger; tests/e2e/test_identity.py covers per-household users.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Awaitable, Callable
from typing import cast

import aio_pika
import pytest
from redis.asyncio import Redis

from shared.messages import encode
from shared.messages import types as t
from shared.runtime.state import RegionState
from tests.faults.harness import Simulator
from tests.faults.inject import FaultContext, publish, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.e2e]

D = 60  # seconds per round in the suite's runs
ATTACKER = "h008"
VICTIM = "h001"


def current_round(f: FaultContext) -> int:
    return max(max(p.played) for p in f.community.participants if p.played)


def open_slot(f: FaultContext) -> t.Slot:
    """The slot that still takes orders now, which the matcher has not cleared yet."""
    start = current_round(f) + 2 * D
    return t.Slot(start, start + D)


def settlement(seller: str, buyer: str) -> t.SettlementRecord:
    return t.SettlementRecord(settlement_id="forged000000000000000001", source="solar", buyer=buyer, seller=seller,
                              bid_id="forgedbid", ask_id="forgedask", quantity_wh=1_000_000, buy_price="10",
                              sell_price="10")


async def to_key(f: FaultContext, key: str, message: t.Message, copies: int = 1) -> None:
    await publish(f.amqp_url, f"{f.region}.{key}", [encode(message)] * copies, persistent=True)


async def order_accepted_for_the_victim(f: FaultContext) -> None:
    slot = open_slot(f)
    await to_key(f, f"to.{VICTIM}.order_accepted", t.OrderAccepted(
        region=f.region, order_id="forgedorder01", client_order_id="forged-1", participant_id=VICTIM, side="bid",
        quantity_wh=1_000_000, price="10", source="solar", slot=slot, seq=1, submitted_at_ms=0))


async def slot_cleared_before_the_real_one(f: FaultContext) -> None:
    slot = open_slot(f)  # cleared two rounds from now: the forgery comes first
    await to_key(f, "fact.slot_cleared", t.SlotCleared(region=f.region, slot=slot, rule="midpoint",
                                                      matched_at_ms=slot.start * 1000, order_count=2,
                                                      settlements=[settlement(ATTACKER, VICTIM)]))


async def slot_reconciled(f: FaultContext) -> None:
    start = current_round(f)
    entry = t.EntryRecord(entry_id="forgedentry01", kind="p2p", seller=ATTACKER, buyer=VICTIM, source="solar",
                          quantity_wh=1_000_000, buy_price="10", sell_price="10")
    await to_key(f, "fact.slot_reconciled", t.SlotReconciled(
        region=f.region, slot=t.Slot(start, start + D), reconciled_at_ms=0, missing_readings=[], entries=[entry],
        settled_wh=1_000_000))


async def round_started_with_a_huge_fence(f: FaultContext) -> None:
    """The next round, early and under a huge fence: it would clear the open slot.

    The simulated households are clients: they cannot check the service key, so a forged
    round start on the topic they listen to would fool them (in a deployment they cannot
    publish facts at all: topic permissions). With the one broker user of the local
    simulation, the attacker may bind queues, so it reaches the services alone through an
    exchange of its own; the routing key the services see is the real one."""
    start = current_round(f) + D
    body = encode(t.RoundStarted(
        region=f.region, fence=10**12, started_at_ms=0, duration=D, close_steps=2, timezone="UTC",
        current_round=t.Slot(start, start + D), last_settle=t.Slot(start + D, start + 2 * D),
        next_settle=t.Slot(start + 2 * D, start + 3 * D), grid=[]))
    connection = await aio_pika.connect(f.amqp_url)
    async with connection:
        channel = await connection.channel()
        evil = await channel.declare_exchange(f"evil-{f.region}", aio_pika.ExchangeType.TOPIC, auto_delete=True)
        for service in ("matcher", "meter-collector"):
            queue = await channel.declare_queue(f"microte.{f.region}.{service}", passive=True)
            await queue.bind(evil, routing_key=f"{f.region}.fact.round_started")
        await evil.publish(aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                           routing_key=f"{f.region}.fact.round_started")
        for service in ("matcher", "meter-collector"):
            queue = await channel.declare_queue(f"microte.{f.region}.{service}", passive=True)
            await queue.unbind(evil, routing_key=f"{f.region}.fact.round_started")


async def facts_on_the_reading_key(f: FaultContext) -> None:
    slot = open_slot(f)
    await to_key(f, "in.reading", t.SlotCleared(region=f.region, slot=slot, rule="midpoint", matched_at_ms=0,
                                                order_count=2, settlements=[settlement(ATTACKER, VICTIM)]))
    await to_key(f, "in.reading", t.SlotRecorded(region=f.region, slot=t.Slot(current_round(f), current_round(f) + D),
                                                 entry_count=0))


async def leave_in_the_victims_name_on_the_order_key(f: FaultContext) -> None:
    # With one broker user for all, a LeaveMarket on in.member cannot be told from the real
    # one (see test_identity); on any other key it does not belong and is refused.
    await to_key(f, "in.order", t.LeaveMarket(region=f.region, participant_id=VICTIM))


async def huge_readings(f: FaultContext) -> None:
    start = current_round(f) - D  # delivered already, not yet reconciled
    slot = t.Slot(start, start + D)
    await to_key(f, "in.reading", t.SubmitReading(region=f.region, participant_id="mallory", slot=slot,
                                                  import_wh=0, export_wh={"solar": 10**12}))
    await to_key(f, "in.reading", t.SubmitReading(region=f.region, participant_id=VICTIM, slot=slot,
                                                  import_wh=0, export_wh={"solar": 10**12}))


async def an_ask_of_2_63_minus_1_wh(f: FaultContext) -> None:
    body = encode(t.SubmitOrder(region=f.region, participant_id=ATTACKER, client_order_id="huge-1", side="ask",
                                quantity_wh=1, price="0.01", source="solar", slot=open_slot(f)))
    # The same order with the quantity patched to 2**63-1 (msgpack int64), bypassing our types.
    huge = body.replace(b"\xabquantity_wh\x01", b"\xabquantity_wh\xd3" + (2**63 - 1).to_bytes(8, "big"))
    assert huge != body
    await publish(f.amqp_url, f"{f.region}.in.order", [huge], persistent=True)


async def deeply_nested_bodies(f: FaultContext) -> None:
    await publish(f.amqp_url, f"{f.region}.in.order", [b"\x91" * 100_000 + b"\xc0"] * 300, persistent=True)
    await publish(f.amqp_url, f"{f.region}.in.reading", [b"\x81\xa1a" * 100_000 + b"\xc0"] * 300, persistent=True)


ATTACKS: dict[str, Callable[[FaultContext], Awaitable[None]]] = {
    "order_accepted_for_the_victim": order_accepted_for_the_victim,
    "slot_cleared_before_the_real_one": slot_cleared_before_the_real_one,
    "slot_reconciled": slot_reconciled,
    "round_started_with_a_huge_fence": round_started_with_a_huge_fence,
    "facts_on_the_reading_key": facts_on_the_reading_key,
    "leave_on_the_wrong_key": leave_in_the_victims_name_on_the_order_key,
    "huge_readings": huge_readings,
    "an_ask_of_2_63_minus_1_wh": an_ask_of_2_63_minus_1_wh,
    "deeply_nested_bodies": deeply_nested_bodies,
}


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("attack", sorted(ATTACKS))
async def test_an_attack_from_a_household_is_refused_and_changes_nothing(sim: Simulator, attack: str) -> None:
    async def hook(f: FaultContext) -> None:
        await f.at_round(22)
        f.note(attack)
        await ATTACKS[attack](f)

    got = await sim.check_against_baseline(hook, name=f"attack-{attack}")
    print(f"\n{attack}: {got.summary()}")


@pytest.mark.timeout(1800)
async def test_every_attack_at_once_is_refused_and_changes_nothing(sim: Simulator) -> None:
    """The CI subset: all of the above in one run."""
    senders: list[tuple[str, int]] = []

    async def hook(f: FaultContext) -> None:
        await f.at_round(22)
        for name, attack in sorted(ATTACKS.items()):
            f.note(name)
            await attack(f)
        redis = Redis.from_url(f.servers.redis.url)
        state, day = RegionState(redis, f.region), time.strftime("%Y-%m-%d", time.gmtime())

        async def counted() -> bool:
            senders[:] = await state.bad_input(day)
            return {"anonymous", f"claims:{ATTACKER}"} <= {s for s, _ in senders}

        try:
            await wait_until(counted, 120, "the bad input was counted per sender")
        finally:
            await redis.aclose()

    await sim.check_against_baseline(hook, name="attack-all")
    print(f"\nbad input by sender: {senders}")


async def _queue_depth(f: FaultContext, name: str) -> int:
    connection = await aio_pika.connect(f.amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(name, passive=True)
        return int(queue.declaration_result.message_count or 0)


def _metric(f: FaultContext, service: str, name: str) -> float:
    with urllib.request.urlopen(f.ensemble.url(service, "/metrics"), timeout=5) as answer:
        text = answer.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


@pytest.mark.timeout(1800)
async def test_a_flood_of_junk_and_a_50_mb_body_leave_memory_and_the_dead_letter_queue_bounded(
        sim: Simulator) -> None:
    # The junk is more than twice order-intake's window (16,384) and eight times the
    # dead-letter cap; the market waits while order-intake works through it.
    cap, junk = 5_000, 40_000
    seen: dict[str, object] = {}

    async def hook(f: FaultContext) -> None:
        await f.at_round(21)
        before = f.ensemble.rss_kib()["order-intake"]
        await publish(f.amqp_url, f"{f.region}.in.order", [b"\x00" * 50_000_000])
        await f.junk(junk, "order")
        dead = f"microte.{f.region}.dead"
        peak = before

        async def drained() -> bool:
            nonlocal peak
            peak = max(peak, f.ensemble.rss_kib().get("order-intake", 0))
            return await _queue_depth(f, f"microte.{f.region}.order-intake") == 0 and \
                _metric(f, "order-intake", "microte_dead_letters_total") >= junk + 1

        await wait_until(drained, 600, "order-intake worked through the flood", every_s=0.5)
        # The broker itself says that each service consumes under its prefetch limit.
        prefetch = {c["queue_name"]: int(c["prefetch_count"])
                    for c in await asyncio.to_thread(f.servers.rabbit.consumers)
                    if str(c["queue_name"]).startswith(f"microte.{f.region}.") and "participant" not in c["queue_name"]}
        seen["prefetch"] = prefetch
        seen.update(before=before, peak=peak, dead=await _queue_depth(f, dead),
                    overflow=int(_metric(f, "order-intake", "microte_dead_letter_overflow_total")))

    got = await sim.check_against_baseline(hook, {"MICROTE_DEAD_LETTER_MAX": str(cap)}, name="flood", timeout_s=900)
    print(f"\nflood: {got.summary()}; order-intake RSS {seen['before']} -> peak {seen['peak']} KiB; "
          f"dead-letter queue {seen['dead']}, overflowed {seen['overflow']}")
    prefetch = cast(dict[str, int], seen["prefetch"])
    assert {q.rsplit(".", 1)[1] for q in prefetch} >= {"order-intake", "matcher", "meter-collector", "ledger-writer"}
    assert all(0 < n <= 16_384 for n in prefetch.values()), prefetch  # bounded (exact: test_prefetch.py)
    assert seen["dead"] <= cap
    assert seen["overflow"] >= junk + 1 - cap
    assert seen["peak"] < seen["before"] + 300 * 1024, "order-intake's memory grew with the backlog"
