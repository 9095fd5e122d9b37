"""The private servers start, answer, keep durable data across a restart and leave
nothing behind when stopped: the ground the fault suite stands on."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aio_pika
import asyncpg
import pytest
from redis.asyncio import Redis

from tests.faults.servers import PrivatePostgres, PrivateRabbit, PrivateRedis, PrivateServer, live, port_answers

pytestmark = [pytest.mark.faults, pytest.mark.e2e]

SHARED_PORTS = (5672, 6379, 5432)


def assert_gone(server: PrivateServer, pids: list[int], folder: Path) -> None:
    alive = live(pids)
    assert not alive, f"{server.kind}: processes {alive} still running"
    assert not folder.exists(), f"{server.kind}: {folder} still there"
    assert not port_answers(server.port), f"{server.kind}: port {server.port} still answers"


async def redis_get(url: str, key: str) -> bytes | None:
    redis = Redis.from_url(url)
    try:
        value = await redis.get(key)
        assert value is None or isinstance(value, bytes)
        return value
    finally:
        await redis.aclose()


async def test_an_aof_redis_keeps_a_key_across_restart_and_kill_and_leaves_nothing_behind() -> None:
    redis = PrivateRedis(aof=True)
    folder = redis.tmp
    try:
        redis.start()
        assert redis.port not in SHARED_PORTS
        client = Redis.from_url(redis.url)
        await client.set("kept", "yes")
        await client.aclose()
        redis.restart()
        assert await redis_get(redis.url, "kept") == b"yes"
        redis.command("SET", "after-fsync", "yes")
        await asyncio.sleep(1.5)  # appendfsync everysec: what a SIGKILL may lose is the last second
        redis.kill()
        assert not redis.running and not redis.pids()
        await redis.astart()
        assert await redis_get(redis.url, "after-fsync") == b"yes"
        pids = redis.pids()
        assert pids
    finally:
        redis.close()
    assert_gone(redis, pids, folder)


async def test_a_redis_without_persistence_forgets_everything_on_restart() -> None:
    with PrivateRedis(aof=False) as redis:
        redis.command("SET", "lost", "yes")
        await redis.arestart()
        assert await redis_get(redis.url, "lost") is None


async def test_rabbitmq_keeps_a_persistent_message_in_a_durable_queue_across_restart_and_kill() -> None:
    rabbit = PrivateRabbit()
    folder = rabbit.tmp
    try:
        rabbit.start()
        assert rabbit.port not in SHARED_PORTS and rabbit.dist_port != 25672
        connection = await aio_pika.connect(rabbit.url)
        async with connection:
            channel = await connection.channel()  # publisher confirms: on disk once confirmed
            queue = await channel.declare_queue("kept", durable=True)
            for body in (b"first", b"second"):
                await channel.default_exchange.publish(
                    aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key="kept")
            await channel.default_exchange.publish(aio_pika.Message(b"transient"), routing_key="kept")
            assert (await queue.declare()).message_count == 3
        listed = {q["name"]: q for q in rabbit.queues()}
        assert listed["kept"]["messages"] == 3 and listed["kept"]["durable"] is True
        await rabbit.arestart()  # a clean stop: the transient message goes
        listed = {q["name"]: q for q in rabbit.queues()}
        assert listed["kept"]["messages"] == 2
        rabbit.kill()  # a crash: confirmed persistent messages stay
        assert not rabbit.pids()
        rabbit.start()
        connection = await aio_pika.connect(rabbit.url)
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue("kept", durable=True)
            got = []
            while (message := await queue.get(fail=False)) is not None:
                got.append(message.body)
                await message.ack()
            assert got == [b"first", b"second"]
            consumer = await channel.declare_queue("watched", durable=True)

            async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                await message.ack()

            await consumer.consume(on_message)
            assert any(c["queue_name"] == "watched" for c in rabbit.consumers())
        url = rabbit.add_user("alice", "secret", topic_write="^x\\.", topic_read=".*")
        connection = await aio_pika.connect(url)
        await connection.close()
        pids = rabbit.pids()
        assert len(pids) >= 2  # the start script and the Erlang VM at least
    finally:
        rabbit.close()
    assert_gone(rabbit, pids, folder)


async def test_postgres_keeps_committed_rows_across_restart_and_kill() -> None:
    postgres = PrivatePostgres()
    folder = postgres.tmp
    try:
        postgres.start()
        assert postgres.port not in SHARED_PORTS
        connection = await asyncpg.connect(postgres.url)
        await connection.execute("CREATE TABLE t (v int); INSERT INTO t VALUES (1)")
        await connection.close()
        await postgres.arestart()
        connection = await asyncpg.connect(postgres.url)
        await connection.execute("INSERT INTO t VALUES (2)")
        await connection.close()
        postgres.kill()
        assert not postgres.pids()
        postgres.start()  # crash recovery from the WAL
        other = postgres.create_database()
        connection = await asyncpg.connect(postgres.url)
        assert [r["v"] for r in await connection.fetch("SELECT v FROM t ORDER BY v")] == [1, 2]
        connection2 = await asyncpg.connect(other)
        await connection2.close()
        pids = postgres.pids()
        assert len(pids) > 1  # the postmaster and its helpers
        postgres.stop()  # a fast shutdown, clients connected or not
        assert not postgres.pids()
        with pytest.raises((OSError, asyncpg.PostgresError)):
            await connection.fetch("SELECT 1")
    finally:
        postgres.close()
    assert_gone(postgres, pids, folder)
