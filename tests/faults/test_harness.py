"""The harness itself: a fault-free run on the private servers is repeatable (the same
seed gives the same ledger, entry for entry) and passes its audit; and the faults today's
services already survive (SIGKILL of the clock or of the ledger writer at round 20-25,
restarted at once) give the baseline's ledger."""

from __future__ import annotations

import pytest

from shared.market import EntryKind
from tests.faults.harness import ROUNDS, Simulator, diff
from tests.faults.inject import FaultContext

pytestmark = [pytest.mark.faults, pytest.mark.e2e]


@pytest.mark.timeout(1800)
async def test_two_fault_free_runs_of_a_seed_record_the_same_ledger(sim: Simulator) -> None:
    first = await sim.baseline()
    second = await sim.run(name="again")
    print(f"\nbaseline: {first.summary()}\nagain:    {second.summary()}")
    assert second == first, diff(first, second)
    assert first.audit.ok and second.audit.ok, (first.audit.problems[:5], second.audit.problems[:5])
    assert len(first.reconciled) == ROUNDS
    assert first.settlements, "nothing traded: the comparison would prove little"
    assert {EntryKind.P2P, EntryKind.GRID_IMPORT, EntryKind.GRID_EXPORT} <= first.kinds


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("service", ["clock", "ledger-writer"])
async def test_a_service_killed_at_round_20_to_25_and_restarted_changes_nothing(sim: Simulator,
                                                                                service: str) -> None:
    async def fault(f: FaultContext) -> None:
        await f.at_round(22)
        await f.kill(service)

    got = await sim.check_against_baseline(fault, name=f"kill-{service}")
    print(f"\n{service}: {got.summary()}; {got.notes}")
