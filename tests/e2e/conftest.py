"""End-to-end harness: the five services as processes against the real RabbitMQ, Redis
and PostgreSQL, a small simulated community, and the ledger read back afterwards."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import asyncpg
import pytest

from services.demo import During, simulate
from services.ensemble import purge_region
from services.participants.community import Tally, agent_ids
from services.participants.profiles import community
from shared.runtime.ledger import LedgerStore, open_ledger
from shared.runtime.settings import from_env

PG_URL = os.environ.get("MICROTE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
TIMEZONE = "America/Vancouver"
# Late morning: solar and load both, so that there is trade, shortfall and export.
START = int(datetime(2026, 6, 21, 11, 0, tzinfo=ZoneInfo(TIMEZONE)).timestamp())
PARTICIPANTS = 6
SEED = 11

pytestmark = pytest.mark.e2e


def sim_env(region: str, ledger_url: str, rounds: int, **extra: str) -> dict[str, str]:
    return {
        "MICROTE_REGION": region,
        "MICROTE_LEDGER_URL": ledger_url,
        "MICROTE_ROUNDS": str(rounds),
        "MICROTE_START_TIME": str(START),
        "MICROTE_TIMEZONE": TIMEZONE,
        "MICROTE_CLOCK_MODE": "simulation",
        "MICROTE_ROUND_TIMEOUT_S": "20",
        **extra,
    }


@pytest.fixture
def region() -> str:
    return "e2e" + secrets.token_hex(4)


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    name = "microte_e2e_" + secrets.token_hex(4)
    try:
        admin = await asyncpg.connect(PG_URL)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(f"PostgreSQL is not reachable at {PG_URL} ({exc}); run scripts/services.sh postgres")
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    yield PG_URL.rsplit("/", 1)[0] + "/" + name
    admin = await asyncpg.connect(PG_URL)
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.close()


async def run(env: dict[str, str], tmp_path: Path, during: During | None = None, replicas: int = 1,
              aggregators: int = 0, requests: str = "single") -> Tally:
    settings = from_env(env)
    ids = [h.participant_id for h in community(PARTICIPANTS, SEED)] + agent_ids(aggregators)
    await purge_region(settings.amqp_url, settings.redis_url, settings.region, ids)
    try:
        return await simulate(env, participants=PARTICIPANTS, seed=SEED, log_dir=tmp_path / "logs", during=during,
                              replicas=replicas, aggregators=aggregators, requests=requests)
    finally:
        await purge_region(settings.amqp_url, settings.redis_url, settings.region, ids)


async def opened(url: str) -> LedgerStore:
    store = open_ledger(url)
    await store.open()
    return store
