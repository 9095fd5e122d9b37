"""The client matches each answer to the request that waits for it (microte.client)."""

from __future__ import annotations

import pytest

from microte import Client, ask, bid, new_order_id
from microte.client import _request_key
from shared.messages import types as t

R, ME = "r1", "h1"
SLOT = t.Slot(1_782_064_800, 1_782_064_860)


def client(url: str = "amqp://guest:guest@127.0.0.1:5672/") -> Client:
    return Client(url, R, ME)


def test_its_own_broker_user_is_its_user_id_and_any_other_is_the_local_mode() -> None:
    assert client("amqp://h1:secret@broker:5672/").user_id == ME
    assert client("amqp://guest:guest@127.0.0.1:5672/").user_id is None
    assert client("amqp://h10:x@broker/").user_id is None


def test_client_order_ids_are_random_and_valid_ids() -> None:
    ids = {new_order_id() for _ in range(1000)}
    assert len(ids) == 1000
    for coid in ids:  # what the wire contract accepts as an id
        t.OrderItem(client_order_id=coid, side="bid", quantity_wh=1, price="0.1", source="solar", slot=SLOT)
    assert ask(5, "0.1", SLOT).side == "ask" and bid(5, "0.1", SLOT).side == "bid"
    assert ask(5, "0.1", SLOT).client_order_id != ask(5, "0.1", SLOT).client_order_id


@pytest.mark.parametrize(("answer", "key"), [
    (t.MemberJoined(region=R, participant_id=ME, joined_at_ms=1), ("join", ME)),
    (t.MemberLeft(region=R, participant_id=ME), ("leave", ME)),
    (t.OrderAccepted(region=R, order_id="o", client_order_id="c1", participant_id=ME, side="bid", quantity_wh=1,
                     price="0.1", source="solar", slot=SLOT, seq=0, submitted_at_ms=1), ("order", ME, "c1")),
    (t.OrderCancelled(region=R, participant_id=ME, client_order_id="c1", order_id="o", slot=SLOT),
     ("cancel", ME, "c1")),
    (t.ReadingAccepted(region=R, participant_id=ME, slot=SLOT, import_wh=1, export_wh={}, self_consumed_wh={},
                       received_at_ms=1), ("reading", ME, str(SLOT.start))),
    (t.BatchAnswered(region=R, participant_id=ME, batch_id="b", service="order-intake", answers=[]), ("batch", "b")),
    (t.Rejected(region=R, participant_id=ME, request="SubmitOrder", reason="gate_closed", reference="c1"),
     ("order", ME, "c1")),
    (t.Rejected(region=R, participant_id=ME, request="CancelOrder", reason="unknown_order", reference="c1"),
     ("cancel", ME, "c1")),
    (t.Rejected(region=R, participant_id=ME, request="SubmitReading", reason="not_a_member",
                reference=f"{SLOT.start}-{SLOT.end}"), ("reading", ME, str(SLOT.start))),
    (t.Rejected(region=R, participant_id=ME, request="JoinMarket", reason="identity_mismatch"), ("join", ME)),
    (t.Rejected(region=R, participant_id=ME, request="LeaveMarket", reason="not_a_member"), ("leave", ME)),
    (t.Rejected(region=R, participant_id=ME, request="unknown", reason="malformed"), None),
    (t.RoundFinished(region=R, participant_id=ME, round_start=1), None),
])
def test_an_answer_finds_the_request_it_answers(answer: t.Message, key: tuple[str, ...] | None) -> None:
    assert client()._key(answer) == key


@pytest.mark.parametrize("request_", [
    t.JoinMarket(region=R, participant_id=ME),
    t.LeaveMarket(region=R, participant_id=ME),
    t.SubmitOrder(region=R, participant_id=ME, client_order_id="c1", side="bid", quantity_wh=1, price="0.1",
                  source="solar", slot=SLOT),
    t.CancelOrder(region=R, participant_id=ME, client_order_id="c1", slot=SLOT),
    t.SubmitReading(region=R, participant_id=ME, slot=SLOT, import_wh=1),
    t.SubmitBatch(region=R, participant_id=ME, batch_id="b", items=[]),
])
def test_a_request_waits_under_the_key_its_answers_come_back_with(request_: t.Message) -> None:
    answers = {
        t.JoinMarket: t.MemberJoined(region=R, participant_id=ME, joined_at_ms=1),
        t.LeaveMarket: t.MemberLeft(region=R, participant_id=ME),
        t.SubmitOrder: t.Rejected(region=R, participant_id=ME, request="SubmitOrder", reason="gate_closed",
                                  reference="c1"),
        t.CancelOrder: t.OrderCancelled(region=R, participant_id=ME, client_order_id="c1", order_id="o", slot=SLOT),
        t.SubmitReading: t.Rejected(region=R, participant_id=ME, request="SubmitReading", reason="not_a_member",
                                    reference=f"{SLOT.start}-{SLOT.end}"),
        t.SubmitBatch: t.BatchAnswered(region=R, participant_id=ME, batch_id="b", service="order-intake", answers=[]),
    }
    assert _request_key(request_) == client()._key(answers[type(request_)])


def test_two_households_answers_never_meet() -> None:
    """A simulator listening for many households: the same client order id of two of them
    are two requests."""
    a = t.Rejected(region=R, participant_id="h1", request="SubmitOrder", reason="gate_closed", reference="c1")
    b = t.Rejected(region=R, participant_id="h2", request="SubmitOrder", reason="gate_closed", reference="c1")
    assert client()._key(a) != client()._key(b)
