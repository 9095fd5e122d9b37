"""The main job: the five services as processes, a simulated community, then the report."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from services.ensemble import Ensemble, purge_region
from services.participants.community import Community, Tally, agent_ids
from services.participants.profiles import community
from services.report import report
from shared.runtime.ledger import open_ledger
from shared.runtime.settings import from_env

During = Callable[[Ensemble, Community], Awaitable[None]]


async def simulate(env: dict[str, str], *, participants: int, seed: int, log_dir: Path,
                   during: During | None = None, replicas: int = 1, aggregators: int = 0) -> Tally:
    """The services as processes and a community, until the last round is recorded.

    ``during`` runs beside the simulation once the clock has started (fault injection).
    """
    settings = from_env(env)
    if settings.ledger_url.startswith("sqlite:///"):
        Path(settings.ledger_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    ensemble = Ensemble(env, log_dir)
    try:
        workers = ("order-intake", "matcher", "meter-collector", "ledger-writer")
        await ensemble.start_all(tuple(f"{n}#{i}" if i > 1 else n for n in workers for i in range(1, replicas + 1)))
        sim = Community(settings.amqp_url, settings.region, community(participants, seed),
                        settings.market.tariff.timezone, progress_every=max(1, settings.rounds // 20),
                        duplicate=settings.duplicate_delivery, aggregators=aggregators)
        joined = asyncio.Event()
        run = asyncio.create_task(sim.run(joined))
        await asyncio.wait_for(joined.wait(), timeout=60)
        await ensemble.start_all(tuple(f"clock#{i}" if i > 1 else "clock" for i in range(1, replicas + 1)))
        if during is not None:
            await during(ensemble, sim)
        return await run
    finally:
        ensemble.stop_all()


async def run_demo(env: dict[str, str], *, participants: int, seed: int, log_dir: Path, aggregators: int = 0) -> int:
    settings = from_env(env)
    print(f"microte demo: region {settings.region}, {participants} participants, {settings.rounds} rounds of "
          f"{settings.market.schedule.duration} s, ledger {settings.ledger_url}, logs in {log_dir}", file=sys.stderr)
    began = time.monotonic()
    try:
        tally = await simulate(env, participants=participants, seed=seed, log_dir=log_dir, aggregators=aggregators)
    finally:
        # The ledger keeps all a report needs; the region's queues and round state can go.
        ids = [h.participant_id for h in community(participants, seed)] + agent_ids(aggregators)
        await purge_region(settings.amqp_url, settings.redis_url, settings.region, ids)
    print(f"simulated {tally.rounds} rounds in {time.monotonic() - began:.1f} s; "
          f"rejections: {dict(tally.rejections) or 'none'}", file=sys.stderr)
    store = open_ledger(settings.ledger_url)
    await store.open()
    try:
        text, ok = await report(store, settings.market)
    finally:
        await store.close()
    print(text)
    return 0 if ok else 1
