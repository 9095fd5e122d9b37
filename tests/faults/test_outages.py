"""Infrastructure faults and service outages at round 20-25 of a simulated run: the run
finishes, the audit passes, and the ledger is the fault-free run's, entry for entry.

In simulation mode a round waits for its services however long they are away (the round
timeout, 20 s here, applies to participants only), and a handler whose Redis, RabbitMQ
or database is away keeps its message and tries again: nothing is dead-lettered.
"""

from __future__ import annotations

import pytest

from tests.faults.harness import Simulator
from tests.faults.inject import FaultContext

pytestmark = [pytest.mark.faults, pytest.mark.e2e]


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("service", ["matcher", "meter-collector", "order-intake"])
async def test_a_service_down_longer_than_the_round_timeout_delays_but_changes_nothing(
        sim: Simulator, service: str) -> None:
    async def fault(f: FaultContext) -> None:
        await f.at_round(21)
        await f.down_for(service, 25)

    await sim.check_against_baseline(fault, name=f"down-{service}")


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("service", ["matcher", "meter-collector", "order-intake"])
async def test_a_service_killed_mid_run_and_restarted_changes_nothing(sim: Simulator, service: str) -> None:
    async def fault(f: FaultContext) -> None:
        await f.at_round(23)
        await f.kill(service)

    await sim.check_against_baseline(fault, name=f"kill-{service}")


@pytest.mark.timeout(1800)
@pytest.mark.parametrize(("server", "seconds"), [("redis", 3), ("rabbit", 5), ("postgres", 5)])
async def test_a_server_restart_changes_nothing(sim: Simulator, server: str, seconds: float) -> None:
    """Redis keeps its data (append-only file); RabbitMQ its durable queues and persistent
    messages; PostgreSQL its committed transactions."""
    async def fault(f: FaultContext) -> None:
        await f.at_round(22)
        await f.server_down_for(server, seconds)

    await sim.check_against_baseline(fault, name=f"restart-{server}")
