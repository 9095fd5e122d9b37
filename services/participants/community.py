"""A simulated community: households that use the market exactly as outside clients do,
over RabbitMQ only: they join, quote for the next open slot, report their meters and say
when they are done with a round. Households acting through an aggregator (the default of
``microte demo``) do it through the client SDK, ``microte.client``, as any aggregator
would. Households on their own send their whole round as one request of their own (a
batch of one), or, with ``requests="single"``, one message per request, as simple meters do."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal

import aio_pika
import msgspec
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractIncomingMessage

from microte.client import Client, Refused, answering
from services.participants import REQUESTS
from services.participants.profiles import Household, deliver, noise
from services.participants.strategies import Trade, make_strategy
from services.progress import RoundProgress
from shared.market import GridPrices, Slot
from shared.market.timezones import zone
from shared.messages import CONTENT_TYPE, decode, encode
from shared.messages import types as t
from shared.runtime import topology as k
from shared.runtime.topology import Keys

# A household waits this long for the market's answer to each request. In simulation the
# market takes as long as its services need (an outage delays a round, never changes it),
# so the households wait much longer than any round timeout.
ANSWER_TIMEOUT_S = 600
SEND_TRIES = 30  # about two minutes of a broker away


@dataclass
class Tally:
    answers: Counter[str] = field(default_factory=Counter)
    rejections: Counter[str] = field(default_factory=Counter)
    rounds: int = 0
    # Requests of households on their own still without their answer when the run ended
    # (after waiting for stragglers): 0 unless an answer was lost and never had again.
    unanswered: int = 0
    # Each battery's charge at the end of each slot it delivered: slot -> household -> Wh.
    # Simulation only (a real household reports its meter, not its battery), kept with the
    # region's community for the report (scenario.community_record).
    charge: dict[tuple[int, int], dict[str, int]] = field(default_factory=dict)


class Participant:
    def __init__(self, home: Household, community: Community) -> None:
        self.home = home
        self.c = community
        # half full, within its bounds
        self.soc_wh = min(max(home.battery_wh // 2, home.battery_wh * home.soc_min // 1000),
                          home.battery_wh * home.soc_max // 1000)
        self.sold: dict[tuple[int, int], dict[str, int]] = {}
        self.bought: dict[tuple[int, int], int] = {}  # Wh bought for a slot, from its settlements
        self.counted: dict[tuple[int, int], set[str]] = {}  # settlement ids in ``sold``: a notice may come twice
        self.trades: dict[tuple[int, int], list[Trade]] = {}  # a slot's settlements, for its strategy
        self.strategy = make_strategy(home)
        self.joined = asyncio.Event()
        self.answers: dict[str, asyncio.Future[t.Message]] = {}
        # What each answer still to come answers (same keys as ``answers``): sent again when
        # the broker connection is back from a loss, since answers are transient (the
        # market answers a request it has seen with the same answer).
        self.unanswered: dict[str, tuple[t.Message, str]] = {}
        # A round is planned once (the plan moves the battery on) and done once its finish
        # is sent. A round start seen again before that (redelivered after a broker restart
        # cut the first play short, or announced again by a new clock) plays the same plan
        # again: every request of it is idempotent.
        self.plans: dict[int, tuple[t.ReadingItem, list[t.OrderItem], bool]] = {}
        self.done: set[int] = set()

    @property
    def pid(self) -> str:
        return self.home.participant_id

    @property
    def played(self) -> set[int]:
        """The rounds it has planned: done, or in hand."""
        return self.done | set(self.plans)

    async def on_message(self, message: t.Message) -> None:
        c = self.c
        # Only the first answer to a request counts: a request sent again (its answer lost to
        # a broker restart, or the first on its way still) is judged again, and its repeat
        # may differ (an order cancelled since is ``unknown_order``).
        if isinstance(message, t.BatchAnswered):  # its own round's answers: counted one by one
            if self._answered(f"batch-{message.batch_id}-{message.service}", message):
                c.count(message.answers)
            return
        waited = _answer_key(message)
        if waited is not None and not self._answered(waited, message):
            return
        c.tally.answers[type(message).__name__] += 1
        if isinstance(message, t.MemberJoined):
            self.joined.set()
        elif isinstance(message, t.Rejected):
            c.tally.rejections[message.reason] += 1
        elif isinstance(message, t.SettlementsNotice):
            key = (message.slot.start, message.slot.end)
            sold, counted = self.sold.setdefault(key, {}), self.counted.setdefault(key, set())
            for s in message.settlements:
                if s.settlement_id in counted:
                    continue
                counted.add(s.settlement_id)
                if s.seller == self.pid:
                    sold[s.source] = sold.get(s.source, 0) + s.quantity_wh
                    trade = Trade("ask", s.quantity_wh, Decimal(s.sell_price), s.source)
                elif s.buyer == self.pid:
                    self.bought[key] = self.bought.get(key, 0) + s.quantity_wh
                    trade = Trade("bid", s.quantity_wh, Decimal(s.buy_price), s.source)
                else:
                    continue
                self.trades.setdefault(key, []).append(trade)
        elif isinstance(message, t.RoundStarted):
            await self.play(message)

    async def requote(self, order: t.OrderAccepted) -> None:
        """Now and then a household changes its mind: it cancels an order and quotes half of
        it again under a new id, both at once (the market handles them in arrival order)."""
        c = self.c
        again = f"{order.client_order_id}-r"
        cancel = t.CancelOrder(region=c.region, participant_id=self.pid, client_order_id=order.client_order_id,
                               slot=order.slot)
        quote = t.SubmitOrder(region=c.region, participant_id=self.pid, client_order_id=again, side=order.side,
                              quantity_wh=max(1, order.quantity_wh // 2), price=order.price, source=order.source,
                              slot=order.slot)
        answers = [self.expect(f"cancel-{order.client_order_id}", cancel, k.CANCEL),
                   self.expect(again, quote, k.ORDER)]
        await c.send(cancel, k.CANCEL)
        await c.send(quote, k.ORDER)
        await asyncio.wait_for(asyncio.gather(*answers), timeout=ANSWER_TIMEOUT_S)

    def expect(self, key: str, request: t.Message, kind: str) -> asyncio.Future[t.Message]:
        """The answer to come under ``key``, to ``request`` (sent with ``kind``)."""
        self.unanswered[key] = (request, kind)
        return self.answers.setdefault(key, asyncio.get_running_loop().create_future())

    def _answered(self, key: str, message: t.Message) -> bool:
        """Whether ``message`` is the first answer under ``key`` (``expect``)."""
        waiting = self.answers.pop(key, None)
        if waiting is not None and not waiting.done():
            waiting.set_result(message)
        if self.unanswered.pop(key, None) is None:
            return False
        self.c.answer_came.set()
        return True

    def plan(self, r: t.RoundStarted) -> tuple[t.ReadingItem, list[t.OrderItem], bool] | None:
        """This household's round: its reading of the delivered slot, its orders for the next
        open slot, and whether it will change its mind about its first order. None for a
        round that is done; the same plan again for a round in hand (see ``plans``)."""
        start = r.current_round.start
        if start in self.done:
            return None
        if start in self.plans:
            return self.plans[start]
        c = self.c
        delivered = Slot(r.current_round.start, r.current_round.end)
        sold = self.sold.pop((delivered.start, delivered.end), {})
        bought = self.bought.pop((delivered.start, delivered.end), 0)
        self.counted.pop((delivered.start, delivered.end), None)
        self.strategy.settled(delivered, self.trades.pop((delivered.start, delivered.end), []))
        grid_charge = getattr(self.strategy, "grid_charge_wh", None)  # a plug-in may not have it
        d = deliver(self.home, delivered, c.tz, self.soc_wh, sold, bought,
                    grid_charge(delivered) if callable(grid_charge) else 0)
        self.soc_wh = d.soc_wh
        if self.home.battery_wh:
            c.tally.charge.setdefault((delivered.start, delivered.end), {})[self.pid] = d.soc_wh
        reading = t.ReadingItem(slot=r.current_round, import_wh=d.import_wh, export_wh=d.export_wh,
                                self_consumed_wh=d.self_consumed_wh)
        orders: list[t.OrderItem] = []
        target = Slot(r.next_settle.start, r.next_settle.end)
        quote = next((q for q in r.grid if q.slot == r.next_settle), None)
        if quote is not None and (not r.final_round_start or target.start <= r.final_round_start):
            grid = GridPrices(buy_price=Decimal(quote.buy_price), sell_price=Decimal(quote.sell_price))
            orders = [t.OrderItem(client_order_id=f"{target.start}-{i}", side=q.side, quantity_wh=q.quantity_wh,
                                  price=str(q.price), source=q.source, slot=r.next_settle)
                      for i, q in enumerate(self.strategy.quotes(target, c.tz, grid, self.soc_wh))]
        changes_mind = noise(self.home.seed, target, "cancel").random() < 0.1
        self.plans[start] = (reading, orders, changes_mind)
        return self.plans[start]

    def round_done(self, start: int) -> None:
        self.done.add(start)
        self.plans.pop(start, None)

    async def play(self, r: t.RoundStarted) -> None:
        if self.c.requests == "round":
            await self.play_round(r)
        else:
            await self.play_singly(r)

    async def play_round(self, r: t.RoundStarted) -> None:
        """The whole round in one request, a batch of its own: reading, orders and finish.
        A household that changes its mind waits for its orders' answers (order-intake's part
        of the batch's answers), then sends a second batch (see ``changed_mind``). Nothing
        else waits: the batch is confirmed by the broker, and the market answers a batch it
        has seen again (a replayed plan) with the same answers."""
        planned = self.plan(r)
        if planned is None:
            return
        reading, orders, changes_mind = planned
        c, start = self.c, r.current_round.start
        waits = changes_mind and bool(orders)
        batch_id = f"{self.pid}-{start}"
        batch = t.SubmitBatch(region=c.region, participant_id=self.pid, batch_id=batch_id, items=[
            t.ParticipantRound(participant_id=self.pid, orders=orders, reading=reading,
                               finish_round=0 if waits else start)])
        answered = {service: self.expect(f"batch-{batch_id}-{service}", batch, k.BATCH)
                    for service in answering(batch.items)}
        await c.send(batch, k.BATCH)
        if waits:
            answer = await asyncio.wait_for(answered["order-intake"], timeout=ANSWER_TIMEOUT_S)
            assert isinstance(answer, t.BatchAnswered)
            accepted = {(a.participant_id, a.client_order_id) for a in answer.answers
                        if isinstance(a, t.OrderAccepted)}
            again = t.SubmitBatch(region=c.region, participant_id=self.pid, batch_id=f"{batch_id}-again",
                                  items=[changed_mind(self.pid, orders[0], accepted, start)])
            for service in answering(again.items):
                self.expect(f"batch-{again.batch_id}-{service}", again, k.BATCH)
            await c.send(again, k.BATCH)
        self.round_done(start)

    async def play_singly(self, r: t.RoundStarted) -> None:
        """One request per reading, order, cancel and finish, each answered on its own."""
        planned = self.plan(r)
        if planned is None:
            return
        reading, orders, changes_mind = planned
        c, region = self.c, self.c.region
        submitted = t.SubmitReading(region=region, participant_id=self.pid, slot=reading.slot,
                                    import_wh=reading.import_wh, export_wh=reading.export_wh,
                                    self_consumed_wh=reading.self_consumed_wh)
        self.expect(f"reading-{reading.slot.start}", submitted, k.READING)
        sends = [c.send(submitted, k.READING)]
        answers: list[asyncio.Future[t.Message]] = []
        for o in orders:
            order = t.SubmitOrder(region=region, participant_id=self.pid, client_order_id=o.client_order_id,
                                  side=o.side, quantity_wh=o.quantity_wh, price=o.price, source=o.source, slot=o.slot)
            answers.append(self.expect(o.client_order_id, order, k.ORDER))
            sends.append(c.send(order, k.ORDER))
        await asyncio.gather(*sends)
        # Done with the round only once the market has answered every order.
        results = await asyncio.wait_for(asyncio.gather(*answers), timeout=ANSWER_TIMEOUT_S)
        if results and isinstance(results[0], t.OrderAccepted) and changes_mind:
            await self.requote(results[0])
        await c.send(t.FinishRound(region=region, participant_id=self.pid, round_start=r.current_round.start),
                     k.FINISH)
        self.round_done(r.current_round.start)


def _answer_key(m: t.Message) -> str | None:
    """The key (``Participant.expect``) of the request a household on its own waits under
    for this answer; None for a message that answers no such request."""
    match m:
        case t.OrderAccepted():
            return m.client_order_id
        case t.OrderCancelled():
            return f"cancel-{m.client_order_id}"
        case t.ReadingAccepted():
            return f"reading-{m.slot.start}"
        case t.Rejected(request="SubmitOrder"):
            return m.reference
        case t.Rejected(request="CancelOrder"):
            return f"cancel-{m.reference}"
        case t.Rejected(request="SubmitReading"):  # its reference begins with the slot's start
            return f"reading-{m.reference.split('-', 1)[0]}"
    return None


def agent_ids(count: int) -> list[str]:
    return [f"agg{i:03d}" for i in range(count)]


class _SimulatedAgent(Client):
    """The SDK client of a simulated aggregator: in the local mode it also hears its
    households' answers (their joins), and with the community's test aid it sends every
    request twice."""

    def __init__(self, community: Community, agent_id: str, members: list[str]) -> None:
        # A simulation waits as long as the market needs (an outage delays a round, never
        # changes it), and sends nothing twice unless told to (the ledger stays comparable).
        # With accounts of their own (broker identity), the aggregator signs in as itself and
        # hears only what is addressed to it; its households' joins are their own.
        super().__init__(community.account_url(agent_id), community.region, agent_id,
                         answer_timeout_s=ANSWER_TIMEOUT_S, resend_after_s=ANSWER_TIMEOUT_S,
                         listen_for=() if community.participant_url else members)
        self.duplicate = community.duplicate

    async def send(self, message: t.Message, deadline: float | None = None) -> None:
        for _ in range(2 if self.duplicate else 1):
            await super().send(message, deadline)


class Aggregator:
    """Acts for many households, as a home-energy-management vendor or a fleet operator
    does, through the client SDK: one batch a round carries every household's reading,
    orders and "finished"; a second one the cancels and new orders of those that changed
    their minds. Settlements and statements of its households come in its bundles."""

    def __init__(self, agent_id: str, members: list[Participant], community: Community) -> None:
        self.agent_id = agent_id
        self.members = {p.pid: p for p in members}
        self.c = community
        self.client = _SimulatedAgent(community, agent_id, list(self.members))

    async def listen(self) -> None:
        """Its events, one at a time: round starts, and its households' bundles."""
        async for message in self.client.events():
            await self.on_message(message)

    async def join(self) -> None:
        """Joins each of its households, naming itself as their agent (the local mode: with
        broker identity a household's own user sends that join, ``microte participants``)."""
        async def join(p: Participant) -> None:
            message = t.JoinMarket(region=self.c.region, participant_id=p.pid, agent=self.agent_id)
            await p.on_message(await self.c.as_household(p.pid, message) if self.c.participant_url
                               else await self.client.request(message))
        await asyncio.gather(*(join(p) for p in self.members.values()))

    async def leave(self) -> None:
        for pid in self.members:
            message = t.LeaveMarket(region=self.c.region, participant_id=pid)
            if self.c.participant_url:
                with contextlib.suppress(Refused):  # gone already: the run ends either way
                    await self.c.as_household(pid, message)
            else:
                await self.client.send(message)

    async def on_message(self, message: t.Message) -> None:
        if isinstance(message, t.RoundStarted):
            await self.play(message)
        elif isinstance(message, t.AgentBundle):  # its households' notices or statements, one message
            inner: list[t.SettlementsNotice | t.Statement] = [*message.notices, *message.statements]
            for each in inner:
                if (p := self.members.get(each.participant_id)) is not None:
                    await p.on_message(each)
        elif (p := self.members.get(getattr(message, "participant_id", ""))) is not None:
            await p.on_message(message)

    async def submit(self, batch_id: str, items: list[t.ParticipantRound]) -> list[t.BatchAnswer]:
        """Send one batch; every item's answers (each service answers its part)."""
        answered = await self.client.submit_batch(items, batch_id=batch_id)
        answers = [*answered.orders, *answered.readings]
        self.c.count(answers)
        return answers

    async def play(self, r: t.RoundStarted) -> None:
        """Its households' round in one batch (and one more for changed minds). A round start
        seen again before the round is done plays the same batches again (see
        ``Participant.plans``): the market answers a batch it has seen with the same answers."""
        start = r.current_round.start
        items, first_orders = [], {}
        for p in self.members.values():
            planned = p.plan(r)
            if planned is None:
                continue
            reading, orders, changes_mind = planned
            if changes_mind and orders:
                first_orders[p.pid] = orders[0]
            items.append(t.ParticipantRound(participant_id=p.pid, orders=orders, reading=reading,
                                            finish_round=0 if p.pid in first_orders else start))
        if not items:
            return
        answered = await self.submit(f"{self.agent_id}-{start}", items)
        if first_orders:
            await self._changed_minds(start, first_orders, answered)
        for p in self.members.values():
            p.round_done(start)

    async def _changed_minds(self, start: int, first_orders: dict[str, t.OrderItem],
                             answered: list[t.BatchAnswer]) -> None:
        accepted = {(a.participant_id, a.client_order_id) for a in answered if isinstance(a, t.OrderAccepted)}
        again = [changed_mind(pid, first, accepted, start) for pid, first in first_orders.items()]
        await self.submit(f"{self.agent_id}-{start}-again", again)


def changed_mind(pid: str, first: t.OrderItem, accepted: set[tuple[str, str]], start: int) -> t.ParticipantRound:
    """A household's second part of a round in which it changed its mind about its first
    order: cancel it and quote half again under a new id, then finish; only the finish if
    the first order was not accepted."""
    if (pid, first.client_order_id) not in accepted:
        return t.ParticipantRound(participant_id=pid, finish_round=start)
    return t.ParticipantRound(
        participant_id=pid, cancels=[t.CancelItem(client_order_id=first.client_order_id, slot=first.slot)],
        orders=[msgspec.structs.replace(first, client_order_id=f"{first.client_order_id}-r",
                                        quantity_wh=max(1, first.quantity_wh // 2))],
        finish_round=start)


class Community:
    def __init__(self, amqp_url: str, region: str, homes: list[Household], timezone: str,
                 progress_every: int = 60, duplicate: bool = False, max_rounds: int = 0,
                 aggregators: int = 0, total_rounds: int = 0, participant_url: str = "",
                 requests: str = "single") -> None:
        if requests not in REQUESTS:
            raise ValueError(f"requests must be one of {', '.join(REQUESTS)}, not {requests!r}")
        self.amqp_url = amqp_url
        self.requests = requests  # how households on their own send a round (Participant.play)
        # Broker identity: each household and aggregator signs in as itself, with the URL of
        # this template ("{participant}" stands for its id); "" = all on ``amqp_url``.
        self.participant_url = participant_url
        self.region = region
        self.keys = Keys(region)
        self.tz = zone(timezone)
        self.duplicate = duplicate  # test aid: send every message twice
        self.participants = [Participant(h, self) for h in homes]
        # With aggregators, household i is in the care of aggregator i mod k, which submits
        # for all of its households in one batch a round (Aggregator).
        k = max(0, min(aggregators, len(self.participants)))
        self.aggregators = [Aggregator(agent, self.participants[i::k], self) for i, agent in enumerate(agent_ids(k))]
        self.tally = Tally()
        # a bar on a terminal; else a line every ``progress_every`` rounds (``total_rounds``: 0 unknown)
        self.progress = RoundProgress(total=total_rounds or max_rounds, every=progress_every, timezone=timezone)
        self.max_rounds = max_rounds  # leave after this many rounds (0: when the clock's last round is recorded)
        self.finished = asyncio.Event()
        self.rounds_seen = asyncio.Event()  # set at each round start, for observers
        self.final_slot: tuple[int, int] | None = None
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._resending: set[asyncio.Task[None]] = set()
        self.answer_came = asyncio.Event()  # set when a household's awaited answer comes

    def count(self, answers: list[t.BatchAnswer]) -> None:
        """The answers inside a batch's answer, one by one, as single requests' are counted."""
        for answer in answers:
            self.tally.answers[type(answer).__name__] += 1
            if isinstance(answer, t.Rejected):
                self.tally.rejections[answer.reason] += 1

    def account_url(self, participant_id: str) -> str:
        return self.participant_url.replace("{participant}", participant_id) if self.participant_url \
            else self.amqp_url

    async def as_household(self, participant_id: str, message: t.Message) -> t.Message:
        """``message`` sent by the household itself, on its own account, and its answer."""
        client = Client(self.account_url(participant_id), self.region, participant_id, inbox="self",
                        answer_timeout_s=ANSWER_TIMEOUT_S)
        await client.connect()
        try:
            return await client.request(message)
        finally:
            await client.close()

    async def send(self, message: t.Message, kind: str) -> None:
        """Persistent and confirmed, sent again until the broker has it: a household's
        reading is not answered by anything it waits for, so an unconfirmed one lost in a
        broker restart would be lost for good. Every request is idempotent on the market's
        side (client order id, one reading per slot), so a repeat changes nothing."""
        assert self._exchange is not None
        body = encode(message)
        for _ in range(2 if self.duplicate else 1):
            for attempt in range(SEND_TRIES):
                try:
                    await self._exchange.publish(
                        aio_pika.Message(body, content_type=CONTENT_TYPE,
                                         delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                        routing_key=self.keys.request(kind))
                    break
                except (aio_pika.exceptions.AMQPError, ConnectionError, RuntimeError):
                    if attempt == SEND_TRIES - 1:
                        raise
                    await asyncio.sleep(min(5.0, 0.2 * 2**attempt))  # the robust connection reconnects

    async def run(self, joined: asyncio.Event | None = None) -> Tally:
        connection = await aio_pika.connect_robust(self.amqp_url)
        connection.reconnect_callbacks.add(self._on_reconnect)
        listening: list[asyncio.Task[None]] = []
        async with connection:
            self._channel = channel = await connection.channel()  # publisher confirms: see send()
            await channel.set_qos(prefetch_count=32)
            self._exchange = await channel.declare_exchange(k.EXCHANGE.name, aio_pika.ExchangeType.TOPIC,
                                                            durable=True)
            try:
                for a in self.aggregators:  # each its own client, its households' answers on its queue
                    await a.client.connect()
                    listening.append(asyncio.create_task(a.listen(), name=f"aggregator-{a.agent_id}"))
                for p in self.participants if not self.aggregators else ():
                    queue = await channel.declare_queue(f"microte.{self.region}.participant.{p.pid}", durable=True)
                    await queue.bind(self._exchange, routing_key=f"{self.region}.to.{p.pid}.#")
                    await queue.bind(self._exchange, routing_key=self.keys.fact(k.ROUND_STARTED))
                    await queue.consume(self._consumer(p))
                watch = await channel.declare_queue(f"microte.{self.region}.community", durable=True)
                await watch.bind(self._exchange, routing_key=self.keys.fact(k.SLOT_RECORDED))
                await watch.bind(self._exchange, routing_key=self.keys.fact(k.ROUND_STARTED))
                await watch.consume(self._watch)
                if self.aggregators:
                    await asyncio.gather(*(a.join() for a in self.aggregators))
                else:
                    for p in self.participants:
                        await self.send(t.JoinMarket(region=self.region, participant_id=p.pid), k.MEMBER)
                    await asyncio.gather(*(p.joined.wait() for p in self.participants))
                if joined is not None:
                    joined.set()
                await self._until_finished(listening)
                await self._answered_all()
                for a in self.aggregators:
                    await a.leave()
                for p in self.participants if not self.aggregators else ():
                    await self.send(t.LeaveMarket(region=self.region, participant_id=p.pid), k.MEMBER)
            finally:
                self.progress.close()
                for task in [*listening, *self._resending]:
                    task.cancel()
                for a in self.aggregators:
                    await a.client.close()
        return self.tally

    def _on_reconnect(self, *_: object) -> None:
        task = asyncio.create_task(self._send_unanswered(), name="send-unanswered")
        self._resending.add(task)
        task.add_done_callback(self._resending.discard)

    async def _send_unanswered(self) -> None:
        """After the broker connection came back from a loss: every request of a household on
        its own whose answer has not come is sent again (answers are transient: a restart of
        the broker may have lost it). Should the broker go again meanwhile, the next
        reconnection sends what is still unanswered."""
        again = {id(m): (m, kind) for p in self.participants for m, kind in list(p.unanswered.values())}
        with contextlib.suppress(aio_pika.exceptions.AMQPError, ConnectionError, RuntimeError):
            for m, kind in again.values():
                await self.send(m, kind)

    def _unanswered(self) -> int:
        return sum(len(p.unanswered) for p in self.participants)

    async def _answered_all(self, timeout_s: float = 60.0) -> None:
        """Until every household on its own has the answers to its requests (the last
        round's may still be on their way when the run is over), ``timeout_s`` at most; the
        count still unanswered goes into the tally."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self._unanswered() and loop.time() < deadline:
            self.answer_came.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    await self.answer_came.wait()
        self.tally.unanswered = self._unanswered()

    async def _until_finished(self, listening: list[asyncio.Task[None]]) -> None:
        """Until the run is over; an aggregator that fails ends it with its error."""
        finished = asyncio.create_task(self.finished.wait())
        try:
            await asyncio.wait([finished, *listening], return_when=asyncio.FIRST_COMPLETED)
            for task in listening:
                if task.done():
                    task.result()  # raises what stopped it
        finally:
            finished.cancel()

    @property
    def queue_owners(self) -> list[str]:
        """The ids whose queues this community declares (see ``purge_region``)."""
        return [a.agent_id for a in self.aggregators] or [p.pid for p in self.participants]

    def _consumer(self, p: Participant):  # type: ignore[no-untyped-def]
        async def consume(incoming: AbstractIncomingMessage) -> None:
            async with incoming.process(requeue=True):
                await p.on_message(decode(incoming.body))
        return consume

    async def _watch(self, incoming: AbstractIncomingMessage) -> None:
        async with incoming.process():
            message = decode(incoming.body)
            if isinstance(message, t.RoundStarted):
                self.tally.rounds += 1
                self.rounds_seen.set()
                if self.max_rounds and self.tally.rounds > self.max_rounds:
                    self.finished.set()
                if message.final_round_start:
                    self.final_slot = (message.final_round_start, message.final_round_start + message.duration)
                last = bool(message.final_round_start) and message.current_round.start == message.final_round_start
                self.progress.round(self.tally.rounds, message.current_round.start, sum(self.tally.answers.values()),
                                    sum(self.tally.rejections.values()), last=last)
            elif isinstance(message, t.SlotRecorded) and (message.slot.start, message.slot.end) == self.final_slot:
                self.finished.set()
