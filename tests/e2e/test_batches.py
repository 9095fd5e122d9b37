"""Households acting through aggregators, in batches, or each sending its whole round as a
batch of its own: the ledger is the one the same households make with one message per
request, a batch delivered twice changes nothing, a service killed mid-run loses and
doubles nothing, and an aggregator can act only for its own households."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import aio_pika
import pytest

from services.demo import During
from services.ensemble import Ensemble
from services.participants.community import Community
from shared.messages import decode, encode
from shared.messages import types as t
from shared.runtime.settings import from_env
from tests.e2e.conftest import run, sim_env
from tests.e2e.test_ledger import ROUNDS, check_audit, ledger_of
from tests.faults.inject import at_round

AGGREGATORS = 3
# How the households send: through aggregators, or each its whole round as a batch of its own.
BATCHED = pytest.mark.parametrize("aggregators, requests", [(AGGREGATORS, "single"), (0, "round")],
                                  ids=["aggregators", "own-rounds"])


@BATCHED
async def test_households_acting_in_batches_make_the_ledger_they_make_with_single_requests(
        region: str, tmp_path: Path, aggregators: int, requests: str) -> None:
    alone, batched = f"sqlite:///{tmp_path / 'alone.sqlite'}", f"sqlite:///{tmp_path / 'batched.sqlite'}"
    await run(sim_env(region, alone, ROUNDS), tmp_path / "alone")
    env = sim_env(region, batched, ROUNDS)
    tally = await run(env, tmp_path / "batched", aggregators=aggregators, requests=requests)
    assert tally.answers["OrderAccepted"] > 0 and tally.answers["ReadingAccepted"] > 0
    assert await ledger_of(batched, region) == await ledger_of(alone, region)
    await check_audit(batched, env)


@BATCHED
async def test_every_batch_delivered_twice_gives_the_identical_ledger(
        region: str, tmp_path: Path, aggregators: int, requests: str) -> None:
    once, twice = f"sqlite:///{tmp_path / 'once.sqlite'}", f"sqlite:///{tmp_path / 'twice.sqlite'}"
    await run(sim_env(region, once, ROUNDS), tmp_path / "once", aggregators=aggregators, requests=requests)
    await run(sim_env(region, twice, ROUNDS, MICROTE_DUPLICATE_DELIVERY="1"), tmp_path / "twice",
              aggregators=aggregators, requests=requests)
    expected, got = await ledger_of(once, region), await ledger_of(twice, region)
    assert got == expected
    assert expected[0], "no entries at all"


@pytest.mark.parametrize("service", ["order-intake", "meter-collector"])
async def test_a_service_killed_mid_run_in_batches_loses_and_doubles_nothing(
        region: str, tmp_path: Path, service: str) -> None:
    clean = f"sqlite:///{tmp_path / 'clean.sqlite'}"
    await run(sim_env(region, clean, ROUNDS), tmp_path / "clean", aggregators=AGGREGATORS)

    async def kill_and_restart(ensemble: Ensemble, sim: Community) -> None:
        while sim.tally.rounds < ROUNDS // 2:
            sim.rounds_seen.clear()
            await asyncio.wait_for(sim.rounds_seen.wait(), timeout=60)
        ensemble.kill(service)
        ensemble.start(service)
        await ensemble.wait_healthy(service)

    faulty = f"sqlite:///{tmp_path / 'faulty.sqlite'}"
    env = sim_env(region, faulty, ROUNDS)
    during: During = kill_and_restart
    await run(env, tmp_path / "faulty", during=during, aggregators=AGGREGATORS)
    assert await ledger_of(faulty, region) == await ledger_of(clean, region)
    await check_audit(faulty, env)


async def test_an_aggregator_acts_only_for_its_own_households(region: str, tmp_path: Path) -> None:
    """Every item gets its own answer: the households registered to the sender are served,
    any other is refused as not_entitled, and nothing is written for it."""
    settings = from_env(sim_env(region, f"sqlite:///{tmp_path / 'l.sqlite'}", ROUNDS))
    answers: asyncio.Queue[t.Message] = asyncio.Queue()

    async def probe(ensemble: Ensemble, sim: Community) -> None:
        connection = await aio_pika.connect(settings.amqp_url)
        async with connection:
            channel = await connection.channel()
            exchange = await channel.get_exchange("microte")
            inbox = await channel.declare_queue(exclusive=True)
            await inbox.bind(exchange, routing_key=f"{region}.to.agg000.batch")

            async def collect(incoming: aio_pika.abc.AbstractIncomingMessage) -> None:
                await answers.put(decode(incoming.body))

            await inbox.consume(collect, no_ack=True)
            await at_round(sim, 1)  # the clock process is up; its first round may not be yet (market_not_open)
            mine, other = sim.aggregators[0], sim.aggregators[1]
            own, foreign = next(iter(mine.members)), next(iter(other.members))
            slot = t.Slot(0, 60)  # long closed: refused on its merits, after the entitlement check
            items = [t.ParticipantRound(participant_id=pid, orders=[t.OrderItem(
                client_order_id=f"probe-{secrets.token_hex(4)}", side="bid", quantity_wh=100, price="0.1",
                source="solar", slot=slot)]) for pid in (own, foreign)]
            batch = t.SubmitBatch(region=region, participant_id=mine.agent_id, batch_id="probe", items=items)
            await exchange.publish(aio_pika.Message(encode(batch)), routing_key=f"{region}.in.batch")
            while True:
                answer = await asyncio.wait_for(answers.get(), timeout=60)
                if isinstance(answer, t.BatchAnswered) and answer.batch_id == "probe":
                    break
            assert [(a.participant_id, getattr(a, "reason", "")) for a in answer.answers] == [
                (own, "gate_closed"), (foreign, "not_entitled")]

    await run(sim_env(region, f"sqlite:///{tmp_path / 'l.sqlite'}", ROUNDS), tmp_path, during=probe,
              aggregators=AGGREGATORS)
