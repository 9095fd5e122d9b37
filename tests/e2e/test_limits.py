"""Limits per household, end to end through order-intake and the meter-collector: orders
for one slot, orders and cancels per second, the household's connection and what its bids
of one day may cost, each refused with its machine-readable reason, counted in a metric,
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
from shared.runtime.ledger import LedgerStore, open_ledger
from shared.runtime.settings import from_env
from shared.runtime.state import RegionState
from tests.e2e.conftest import sim_env
from tests.faults.inject import wait_until

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
        for reason, request in (("too_many_orders", "SubmitOrder"), ("rate_limited", "CancelOrder")):
            await rejections_reach(ensemble, "order-intake", request, reason, 1.0)
    finally:
        ensemble.stop_all()
        await purge_region(settings.amqp_url, settings.redis_url, region, ["h1"])


async def test_a_household_is_held_to_its_connection_capped_by_the_regions(region: str, tmp_path: Path) -> None:
    """6 kW of import (the region's cap) is 100 Wh in a minute's slot, its own 3 kW of export 50 Wh:
    its offers for a slot together, its bids together and its readings stay within them."""
    ledger = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    env = sim_env(region, ledger, 5, MICROTE_MIN_MEMBERS="1", MICROTE_ROUND_TIMEOUT_S="300",
                  MICROTE_MAX_IMPORT_W="6000")
    settings = from_env(env)
    ensemble = Ensemble(env, tmp_path / "logs")
    try:
        await ensemble.start_all(("ledger-writer", "order-intake", "matcher", "meter-collector"))
        async with Client(settings.amqp_url, region, "h1") as me:
            with pytest.raises(Refused) as bad:
                await me.join(import_w=-1)
            assert bad.value.reason == "invalid_connection"
            joined = await me.join(import_w=9000, export_w=3000)
            assert (joined.import_w, joined.export_w) == (6000, 3000)
            await ensemble.start_all(("clock",))
            r = await me.next_round()
            slot = r.next_settle
            offer = await me.order("ask", 30, "0.10", slot)
            refused = []
            for side, wh in (("ask", 21), ("bid", 101)):
                with pytest.raises(Refused) as beyond:
                    await me.order(side, wh, "0.10", slot)
                refused.append(beyond.value.reason)
            assert refused == ["beyond_connection"] * 2
            await me.order("ask", 20, "0.10", slot)
            await me.order("bid", 100, "0.10", slot)
            await me.cancel(offer.client_order_id, slot)  # gives its 30 Wh back
            await me.order("ask", 30, "0.10", slot)
            with pytest.raises(Refused) as reading:
                await me.reading(r.current_round, 101, {"solar": 1})
            assert reading.value.reason == "beyond_connection"
            accepted = await me.reading(r.current_round, 100, {"solar": 30, "bess": 20})
            assert accepted.import_wh == 100
        redis = Redis.from_url(settings.redis_url)
        try:
            book = await RegionState(redis, region).book(Slot(slot.start, slot.end))
        finally:
            await redis.aclose()
        kept = sorted((o.side, o.quantity_wh) for o in (decode_as(b, t.OrderAccepted) for b in book))
        assert kept == [("ask", 20), ("ask", 30), ("bid", 100)]
        for name, request, count in (("order-intake", "SubmitOrder", 2.0), ("meter-collector", "SubmitReading", 1.0),
                                     ("order-intake", "JoinMarket", 1.0)):
            reason = "invalid_connection" if request == "JoinMarket" else "beyond_connection"
            await rejections_reach(ensemble, name, request, reason, count)
        store = open_ledger(ledger)  # the ledger keeps the connection the member is held to
        await store.open()
        try:
            await wait_until(lambda: _connections(store, region), 30, "the join's connection in the ledger")
            assert await store.connections(region) == {"h1": (6000, 3000)}
        finally:
            await store.close()
    finally:
        ensemble.stop_all()
        await purge_region(settings.amqp_url, settings.redis_url, region, ["h1"])


async def test_a_households_bids_for_one_day_stay_within_the_regions_spending_limit(region: str,
                                                                                    tmp_path: Path) -> None:
    """0.03 $ a day: 100 Wh at 0.1000 $/kWh is 0.01 $; a cancel gives its worth back; asks are free."""
    env = sim_env(region, "memory://", 5, MICROTE_MIN_MEMBERS="1", MICROTE_ROUND_TIMEOUT_S="300",
                  MICROTE_MAX_SPEND_PER_DAY="0.03")
    settings = from_env(env)
    ensemble = Ensemble(env, tmp_path / "logs")
    try:
        await ensemble.start_all(("ledger-writer", "order-intake", "matcher", "meter-collector"))
        async with Client(settings.amqp_url, region, "h1") as me:
            await me.join()
            await ensemble.start_all(("clock",))
            r = await me.next_round()
            first = await me.order("bid", 100, "0.10", r.next_settle)
            await me.order("bid", 200, "0.05", r.next_settle)
            await me.order("ask", 10**6, "0.20", r.next_settle)
            with pytest.raises(Refused) as beyond:  # 0.02 $ spent: 0.0101 more is too much
                await me.order("bid", 101, "0.10", r.next_settle)
            assert beyond.value.reason == "beyond_spend_limit"
            await me.cancel(first.client_order_id, r.next_settle)
            accepted = await me.order("bid", 200, "0.10", r.next_settle)
            assert accepted.quantity_wh == 200
        await rejections_reach(ensemble, "order-intake", "SubmitOrder", "beyond_spend_limit", 1.0)
    finally:
        ensemble.stop_all()
        await purge_region(settings.amqp_url, settings.redis_url, region, ["h1"])


async def rejected(ensemble: Ensemble, service: str, request: str, reason: str) -> float:
    """The service's count of ``request``s it refused for ``reason`` (its metric; 0 before the first)."""
    counted = await asyncio.to_thread(
        lambda: urllib.request.urlopen(ensemble.url(service, "/metrics"), timeout=10).read().decode())
    line = next((x for x in counted.splitlines() if x.startswith("microte_rejected_requests_total{")
                 and f'reason="{reason}"' in x and f'request="{request}"' in x), None)
    return 0.0 if line is None else float(line.rsplit(" ", 1)[1])


async def rejections_reach(ensemble: Ensemble, service: str, request: str, reason: str, count: float) -> None:
    """The count reaches ``count`` and is then exactly that. A service counts a refusal once
    its answer is confirmed, which may be after the answer has reached its client."""
    async def reached() -> bool:
        return await rejected(ensemble, service, request, reason) >= count

    await wait_until(reached, 10, f"{service}'s count of {request} refused for {reason}")
    assert await rejected(ensemble, service, request, reason) == count


async def _connections(store: LedgerStore, region: str) -> bool:
    return bool(await store.connections(region))
