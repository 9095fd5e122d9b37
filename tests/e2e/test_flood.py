"""One household's flood does not go ahead of the others, through the real order-intake,
broker and Redis: a household's order queued behind thousands of a flooder's is answered
within order-intake's first passes, not after the flood (``MICROTE_FAIR_SHARE``). The same
queue read in arrival order (``MICROTE_FAIR_SHARE=0``) answers it last: what the fair
passes change. How much time that saves is measured by ``make bench-flood``."""

from __future__ import annotations

from pathlib import Path

import aio_pika
import aio_pika.abc
import pytest

from services.ensemble import Ensemble, purge_region
from shared.messages import decode, encode
from shared.messages import types as t
from shared.runtime import topology as k
from shared.runtime.settings import from_env
from tests.e2e.conftest import sim_env
from tests.faults.inject import publish, stop_service, wait_until

pytestmark = pytest.mark.e2e

FLOOD = 4000


def order(region: str, pid: str, coid: str) -> bytes:
    return encode(t.SubmitOrder(region=region, participant_id=pid, client_order_id=coid, side="bid",
                                quantity_wh=100, price="0.10", source="solar", slot=t.Slot(600, 660)))


async def answer_order(env: dict[str, str], region: str, tmp_path: Path, **intake_env: str) -> list[str]:
    """Queue FLOOD orders of the flooder and then one of h1 while order-intake is stopped,
    start it, and return whose answers came in which order."""
    settings = from_env(env)
    ensemble = Ensemble(env, tmp_path / "logs")
    arrivals: list[str] = []
    try:
        await ensemble.start_all(("ledger-writer",))  # it makes the region's state in Redis
        ensemble.start("order-intake", **intake_env)
        await ensemble.wait_healthy("order-intake")  # its queue is declared and bound
        await stop_service(ensemble, "order-intake")  # the requests wait for it in its queue
        connection = await aio_pika.connect(settings.amqp_url)
        async with connection:
            channel = await connection.channel()
            exchange = await channel.get_exchange(k.EXCHANGE.name)
            answers = await channel.declare_queue(exclusive=True)
            for pid in ("flooder", "h1"):
                await answers.bind(exchange, routing_key=f"{region}.to.{pid}.#")

            async def arrived(incoming: aio_pika.abc.AbstractIncomingMessage) -> None:
                answer = decode(incoming.body)
                assert isinstance(answer, t.Rejected)  # no round has started: market_not_open
                arrivals.append(answer.participant_id)

            await answers.consume(arrived, no_ack=True)
            key = k.Keys(region).request(k.ORDER)
            await publish(settings.amqp_url, key, (order(region, "flooder", f"f{i}") for i in range(FLOOD)),
                          persistent=True)
            await publish(settings.amqp_url, key, [order(region, "h1", "o1")], persistent=True)
            ensemble.start("order-intake", **intake_env)
            await wait_until(lambda: len(arrivals) == FLOOD + 1, 180, "an answer to every order")
    finally:
        ensemble.stop_all()
        await purge_region(settings.amqp_url, settings.redis_url, region, ["flooder", "h1"])
    return arrivals


async def test_a_households_order_queued_behind_a_flood_is_answered_before_the_flood(
        region: str, tmp_path: Path) -> None:
    env = sim_env(region, "memory://", 1)
    fair = await answer_order(env, region, tmp_path / "fair")
    in_order = await answer_order(env, region, tmp_path / "in-order", MICROTE_FAIR_SHARE="0")
    assert in_order.index("h1") == FLOOD  # arrival order: after every one of the flood's
    # fair: as soon as order-intake has read it, a pass or two later, while most of the flood waits
    assert fair.index("h1") < FLOOD // 2, f"{fair.index('h1')} of the flood's answers came first"
