"""Real-time rounds on wall-clock boundaries; a participant that goes silent drops out of
the simulation barrier after its liveness timeout instead of stalling the market."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aio_pika

from services.ensemble import Ensemble, purge_region
from services.participants.community import Community
from services.participants.profiles import community
from shared.messages import encode
from shared.messages import types as t
from shared.runtime.settings import from_env
from tests.e2e.conftest import PARTICIPANTS, SEED, TIMEZONE, opened, run, sim_env


def clock_events(log_dir: Path, event: str) -> list[dict[str, object]]:
    lines = (log_dir / "clock.log").read_text().splitlines()
    return [e for e in (json.loads(line) for line in lines if line.startswith("{")) if e.get("event") == event]


async def test_real_time_rounds_start_on_wall_clock_boundaries_and_reconcile(region: str, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    env = sim_env(region, url, 6, MICROTE_CLOCK_MODE="realtime", MICROTE_ROUND_SECONDS="2",
                  MICROTE_READING_DEADLINE_S="2", MICROTE_HORIZON_S="3600")
    began = time.time()
    await run(env, tmp_path)
    starts = [int(e["round"]) for e in clock_events(tmp_path / "logs", "round_started")]  # type: ignore[call-overload]
    assert len(starts) == 6
    assert all(s % 2 == 0 for s in starts)
    assert starts == list(range(starts[0], starts[0] + 12, 2))
    assert began - 2 <= starts[0] <= time.time()  # market time is wall time
    store = await opened(url)
    try:
        from shared.runtime.audit import audit

        result = await audit(store, from_env(env).market)
    finally:
        await store.close()
    assert result.problems == []
    assert result.slots == 6


async def test_a_participant_that_goes_silent_drops_out_of_the_barrier(region: str, tmp_path: Path) -> None:
    env = sim_env(region, f"sqlite:///{tmp_path / 'ledger.sqlite'}", 8, MICROTE_MEMBER_TIMEOUT_S="3",
                  MICROTE_ROUND_TIMEOUT_S="60")
    settings = from_env(env)

    async def ghost_joins(ensemble: Ensemble, sim: Community) -> None:
        connection = await aio_pika.connect(settings.amqp_url)
        async with connection:
            channel = await connection.channel()
            exchange = await channel.get_exchange("microte")
            await exchange.publish(aio_pika.Message(encode(t.JoinMarket(region=region, participant_id="ghost"))),
                                   routing_key=f"{region}.in.member")

    began = time.monotonic()
    await run(env, tmp_path, during=ghost_joins)
    # Waiting for the ghost forever would take 60 s a round; it is dropped after about 3 s.
    assert time.monotonic() - began < 60
    assert clock_events(tmp_path / "logs", "round_timed_out") == []


async def test_real_time_rounds_go_on_without_a_service_and_say_what_they_left_undone(
        region: str, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    env = sim_env(region, url, 8, MICROTE_CLOCK_MODE="realtime", MICROTE_ROUND_SECONDS="2",
                  MICROTE_READING_DEADLINE_S="2", MICROTE_HORIZON_S="3600")

    async def matcher_away(ensemble: Ensemble, sim: Community) -> None:
        while sim.tally.rounds < 2:
            sim.rounds_seen.clear()
            await asyncio.wait_for(sim.rounds_seen.wait(), timeout=30)
        await asyncio.to_thread(ensemble.stop, "matcher")
        while sim.tally.rounds < 5:  # wall-clock rounds go on without it
            sim.rounds_seen.clear()
            await asyncio.wait_for(sim.rounds_seen.wait(), timeout=30)
        ensemble.start("matcher")  # it clears what it missed, from the round starts in its queue
        await ensemble.wait_healthy("matcher")

    await run(env, tmp_path, during=matcher_away)
    incomplete = clock_events(tmp_path / "logs", "round_ended_incomplete")
    assert any("clearing" in e["missing"] for e in incomplete), incomplete  # type: ignore[operator]
    store = await opened(url)
    try:
        from shared.runtime.audit import audit

        result = await audit(store, from_env(env).market)
    finally:
        await store.close()
    assert result.problems == [] and result.slots == 8


async def test_a_clock_started_before_the_matcher_waits_for_its_queue(region: str, tmp_path: Path) -> None:
    """Services started by hand start in any order. A round start published before the
    matcher's queue exists would reach no matcher and its slot would never be cleared: the
    clock waits for every worker's queue before the region's first round."""
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    env = sim_env(region, url, 4)
    settings = from_env(env)
    homes = community(PARTICIPANTS, SEED)
    await purge_region(settings.amqp_url, settings.redis_url, region, [h.participant_id for h in homes])
    ensemble = Ensemble(env, tmp_path / "logs")
    sim = Community(settings.amqp_url, region, homes, TIMEZONE)
    joined = asyncio.Event()
    running: asyncio.Task[object] | None = None
    try:
        await ensemble.start_all(("ledger-writer", "order-intake", "meter-collector", "clock"))
        running = asyncio.create_task(sim.run(joined))
        await asyncio.wait_for(joined.wait(), timeout=60)
        deadline = time.monotonic() + 60
        while not (waiting := clock_events(tmp_path / "logs", "clock_waiting_for_services")):
            assert time.monotonic() < deadline, "the clock did not say it waits for the matcher"
            await asyncio.sleep(0.2)
        assert "matcher" in waiting[0]["services"]  # (and any other not consuming yet when it first looked)
        assert clock_events(tmp_path / "logs", "round_started") == []
        await ensemble.start_all(("matcher",))
        tally = await asyncio.wait_for(running, timeout=120)
        assert tally.rounds == 4  # type: ignore[attr-defined]
    finally:
        if running is not None and not running.done():
            running.cancel()
        ensemble.stop_all()
        await purge_region(settings.amqp_url, settings.redis_url, region, [h.participant_id for h in homes])
    store = await opened(url)
    try:
        from shared.runtime.audit import audit

        result = await audit(store, settings.market)
    finally:
        await store.close()
    assert result.problems == [] and result.slots == 4
