"""Old slots are cleaned from Redis and from every process once reconciled and recorded:
Redis keys and resident memory stay flat as rounds go by."""

from __future__ import annotations

import asyncio
from pathlib import Path

from redis.asyncio import Redis

from services.ensemble import Ensemble
from services.participants.community import Community
from shared.runtime.settings import from_env
from shared.runtime.state import RegionState
from tests.e2e.conftest import run, sim_env

ROUNDS = 160
EARLY = 40


async def test_redis_keys_and_service_memory_stay_flat_over_many_rounds(region: str, tmp_path: Path) -> None:
    env = sim_env(region, f"sqlite:///{tmp_path / 'ledger.sqlite'}", ROUNDS)
    settings = from_env(env)
    samples: dict[str, tuple[int, dict[str, int]]] = {}

    async def sample(ensemble: Ensemble, sim: Community) -> None:
        redis = Redis.from_url(settings.redis_url)
        state = RegionState(redis, settings.region)
        try:
            for label, at in (("early", EARLY), ("late", ROUNDS - 5)):
                while sim.tally.rounds < at:
                    sim.rounds_seen.clear()
                    await asyncio.wait_for(sim.rounds_seen.wait(), timeout=60)
                # a service's busy mark comes and goes with its work, one per service at most
                samples[label] = (await state.key_count(but=("busy",)), ensemble.rss_kib())
        finally:
            await redis.aclose()

    await run(env, tmp_path, during=sample)
    (early_keys, early_rss), (late_keys, late_rss) = samples["early"], samples["late"]
    print(f"\nround {EARLY}: {early_keys} Redis keys, RSS KiB {early_rss}")
    print(f"round {ROUNDS - 5}: {late_keys} Redis keys, RSS KiB {late_rss}")
    # A round's keys are a handful; a leak of one key a round would add 115 here.
    assert late_keys <= early_keys + 5
    for name, kib in late_rss.items():
        assert kib <= early_rss[name] * 1.15 + 8 * 1024, f"{name} grew from {early_rss[name]} to {kib} KiB"
