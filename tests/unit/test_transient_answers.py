"""Answers to requests are transient; everything else the services publish is persistent.
A broker restart may lose an answer on its way, so the client and the simulated households
send a request still unanswered again as soon as their connection is back."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from microte import Client
from services.participants.community import Community, Participant
from shared.messages import decode
from shared.messages import types as t
from shared.runtime import topology as k
from shared.runtime.topology import Keys, persistent
from tests.unit.test_community_rounds import NOON, round_community, trading_round

KEYS = Keys("r1")


@pytest.mark.parametrize("kind", [k.ORDER_ACCEPTED, k.ORDER_CANCELLED, k.REJECTED, k.READING_ACCEPTED, k.BATCH])
def test_an_answer_to_a_request_is_transient(kind: str) -> None:
    assert not persistent(KEYS.to("h1", kind))


@pytest.mark.parametrize("key", [
    KEYS.to("h1", k.MEMBERSHIP),  # the ledger-writer records memberships from the answer
    KEYS.to("h1", k.SETTLEMENTS), KEYS.to("h1", k.STATEMENT),  # no request asks for them again
    *(KEYS.fact(kind) for kind in (k.ROUND_STARTED, k.SLOT_CLEARED, k.SLOT_RECONCILED, k.SLOT_RECORDED, k.ANSWERED)),
    KEYS.request(k.ORDER), KEYS.request_from(k.BATCH, "h1"),
    "r1.to.h1.batch.extra", "elsewhere",  # nothing of the region's shapes: kept
])
def test_everything_else_is_persistent(key: str) -> None:
    assert persistent(key)


async def test_a_household_sends_its_unanswered_batch_again_once_reconnected_and_then_no_more() -> None:
    sim = round_community()
    r = trading_round(NOON)
    home = next(p for p in sim.participants if (plan := p.plan(r)) and plan[1] and not plan[2])
    sent: list[tuple[str, t.Message]] = []

    async def send(message: t.Message, kind: str) -> None:
        sent.append((kind, message))

    sim.send = send  # type: ignore[method-assign]
    await home.play(r)
    assert len(sent) == 1 and sim._unanswered() == 2  # order-intake's and meter-collector's answers to come
    batch = sent[0][1]
    assert isinstance(batch, t.SubmitBatch)

    await sim._send_unanswered()  # the broker restarted before either answer came: sent again, once
    assert sent == [sent[0], sent[0]]

    await home.on_message(t.BatchAnswered(region="r1", participant_id=home.pid, batch_id=batch.batch_id,
                                          service="order-intake", answers=[]))
    await sim._send_unanswered()  # meter-collector's answer is still to come
    assert len(sent) == 3 and sim._unanswered() == 1

    await home.on_message(t.BatchAnswered(region="r1", participant_id=home.pid, batch_id=batch.batch_id,
                                          service="meter-collector", answers=[]))
    await sim._send_unanswered()
    assert len(sent) == 3 and sim._unanswered() == 0
    await sim._answered_all(timeout_s=0)
    assert sim.tally.unanswered == 0


async def _played_unheard() -> tuple[Community, Participant]:
    """A community and one of its households on its own that has sent its round (its
    orders, reading and finish in one batch), the sends going nowhere."""
    sim = round_community()
    r = trading_round(NOON)
    home = next(p for p in sim.participants if (plan := p.plan(r)) and plan[1] and not plan[2])

    async def send(message: t.Message, kind: str) -> None:
        pass

    sim.send = send  # type: ignore[method-assign]
    await home.play(r)
    return sim, home


async def test_a_run_that_ends_with_an_answer_missing_counts_it() -> None:
    sim, _ = await _played_unheard()
    await sim._answered_all(timeout_s=0.05)
    assert sim.tally.unanswered == 2


class _Exchange:
    """Stands for the client's exchange: records what is published."""

    def __init__(self) -> None:
        self.published: list[t.Message] = []
        self.sent = asyncio.Event()

    async def publish(self, message: Any, routing_key: str) -> None:
        self.published.append(decode(message.body))
        self.sent.set()


async def test_the_client_sends_a_waiting_request_again_as_soon_as_its_connection_is_back() -> None:
    me = Client("amqp://guest:guest@127.0.0.1:5672/", "r1", "h1", answer_timeout_s=60, resend_after_s=60)
    exchange = _Exchange()
    me._exchange = exchange  # type: ignore[assignment]
    slot = t.Slot(NOON, NOON + 60)
    cancelling = asyncio.create_task(me.cancel("c1", slot))
    await asyncio.wait_for(exchange.sent.wait(), 5)
    exchange.sent.clear()
    me._on_reconnect()  # the broker restarted: the answer on its way may be gone
    await asyncio.wait_for(exchange.sent.wait(), 5)  # sent again at once, not after 60 s
    assert exchange.published == [t.CancelOrder(region="r1", participant_id="h1", client_order_id="c1", slot=slot)] * 2
    answer = t.OrderCancelled(region="r1", participant_id="h1", client_order_id="c1", order_id="o1", slot=slot)
    me._waiting[("cancel", "h1", "c1")].set_result(answer)
    assert await asyncio.wait_for(cancelling, 5) == answer
    assert len(exchange.published) == 2


async def test_only_the_first_answer_to_a_request_counts_and_other_refusals_always_do() -> None:
    sim, home = await _played_unheard()
    batch_id = f"{home.pid}-{NOON}"
    first = t.BatchAnswered(region="r1", participant_id=home.pid, batch_id=batch_id, service="order-intake",
                            answers=[t.RoundFinished(region="r1", participant_id=home.pid, round_start=NOON)])
    again = t.BatchAnswered(region="r1", participant_id=home.pid, batch_id=batch_id, service="order-intake",
                            answers=[t.Rejected(region="r1", participant_id=home.pid, request="SubmitOrder",
                                                reason="unknown_order", reference="c1")])
    await home.on_message(first)
    await home.on_message(again)  # the repeat of a batch sent again: judged anew, not counted
    assert sim.tally.answers == {"RoundFinished": 1} and not sim.tally.rejections
    finish = t.Rejected(region="r1", participant_id=home.pid, request="FinishRound", reason="not_a_member",
                        reference=str(NOON))
    await home.on_message(finish)  # an answer no request of it waits for: counted
    assert sim.tally.rejections == {"not_a_member": 1}
