"""Bad input on every inbound topic gets a reason or a dead-letter entry, changes no
state, and the simulation running beside it still ends with a correct ledger."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aio_pika
import msgpack

from services.ensemble import Ensemble
from services.participants.community import Community
from shared.messages import decode, encode
from shared.messages import types as t
from shared.runtime.settings import from_env
from tests.e2e.conftest import opened, run, sim_env

ROUNDS = 8


class Intruder:
    """A client that sends what a buggy or hostile participant might."""

    def __init__(self, channel: aio_pika.abc.AbstractChannel, exchange: aio_pika.abc.AbstractExchange,
                 region: str) -> None:
        self.channel, self.exchange, self.region = channel, exchange, region
        self.answers: dict[str, list[t.Message]] = {"eve": [], "mallory": []}
        self.arrived = asyncio.Event()

    async def listen(self) -> None:
        for pid in self.answers:
            queue = await self.channel.declare_queue(exclusive=True)
            await queue.bind(self.exchange, routing_key=f"{self.region}.to.{pid}.#")
            await queue.consume(self._on_answer, no_ack=True)

    async def _on_answer(self, incoming: aio_pika.abc.AbstractIncomingMessage) -> None:
        message = decode(incoming.body)
        self.answers[message.participant_id].append(message)  # type: ignore[attr-defined]
        self.arrived.set()

    async def send(self, kind: str, body: bytes) -> None:
        await self.exchange.publish(aio_pika.Message(body, content_type="application/msgpack"),
                                    routing_key=f"{self.region}.in.{kind}")

    def reasons(self, pid: str) -> list[str]:
        return sorted(a.reason for a in self.answers[pid] if isinstance(a, t.Rejected))

    async def until(self, pid: str, count: int) -> None:
        while len(self.reasons(pid)) < count:
            self.arrived.clear()
            await asyncio.wait_for(self.arrived.wait(), timeout=30)


def raw(**fields: object) -> bytes:
    """A message built by hand with the reference msgpack library, bypassing our types."""
    return msgpack.packb(fields)


async def test_bad_input_on_every_inbound_topic_is_refused_with_a_reason(region: str, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    env = sim_env(region, url, ROUNDS)
    settings = from_env(env)
    sent_undecodable = 0

    async def attack(ensemble: Ensemble, sim: Community) -> None:
        nonlocal sent_undecodable
        while sim.tally.rounds < 2:
            sim.rounds_seen.clear()
            await asyncio.wait_for(sim.rounds_seen.wait(), timeout=60)
        connection = await aio_pika.connect(settings.amqp_url)
        async with connection:
            channel = await connection.channel()
            exchange = await channel.get_exchange("microte")
            bad = Intruder(channel, exchange, region)
            await bad.listen()
            # Undecodable bytes on every inbound topic: dead-lettered.
            for kind in ("order", "cancel", "reading", "member", "finish"):
                await bad.send(kind, b"\xc1 this is not msgpack")
                sent_undecodable += 1
            # A participant that never joined.
            now = (await ensemble_round(settings)) or 0
            open_slot = t.Slot(now + 3600, now + 3660)
            order = dict(type="SubmitOrder", region=region, participant_id="mallory", client_order_id="m1",
                         side="bid", quantity_wh=100, price="0.1", source="solar", slot=[now + 3600, now + 3660])
            await bad.send("order", raw(**order))
            await bad.send("member", encode(t.Heartbeat(region=region, participant_id="mallory")))
            await bad.send("reading", encode(t.SubmitReading(region=region, participant_id="mallory",
                                                             slot=t.Slot(now, now + 60), import_wh=5)))
            await bad.send("order", raw(**{**order, "quantity_wh": "1500"}))  # a string where an int belongs
            await bad.until("mallory", 4)
            assert bad.reasons("mallory") == ["malformed", "not_a_member", "not_a_member", "not_a_member"]
            # A member that sends nonsense, then leaves so that it does not hold up the rounds.
            await bad.send("member", encode(t.JoinMarket(region=region, participant_id="eve")))
            while not any(isinstance(a, t.MemberJoined) for a in bad.answers["eve"]):
                bad.arrived.clear()
                await asyncio.wait_for(bad.arrived.wait(), timeout=30)
            now = (await ensemble_round(settings)) or 0
            good = dict(type="SubmitOrder", region=region, participant_id="eve", side="ask", quantity_wh=100,
                        price="0.1", source="solar", slot=[now + 3600, now + 3660])
            cases = [
                ({"quantity_wh": -5}, "invalid_quantity"),
                ({"quantity_wh": 0}, "invalid_quantity"),
                ({"quantity_wh": 1.5}, "malformed"),
                ({"price": "abc"}, "malformed"),
                ({"price": "0.00001"}, "invalid_price"),
                ({"price": "-1"}, "invalid_price"),
                ({"source": "coal"}, "unknown_source"),
                ({"source": "grid"}, "unknown_source"),
                ({"slot": [now - 60, now]}, "gate_closed"),
                ({"slot": [now + 3607, now + 3667]}, "misaligned_slot"),
                ({"slot": [now + 60 * 10**5, now + 60 * 10**5 + 60]}, "beyond_horizon"),
            ]
            for i, (change, _) in enumerate(cases):
                await bad.send("order", raw(**{**good, "client_order_id": f"e{i}", **change}))
            await bad.send("cancel", encode(t.CancelOrder(region=region, participant_id="eve",
                                                          client_order_id="nope", slot=open_slot)))
            reading = dict(type="SubmitReading", region=region, participant_id="eve", slot=[now - 60, now],
                           import_wh=5, export_wh={}, self_consumed_wh={})
            await bad.send("reading", raw(**{**reading, "import_wh": -1}))
            await bad.send("reading", raw(**{**reading, "export_wh": {"coal": 5}}))
            await bad.send("reading", raw(**{**reading, "slot": [now + 3600, now + 3660]}))
            await bad.send("reading", raw(**{**reading, "slot": [now - 600, now - 540]}))
            expected = sorted([r for _, r in cases] + ["unknown_order", "invalid_reading", "unknown_source",
                                                      "slot_not_delivered", "already_reconciled"])
            await bad.until("eve", len(expected))
            assert bad.reasons("eve") == expected
            assert not any(isinstance(a, t.OrderAccepted) for a in bad.answers["eve"])
            await bad.send("member", encode(t.LeaveMarket(region=region, participant_id="eve")))
            # A message for another region on this region's topic: dead-lettered.
            await bad.send("order", raw(**{**good, "region": "elsewhere", "client_order_id": "x"}))
            sent_undecodable += 1
            dead = await channel.declare_queue(f"microte.{region}.dead", durable=True, passive=True)
            deadline = asyncio.get_running_loop().time() + 30
            while dead.declaration_result.message_count < sent_undecodable:
                assert asyncio.get_running_loop().time() < deadline, "dead letters did not arrive"
                await asyncio.sleep(0.2)
                dead = await channel.declare_queue(f"microte.{region}.dead", durable=True, passive=True)
            assert dead.declaration_result.message_count == sent_undecodable

    await run(env, tmp_path, during=attack)
    store = await opened(url)
    try:
        from shared.runtime.audit import audit

        result = await audit(store, settings.market)
        orders = await store.orders(region)
    finally:
        await store.close()
    assert result.problems == []
    assert result.slots == ROUNDS
    assert not [o for o in orders if o.participant_id in ("eve", "mallory")]


async def ensemble_round(settings: object) -> int | None:
    from redis.asyncio import Redis

    from shared.runtime.state import RegionState

    redis = Redis.from_url(settings.redis_url)  # type: ignore[attr-defined]
    try:
        current = await RegionState(redis, settings.region).current_round()  # type: ignore[attr-defined]
        return None if current is None else current[0]
    finally:
        await redis.aclose()
