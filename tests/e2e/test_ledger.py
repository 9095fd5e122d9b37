"""The ledger that the real services write equals what the market core derives from the
recorded orders and readings, with PostgreSQL and with SQLite, and survives faults."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from services.ensemble import Ensemble
from services.participants.community import Community
from shared.market import EntryKind
from shared.runtime.audit import audit
from shared.runtime.settings import from_env
from tests.e2e.conftest import opened, run, sim_env

ROUNDS = 10


async def ledger_of(url: str, region: str) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    store = await opened(url)
    try:
        entries = [(e.entry_id, e.slot, e.kind, e.seller, e.buyer, e.source, e.quantity_wh, e.buy_price,
                    e.sell_price, e.settlement_id) for e in await store.entries(region)]
        settlements = [(s.settlement_id, s.quantity_wh, s.buy_price, s.sell_price)
                       for s in await store.settlements(region)]
        return entries, settlements
    finally:
        await store.close()


async def check_audit(url: str, env: dict[str, str]) -> None:
    store = await opened(url)
    try:
        result = await audit(store, from_env(env).market)
        kinds = {e.kind for e in await store.entries(from_env(env).region)}
    finally:
        await store.close()
    assert result.problems == []
    assert result.slots == ROUNDS
    assert result.settlements > 0, "the simulation traded nothing, so the test would prove little"
    assert {EntryKind.P2P, EntryKind.GRID_IMPORT, EntryKind.GRID_EXPORT} <= kinds


async def test_the_postgresql_ledger_equals_the_market_core_entry_for_entry(region: str, pg_url: str,
                                                                           tmp_path: Path) -> None:
    env = sim_env(region, pg_url, ROUNDS)
    await run(env, tmp_path)
    await check_audit(pg_url, env)


async def test_the_sqlite_ledger_equals_the_market_core_entry_for_entry(region: str, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    env = sim_env(region, url, ROUNDS)
    await run(env, tmp_path)
    await check_audit(url, env)


@pytest.mark.parametrize("rule", ["pay_as_bid", "uniform"])
async def test_under_another_pricing_rule_the_ledger_equals_the_market_core_too(
        region: str, tmp_path: Path, rule: str) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    env = sim_env(region, url, ROUNDS, MICROTE_PRICING_RULE=rule)
    await run(env, tmp_path)
    await check_audit(url, env)
    store = await opened(url)
    try:
        settlements = await store.settlements(region)  # in matching order
        orders = {o.order_id: o for o in await store.orders(region)}
        kept = await store.market_settings(region)
    finally:
        await store.close()
    assert kept is not None and f'"MICROTE_PRICING_RULE": "{rule}"' in kept  # the ledger keeps the rule
    if rule == "pay_as_bid":
        assert any(s.buy_price > s.sell_price for s in settlements)  # the spread goes to the market
        return
    last = {(s.slot, s.source): s for s in settlements}  # the last pair matched per slot and source
    for s in settlements:  # its midpoint, within each pair's own bid and ask
        clearing = last[s.slot, s.source]
        mid = (orders[clearing.bid_id].price + orders[clearing.ask_id].price) / 2
        assert s.buy_price == s.sell_price == min(max(mid, orders[s.ask_id].price), orders[s.bid_id].price)


async def test_every_message_delivered_twice_gives_the_identical_ledger(region: str, tmp_path: Path) -> None:
    once, twice = f"sqlite:///{tmp_path / 'once.sqlite'}", f"sqlite:///{tmp_path / 'twice.sqlite'}"
    await run(sim_env(region, once, ROUNDS), tmp_path / "once")
    await run(sim_env(region, twice, ROUNDS, MICROTE_DUPLICATE_DELIVERY="1"), tmp_path / "twice")
    expected, got = await ledger_of(once, region), await ledger_of(twice, region)
    assert got == expected
    assert expected[0], "no entries at all"


async def test_a_ledger_writer_killed_mid_run_and_restarted_loses_and_doubles_nothing(
        region: str, pg_url: str, tmp_path: Path) -> None:
    clean = f"sqlite:///{tmp_path / 'clean.sqlite'}"
    await run(sim_env(region, clean, ROUNDS), tmp_path / "clean")

    async def kill_and_restart(ensemble: Ensemble, sim: Community) -> None:
        while sim.tally.rounds < ROUNDS // 2:
            sim.rounds_seen.clear()
            await asyncio.wait_for(sim.rounds_seen.wait(), timeout=60)
        ensemble.kill("ledger-writer")
        ensemble.start("ledger-writer")
        await ensemble.wait_healthy("ledger-writer")

    env = sim_env(region, pg_url, ROUNDS)
    await run(env, tmp_path / "faulty", during=kill_and_restart)
    assert await ledger_of(pg_url, region) == await ledger_of(clean, region)
    await check_audit(pg_url, env)
