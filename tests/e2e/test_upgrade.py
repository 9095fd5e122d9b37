"""A region upgraded in place: a service's queue keeps the bindings an earlier version made
(they are durable), so each service unbinds at start the keys it no longer handles."""

from __future__ import annotations

from pathlib import Path

import aio_pika
import pytest

from services.ensemble import Ensemble, purge_region
from shared.messages import encode
from shared.messages import types as t
from shared.runtime import topology as k
from shared.runtime.settings import from_env
from tests.e2e.conftest import sim_env

pytestmark = pytest.mark.e2e


async def test_the_ledger_writer_unbinds_the_answers_an_earlier_version_read(region: str, tmp_path: Path) -> None:
    env = sim_env(region, "memory://", 5)
    settings = from_env(env)
    keys, queue_name = k.Keys(region), k.service_queue_name(region, "ledger-writer")
    retired = keys.all_to(k.ORDER_ACCEPTED)
    connection = await aio_pika.connect(settings.amqp_url)
    ensemble = Ensemble(env, tmp_path / "logs")
    try:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(k.EXCHANGE.name, aio_pika.ExchangeType.TOPIC, durable=True)
        # The queue as the earlier version left it: bound to every participant's answers.
        shape = k.service_queue(region, "ledger-writer", retired)
        queue = await channel.declare_queue(queue_name, durable=True, arguments=shape.arguments)
        await queue.bind(exchange, routing_key=retired)
        await ensemble.start_all(("ledger-writer",))
        ensemble.stop("ledger-writer")  # nothing consumes the queue now: what it is bound to stays in it

        answer = t.OrderCancelled(region=region, participant_id="h1", client_order_id="c1", order_id="o1",
                                  slot=t.Slot(1782064800, 1782064860))
        await exchange.publish(aio_pika.Message(encode(answer)), routing_key=keys.to("h1", k.ORDER_ACCEPTED))
        await exchange.publish(aio_pika.Message(b"still bound"), routing_key=keys.fact(k.ANSWERED))
        held = await channel.declare_queue(queue_name, passive=True)
        assert held.declaration_result.message_count == 1  # the fact it reads now, not the answer
        got = await held.get(timeout=5)
        assert got is not None and got.body == b"still bound"
        await got.ack()
    finally:
        ensemble.stop_all()
        await connection.close()
        await purge_region(settings.amqp_url, settings.redis_url, region, [])
