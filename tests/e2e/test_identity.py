"""With MICROTE_IDENTITY=broker_user a participant can act only as the RabbitMQ user it
connected as: RabbitMQ validates the message's user_id against the connection's
credentials, and the services compare it with the participant id (docs/market.md section 3)."""

from __future__ import annotations

import asyncio
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aio_pika
import pytest
from redis.asyncio import Redis

from services.ensemble import Ensemble, purge_region
from shared.messages import decode, encode
from shared.messages import types as t
from shared.runtime.settings import from_env
from shared.runtime.state import Joined, RegionState


def rabbitmqctl(*args: str) -> None:
    tool = shutil.which("rabbitmqctl")
    if tool is None:
        pytest.fail("rabbitmqctl is needed to create a RabbitMQ user for this test")
    subprocess.run([tool, *args], check=True, capture_output=True, timeout=60)


@pytest.fixture
def user() -> Iterator[tuple[str, str]]:
    name, password = "alice" + secrets.token_hex(3), secrets.token_hex(8)
    rabbitmqctl("add_user", name, password)
    rabbitmqctl("set_permissions", name, ".*", ".*", ".*")
    yield name, password
    rabbitmqctl("delete_user", name)


async def test_a_participant_can_only_act_as_the_broker_user_it_connected_as(
        region: str, user: tuple[str, str], tmp_path: Path) -> None:
    name, password = user
    env = {"MICROTE_REGION": region, "MICROTE_IDENTITY": "broker_user", "MICROTE_LEDGER_URL": "memory://"}
    settings = from_env(env)
    ensemble = Ensemble(env, tmp_path / "logs")
    try:
        await ensemble.start_all(("ledger-writer", "order-intake"))  # the ledger-writer gives the region its state
        connection = await aio_pika.connect(f"amqp://{name}:{password}@127.0.0.1:5672/")
        async with connection:
            channel = await connection.channel()
            exchange = await channel.get_exchange("microte")
            inbox = await channel.declare_queue(exclusive=True)
            await inbox.bind(exchange, routing_key=f"{region}.to.{name}.#")
            answers: asyncio.Queue[t.Message] = asyncio.Queue()

            async def on_answer(incoming: aio_pika.abc.AbstractIncomingMessage) -> None:
                await answers.put(decode(incoming.body))

            await inbox.consume(on_answer, no_ack=True)

            async def join(as_id: str, user_id: str | None) -> None:
                await exchange.publish(aio_pika.Message(encode(t.JoinMarket(region=region, participant_id=as_id)),
                                                        user_id=user_id), routing_key=f"{region}.in.member")

            redis = Redis.from_url(settings.redis_url)
            try:
                await RegionState(redis, region).join([Joined("dave")], 0)  # another member, as if it had joined
            finally:
                await redis.aclose()
            await join(name, name)
            assert isinstance(await asyncio.wait_for(answers.get(), 30), t.MemberJoined)
            await join("bob", name)  # claims to be someone else
            refused = await asyncio.wait_for(answers.get(), 30)
            assert isinstance(refused, t.Rejected) and refused.reason == "identity_mismatch"
            # A member's leave sent in its name by someone else: refused, and the member stays.
            await exchange.publish(aio_pika.Message(encode(t.LeaveMarket(region=region, participant_id="dave")),
                                                    user_id=name), routing_key=f"{region}.in.member")
            refused = await asyncio.wait_for(answers.get(), 30)
            assert isinstance(refused, t.Rejected) and refused.reason == "identity_mismatch"
            await join("carol", None)  # says nothing of who it is
            dead = await channel.declare_queue(f"microte.{region}.dead", durable=True, passive=True)
            deadline = asyncio.get_running_loop().time() + 30
            while dead.declaration_result.message_count < 1:
                assert asyncio.get_running_loop().time() < deadline, "the anonymous request was not dead-lettered"
                await asyncio.sleep(0.2)
                dead = await channel.declare_queue(f"microte.{region}.dead", durable=True, passive=True)
        redis = Redis.from_url(settings.redis_url)
        try:
            state = RegionState(redis, region)
            assert await state.is_member(name)
            assert await state.is_member("dave")
            assert not await state.is_member("bob")
            assert not await state.is_member("carol")
        finally:
            await redis.aclose()
    finally:
        ensemble.stop_all()
        await purge_region(settings.amqp_url, settings.redis_url, region, [])
