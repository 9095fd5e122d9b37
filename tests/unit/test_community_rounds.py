"""A simulated household's round survives being cut short: a round start seen again
before the round is done (redelivered after a broker restart cancelled the first play)
plays the same plan again, with the same requests, and finishes; once done, never again."""

from __future__ import annotations

import asyncio
from typing import Any

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
