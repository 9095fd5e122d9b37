"""A poison slot (its book or its readings fail to decode, every time) does not stop the
region: the slot is held, with its error, the run finishes with a passing audit and a
ledger that equals the fault-free run's but for the held slot, and ``microte replay-slot``
then restores the rest from the ledger's own records: the ledger equals the baseline."""

from __future__ import annotations

import asyncio
import os
import sys

import pytest
from redis.asyncio import Redis

from shared.runtime.state import RegionState
from tests.faults.harness import ROUNDS, Ledger, Simulator, diff, read_ledger, sim_env
from tests.faults.inject import FaultContext

pytestmark = [pytest.mark.faults, pytest.mark.e2e]

D = 60


def without_slot(ledger: Ledger, start: int) -> tuple[object, ...]:
    return (tuple(e for e in ledger.entries if e.slot != start),
            tuple(s for s in ledger.settlements if s.slot != start),
            ledger.orders, ledger.cancelled, ledger.readings, tuple(s for s in ledger.reconciled if s != start))


async def replay(sim: Simulator, ledger: Ledger, slot_start: int) -> str:
    env = {**os.environ, **sim_env(sim.region, ledger.url, sim.servers, ROUNDS)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cli", "replay-slot", "--region", sim.region, "--slot", str(slot_start),
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode == 0, out.decode()
    return out.decode()


@pytest.mark.timeout(1800)
@pytest.mark.parametrize(("what", "stage", "ahead"), [("book", "clearing", 2), ("readings", "reconciliation", 1)])
async def test_a_poison_slot_is_held_and_a_replay_restores_the_ledger(
        sim: Simulator, what: str, stage: str, ahead: int) -> None:
    poisoned: list[int] = []

    async def hook(f: FaultContext) -> None:
        await f.at_round(22)
        redis = Redis.from_url(f.servers.redis.url)
        try:
            # The clock's own round (the households may not have taken it yet): a whole round
            # before the slot is cleared or reconciled, so no race with the services.
            state = RegionState(redis, f.region)
            now = await state.current_round()
            assert now is not None
            start = now[0] + ahead * D
            await redis.hset(state.key(what, str(start), str(start + D)), "poison", b"\xc1 not msgpack")
        finally:
            await redis.aclose()
        poisoned.append(start)
        f.note(f"an undecodable entry in the {what} of slot {start}")

    expected = await sim.baseline()
    got = await sim.run(during=hook, name=f"poison-{what}")
    (slot,) = poisoned
    assert got.audit.ok, got.audit.problems[:10]
    assert [(h.slot.start, h.stage) for h in got.audit.held] == [(slot, stage)]
    assert "Undecodable" in got.audit.held[0].error
    assert without_slot(got, slot) == without_slot(expected, slot), diff(expected, got)
    assert slot not in got.reconciled and not [e for e in got.entries if e.slot == slot]

    print(await replay(sim, got, slot))
    after = await read_ledger(got.url, sim_env(sim.region, got.url, sim.servers, ROUNDS))
    assert after == expected and after.audit.ok and after.audit.held == [], diff(expected, after)
