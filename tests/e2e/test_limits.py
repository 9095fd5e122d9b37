"""Limits per household, end to end through order-intake: orders for one slot and orders
and cancels per second, each refused with its machine-readable reason, counted in a metric,
and nothing of it written."""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path

import pytest
from redis.asyncio import Redis

from microte import Client, Refused
from services.ensemble import Ensemble, purge_region
from shared.market import Slot
from shared.messages import decode_as
from shared.messages import types as t
from shared.runtime.settings import from_env
from shared.runtime.state import RegionState
from tests.e2e.conftest import sim_env

pytestmark = pytest.mark.e2e


async def test_a_household_beyond_its_limits_is_refused_and_counted(region: str, tmp_path: Path) -> None:
    env = sim_env(region, "memory://", 5, MICROTE_MIN_MEMBERS="1", MICROTE_ROUND_TIMEOUT_S="300",
                  MICROTE_MAX_ORDERS_PER_SLOT="2", MICROTE_MAX_REQUESTS_PER_S="0.2", MICROTE_REQUEST_BURST="3")
    settings = from_env(env)
    ensemble = Ensemble(env, tmp_path / "logs")
    try:
        # every worker: the clock starts a region's first round once all their queues exist
        await ensemble.start_all(("ledger-writer", "order-intake", "matcher", "meter-collector"))
        async with Client(settings.amqp_url, region, "h1") as me:
            await me.join()
            await ensemble.start_all(("clock",))  # a round starts once h1 is a member, and waits for it
            r = await me.next_round()
            first = await me.order("bid", 100, "0.10", r.next_settle)
            await me.order("bid", 200, "0.11", r.next_settle)
            with pytest.raises(Refused) as third:  # the third order for the slot
                await me.order("bid", 300, "0.12", r.next_settle)
            assert third.value.reason == "too_many_orders"
            with pytest.raises(Refused) as fourth:  # three requests took the burst; one more in 5 s
                await me.cancel(first.client_order_id, r.next_settle)
            assert fourth.value.reason == "rate_limited"
            redis = Redis.from_url(settings.redis_url)
            try:  # the book holds the two accepted orders, the first not cancelled
                book = await RegionState(redis, region).book(Slot(r.next_settle.start, r.next_settle.end))
            finally:
                await redis.aclose()
            assert sorted(decode_as(b, t.OrderAccepted).quantity_wh for b in book) == [100, 200]
        counted = await asyncio.to_thread(
            lambda: urllib.request.urlopen(ensemble.url("order-intake", "/metrics"), timeout=10).read().decode())
        for reason, request in (("too_many_orders", "SubmitOrder"), ("rate_limited", "CancelOrder")):
            line = next(x for x in counted.splitlines() if x.startswith("microte_rejected_requests_total{")
                        and f'reason="{reason}"' in x and f'request="{request}"' in x)
            assert float(line.rsplit(" ", 1)[1]) == 1.0, line
    finally:
        ensemble.stop_all()
        await purge_region(settings.amqp_url, settings.redis_url, region, ["h1"])
