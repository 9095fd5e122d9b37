"""SIGTERM stops a service within seconds even while a dependency is away: it finishes what
it holds when it can, and otherwise leaves it unacknowledged for the broker to deliver
again, so nothing accepted is lost. (A robust channel waits for its broker forever: before,
`kill $(jobs -p) && wait` hung for good once RabbitMQ had gone.)"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from pathlib import Path

import pytest

from microte import Client
from services.ensemble import Ensemble, purge_region
from shared.runtime.service import STOP_LIMIT_S
from tests.faults.harness import Servers

pytestmark = [pytest.mark.faults, pytest.mark.e2e]

SERVICES = ("ledger-writer", "order-intake", "matcher", "meter-collector", "clock")


def events(log: Path, name: str) -> list[dict[str, object]]:
    lines = log.read_text(errors="replace").splitlines()
    return [e for e in (json.loads(line) for line in lines if line.startswith("{")) if e.get("event") == name]


async def stopped(ensemble: Ensemble, name: str) -> tuple[int, float]:
    """SIGTERM ``name``; its exit code and how long it took (-9: killed after 2 x STOP_LIMIT_S)."""
    began = time.monotonic()
    code = await asyncio.to_thread(ensemble.stop, name, 2 * STOP_LIMIT_S)
    return code, time.monotonic() - began


@pytest.mark.timeout(600)
async def test_every_service_stops_at_once_while_the_broker_is_away(servers: Servers, tmp_path: Path) -> None:
    servers.ensure_running()
    region = "stop" + secrets.token_hex(3)
    env = {**servers.env(), "MICROTE_REGION": region, "MICROTE_LEDGER_URL": "memory://"}
    ensemble = Ensemble(env, tmp_path / "logs")
    try:
        await ensemble.start_all(SERVICES)
        await asyncio.to_thread(servers.rabbit.stop)
        for name in SERVICES:
            code, took = await stopped(ensemble, name)
            assert code == 0, f"{name} exited with {code} after {took:.1f} s"
            assert took < STOP_LIMIT_S, f"{name} took {took:.1f} s to stop"
            assert events(tmp_path / "logs" / f"{name}.log", "service_stopped"), name
    finally:
        ensemble.stop_all()
        servers.ensure_running()
        await purge_region(servers.rabbit.url, servers.redis.url, region, ["h1"])


@pytest.mark.timeout(600)
async def test_a_request_in_hand_while_redis_is_away_is_left_to_the_broker_and_answered_later(
        servers: Servers, tmp_path: Path) -> None:
    servers.ensure_running()
    region = "stop" + secrets.token_hex(3)
    env = {**servers.env(), "MICROTE_REGION": region, "MICROTE_LEDGER_URL": "memory://"}
    ensemble = Ensemble(env, tmp_path / "logs")
    log = tmp_path / "logs" / "order-intake.log"
    try:
        await ensemble.start_all(("ledger-writer", "order-intake"))
        async with Client(servers.rabbit.url, region, "h1", answer_timeout_s=300) as me:
            await asyncio.to_thread(servers.redis.stop)
            joining = asyncio.create_task(me.join())
            deadline = time.monotonic() + 60
            while not events(log, "dependency_away_will_retry"):  # the join is in hand, waiting for Redis
                assert time.monotonic() < deadline, "order-intake never took the join"
                await asyncio.sleep(0.2)
            code, took = await stopped(ensemble, "order-intake")
            assert code == 0 and took < STOP_LIMIT_S, (code, took)
            assert [e["step"] for e in events(log, "shutdown_step_overran")] == ["finish_in_hand"]
            await asyncio.to_thread(servers.redis.start)
            ensemble.start("order-intake")  # the broker delivers the join again
            assert (await asyncio.wait_for(joining, timeout=240)).participant_id == "h1"
    finally:
        ensemble.stop_all()
        servers.ensure_running()
        await purge_region(servers.rabbit.url, servers.redis.url, region, ["h1"])
