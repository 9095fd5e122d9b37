"""A simulated household's round survives being cut short: a round start seen again
before the round is done (redelivered after a broker restart cancelled the first play)
plays the same plan again, with the same requests, and finishes; once done, never again."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest

from services.participants.community import Community
from services.participants.profiles import community
from shared.messages import types as t
from shared.runtime import topology as k

NOON = 1782064800  # 2026-06-21 11:00 in Vancouver: the sun is up, the battery moves


def round_started(start: int) -> t.RoundStarted:
    def slot(at: int) -> t.Slot:
        return t.Slot(at, at + 60)
    return t.RoundStarted(region="r1", fence=1, started_at_ms=0, duration=60, close_steps=2,
                          timezone="America/Vancouver", current_round=slot(start), last_settle=slot(start + 60),
                          next_settle=slot(start + 120), grid=[])


class Cut(Exception):
    pass


async def test_a_round_cut_short_plays_the_same_requests_again_and_then_never_again() -> None:
    sim = Community("amqp://unused", "r1", community(8, 7), "America/Vancouver")
    home = next(p for p in sim.participants if p.home.battery_wh)
    sent: list[tuple[str, t.Message]] = []
    cut = {"at": k.FINISH}

    async def send(message: t.Message, kind: str) -> None:
        if kind == cut["at"]:
            cut["at"] = ""
            raise asyncio.CancelledError  # the consumer's task, cancelled as its channel closed
        sent.append((kind, message))

    sim.send = send  # type: ignore[method-assign]
    r = round_started(NOON)
    with pytest.raises(asyncio.CancelledError):
        await home.play(r)
    first, battery = list(sent), home.soc_wh
    assert [kind for kind, _ in first] == [k.READING]
    assert NOON in home.played and NOON not in home.done

    sent.clear()
    await home.play(r)  # redelivered: the same reading, the finish this time, the battery not moved twice
    assert sent == [*first, (k.FINISH, t.FinishRound(region="r1", participant_id=home.pid, round_start=NOON))]
    assert home.soc_wh == battery and NOON in home.done

    sent.clear()
    await home.play(r)  # announced again by a new clock: done, nothing sent
    assert sent == []


async def test_an_aggregator_plays_a_round_cut_short_with_the_same_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    sim = Community("amqp://unused", "r1", community(4, 7), "America/Vancouver", aggregators=1)
    (agg,) = sim.aggregators
    batches: list[tuple[str, list[Any]]] = []
    calls = {"n": 0}

    async def submit(batch_id: str, items: list[t.ParticipantRound]) -> list[t.BatchAnswer]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise Cut()
        batches.append((batch_id, items))
        return []

    monkeypatch.setattr(agg, "submit", submit)
    r = round_started(NOON)
    with pytest.raises(Cut):
        await agg.play(r)
    await agg.play(r)
    await agg.play(r)
    assert len(batches) == 1 and batches[0][0] == f"{agg.agent_id}-{NOON}"
    assert {i.participant_id for i in batches[0][1]} == {p.pid for p in sim.participants}
    assert all(NOON in p.done for p in sim.participants)


def trading_round(start: int) -> t.RoundStarted:
    """A round start whose next open slot has grid prices: households quote for it."""
    r = round_started(start)
    return msgspec.structs.replace(r, grid=[t.GridQuote(slot=r.next_settle, buy_price="0.1449",
                                                        sell_price="0.069")])


def round_community(size: int = 40) -> Community:
    return Community("amqp://unused", "r1", community(size, 7), "America/Vancouver", requests="round")


async def test_a_household_on_its_own_sends_its_whole_round_as_one_batch_of_its_own_once() -> None:
    sim = round_community()
    r = trading_round(NOON)
    home = next(p for p in sim.participants if (plan := p.plan(r)) and plan[1] and not plan[2])
    reading, orders, _ = home.plan(r) or ((), (), ())
    sent: list[tuple[str, t.Message]] = []
    cut = {"first": True}

    async def send(message: t.Message, kind: str) -> None:
        if cut.pop("first", False):
            raise asyncio.CancelledError  # a broker restart cut the first play short
        sent.append((kind, message))

    sim.send = send  # type: ignore[method-assign]
    with pytest.raises(asyncio.CancelledError):
        await home.play(r)
    await home.play(r)  # redelivered: the same batch
    await home.play(r)  # announced again: done, nothing sent
    assert sent == [(k.BATCH, t.SubmitBatch(region="r1", participant_id=home.pid, batch_id=f"{home.pid}-{NOON}", items=[
        t.ParticipantRound(participant_id=home.pid, orders=list(orders), reading=reading, finish_round=NOON)]))]
    assert NOON in home.done


def _accepted(pid: str, o: t.OrderItem) -> t.OrderAccepted:
    return t.OrderAccepted(region="r1", order_id=f"id-{o.client_order_id}", client_order_id=o.client_order_id,
                           participant_id=pid, side=o.side, quantity_wh=o.quantity_wh, price=o.price,
                           source=o.source, slot=o.slot, seq=1, submitted_at_ms=1)


@pytest.mark.parametrize("accepted", [True, False])
async def test_a_household_that_changes_its_mind_waits_for_its_orders_answers_then_sends_a_second_batch(
        accepted: bool) -> None:
    sim = round_community()
    found = [(p, r) for start in range(NOON, NOON + 20 * 60, 60) for p in sim.participants
             if (plan := p.plan(r := trading_round(start))) and plan[1] and plan[2]]
    assert found, "no household of 40 changes its mind in 20 rounds"
    home, r = found[0]
    start = r.current_round.start
    reading, orders, _ = home.plan(r) or ((), (), ())
    first = orders[0]
    sent: list[t.SubmitBatch] = []

    async def send(message: t.Message, kind: str) -> None:
        assert kind == k.BATCH and isinstance(message, t.SubmitBatch)
        sent.append(message)
        if len(sent) == 1:  # order-intake answers the first batch (the meter-collector's answer does not count)
            answers: list[t.BatchAnswer] = [
                _accepted(home.pid, o) if accepted else t.Rejected(
                    region="r1", participant_id=home.pid, request="SubmitOrder", reason="gate_closed",
                    reference=o.client_order_id) for o in orders]
            for service in ("meter-collector", "order-intake"):
                asyncio.get_running_loop().call_soon(asyncio.ensure_future, home.on_message(t.BatchAnswered(
                    region="r1", participant_id=home.pid, batch_id=message.batch_id, service=service,
                    answers=answers if service == "order-intake" else [])))

    sim.send = send  # type: ignore[method-assign]
    await asyncio.wait_for(home.play(r), timeout=5)
    assert [b.batch_id for b in sent] == [f"{home.pid}-{start}", f"{home.pid}-{start}-again"]
    assert sent[0].items == [t.ParticipantRound(participant_id=home.pid, orders=list(orders), reading=reading)]
    again = sent[1].items[0]
    assert again.finish_round == start and again.participant_id == home.pid
    if accepted:  # cancel the first order, quote half of it again under a new id
        assert again.cancels == [t.CancelItem(client_order_id=first.client_order_id, slot=first.slot)]
        assert [(o.client_order_id, o.quantity_wh) for o in again.orders] == [
            (f"{first.client_order_id}-r", max(1, first.quantity_wh // 2))]
    else:  # nothing to change: only the finish
        assert again.cancels == [] and again.orders == []
    assert sim.tally.answers["OrderAccepted" if accepted else "Rejected"] == len(orders)
    assert start in home.done


def test_a_community_refuses_an_unknown_way_of_sending() -> None:
    with pytest.raises(ValueError, match="requests must be one of round, single"):
        Community("amqp://unused", "r1", community(2, 7), "UTC", requests="batch")


async def test_a_round_keeps_each_batterys_charge_at_the_end_of_the_slot_it_delivered() -> None:
    sim = Community("amqp://unused", "r1", community(8, 7), "America/Vancouver")

    async def send(message: t.Message, kind: str) -> None:
        pass

    sim.send = send  # type: ignore[method-assign]
    for start in (NOON, NOON + 60):
        for p in sim.participants:
            await p.play(round_started(start))
    owners = {p.pid: p for p in sim.participants if p.home.battery_wh}
    assert owners and len(owners) < len(sim.participants)
    assert set(sim.tally.charge) == {(NOON, NOON + 60), (NOON + 60, NOON + 120)}
    for slot in sim.tally.charge.values():
        assert set(slot) == set(owners)
        assert all(0 <= wh <= owners[pid].home.battery_wh for pid, wh in slot.items())
    assert sim.tally.charge[(NOON + 60, NOON + 120)] == {pid: p.soc_wh for pid, p in owners.items()}
