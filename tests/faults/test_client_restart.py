"""The client SDK rides out a RabbitMQ restart: a request sent while the broker is down is
sent again once it is back, and answered; the connection, its queue and its bindings come
back by themselves."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import pytest

from microte import Client
from services.ensemble import Ensemble, purge_region
from shared.runtime.settings import from_env
from tests.faults.harness import Servers

pytestmark = [pytest.mark.faults, pytest.mark.e2e]


@pytest.mark.timeout(300)
async def test_the_client_rides_out_a_broker_restart(servers: Servers, tmp_path: Path) -> None:
    servers.ensure_running()
    region = "sdk" + secrets.token_hex(3)
    env = {**servers.env(), "MICROTE_REGION": region, "MICROTE_LEDGER_URL": "memory://"}
    ensemble = Ensemble(env, tmp_path / "logs")
    try:
        await ensemble.start_all(("ledger-writer", "order-intake"))
        async with Client(servers.rabbit.url, region, "h1", answer_timeout_s=180, resend_after_s=5) as me:
            assert (await me.join()).participant_id == "h1"
            await asyncio.to_thread(servers.rabbit.stop)
            leaving = asyncio.create_task(me.leave())  # sent while the broker is down
            await asyncio.to_thread(servers.rabbit.start)
            left = await leaving
            assert left.participant_id == "h1"
            # The same connection serves what comes next: its queue and bindings are back.
            assert (await me.join(agent="agg1")).agent == "agg1"
    finally:
        ensemble.stop_all()
        servers.ensure_running()
        settings = from_env(env)
        await purge_region(settings.amqp_url, settings.redis_url, region, ["h1"])
