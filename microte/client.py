"""The microte client: what a household, a home energy manager, an aggregator or a
researcher's agent uses to trade in a region.

    async with Client("amqp://h001:PASSWORD@broker:5672/", region="r1", participant_id="h001") as me:
        await me.join()
        async for event in me.events():
            if isinstance(event, RoundStarted):
                await me.order("ask", 500, "0.11", event.next_settle)

It speaks the region's wire contract (``shared.messages``) over RabbitMQ:

- **Identity.** Connected as a broker user of its own (``microte participants add``), it
  sets each request's ``user_id`` to its participant id, which RabbitMQ checks against the
  credentials and the services compare with the participant named
  (``MICROTE_IDENTITY=broker_user``). Connected as anyone else (``guest`` on a laptop, with
  ``MICROTE_IDENTITY=message``: the local mode, no credentials of its own), it sets none.
- **Answers.** Every request waits for its own answer and returns it; a refusal raises
  :class:`Refused` with the market's reason. A request that gets no answer is sent again
  (every request is idempotent: an order by its client order id, a reading by its slot),
  so a broker restart costs time, never an order.
- **Events.** Round starts, settlement notices and statements (and an aggregator's
  bundles) arrive through :meth:`Client.events`.
- **Reconnection.** The connection is robust: after a broker restart it reconnects and
  declares its queue and bindings again; a publish that fails meanwhile is retried.
- **Client order ids** are random (:func:`new_order_id`), so that nobody can guess, and so
  target, another household's orders.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import urllib.parse
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import TypeVar

import aio_pika
from aio_pika.abc import AbstractExchange, AbstractIncomingMessage, AbstractRobustConnection

from shared.messages import CONTENT_TYPE, Undecodable, decode, encode
from shared.messages import types as t

__all__ = ["Client", "Refused", "RoundAnswers", "ask", "bid", "new_order_id"]

A = TypeVar("A", bound=t.Message)

_EXCHANGE = "microte"
_REQUEST_KIND: dict[type[t.Message], str] = {
    t.JoinMarket: "member", t.LeaveMarket: "member", t.Heartbeat: "member", t.SubmitOrder: "order",
    t.CancelOrder: "cancel", t.SubmitReading: "reading", t.FinishRound: "finish", t.SubmitBatch: "batch"}


def new_order_id() -> str:
    """A client order id nobody can guess: 96 random bits, URL-safe."""
    return secrets.token_urlsafe(12)


def bid(quantity_wh: int, price: Decimal | str, slot: t.Slot, source: str = "solar") -> t.OrderItem:
    """An order to buy, for ``submit_round``/``submit_batch``, with a fresh client order id."""
    return t.OrderItem(client_order_id=new_order_id(), side="bid", quantity_wh=quantity_wh, price=str(price),
                       source=source, slot=slot)


def ask(quantity_wh: int, price: Decimal | str, slot: t.Slot, source: str = "solar") -> t.OrderItem:
    """An order to sell, for ``submit_round``/``submit_batch``, with a fresh client order id."""
    return t.OrderItem(client_order_id=new_order_id(), side="ask", quantity_wh=quantity_wh, price=str(price),
                       source=source, slot=slot)


class Refused(Exception):
    """The market refused a request; ``answer`` is its ``Rejected``."""

    def __init__(self, answer: t.Rejected) -> None:
        detail = f" ({answer.detail})" if answer.detail else ""
        super().__init__(f"{answer.request} refused: {answer.reason}{detail}")
        self.answer = answer
        self.reason = answer.reason


@dataclass(frozen=True)
class RoundAnswers:
    """The answers to one batch, one per item and service, in the batch's order:
    ``orders`` from order-intake (orders, cancels, finishes), ``readings`` from the
    meter-collector. An item that was refused is a ``Rejected`` here; nothing is raised."""

    orders: list[t.BatchAnswer]
    readings: list[t.BatchAnswer]

    @property
    def refused(self) -> list[t.Rejected]:
        return [a for a in (*self.orders, *self.readings) if isinstance(a, t.Rejected)]


def _request_key(m: t.Message) -> tuple[str, ...]:
    """What identifies a request's answer: ``Client._key`` of the answer gives the same."""
    pid = getattr(m, "participant_id", "")
    match m:
        case t.JoinMarket():  # a join's and a leave's answers apart: a late answer to one never ends the other
            return ("join", pid)
        case t.LeaveMarket():
            return ("leave", pid)
        case t.SubmitOrder():
            return ("order", pid, m.client_order_id)
        case t.CancelOrder():
            return ("cancel", pid, m.client_order_id)
        case t.SubmitReading():
            return ("reading", pid, str(m.slot.start))
        case t.SubmitBatch():
            return ("batch", m.batch_id)
    raise ValueError(f"a {type(m).__name__} has no answer of its own: send() it")


def answering(items: Iterable[t.ParticipantRound]) -> set[str]:
    """The services that answer a batch of ``items``: order-intake its orders, cancels and
    finishes, meter-collector its readings."""
    items = list(items)
    return ({"order-intake"} if any(i.orders or i.cancels or i.finish_round for i in items) else set()) | (
        {"meter-collector"} if any(i.reading is not None for i in items) else set())


class Client:
    def __init__(self, url: str, region: str, participant_id: str, *, answer_timeout_s: float = 60.0,
                 resend_after_s: float = 10.0, listen_for: Iterable[str] = (), inbox: str = "") -> None:
        """``url``: the broker, as ``amqp://user:password@host:5672/``. ``answer_timeout_s``:
        how long a request waits for its answer in all (sending it again every
        ``resend_after_s``) before ``TimeoutError``. ``listen_for``: other participants whose
        answers come to this client too, in the local mode only (a simulator that speaks for
        many households; a participant's own account may not bind another's answers).
        ``inbox``: empty for the participant's own durable queue; a name for a short session
        on a queue of its own (``…participant.<id>.<name>``, exclusive), which leaves the
        participant's inbox and what waits in it alone."""
        self.url, self.region, self.participant_id = url, region, participant_id
        self.listen_for = tuple(listen_for)
        self.inbox = inbox
        user = urllib.parse.unquote(urllib.parse.urlsplit(url).username or "guest")
        # Its own broker user: requests carry it as user_id (checked by RabbitMQ). Else the local mode.
        self.user_id = participant_id if user == participant_id else None
        self.answer_timeout_s, self.resend_after_s = answer_timeout_s, resend_after_s
        self._connection: AbstractRobustConnection | None = None
        self._exchange: AbstractExchange | None = None
        self._waiting: dict[tuple[str, ...], asyncio.Future[t.Message]] = {}
        # A batch waiting for its answers: the services that answer it, and their answers so far.
        self._batches: dict[str, tuple[set[str], dict[str, t.BatchAnswered]]] = {}
        self._events: asyncio.Queue[t.Message] = asyncio.Queue()
        self._batch_ids = itertools.count()
        # Set (and replaced) each time the robust connection is back after a loss: answers are
        # transient, so one on its way when the broker restarted is gone, and every request
        # still waiting is sent again at once rather than after ``resend_after_s``.
        self._reconnected = asyncio.Event()

    # --- connection ---------------------------------------------------------------------

    async def connect(self) -> None:
        self._connection = await aio_pika.connect_robust(self.url)
        self._connection.reconnect_callbacks.add(self._on_reconnect)
        channel = await self._connection.channel()  # publisher confirms: a publish returns once the broker has it
        await channel.set_qos(prefetch_count=64)
        try:
            self._exchange = await channel.get_exchange(_EXCHANGE)  # passive: a participant may not declare it
        except aio_pika.exceptions.ChannelNotFoundEntity:
            await self._connection.close()
            raise ConnectionError(f"the broker at {self._shown()} has no exchange {_EXCHANGE!r}: are region "
                                  f"{self.region}'s services running?") from None
        channel = await self._connection.channel()
        await channel.set_qos(prefetch_count=64)
        name = f"microte.{self.region}.participant.{self.participant_id}"
        queue = await (channel.declare_queue(f"{name}.{self.inbox}", exclusive=True, auto_delete=True) if self.inbox
                       else channel.declare_queue(name, durable=True))
        for pid in (self.participant_id, *self.listen_for):
            await queue.bind(_EXCHANGE, routing_key=f"{self.region}.to.{pid}.#")
        await queue.bind(_EXCHANGE, routing_key=f"{self.region}.fact.round_started")
        await queue.consume(self._on_message)

    async def close(self) -> None:
        if self._connection is not None and not self._connection.is_closed:
            await self._connection.close()

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    def _shown(self) -> str:
        parts = urllib.parse.urlsplit(self.url)
        return f"{parts.hostname}:{parts.port or 5672}"

    # --- requests -----------------------------------------------------------------------

    async def join(self, agent: str | None = None, *, import_w: int | None = None,
                   export_w: int | None = None) -> t.MemberJoined:
        """Joins the market; ``agent``: the aggregator that may act for this household;
        ``import_w`` / ``export_w``: its connection in W, which its orders and readings are held
        to (the answer says what the region holds it to: the region may cap it)."""
        m = t.JoinMarket(region=self.region, participant_id=self.participant_id, agent=agent, import_w=import_w,
                         export_w=export_w)
        return await self._request(m, t.MemberJoined)

    async def leave(self) -> t.MemberLeft:
        m = t.LeaveMarket(region=self.region, participant_id=self.participant_id)
        return await self._request(m, t.MemberLeft)

    async def order(self, side: str, quantity_wh: int, price: Decimal | str, slot: t.Slot, source: str = "solar",
                    client_order_id: str | None = None) -> t.OrderAccepted:
        """Bids (``side="bid"``) or offers (``"ask"``) energy for a delivery slot; price in $/kWh."""
        coid = client_order_id or new_order_id()
        m = t.SubmitOrder(region=self.region, participant_id=self.participant_id, client_order_id=coid, side=side,
                          quantity_wh=quantity_wh, price=str(price), source=source, slot=slot)
        return await self._request(m, t.OrderAccepted)

    async def cancel(self, client_order_id: str, slot: t.Slot) -> t.OrderCancelled:
        m = t.CancelOrder(region=self.region, participant_id=self.participant_id, client_order_id=client_order_id,
                          slot=slot)
        return await self._request(m, t.OrderCancelled)

    async def reading(self, slot: t.Slot, import_wh: int, export_wh: Mapping[str, int] | None = None,
                      self_consumed_wh: Mapping[str, int] | None = None) -> t.ReadingAccepted:
        """The meter's reading of a delivered slot: energy imported, and exported by source."""
        m = t.SubmitReading(region=self.region, participant_id=self.participant_id, slot=slot, import_wh=import_wh,
                            export_wh=dict(export_wh or {}), self_consumed_wh=dict(self_consumed_wh or {}))
        return await self._request(m, t.ReadingAccepted)

    async def finish(self, round_start: int) -> None:
        """Done with the round that started at ``round_start`` (a simulation's clock waits for
        every member's). It has no answer of its own; ``submit_round`` counts it in its answers."""
        await self.send(t.FinishRound(region=self.region, participant_id=self.participant_id,
                                      round_start=round_start))

    async def submit_round(self, *, orders: Iterable[t.OrderItem] = (), cancels: Iterable[t.CancelItem] = (),
                           reading: t.ReadingItem | None = None, finish_round: int = 0) -> RoundAnswers:
        """A whole round in one message: cancels, orders, the reading and "finished"."""
        item = t.ParticipantRound(participant_id=self.participant_id, orders=list(orders), cancels=list(cancels),
                                  reading=reading, finish_round=finish_round)
        return await self.submit_batch([item])

    async def submit_batch(self, items: list[t.ParticipantRound], batch_id: str | None = None) -> RoundAnswers:
        """Items for this participant or, as an aggregator, for the households that named it
        as their agent. Each item gets its own answer; an item for anyone else is refused
        (``not_entitled``)."""
        batch_id = batch_id or f"{new_order_id()}{next(self._batch_ids)}"
        services = answering(items)
        if not services:
            raise ValueError("an empty batch: give each item orders, cancels, a reading or a finish")
        message = t.SubmitBatch(region=self.region, participant_id=self.participant_id, batch_id=batch_id,
                                items=items)
        answered: dict[str, t.BatchAnswered] = {}
        self._batches[batch_id] = (services, answered)
        try:
            await self._request(message, t.BatchAnswered)
        finally:
            self._batches.pop(batch_id, None)
        return RoundAnswers(orders=list(answered["order-intake"].answers) if "order-intake" in answered else [],
                            readings=list(answered["meter-collector"].answers) if "meter-collector" in answered
                            else [])

    # --- events -------------------------------------------------------------------------

    async def events(self) -> AsyncIterator[t.Message]:
        """Everything that is not the answer to a request: ``RoundStarted``,
        ``SettlementsNotice``, ``Statement``, ``AgentBundle`` and refusals of requests this
        client did not wait for."""
        while True:
            yield await self._events.get()

    async def next_round(self) -> t.RoundStarted:
        """Waits for the next round start, keeping other events for ``events()``."""
        kept: list[t.Message] = []
        try:
            while True:
                event = await self._events.get()
                if isinstance(event, t.RoundStarted):
                    return event
                kept.append(event)
        finally:
            for event in kept:
                self._events.put_nowait(event)

    # --- any request ----------------------------------------------------------------------

    async def request(self, message: t.Message) -> t.Message:
        """Sends any request of the wire contract and returns its answer (``BatchAnswered``
        for a batch: the first service's); raises ``Refused`` when it was refused."""
        return await self._request(message, t.Message)

    async def send(self, message: t.Message, deadline: float | None = None) -> None:
        """Sends any request without waiting for its answer: persistent and confirmed, sent
        again while the robust connection reconnects, until ``deadline`` (loop time;
        default ``answer_timeout_s`` from now)."""
        assert self._exchange is not None, "connect() first"
        body, kind = encode(message), _REQUEST_KIND[type(message)]
        loop = asyncio.get_running_loop()
        deadline = deadline if deadline is not None else loop.time() + self.answer_timeout_s
        for attempt in itertools.count():
            try:
                await self._exchange.publish(
                    aio_pika.Message(body, content_type=CONTENT_TYPE, user_id=self.user_id,
                                     delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                    routing_key=f"{self.region}.in.{kind}")
                return
            except (aio_pika.exceptions.AMQPError, ConnectionError, RuntimeError):
                pause = min(2.0, 0.1 * 2**attempt)
                if loop.time() + pause > deadline:
                    raise
                await asyncio.sleep(pause)  # the robust connection is reconnecting meanwhile

    # --- plumbing -----------------------------------------------------------------------

    async def _request(self, message: t.Message, answer: type[A]) -> A:
        key = _request_key(message)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.answer_timeout_s
        while True:
            future: asyncio.Future[t.Message] = loop.create_future()
            self._waiting[key] = future
            try:
                await self.send(message, deadline)
                # Taken once the broker has the request: a reconnection while sending it is over.
                reconnected = self._reconnected
                got = await _first(future, reconnected, min(self.resend_after_s, max(0.0, deadline - loop.time())))
            except TimeoutError:
                if loop.time() >= deadline:
                    raise TimeoutError(f"no answer to {type(message).__name__} within {self.answer_timeout_s} s "
                                       f"(region {self.region}, broker {self._shown()})") from None
                continue  # idempotent: send it again
            finally:
                self._waiting.pop(key, None)
            if isinstance(got, t.Rejected):
                raise Refused(got)
            assert isinstance(got, answer), got
            return got

    def _on_reconnect(self, *_: object) -> None:
        self._reconnected.set()
        self._reconnected = asyncio.Event()

    def _key(self, m: t.Message) -> tuple[str, ...] | None:
        """The waiting request an answer belongs to (``_request_key`` of that request)."""
        pid = getattr(m, "participant_id", "")
        match m:
            case t.MemberJoined():
                return ("join", pid)
            case t.MemberLeft():
                return ("leave", pid)
            case t.OrderAccepted():
                return ("order", pid, m.client_order_id)
            case t.OrderCancelled():
                return ("cancel", pid, m.client_order_id)
            case t.ReadingAccepted():
                return ("reading", pid, str(m.slot.start))
            case t.BatchAnswered():
                return ("batch", m.batch_id)
            case t.Rejected():
                match m.request:
                    case "JoinMarket":
                        return ("join", pid)
                    case "LeaveMarket":
                        return ("leave", pid)
                    case "SubmitOrder":
                        return ("order", pid, m.reference)
                    case "CancelOrder":
                        return ("cancel", pid, m.reference)
                    case "SubmitReading":
                        return ("reading", pid, m.reference.split("-", 1)[0])
                    case "SubmitBatch":
                        return ("batch", m.reference)
        return None

    async def _on_message(self, incoming: AbstractIncomingMessage) -> None:
        async with incoming.process():
            try:
                message = decode(incoming.body)
            except Undecodable:
                return  # not ours to read; the services never send such a thing
            key = self._key(message)
            if isinstance(message, t.BatchAnswered) and message.batch_id in self._batches:
                services, answered = self._batches[message.batch_id]
                answered.setdefault(message.service, message)  # the first stands: a repeat may be judged anew
                if not services <= set(answered):
                    return  # another service's answer is still to come
            future = self._waiting.get(key) if key is not None else None
            if future is not None and not future.done():
                future.set_result(message)
            elif not isinstance(message, t.MemberJoined | t.MemberLeft | t.OrderAccepted | t.OrderCancelled
                                | t.ReadingAccepted | t.BatchAnswered):
                await self._events.put(message)


async def _first(answer: asyncio.Future[t.Message], reconnected: asyncio.Event, timeout: float) -> t.Message:
    """The answer; ``TimeoutError`` (send it again) after ``timeout``, or as soon as the
    connection came back from a loss, which may have taken the answer with it."""
    woken = asyncio.ensure_future(reconnected.wait())
    try:
        await asyncio.wait((answer, woken), timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        woken.cancel()
    if not answer.done():
        raise TimeoutError
    return answer.result()
