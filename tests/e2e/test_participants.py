"""Participants as broker accounts of their own (``microte participants``), on a private
RabbitMQ node with the management plugin, with the region's services running under
``MICROTE_IDENTITY=broker_user``: a household reaches only its own answers and its region's
requests, cannot act for another household or touch the services' queues, an aggregator acts
only for the households that named it, and a removed participant is cut off."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import aio_pika
import aiormq
import pytest
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractIncomingMessage, AbstractRobustConnection
from redis.asyncio import Redis

from services.ensemble import Ensemble
from shared.messages import decode, encode
from shared.messages import types as t
from shared.runtime.settings import from_env
from shared.runtime.state import RegionState
from tests.e2e.accounts import add, forget, participants, region_on
from tests.faults.servers import PrivateRabbit

pytestmark = pytest.mark.e2e

ANSWER_S = 30
M = TypeVar("M", bound=t.Message)


@pytest.fixture(scope="module")
def rabbit() -> Iterator[PrivateRabbit]:
    with PrivateRabbit(management=True) as server:
        yield server


class Client:
    """One participant's connection, as its own broker user: its queue, bound to its own
    answers and the round announcements, and what arrived on it."""

    def __init__(self, rabbit: PrivateRabbit, region: str, pid: str, password: str) -> None:
        self.url, self.region, self.pid = rabbit.url_for(pid, password), region, pid
        self.answers: asyncio.Queue[t.Message] = asyncio.Queue()
        self.connection: AbstractRobustConnection | None = None
        self.exchange: AbstractExchange | None = None

    async def __aenter__(self) -> Client:
        self.connection = await aio_pika.connect_robust(self.url)
        channel = await self.connection.channel()
        self.exchange = await channel.get_exchange("microte")  # passive: it may not declare it
        queue = await channel.declare_queue(f"microte.{self.region}.participant.{self.pid}", durable=True)
        await queue.bind(self.exchange, routing_key=f"{self.region}.to.{self.pid}.#")
        await queue.bind(self.exchange, routing_key=f"{self.region}.fact.round_started")

        async def on_message(incoming: AbstractIncomingMessage) -> None:
            async with incoming.process():
                await self.answers.put(decode(incoming.body))

        await queue.consume(on_message)
        return self

    async def __aexit__(self, *_: object) -> None:
        if self.connection is not None and not self.connection.is_closed:
            await self.connection.close()

    async def send(self, message: t.Message, kind: str) -> None:
        assert self.exchange is not None
        await self.exchange.publish(aio_pika.Message(encode(message), user_id=self.pid),
                                    routing_key=f"{self.region}.in.{kind}")

    async def expect(self, kind: type[M], match: Callable[[M], bool] = lambda _: True) -> M:
        """The next answer of this type that matches, skipping round announcements and others."""
        while True:
            message = await asyncio.wait_for(self.answers.get(), ANSWER_S)
            if isinstance(message, kind) and match(message):
                return message

    async def refused(self, attempt: Callable[[AbstractChannel], Awaitable[object]]) -> None:
        """The broker refuses the attempt (403 ACCESS_REFUSED, closing the channel it was on)."""
        assert self.connection is not None
        channel = await self.connection.channel()
        with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
            await attempt(channel)


@pytest.fixture
async def region(rabbit: PrivateRabbit, tmp_path: Path) -> AsyncIterator[str]:
    async with region_on(rabbit, "acct", ("ledger-writer", "order-intake"), tmp_path) as region:
        yield region


async def members(region: str) -> tuple[set[str], dict[str, str]]:
    redis = Redis.from_url(from_env({"MICROTE_REGION": region}).redis_url)
    try:
        state = RegionState(redis, region)
        ids = ("h1", "h2", "h3", "agg")
        return {pid for pid in ids if await state.is_member(pid)}, await state.agents()
    finally:
        await redis.aclose()


async def test_a_household_account_reaches_only_its_own_traffic(rabbit: PrivateRabbit, region: str) -> None:
    h1, h2 = add(rabbit, region, "h1"), add(rabbit, region, "h2")
    async with Client(rabbit, region, "h1", h1) as alice, Client(rabbit, region, "h2", h2):
        await alice.send(t.JoinMarket(region=region, participant_id="h1"), "member")
        await alice.expect(t.MemberJoined)
        # It cannot listen to another household's answers, to all answers, or to another region.
        for key in (f"{region}.to.h2.#", f"{region}.to.h2.settlements", f"{region}.to.#", f"{region}.#",
                    f"{region}.fact.slot_cleared", "other.fact.round_started"):
            async def bind(channel: AbstractChannel, key: str = key) -> None:
                queue = await channel.declare_queue(f"microte.{region}.participant.h1", durable=True)
                await queue.bind("microte", routing_key=key)
            await alice.refused(bind)
        # Nor take another's queue, or read, purge or delete the services' queues.
        await alice.refused(lambda c: c.declare_queue(f"microte.{region}.participant.h2", durable=True))
        await alice.refused(lambda c: c.queue_delete(f"microte.{region}.dead"))

        async def purge_theirs(channel: AbstractChannel) -> None:
            await (await channel.get_queue(f"microte.{region}.order-intake", ensure=False)).purge()
        await alice.refused(purge_theirs)

        async def consume_theirs(channel: AbstractChannel) -> None:
            queue = await channel.get_queue(f"microte.{region}.order-intake", ensure=False)

            async def ignore(_: AbstractIncomingMessage) -> None:
                return None
            await queue.consume(ignore)
        await alice.refused(consume_theirs)
        # Nor declare or delete an exchange, nor write past the topic permissions.
        await alice.refused(lambda c: c.declare_exchange("microte", aio_pika.ExchangeType.TOPIC, durable=True))

        async def publish(channel: AbstractChannel, exchange: str, key: str) -> None:
            target = await channel.get_exchange(exchange, ensure=False) if exchange else channel.default_exchange
            await target.publish(aio_pika.Message(b"x", user_id="h1"), routing_key=key)
        await alice.refused(lambda c: publish(c, "", f"microte.{region}.order-intake"))  # straight to a queue
        await alice.refused(lambda c: publish(c, "microte", "other.in.order"))  # another region
        await alice.refused(lambda c: publish(c, "microte", f"{region}.fact.round_started"))  # a fact
        await alice.refused(lambda c: publish(c, "microte", f"{region}.to.h2.settlements"))  # an answer
        # It cannot claim another user id (RabbitMQ checks it: 406 PRECONDITION_FAILED).
        channel = await alice.connection.channel() if alice.connection else None
        assert channel is not None
        with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed):
            exchange = await channel.get_exchange("microte", ensure=False)
            await exchange.publish(aio_pika.Message(encode(t.JoinMarket(region=region, participant_id="h2")),
                                                    user_id="h2"), routing_key=f"{region}.in.member")
        # And a request naming another household is refused, to the sender it really is.
        await alice.send(t.LeaveMarket(region=region, participant_id="h2"), "member")
        refused = await alice.expect(t.Rejected)
        assert (refused.participant_id, refused.reason) == ("h1", "identity_mismatch")
    joined, _ = await members(region)
    assert joined == {"h1"}


async def test_an_aggregator_acts_only_for_the_households_that_named_it(rabbit: PrivateRabbit, region: str) -> None:
    agg = add(rabbit, region, "agg", "--aggregator")
    add(rabbit, region, "h3", "--agent", "agg")  # joins h3, as h3, naming agg
    h1 = add(rabbit, region, "h1")
    listed = participants(rabbit, region, "list")
    assert listed.returncode == 0, listed.stderr
    rows = [line.split() for line in listed.stdout.splitlines()[1:-1]]
    assert rows == [["agg", "aggregator", "no"], ["h1", "household", "no"], ["h3", "household", "yes", "agg"]]
    async with Client(rabbit, region, "h1", h1) as alice, Client(rabbit, region, "agg", agg) as agent:
        await alice.send(t.JoinMarket(region=region, participant_id="h1"), "member")
        await alice.expect(t.MemberJoined)
        # The aggregator cannot register a household itself: a join must come from the household.
        await agent.send(t.JoinMarket(region=region, participant_id="h1", agent="agg"), "member")
        assert (await agent.expect(t.Rejected)).reason == "identity_mismatch"

        async def batch(batch_id: str) -> list[tuple[str, str]]:
            slot = t.Slot(0, 60)  # no clock runs: refused on its merits, after the entitlement check
            items = [t.ParticipantRound(participant_id=pid, orders=[t.OrderItem(
                client_order_id=f"o-{secrets.token_hex(4)}", side="bid", quantity_wh=100, price="0.1",
                source="solar", slot=slot)]) for pid in ("h3", "h1")]
            await agent.send(t.SubmitBatch(region=region, participant_id="agg", batch_id=batch_id, items=items),
                             "batch")
            answered = await agent.expect(t.BatchAnswered, lambda a: a.batch_id == batch_id)
            return [(a.participant_id, getattr(a, "reason", "")) for a in answered.answers]

        assert await batch("b1") == [("h3", "market_not_open"), ("h1", "not_entitled")]
        # Removing h3 ends its membership, and with it the aggregator's right to act for it.
        done = participants(rabbit, region, "remove", "h3")
        assert done.returncode == 0, done.stderr
        assert await batch("b2") == [("h3", "not_entitled"), ("h1", "not_entitled")]
    joined, agents = await members(region)
    assert joined == {"h1"} and agents == {}


async def test_a_removed_household_is_cut_off(rabbit: PrivateRabbit, region: str) -> None:
    h1 = add(rabbit, region, "h1")
    client = Client(rabbit, region, "h1", h1)
    async with client:
        await client.send(t.JoinMarket(region=region, participant_id="h1"), "member")
        await client.expect(t.MemberJoined)
        assert client.connection is not None
        closed = asyncio.Event()
        client.connection.close_callbacks.add(lambda *_: closed.set())
        done = participants(rabbit, region, "remove", "h1")
        assert done.returncode == 0, done.stderr
        assert "1 connection(s) closed" in done.stdout
        await asyncio.wait_for(closed.wait(), ANSWER_S)  # the broker closed its open connection
    with pytest.raises(aio_pika.exceptions.ProbableAuthenticationError):
        await aio_pika.connect(rabbit.url_for("h1", h1))
    joined, _ = await members(region)
    assert joined == set()
    listed = participants(rabbit, region, "list")
    assert "h1" not in listed.stdout and "0 account(s)" in listed.stdout


@pytest.mark.parametrize(("args", "says"), [
    (("add", "h9", "--agent", "nobody"), "nobody is not an aggregator of region"),
    (("add", "microte-r1-clock"), "reserved for the services"),
    (("add", "bad.id"), "is not a participant id"),
    (("remove", "never-added"), "never-added is not a participant of region"),
    (("add",), "need a participant id"),
])
def test_a_bad_provisioning_request_is_refused_with_what_to_do(
        rabbit: PrivateRabbit, args: tuple[str, ...], says: str) -> None:
    done = participants(rabbit, "acct" + secrets.token_hex(3), *args)
    assert done.returncode != 0
    assert says in done.stderr
    assert "Traceback" not in done.stderr


def test_a_participant_id_is_one_account_in_one_region(rabbit: PrivateRabbit) -> None:
    first, second = "acct" + secrets.token_hex(3), "acct" + secrets.token_hex(3)
    pid = "h" + secrets.token_hex(3)
    add(rabbit, first, pid)
    done = participants(rabbit, second, "add", pid)
    assert done.returncode == 1 and f"{pid} is a participant of region {first}" in done.stderr
    # Adding it again in its own region repairs its permissions and keeps its password.
    again = participants(rabbit, first, "add", pid)
    assert again.returncode == 0 and "password" not in again.stdout


async def test_a_community_on_accounts_of_its_own_trades_under_broker_identity(
        rabbit: PrivateRabbit, tmp_path: Path) -> None:
    """The whole simulated community as the compose stack runs it: an aggregator and its
    households, each signing in as itself (``microte simulate --participant-url``), the five
    services trusting only the broker's user ids; the run ends with a passing audit."""
    region = "own" + secrets.token_hex(3)
    households = [f"h{i:03d}" for i in range(4)]
    template = rabbit.url.replace("guest:guest@", "{participant}:pw-{participant}@")
    for args in ([pid, "--password", f"pw-{pid}"] for pid in households):
        assert participants(rabbit, region, "add", *args).returncode == 0
    assert participants(rabbit, region, "add", "agg000", "--aggregator", "--password", "pw-agg000").returncode == 0
    ledger = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    env = {"MICROTE_REGION": region, "MICROTE_IDENTITY": "broker_user", "MICROTE_LEDGER_URL": ledger,
           "MICROTE_AMQP_URL": rabbit.url, "MICROTE_ROUNDS": "5", "MICROTE_START_TIME": "1782064800",
           "MICROTE_TIMEZONE": "America/Vancouver", "MICROTE_MIN_MEMBERS": "4"}
    ensemble = Ensemble(env, tmp_path / "logs")
    try:
        await ensemble.start_all()
        done = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "services.cli", "simulate", "--participants", "4",
                             "--aggregators", "1", "--participant-url", template],
            env={**os.environ, **env, "MICROTE_SERVICE_KEY": ensemble.env["MICROTE_SERVICE_KEY"]},
            capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "simulation done: 5 rounds" in done.stdout, done.stdout
        assert "not_entitled" not in done.stdout and "rejections {}" in done.stdout, done.stdout
        report = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "services.cli", "report", "--region", region, "--ledger", ledger],
            env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
        assert report.returncode == 0 and "PASS" in report.stdout, report.stdout + report.stderr
    finally:
        await forget(rabbit, ensemble, env, (*households, "agg000"))
