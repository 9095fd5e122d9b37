"""Infrastructure faults and service outages at round 20-25 of a simulated run: the run
finishes, the audit passes, and the ledger is the fault-free run's, entry for entry.

In simulation mode a round waits for its services however long they are away (the round
timeout, 20 s here, applies to participants only), and a handler whose Redis, RabbitMQ
or database is away keeps its message and tries again: nothing is dead-lettered.
"""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from shared.runtime.ledger import open_ledger
from tests.faults.harness import ROUNDS, Simulator
from tests.faults.inject import FaultContext
from tests.faults.servers import PrivateRedis

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


@pytest.mark.timeout(1800)
async def test_a_broker_restart_changes_nothing_for_households_sending_their_rounds_in_one_request(
        sim: Simulator) -> None:
    """A household's batch is confirmed before it counts as sent and survives in its durable
    queue; a round start redelivered after the restart replays the same batch; the one that
    changes its mind still gets order-intake's answer: answers are transient, and one the
    restart lost is had again, the household sending its batch again once reconnected."""
    async def fault(f: FaultContext) -> None:
        await f.at_round(22)
        await f.server_down_for("rabbit", 5)

    got = await sim.check_against_baseline(fault, name="restart-rabbit-own-rounds", requests="round")
    assert got.tally is not None and got.tally.answers["OrderAccepted"] > 0


@pytest.mark.timeout(1800)
async def test_redis_restarted_without_persistence_is_rebuilt_from_the_ledger(
        sim: Simulator, volatile_redis: PrivateRedis) -> None:
    """Every key is gone after the restart: the services wait, the ledger-writer records what
    is still in its queue and rebuilds the round state from the ledger, and the region goes on."""
    async def fault(f: FaultContext) -> None:
        await f.at_round(22)
        f.note("Redis (no persistence) restarted: every key lost")
        await f.servers.redis.arestart()

    got = await sim.check_against_baseline(fault, servers=sim.servers.with_redis(volatile_redis), name="redis-lost")
    rebuilt = [line for line in (got.log_dir / "ledger-writer.log").read_text().splitlines()  # type: ignore[operator]
               if "round_state_rebuilt" in line]
    assert rebuilt, "the ledger-writer did not rebuild the round state"


@pytest.mark.timeout(1800)
async def test_redis_lost_mid_run_keeps_the_aggregators_of_households_acting_in_batches(
        sim: Simulator, volatile_redis: PrivateRedis) -> None:
    """The rebuild restores each member's agent from the ledger: an aggregator's batches are
    served after it as before, and the ledger is the fault-free one."""
    async def fault(f: FaultContext) -> None:
        await f.at_round(22)
        f.note("Redis (no persistence) restarted with households acting through aggregators")
        await f.servers.redis.arestart()

    got = await sim.check_against_baseline(fault, servers=sim.servers.with_redis(volatile_redis),
                                           name="redis-lost-batched", aggregators=3)
    assert got.tally is not None and not got.tally.rejections, got.tally.rejections


@pytest.mark.timeout(1800)
async def test_redis_lost_during_true_up_windows_keeps_every_slot_open_until_it_is_final(
        sim: Simulator, volatile_redis: PrivateRedis) -> None:
    """With a true-up window of five rounds, the slots whose windows are open when Redis is
    lost come back provisional from the ledger: the run's ledger is the fault-free one, and
    every slot up to the newest final one is final, with no gap around the loss."""
    async def fault(f: FaultContext) -> None:
        await f.at_round(22)
        f.note("Redis (no persistence) restarted during true-up windows")
        await f.servers.redis.arestart()

    got = await sim.check_against_baseline(fault, {"MICROTE_TRUE_UP_S": "300"},
                                           servers=sim.servers.with_redis(volatile_redis), name="redis-lost-true-up")
    store = open_ledger(got.url)
    await store.open()
    try:
        final = dict(await store.final_slots(got.region))
    finally:
        await store.close()
    assert final
    assert max(final).start > min(final).start + 30 * 60  # well past the loss at round 22
    reconciled = [start for start in got.reconciled if start <= max(final).start]
    assert sorted(slot.start for slot in final) == reconciled


@pytest.mark.timeout(1800)
async def test_a_failover_to_a_redis_replica_that_lagged_is_noticed_and_rebuilt(sim: Simulator) -> None:
    """At round 22 a copy of the region's keys is taken; at round 25 Redis is replaced by
    that copy, as a failover to a replica three rounds behind would do. The ledger-writer
    notices that Redis holds an older round than it recorded, drops the stale state and
    rebuilds it from the ledger; the run finishes with a passing audit. (Between the
    failover and its detection, half a second at most, services may act on the stale
    state, so the ledger is not promised to equal the fault-free one.)"""
    async def fault(f: FaultContext) -> None:
        redis = Redis.from_url(f.servers.redis.url)
        try:
            await f.at_round(22)
            keys = [k async for k in redis.scan_iter(match="mt:\\{" + f.region + "\\}:*", count=1000)]
            taking = redis.pipeline(transaction=True)  # one moment's copy, as a replica holds
            for key in keys:
                taking.dump(key).pttl(key)
            taken = await taking.execute()
            copy = list(zip(keys, taken[::2], taken[1::2], strict=True))  # key, value, time to live
            await f.at_round(25)
            f.note(f"Redis replaced by a copy of {len(copy)} keys taken at round 22")
            # At once, as a failover switches: nobody sees Redis empty or half restored.
            switch = redis.pipeline(transaction=True)
            switch.flushall()
            for key, value, ttl_ms in copy:
                if value is not None:
                    switch.restore(key, max(ttl_ms, 0), value, replace=True)
            await switch.execute()
        finally:
            await redis.aclose()

    got = await sim.run(during=fault, name="redis-stale")
    assert got.audit.ok, got.audit.problems[:10]
    assert len(got.reconciled) == ROUNDS
    log = (got.log_dir / "ledger-writer.log").read_text()  # type: ignore[operator]
    assert "round_state_stale_dropped" in log and "round_state_rebuilt" in log
    expected = await sim.baseline()
    print(f"\nstale failover: {got.summary()}; equal to the fault-free run: {got == expected}")
