"""Fixtures of the fault suite: private servers (never the shared ones on 5672/6379/5432),
and a simulator that runs the five services against them and reads the ledger back.

A fault test is a few lines::

    pytestmark = [pytest.mark.faults, pytest.mark.e2e]

    @pytest.mark.timeout(900)
    async def test_the_matcher_down_25_s(sim: Simulator) -> None:
        async def fault(f: FaultContext) -> None:
            await f.at_round(20)
            await f.down_for("matcher", 25)
        await sim.check_against_baseline(fault)

``sim.baseline()`` is the fault-free run of the seed, once per session; ``run_sim(...)`` is
``sim.run``; ``diff(a, b)`` explains a difference. A test may stop or kill the session's
servers (``f.servers.redis.arestart()``, ``f.server_down_for("rabbit", 5)``): the next
run starts whatever is down again, data kept.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.faults.harness import ROUNDS, SEED, Ledger, Servers, Simulator, diff  # noqa: F401
from tests.faults.inject import FaultContext, at_round  # noqa: F401
from tests.faults.servers import PrivatePostgres, PrivateRabbit, PrivateRedis


@pytest.fixture(scope="session")
def servers() -> Iterator[Servers]:
    """A private RabbitMQ node, Redis (AOF on) and PostgreSQL cluster for the whole session."""
    made: list[PrivateRabbit | PrivateRedis | PrivatePostgres] = []
    try:
        rabbit, redis, postgres = PrivateRabbit(), PrivateRedis(aof=True), PrivatePostgres()
        made += [rabbit, redis, postgres]
        with ThreadPoolExecutor(3) as pool:  # RabbitMQ takes seconds: start the three together
            for started in [pool.submit(s.start) for s in made]:
                started.result()
        yield Servers(rabbit, redis, postgres)
    finally:
        for server in made:
            with contextlib.suppress(Exception):
                server.close()


@pytest.fixture
def volatile_redis() -> Iterator[PrivateRedis]:
    """A Redis of its own without persistence: a restart loses every key."""
    with PrivateRedis(aof=False) as redis:
        yield redis


@pytest.fixture
def aof_redis() -> Iterator[PrivateRedis]:
    """A Redis of its own with an append-only file (fsync every second)."""
    with PrivateRedis(aof=True) as redis:
        yield redis


@pytest.fixture(scope="session")
def sim(servers: Servers, tmp_path_factory: pytest.TempPathFactory) -> Simulator:
    return Simulator(servers, tmp_path_factory.mktemp("fault-logs"))


@pytest.fixture
def run_sim(sim: Simulator) -> Iterator[object]:
    """``await run_sim(env_overrides, during=None, rounds=80, participants=8, seed=11)``: a Ledger."""
    yield sim.run
    sim.servers.ensure_running()  # a test that left a server down does not spoil the next


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    return tmp_path / "logs"
