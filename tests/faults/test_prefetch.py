"""The consumer prefetch each service sets is the one the broker applies (asked of the broker
itself with rabbitmqctl): a consumer without it would take every ready message at once."""

from __future__ import annotations

import importlib
import secrets
from pathlib import Path

import pytest

from services.ensemble import SERVICES, Ensemble, purge_region
from shared.runtime.settings import from_env
from tests.faults.harness import Servers

pytestmark = [pytest.mark.faults, pytest.mark.e2e]

APPS = {name: f"services.{name.replace('-', '_')}.app" for name in SERVICES}


def configured_prefetch(name: str, env: dict[str, str]) -> int:
    """The prefetch the service's code asks for (its one consumer)."""
    service = importlib.import_module(APPS[name]).create(from_env(env))
    (consumer,) = service._consumers
    return int(consumer.prefetch)


@pytest.mark.timeout(300)
async def test_every_service_consumes_with_the_prefetch_its_code_sets(servers: Servers, tmp_path: Path) -> None:
    servers.ensure_running()
    region = "pf" + secrets.token_hex(4)
    env = {**servers.env(), "MICROTE_REGION": region, "MICROTE_SERVICE_KEY": secrets.token_hex(32),
           "MICROTE_LEDGER_URL": f"sqlite:///{tmp_path / 'ledger.sqlite'}", "MICROTE_CLOCK_MODE": "simulation",
           "MICROTE_ROUNDS": "1"}
    expected = {f"microte.{region}.{name}": configured_prefetch(name, env) for name in SERVICES}
    assert len(set(expected.values())) > 1, "the services' limits differ; the test must tell them apart"
    ensemble = Ensemble(env, tmp_path / "logs")
    try:
        await ensemble.start_all(tuple(n for n in SERVICES if n != "clock"))
        found = {str(c["queue_name"]): int(c["prefetch_count"]) for c in servers.rabbit.consumers()
                 if c["queue_name"] in expected}
        expected.pop(f"microte.{region}.clock")
        assert found == expected, f"prefetch as the broker applies it: {found}, as the code sets it: {expected}"
    finally:
        ensemble.stop_all()
        await purge_region(servers.rabbit.url, servers.redis.url, region, [])
