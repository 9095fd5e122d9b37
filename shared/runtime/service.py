"""What every service is made of: a broker, a Redis state, handlers, metrics and health.

A service subscribes one durable queue to the routing keys it needs and names, per key,
the message types that belong on it and their handlers. The scaffold:

- refuses, before decoding, a request larger than ``max_request_bytes``, and any fact or
  answer that does not come from the region's own services (``shared.runtime.trust``);
- decodes strictly; bytes that do not decode, or a type that does not belong on its
  key, get a ``malformed`` rejection when they name a valid participant, or go to the
  bounded dead-letter queue with the reason in the headers;
- checks the sender's identity on every request (``MICROTE_IDENTITY=broker_user``);
- binds log context, runs the handler, and acknowledges only after it returned (so
  after its work is durable);
- tells an outage from a bad message: a handler that fails because Redis, RabbitMQ or
  the ledger is away keeps its message unacknowledged and tries again with backoff
  until the dependency is back, while ``/health`` says not ready; only a message that
  fails on its own merits, three times, with healthy dependencies, is dead-lettered;
- runs background loops under supervision: a loop that fails is restarted with
  backoff, and a loop that stops beating makes ``/health`` fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import os
import re
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import aio_pika
import aio_pika.abc
import aio_pika.exceptions
import aiormq.exceptions
import uvicorn
from aio_pika.abc import AbstractIncomingMessage
from faststream.asgi import AsgiFastStream, AsgiResponse, get
from faststream.rabbit import RabbitBroker, RabbitQueue
from prometheus_client import make_asgi_app
from redis.asyncio import BlockingConnectionPool, Redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from shared.messages import CONTENT_TYPE, Undecodable, decode, encode, sender_of
from shared.messages.types import FinishRound, Message, Rejected, RoundStarted
from shared.runtime.logs import bind_context, configure_logging
from shared.runtime.metrics import create_metrics, initialise
from shared.runtime.outages import backoff_s, is_outage
from shared.runtime.settings import Settings
from shared.runtime.state import RegionState, RegionStateLost
from shared.runtime.topology import (
    DEAD_LETTER_EXCHANGE,
    EXCHANGE,
    IN,
    REJECTED,
    TO,
    Keys,
    bounded_key,
    dead_letter_queue,
    parse_key,
    persistent,
    service_queue,
)
from shared.runtime.trust import SIGNATURE_HEADER, Signer


@dataclass(frozen=True)
class Batch:
    """Marks a handler that takes every message of its type drained together, in arrival
    order, and must treat each as if it came alone (each gets its own answer; a repeat
    changes nothing)."""

    handle: Callable[[list[Any]], Awaitable[None]]
    checks_state: bool = False  # the handler checks the round state itself (``Service.state_seen``)


Handler = Callable[[Any], Awaitable[None]] | Batch
Routes = dict[str, dict[type[Message], Handler]]  # routing key (or pattern) -> the types it carries
Probe = Callable[[], Awaitable[object]]
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")
MERIT_TRIES = 3  # a message that fails this often with healthy dependencies is dead-lettered
LOOP_STALE_S = 60.0  # a background loop that has not beaten for this long is unhealthy
PROBE_TIMEOUT_S = 2.0
# A shutdown finishes what is in hand, but never waits for a dependency that is away: each
# step gets STOP_STEP_S, the whole STOP_LIMIT_S, then the process exits anyway (whatever it
# had not acknowledged the broker delivers again; nothing accepted is lost).
STOP_STEP_S = 10.0
STOP_LIMIT_S = 25.0  # within the Kubernetes manifests' terminationGracePeriodSeconds (30)
BUSY_EVERY_S = 1.0  # a service with work in hand says so in Redis at most this often (_say_busy)
HELD_BYTES = 32 << 20  # fair passes: bodies held back beyond this fill the passes (as a crowded window)
WINDOW_BYTES = 64 << 20  # bodies in hand beyond this pause the consumer until half are worked off
DEAD_LETTER_KEEP_BYTES = 64 * 1024  # a larger body is parked truncated


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Service:
    def __init__(self, name: str, settings: Settings, default_port: int) -> None:
        self.name = name
        self.settings = settings
        self.region = settings.region
        self.port = settings.http_port or default_port
        self.instance = f"{socket.gethostname()}-{os.getpid()}"  # names this replica in claims and leases
        self.keys = Keys(self.region)
        self.signer = Signer(settings.service_key)  # refuses to start without the region's key
        # RabbitMQ validates a message's user_id against the connection's user only when it
        # is set: set it, so that consumers can tell the region's service accounts.
        user = urlsplit(settings.amqp_url).username
        self.broker_user = unquote(user) if user else None
        self.log = configure_logging(name, self.region, settings.log_level)
        self.metrics = create_metrics()
        initialise(self.metrics, self.region)
        # FastStream runs the process (the ASGI app with /metrics and /health, the start and
        # stop hooks); consuming and publishing go through aio-pika directly, on one robust
        # connection (see _declare): a message costs no middleware or dependency injection.
        self.broker = RabbitBroker(settings.amqp_url, graceful_timeout=15.0, logger=None)
        # A blocking pool waits for a free connection instead of failing when many
        # handlers run at once (up to the prefetch count). No silent retries: a command
        # retried across a Redis restart could act on an emptied state; every failure
        # surfaces to the scaffold, which keeps the message and starts the handler again,
        # generation check first.
        pool = BlockingConnectionPool.from_url(settings.redis_url, max_connections=64, timeout=30,
                                               socket_timeout=30, socket_connect_timeout=5,
                                               health_check_interval=15, retry=Retry(NoBackoff(), 0))
        self.redis: Redis = Redis(connection_pool=pool)
        self.state = RegionState(self.redis, self.region)
        self._busy_said = -BUSY_EVERY_S  # when _say_busy last marked this service busy (monotonic)
        self._consumers: list[_Consumer] = []
        self._retired: list[str] = []  # keys to unbind at start (see retire)
        self._connection: aio_pika.abc.AbstractRobustConnection | None = None
        self._out: aio_pika.abc.AbstractChannel | None = None
        self._exchange: aio_pika.abc.AbstractExchange | None = None
        self._dlx: aio_pika.abc.AbstractExchange | None = None
        self._background: list[tuple[str, Callable[[], Coroutine[Any, Any, None]]]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._on_start: list[Callable[[], Awaitable[None]]] = []
        self._on_stop: list[Callable[[], Awaitable[None]]] = []
        self._probes: dict[str, Probe] = {"redis": self.redis.ping, "rabbitmq": self._broker_connected}
        self._outages: dict[str, float] = {}  # dependency -> monotonic time it was last seen away
        self._beats: dict[str, float] = {}  # loop -> monotonic time of its last beat
        self._finished_loops: set[str] = set()
        # Whether this service acts on the region's round state in Redis, and so must wait
        # while it is lost (shared.runtime.rebuild); the ledger-writer does not.
        self.needs_state = True
        self._state_seen = False  # this process has seen the state's generation
        self._round_seen = 0  # the newest round this process has seen in Redis
        self.in_flight = 0  # messages being handled now
        self._stop_limit: asyncio.TimerHandle | None = None  # exits the process if a shutdown overruns
        for dependency in ("redis", "rabbitmq"):
            self.metrics.dependency_up.labels(self.region, name, dependency).set(1)

    # --- wiring ----------------------------------------------------------------------------

    def consume(self, routes: Routes, *, prefetch: int = 256, single_active: bool = False,
                run_limit: int = 0, per_sender: int = 0) -> None:
        """Subscribe this service's queue to the keys of ``routes``; on each key only the
        message types listed for it are accepted, each with its handler (a ``Batch`` handler
        takes every message of its type drained together).

        ``prefetch`` is how many deliveries the broker lets the service hold unacknowledged;
        one pass of the worker handles at most ``run_limit`` of them (default: all). With
        ``per_sender``, a pass takes at most that many messages of one sender, in turns,
        and holds the rest back for the next passes: one sender's flood then delays the
        others by about one short pass, not by the flood (``_Turns``)."""
        keys = list(routes)
        queue = service_queue(self.region, self.name, keys[0], single_active=single_active)
        by_place: dict[tuple[str, str], dict[type[Message], Handler]] = {}
        bound: list[str] = []
        for key, handlers in routes.items():
            where = parse_key(self.region, key)
            assert where is not None, f"{key} is not a routing key of region {self.region}"
            by_place[where[:2]] = handlers
            # A request comes on its kind's key, or on one that names its sender (MQTT clients).
            bound += [key, self.keys.request_from(where[1], "*")] if where[0] == IN else [key]
        self._consumers.append(_Consumer(queue, bound, by_place, prefetch, run_limit or prefetch, per_sender))

    def retire(self, keys: list[str]) -> None:
        """Keys an earlier version of this service bound its queue to and this one does not:
        unbound at start, so that an upgraded region's queue gets only what it handles."""
        self._retired += keys

    def background(self, loop: Callable[[], Coroutine[Any, Any, None]], name: str = "") -> None:
        """A loop started once consuming has begun, restarted if it fails, cancelled at shutdown.

        A loop calls ``beat(name)`` at least every ``LOOP_STALE_S``; returning means done."""
        self._background.append((name or loop.__name__, loop))

    def beat(self, loop: str) -> None:
        self._beats[loop] = time.monotonic()

    def on_start(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Runs before consuming starts; a failure stops the process."""
        self._on_start.append(hook)

    def on_stop(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Runs after consuming has stopped and in-flight messages are done."""
        self._on_stop.append(hook)

    def probe(self, dependency: str, check: Probe) -> None:
        """A dependency besides Redis and RabbitMQ that ``/health`` and outage detection ask."""
        self._probes[dependency] = check
        self.metrics.dependency_up.labels(self.region, self.name, dependency).set(1)

    async def _declare(self) -> None:
        """The exchanges, the bounded dead-letter queue and every binding, on a channel of
        their own (see ``consume``); all durable, so they survive a broker restart. Then the
        channel that publishes, the start hooks, and the consumers."""
        # One robust connection for everything this service does on the broker: it
        # reconnects after a broker restart and restores its channels and consumers.
        self._connection = connection = await aio_pika.connect_robust(self.settings.amqp_url)
        channel = await connection.channel()
        exchange = await channel.declare_exchange(EXCHANGE.name, aio_pika.ExchangeType.TOPIC, durable=True)
        dlx = await channel.declare_exchange(DEAD_LETTER_EXCHANGE.name, aio_pika.ExchangeType.TOPIC, durable=True)
        dlq = dead_letter_queue(self.region, self.settings.dead_letter_max, self.settings.dead_letter_ttl_s)
        dead = await channel.declare_queue(dlq.name, durable=True, arguments=dlq.arguments)
        await dead.bind(dlx, routing_key=f"{self.region}.#")
        for consumer in self._consumers:
            queue = consumer.queue
            declared = await channel.declare_queue(queue.name, durable=True, arguments=queue.arguments)
            for key in consumer.keys:
                await declared.bind(exchange, routing_key=key)
            for key in self._retired:
                await declared.unbind(exchange, routing_key=key)  # no such binding: nothing happens
        await channel.close()
        await self._open_publisher()
        await self.redis.ping()
        for hook in self._on_start:
            await hook()
        await self._start_consuming()

    async def _open_publisher(self) -> None:
        """The channel that publishes, with publisher confirms: a publish returns once the
        broker has the message (on disk, for a durable queue), or raises. A channel closed
        by an outage is opened again on the next publish (see ``_publishing``)."""
        assert self._connection is not None
        self._out = await self._connection.channel(publisher_confirms=True)
        self._exchange = await self._out.get_exchange(EXCHANGE.name, ensure=False)
        self._dlx = await self._out.get_exchange(DEAD_LETTER_EXCHANGE.name, ensure=False)

    async def _publishing(self) -> tuple[aio_pika.abc.AbstractExchange, aio_pika.abc.AbstractExchange]:
        """The exchanges to publish to, on an open channel."""
        if self._out is None or self._out.is_closed:
            await self._open_publisher()
        assert self._exchange is not None and self._dlx is not None
        return self._exchange, self._dlx

    # --- inbound ---------------------------------------------------------------------------
    # Each queue is consumed on a channel of its own whose prefetch is the consumer's limit.
    # Deliveries land in an inbox; one worker per queue drains what the inbox holds (up to
    # the prefetch), admits each message (routing key, size, signature, decoding, type,
    # identity), then runs the handlers over runs of consecutive messages in arrival order:
    # a ``Batch`` handler gets the whole run of its messages in one call (one Redis script,
    # one wait for the broker's confirms), a plain handler one message at a time. Every
    # delivery is acknowledged only after its handler returned, so after its work is durable.
    # The prefetch counts messages, not bytes: once the bodies in hand pass WINDOW_BYTES the
    # consumer pauses (cancels its subscription; the broker keeps the rest) and resumes once
    # the worker has worked them down to half, so that large requests cannot exhaust memory.

    async def _start_consuming(self) -> None:
        connection = self._connection
        assert connection is not None
        for consumer in self._consumers:
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=consumer.prefetch)
            queue = await channel.declare_queue(consumer.queue.name, durable=True,
                                                arguments=consumer.queue.arguments)
            consumer.amqp_queue = queue
            consumer.deliver = functools.partial(self._deliver, consumer)
            consumer.tag = await queue.consume(consumer.deliver)
            consumer.worker = asyncio.create_task(self._work(consumer))

    async def _deliver(self, consumer: _Consumer, incoming: AbstractIncomingMessage) -> None:
        consumer.inbox.put_nowait(incoming)
        consumer.inbox_bytes += len(incoming.body)
        if consumer.in_hand() > WINDOW_BYTES and consumer.pausing is None and consumer.pausable():
            consumer.pausing = asyncio.create_task(self._pause(consumer))

    async def _pause(self, consumer: _Consumer) -> None:
        while consumer.tag is None:  # (delivered before its subscription's tag was known)
            if consumer.closing:
                return
            await asyncio.sleep(0.01)
        assert consumer.amqp_queue is not None
        self.log.warning("consumer_paused", queue=consumer.queue.name, bytes_in_hand=consumer.in_hand(),
                         limit=WINDOW_BYTES)
        tag, consumer.tag = consumer.tag, None
        try:
            await consumer.amqp_queue.cancel(tag)
        except Exception as exc:  # a channel that closed: nothing more comes on it, nor is it restored
            self.log.warning("consumer_pause_failed", queue=consumer.queue.name,
                             error=f"{type(exc).__name__}: {exc}"[:300])

    async def _resume_if_worked_down(self, consumer: _Consumer) -> None:
        """Subscribe again once half the budget is in hand; a failure (the broker away) is
        tried again after the next pass, or after a second without deliveries (``_work``)."""
        pausing = consumer.pausing
        if pausing is None or consumer.closing or 2 * consumer.in_hand() > WINDOW_BYTES:
            return
        await asyncio.wait([pausing])  # (its failures are its own to log)
        queue, deliver = consumer.amqp_queue, consumer.deliver
        assert queue is not None and deliver is not None
        try:
            async with asyncio.timeout(STOP_STEP_S):  # (not wait_for: 3.11's can swallow a cancellation)
                ready = getattr(queue.channel, "ready", None)  # a robust channel: until it is restored
                if ready is not None:
                    await ready()
                tag = await queue.consume(deliver)
        except Exception as exc:
            self.log.warning("consumer_resume_failed", queue=consumer.queue.name,
                             error=f"{type(exc).__name__}: {exc}"[:300])
            return
        if consumer.closing:  # stopped meanwhile: take nothing more
            with contextlib.suppress(Exception):
                await queue.cancel(tag)
            return
        consumer.tag, consumer.pausing = tag, None
        self.log.info("consumer_resumed", queue=consumer.queue.name, bytes_in_hand=consumer.in_hand())

    async def _stop_consuming(self) -> None:
        """Stop taking deliveries, finish the run in hand, leave the rest to the broker."""
        for consumer in self._consumers:
            consumer.closing = True  # a paused one is not subscribed again
        # With the broker away there is nothing to cancel (a robust channel would wait for it).
        if await self._broker_connected():
            for consumer in self._consumers:
                if consumer.amqp_queue is not None and consumer.tag is not None:
                    await self._stop_step("cancel_consumer", consumer.amqp_queue.cancel(consumer.tag))
        for consumer in self._consumers:
            consumer.stopping = True
            if consumer.worker is not None:
                if consumer.idle.is_set():
                    consumer.worker.cancel()
                await self._stop_step("finish_in_hand", consumer.worker)

    async def _stop_step(self, step: str, work: Awaitable[Any]) -> None:
        """One step of a shutdown, for STOP_STEP_S at most; a failure is logged, never raised."""
        try:
            await asyncio.wait_for(work, timeout=STOP_STEP_S)
        except asyncio.CancelledError:
            if not (isinstance(work, asyncio.Future) and work.cancelled()):  # (an idle worker, cancelled on purpose)
                raise
        except TimeoutError:
            self.log.warning("shutdown_step_overran", step=step, seconds=STOP_STEP_S)
        except Exception as exc:
            self.log.warning("shutdown_step_failed", step=step, error=f"{type(exc).__name__}: {exc}"[:300])

    def _overran(self) -> None:
        """The shutdown took longer than STOP_LIMIT_S (a dependency away): exit anyway."""
        self.log.error("shutdown_overran", seconds=STOP_LIMIT_S)
        with contextlib.suppress(Exception):
            sys.stderr.flush()
            sys.stdout.flush()
        os._exit(1)

    async def _work(self, consumer: _Consumer) -> None:
        inbox = consumer.inbox
        while not consumer.stopping:
            if consumer.turns or consumer.backlog:  # work in hand: no waiting, but deliveries land first
                await asyncio.sleep(0)
                drained = []
            elif consumer.pausing is not None:  # paused with nothing in hand: subscribe again
                await self._resume_if_worked_down(consumer)
                try:
                    async with asyncio.timeout(1.0):
                        drained = [await inbox.get()]
                except TimeoutError:
                    continue
            else:
                drained = [await inbox.get()]
            consumer.idle.clear()
            # Fair: everything, to be held back by sender; else one pass's worth, in order.
            while not inbox.empty() and (consumer.per_sender or len(drained) < consumer.run_limit):
                drained.append(inbox.get_nowait())
            consumer.inbox_bytes -= sum(len(d.body) for d in drained)
            try:
                await self._process(consumer, drained)
                if consumer.turns.count or consumer.backlog or not inbox.empty():
                    await self._say_busy()
                await self._resume_if_worked_down(consumer)
            except Exception:  # never lose the worker: what the pass left is tried again
                self.log.exception("delivery_batch_failed", count=len(drained))
                await asyncio.sleep(1.0)
            finally:
                consumer.idle.set()

    async def _say_busy(self) -> None:
        """Work in hand after a pass: the broker counts it as delivered, not as waiting, so
        say so in Redis (at most every second, for three), for the simulation clock, which
        waits for a service that is behind (a junk flood's tail can be a window of 16,384)."""
        now = time.monotonic()
        if now - self._busy_said < BUSY_EVERY_S:
            return
        self._busy_said = now
        try:
            await self.state.mark_busy(self.name, int(3 * BUSY_EVERY_S * 1000))
        except (RedisError, OSError) as exc:  # an outage: the clock then waits by the queues alone
            self.log.warning("busy_mark_failed", error=type(exc).__name__)

    async def _process(self, consumer: _Consumer, drained: list[AbstractIncomingMessage]) -> None:
        """Admit what was drained, then handle one pass: runs of one handler in arrival order.
        A pass that fails (not a handler: ``_handle`` keeps those) leaves what it did not
        finish in hand, so that it is never acknowledged unhandled and is tried again."""
        fair, turns = bool(consumer.per_sender), consumer.turns
        drained = [*consumer.backlog, *drained]  # what a failed pass left, first
        consumer.backlog.clear()
        admitted: list[_Admitted] = []
        for n, incoming in enumerate(drained):
            if n and not n % 256:  # a long drain (a fair window's worth of junk to dead-letter)
                await self._say_busy()
            try:
                found = await self._admit(incoming, consumer.routes)
            except Exception:
                consumer.backlog += [a.delivery for a in admitted] + drained[n:]  # (fair: held already)
                raise
            if found is not None:
                consumer.arrived += 1
                handler, message = found
                if fair:  # whose turn it waits for: '' for the services' facts
                    sender = self._sender(incoming) or str(getattr(message, "participant_id", ""))
                    turns.hold(_Admitted(consumer.arrived, incoming, handler, message, sender))
                else:
                    admitted.append(_Admitted(consumer.arrived, incoming, handler, message))
        if fair:
            chosen = turns.take(consumer.per_sender, consumer.run_limit,
                                crowded=2 * turns.count >= consumer.prefetch or turns.size >= HELD_BYTES)
            self.metrics.requests_held.labels(self.region, self.name).set(turns.count)
        else:
            chosen = admitted
        done: list[AbstractIncomingMessage] = []
        i = 0
        try:
            while i < len(chosen):
                handler = chosen[i].handler
                j = i + 1
                if isinstance(handler, Batch):
                    while j < len(chosen) and chosen[j].handler is handler:
                        j += 1
                run = chosen[i:j]
                done += await self._run(handler, [a.delivery for a in run], [a.message for a in run])
                i = j
        except Exception:
            if fair:
                turns.put_back(chosen[i:])
            else:
                consumer.backlog += [a.delivery for a in chosen[i:]]
            raise
        finally:
            await self._acknowledge(done, turns.floor(consumer.backlog))

    async def _acknowledge(self, done: list[AbstractIncomingMessage], floor: dict[int, int] | None = None) -> None:
        """One acknowledgement per channel for a whole pass: the last delivery's, covering
        the earlier ones (each of which is handled, or was refused and acknowledged alone),
        but never one still in hand: ``floor`` gives, per channel, the first delivery held
        back or left for later, and the ones after it are acknowledged one by one."""
        floor = floor or {}
        last: dict[int, AbstractIncomingMessage] = {}
        alone: list[AbstractIncomingMessage] = []
        for incoming in done:
            if _channel_closed(incoming):  # gone with its channel: the broker delivers it again
                continue
            key, tag = id(incoming.channel), incoming.delivery_tag or 0
            if key in floor and tag > floor[key]:
                alone.append(incoming)
            elif key not in last or tag > (last[key].delivery_tag or 0):
                last[key] = incoming
        for incoming in last.values():
            await self._settle(incoming.ack(multiple=True))
        for incoming in alone:
            await self._settle(incoming.ack())

    async def _admit(self, msg: AbstractIncomingMessage, routes: dict[tuple[str, str], dict[type[Message], Handler]]
                     ) -> tuple[Handler, Message] | None:
        """The handler and decoded message of a delivery, or None when it was refused."""
        routing_key = msg.routing_key or ""
        self.metrics.messages_received.labels(self.region, self.name, bounded_key(routing_key)).inc()
        where = parse_key(self.region, routing_key)
        handlers = routes.get(where[:2]) if where is not None else None
        if where is None or handlers is None:
            await self._refused(msg, "in" if where is None else where[0], "unexpected_routing_key")
            return None
        channel, _kind, addressee = where
        body: bytes = msg.body
        if channel == IN and len(body) > self.settings.max_request_bytes:
            await self._refuse(msg, b"", f"too_large: {len(body)} bytes, at most {self.settings.max_request_bytes}")
            return None
        if channel != IN and not self._authentic(msg, routing_key, body):
            await self._refused(msg, channel, "unauthenticated")
            return None
        try:
            message = decode(body)
        except Undecodable as exc:
            await self._refuse(msg, body, str(exc))
            return None
        handler = handlers.get(type(message))
        if handler is None:
            self.metrics.forged_messages.labels(self.region, self.name, channel, "wrong_type").inc()
            await self._refuse(msg, body if channel == IN else b"",
                               f"a {type(message).__name__} does not belong on {routing_key}")
            return None
        if message.region != self.region:
            await self.dead_letter(msg, "wrong_region")
            return None
        if channel == TO and getattr(message, "participant_id", None) != addressee:
            await self._refused(msg, channel, "misaddressed")
            return None
        if channel == IN and not await self._identity_holds(msg, message, addressee):
            return None
        return handler, message

    async def _run(self, handler: Handler, deliveries: list[AbstractIncomingMessage], messages: list[Message]
                   ) -> list[AbstractIncomingMessage]:
        """Handle one run; the deliveries to acknowledge."""
        name = _handler_name(handler)
        self.in_flight += len(messages)
        started = time.perf_counter()
        try:
            with bind_context(**_context(deliveries, messages)):
                done = await self._handle(handler, deliveries, messages)
        finally:
            self.in_flight -= len(messages)
        self.metrics.batch_duration.labels(self.region, self.name, name).observe(time.perf_counter() - started)
        self.metrics.batch_size.labels(self.region, self.name, name).observe(len(messages))
        return done

    async def _handle(self, handler: Handler, deliveries: list[AbstractIncomingMessage], messages: list[Message]
                      ) -> list[AbstractIncomingMessage]:
        """Run ``handler`` until it succeeds; the deliveries to acknowledge (none when the
        channel went away: the broker delivers them again). A batch that fails on its merits
        is tried one message at a time, so that only the message at fault is dead-lettered."""
        outage_attempt = merit_failures = 0
        while True:
            try:
                if not (isinstance(handler, Batch) and handler.checks_state):
                    await self.state_ready()
                if isinstance(handler, Batch):
                    await handler.handle(messages)
                else:
                    await handler(messages[0])
                self._recovered()
                return deliveries
            except Exception as exc:
                away = is_outage(exc) or bool(await self._away())
                if away:
                    self.metrics.outage_retries.labels(self.region, self.name).inc()
                    if outage_attempt % 10 == 0:  # the first time, then about every 100 s: never silent
                        self.log.warning("dependency_away_will_retry", error=f"{type(exc).__name__}: {exc}"[:300],
                                         attempt=outage_attempt + 1)
                    if any(_channel_closed(d) for d in deliveries):
                        return []  # unacknowledged on a dead channel: the broker redelivers them
                    await asyncio.sleep(backoff_s(outage_attempt))
                    outage_attempt += 1
                    continue
                self.metrics.handler_failures.labels(self.region, self.name).inc()
                if len(messages) > 1:
                    self.log.warning("batch_failed_trying_one_by_one", count=len(messages),
                                     error=f"{type(exc).__name__}: {exc}"[:300])
                    done: list[AbstractIncomingMessage] = []
                    for delivery, message in zip(deliveries, messages, strict=True):
                        with bind_context(**_context([delivery], [message])):
                            done += await self._handle(handler, [delivery], [message])
                    return done
                merit_failures += 1
                if merit_failures >= MERIT_TRIES:
                    self.log.exception("handler_failed_dead_lettered", attempts=merit_failures)
                    await self.dead_letter(deliveries[0], f"handler_error: {type(exc).__name__}: {exc}"[:500],
                                           ack=False)
                    return deliveries
                self.log.exception("handler_failed_will_retry", attempt=merit_failures)
                await asyncio.sleep(backoff_s(merit_failures, first=0.1))

    def _authentic(self, msg: AbstractIncomingMessage, routing_key: str, body: bytes) -> bool:
        users = self.settings.service_users
        if users and msg.user_id not in users:
            return False
        return self.signer.verify(routing_key, body, (msg.headers or {}).get(SIGNATURE_HEADER))

    async def _refused(self, msg: AbstractIncomingMessage, channel: str, why: str) -> None:
        """A message that is not what its key says: logged, counted, parked, never acted on."""
        self.log.warning("message_refused", why=why, routing_key=msg.routing_key,
                         user=msg.user_id)
        self.metrics.forged_messages.labels(self.region, self.name, channel, why).inc()
        await self._count_bad_input(msg, None)
        await self.dead_letter(msg, why)

    def _sender(self, msg: AbstractIncomingMessage) -> str | None:
        """Who sent a request, as the broker vouches for it: the AMQP ``user_id`` (RabbitMQ
        checks it against the connection's user), else the sender its routing key names
        (the topic permissions let a participant write only its own id there)."""
        if msg.user_id:
            return str(msg.user_id)
        where = parse_key(self.region, msg.routing_key or "")
        return where[2] if where is not None and where[0] == IN and where[2] else None

    async def _count_bad_input(self, msg: AbstractIncomingMessage, claimed: str | None) -> None:
        """Per sender, in Redis (``microte bad-input``): never a metric label per participant.
        Best effort: counting never holds up a refusal."""
        user = self._sender(msg)
        sender = f"user:{user}" if user else (f"claims:{claimed}" if claimed else "anonymous")
        try:
            await self.state.count_bad_input(sender, time.strftime("%Y-%m-%d", time.gmtime()))
        except Exception as exc:
            self.log.debug("bad_input_not_counted", error=type(exc).__name__)

    async def _identity_holds(self, msg: AbstractIncomingMessage, message: Message, key_sender: str) -> bool:
        """A request on a key that names its sender counts only from that sender; with broker
        identity, a request counts only from the user it names (``_sender``)."""
        pid = getattr(message, "participant_id", None)
        if key_sender and msg.user_id and msg.user_id != key_sender:
            user: str | None = str(msg.user_id)  # its key names someone its user is not
        elif self.settings.identity != "broker_user" and (not key_sender or key_sender == pid):
            return True
        else:
            user = self._sender(msg)
            if pid is not None and user == pid:
                return True
        self.log.warning("identity_mismatch", claimed=pid, user=user)
        await self._count_bad_input(msg, pid)
        self.metrics.rejected_requests.labels(self.region, self.name, type(message).__name__, "identity_mismatch").inc()
        if user and _ID.match(user):
            # Answer the sender it really is, never the participant it claimed to be.
            await self.publish(Rejected(region=self.region, participant_id=user, request=type(message).__name__,
                                        reason="identity_mismatch",
                                        detail=f"connected as {user!r}, sent as {pid!r}"),
                               self.keys.to(user, REJECTED))
            await self._settle(msg.ack())
        else:
            await self.dead_letter(msg, "identity_mismatch: no user_id")
        return False

    async def _refuse(self, msg: AbstractIncomingMessage, body: bytes, why: str) -> None:
        """A request that cannot be read: a ``malformed`` answer if it names a valid sender."""
        sender = sender_of(body) if body else None
        await self._count_bad_input(msg, sender[0] if sender else None)
        routing_key = msg.routing_key or ""
        where = parse_key(self.region, routing_key)
        if sender is not None and where is not None and where[0] == IN:
            pid, reference = sender
            if (self.settings.identity == "broker_user" or where[2]) and self._sender(msg) != pid:
                await self.dead_letter(msg, f"undecodable: {why}")  # never answer a participant it is not
                return
            self.log.warning("request_malformed", participant_id=pid, reason=why[:300])
            self.metrics.rejected_requests.labels(self.region, self.name, "unknown", "malformed").inc()
            await self.publish(Rejected(region=self.region, participant_id=pid, request="unknown",
                                        reason="malformed", detail=why[:1000], reference=reference),
                               self.keys.to(pid, REJECTED))
            await self._settle(msg.ack())
            return
        await self.dead_letter(msg, f"undecodable: {why}")

    async def dead_letter(self, msg: AbstractIncomingMessage, reason: str, *, ack: bool = True) -> None:
        """Park a message in the region's bounded dead-letter queue, with why, then acknowledge it.

        When the queue is full the broker refuses the message: it is counted, logged and dropped."""
        self.log.warning("dead_lettered", reason=reason[:300], routing_key=msg.routing_key)
        self.metrics.dead_letters.labels(self.region, self.name, reason.split(":")[0]).inc()
        body: bytes = msg.body
        headers: dict[str, Any] = {"x-microte-reason": reason[:500], "x-microte-service": self.name}
        if len(body) > DEAD_LETTER_KEEP_BYTES:  # evidence, not a second copy of a flood
            headers["x-microte-truncated-from"] = len(body)
            body = body[:DEAD_LETTER_KEEP_BYTES]
        try:
            _, dlx = await self._publishing()
            await dlx.publish(
                aio_pika.Message(body, headers=headers, message_id=msg.message_id,
                                 content_type=msg.content_type or "application/octet-stream",
                                 delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=msg.routing_key or self.region)
        except (aio_pika.exceptions.DeliveryError, aiormq.exceptions.PublishError):
            self.metrics.dead_letter_overflow.labels(self.region, self.name).inc()
            self.log.error("dead_letter_queue_full_message_dropped", reason=reason[:300])
        if ack:
            await self._settle(msg.ack())

    async def _settle(self, ack: Awaitable[None]) -> None:
        """Acknowledge; on a channel that died meanwhile the broker redelivers, which is harmless."""
        try:
            await ack
        except (aiormq.exceptions.AMQPError, aio_pika.exceptions.AMQPException, RuntimeError) as exc:
            self.log.warning("ack_failed_will_be_redelivered", error=type(exc).__name__)

    # --- dependencies ----------------------------------------------------------------------

    async def _check(self, dependency: str, check: Probe) -> bool:
        try:
            ok = bool(await asyncio.wait_for(check(), timeout=PROBE_TIMEOUT_S))
        except Exception:
            ok = False
        if not ok:
            self._outages[dependency] = time.monotonic()
        self.metrics.dependency_up.labels(self.region, self.name, dependency).set(1 if ok else 0)
        return ok

    async def _away(self) -> list[str]:
        """Ask every dependency; the ones away (a failure is then not the message's)."""
        return [dep for dep, check in self._probes.items() if not await self._check(dep, check)]

    async def _broker_connected(self) -> bool:
        connection, out = self._connection, self._out
        if connection is None or out is None:  # not started yet: FastStream's own connection says
            return bool(self.broker.running) and bool(await self.broker.ping(timeout=PROBE_TIMEOUT_S))
        # A robust connection stays "open" while it reconnects: whether it has a live transport
        # now is what says the broker is there. A closed publishing channel is opened again on use.
        return not connection.is_closed and connection.connected.is_set()

    def _recovered(self) -> None:
        if self._outages:
            for dependency in self._outages:
                self.metrics.dependency_up.labels(self.region, self.name, dependency).set(1)
            self.log.info("dependencies_back", dependencies=sorted(self._outages))
            self._outages.clear()

    async def state_ready(self) -> None:
        """Raise ``RegionStateLost`` (an outage: wait and retry) while Redis holds no round
        state for the region; the ledger-writer rebuilds it from the ledger."""
        if not self.needs_state:
            return
        exists, start = await self.state.generation_and_round()
        self.state_seen(exists, start)

    def state_seen(self, exists: bool, start: int | None) -> None:
        """``state_ready`` on what a handler read itself in one round trip with its own reads."""
        if not exists:
            raise RegionStateLost(f"no round state for region {self.region} in Redis: waiting for its rebuild")
        if start is not None and start < self._round_seen:  # rounds only move forward: a stale copy
            raise RegionStateLost(f"Redis holds round {start} of region {self.region}, older than round "
                                  f"{self._round_seen} seen before: a stale copy, waiting for its rebuild")
        self._round_seen = max(self._round_seen, start or 0)
        self._state_seen = True

    async def healthy(self) -> tuple[bool, list[str]]:
        """Ready to work: every dependency answers and every background loop is alive."""
        problems = await self._away()
        if "redis" not in problems and self._state_seen and self.needs_state:
            try:
                await self.state_ready()
            except RegionStateLost:
                problems.append("redis:round_state_lost")
        if not problems:
            self._recovered()
        stale = time.monotonic() - LOOP_STALE_S
        for name, _ in self._background:
            if name not in self._finished_loops and self._beats.get(name, time.monotonic()) < stale:
                problems.append(f"loop:{name}")
        return not problems, problems

    # --- outbound --------------------------------------------------------------------------

    async def publish(self, message: Message, routing_key: str) -> None:
        """Confirmed and signed; persistent but for the answers to requests (``persistent``).
        The id is the content's hash, so a replay is recognisable."""
        body = encode(message)
        message_id = hashlib.blake2b(body, digest_size=12).hexdigest()
        headers: dict[str, Any] = {"x-microte-service": self.name,
                                   SIGNATURE_HEADER: self.signer.sign(routing_key, body)}
        mode = aio_pika.DeliveryMode.PERSISTENT if persistent(routing_key) else aio_pika.DeliveryMode.NOT_PERSISTENT
        try:
            exchange, _ = await self._publishing()
            for _ in range(2 if self.settings.duplicate_delivery else 1):
                await exchange.publish(
                    aio_pika.Message(body, headers=headers, content_type=CONTENT_TYPE, message_id=message_id,
                                     user_id=self.broker_user, delivery_mode=mode),
                    routing_key=routing_key)
        except RuntimeError as exc:
            # aio-pika says "<Connection ...> closed" or "Connection was not opened" with a bare
            # RuntimeError while its robust connection is away: an outage, never the message's fault.
            text = str(exc)
            lost = any(word in text for word in ("closed", "not opened", "not ready"))
            if lost or not await self._broker_connected():
                raise aiormq.exceptions.AMQPConnectionError(f"the broker is away: {text}") from exc
            raise
        self.metrics.messages_published.labels(self.region, self.name, bounded_key(routing_key)).inc()

    async def publish_all(self, items: list[tuple[Message, str]]) -> None:
        await asyncio.gather(*(self.publish(m, k) for m, k in items))

    # --- background loops ------------------------------------------------------------------

    async def _supervise(self, name: str, loop: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run a loop; restart it with backoff when it fails, so that it never dies silently."""
        attempt = 0
        while True:
            self.beat(name)
            started = time.monotonic()
            try:
                await loop()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.metrics.loop_restarts.labels(self.region, self.name, name).inc()
                level = self.log.warning if is_outage(exc) else self.log.exception
                level("loop_failed_will_restart", loop=name, error=f"{type(exc).__name__}: {exc}"[:300])
                attempt = 0 if time.monotonic() - started > 60 else attempt  # a new failure, not the same one
                await asyncio.sleep(backoff_s(attempt, first=0.25, cap=5.0))
                attempt += 1
                continue
            self._finished_loops.add(name)
            self.log.info("loop_finished", loop=name)
            return

    # --- the process -----------------------------------------------------------------------

    def app(self) -> AsgiFastStream:
        service = self

        @get
        async def health(scope: Any) -> AsgiResponse:
            ok, problems = await service.healthy()
            body = b"ok" if ok else ("unavailable: " + ", ".join(problems)).encode()
            return AsgiResponse(body, status_code=200 if ok else 503)

        @get
        async def live(scope: Any) -> AsgiResponse:
            return AsgiResponse(b"ok", status_code=200)

        app = AsgiFastStream(self.broker, asgi_routes=[
            ("/metrics", make_asgi_app(self.metrics.registry)),
            ("/health", health),
            ("/live", live),
        ])
        app.on_startup(self._declare)

        @app.after_startup
        async def start_background() -> None:
            self._tasks = [asyncio.create_task(self._supervise(name, loop)) for name, loop in self._background]
            self.log.info("service_started", port=self.port)

        @app.on_shutdown
        async def stop_background() -> None:
            self._stop_limit = asyncio.get_running_loop().call_later(STOP_LIMIT_S, self._overran)
            await self._stop_consuming()
            for task in self._tasks:
                task.cancel()
            await self._stop_step("stop_loops", asyncio.gather(*self._tasks, return_exceptions=True))

        @app.after_shutdown
        async def close_redis() -> None:
            for hook in self._on_stop:
                await self._stop_step(f"on_stop:{getattr(hook, '__qualname__', hook)}", hook())
            if self._connection is not None:
                await self._stop_step("close_broker_connection", self._connection.close())
            await self._stop_step("close_redis", self.redis.aclose())
            if self._stop_limit is not None:  # stopped in time: what remains is the process's own exit
                self._stop_limit.cancel()
            self.log.info("service_stopped")

        return app


def _context(deliveries: list[AbstractIncomingMessage], messages: list[Message]) -> dict[str, str]:
    """Log context of one handler run: the message's own, or for a batch its type and size."""
    message = messages[0]
    context = {"message_type": type(message).__name__}
    if len(messages) > 1:
        context["batch"] = str(len(messages))
        return context
    context["message_id"] = deliveries[0].message_id or ""
    if (pid := getattr(message, "participant_id", None)) is not None:
        context["participant_id"] = pid
    if isinstance(message, RoundStarted):
        context["round"] = str(message.current_round.start)
    elif isinstance(message, FinishRound):
        context["round"] = str(message.round_start)
    if (slot := getattr(message, "slot", None)) is not None:
        context["slot"] = f"{slot.start}-{slot.end}"
    return context


def _channel_closed(msg: AbstractIncomingMessage) -> bool:
    """Whether the channel a delivery came on is gone (its acknowledgement would be lost;
    the broker delivers it again). aio-pika's ``channel`` raises once the channel is closed."""
    try:
        channel = msg.channel
    except aiormq.exceptions.ChannelInvalidStateError:
        return True
    return bool(getattr(channel, "is_closed", False))


def _handler_name(handler: Handler) -> str:
    inner = handler.handle if isinstance(handler, Batch) else handler
    return getattr(inner, "__name__", type(inner).__name__)


def _idle_event() -> asyncio.Event:
    idle = asyncio.Event()
    idle.set()  # no run in hand
    return idle


@dataclass
class _Consumer:
    queue: RabbitQueue
    keys: list[str]  # bound to the queue
    routes: dict[tuple[str, str], dict[type[Message], Handler]]  # (channel, kind) -> its types' handlers
    prefetch: int
    run_limit: int  # the most messages one pass handles
    per_sender: int  # 0: a pass takes what arrived, in order; else the most of one sender's (_Turns)
    inbox: asyncio.Queue[AbstractIncomingMessage] = field(default_factory=asyncio.Queue)
    inbox_bytes: int = 0  # bodies delivered and not yet drained
    deliver: Callable[[AbstractIncomingMessage], Awaitable[None]] | None = None
    pausing: asyncio.Task[None] | None = None  # set while the subscription is paused (WINDOW_BYTES)
    closing: bool = False  # the service stops: no more subscribing
    turns: _Turns = field(default_factory=lambda: _Turns())  # admitted, waiting for their sender's turn
    backlog: list[AbstractIncomingMessage] = field(default_factory=list)  # left by a failed pass, to admit again
    arrived: int = 0  # admitted so far: the arrival order of what is held back
    idle: asyncio.Event = field(default_factory=_idle_event)
    stopping: bool = False
    tag: str | None = None
    amqp_queue: aio_pika.abc.AbstractQueue | None = None
    worker: asyncio.Task[None] | None = None

    def pausable(self) -> bool:
        """Not a single-active-consumer queue: cancelling there would hand the queue to another
        replica while this one still holds its earlier messages (their order is the point)."""
        return not (self.queue.arguments or {}).get("x-single-active-consumer")

    def in_hand(self) -> int:
        """Bytes of the bodies delivered and not yet handled: in the inbox, and held back."""
        return self.inbox_bytes + self.turns.size + sum(len(d.body) for d in self.backlog)


@dataclass
class _Admitted:
    arrival: int
    delivery: AbstractIncomingMessage
    handler: Handler
    message: Message
    sender: str = ""  # fair passes: whose turn it waits for


class _Turns:
    """The requests held back, per sender, for fair passes (``Service.consume(per_sender=)``)."""

    def __init__(self) -> None:
        self.queues: dict[str, deque[_Admitted]] = {}  # sender -> its requests, oldest first; in turn order
        self.count = 0
        self.size = 0  # bytes of their bodies

    def __bool__(self) -> bool:
        return bool(self.queues)

    def hold(self, admitted: _Admitted) -> None:
        self.queues.setdefault(admitted.sender, deque()).append(admitted)
        self._counted(admitted, 1)

    def _counted(self, admitted: _Admitted, sign: int) -> None:
        self.count += sign
        self.size += sign * len(admitted.delivery.body)

    def take(self, per_sender: int, limit: int, crowded: bool = False) -> list[_Admitted]:
        """One pass: in turns, at most ``per_sender`` of each sender's oldest, at most
        ``limit`` in all, in arrival order. When the window is ``crowded`` what the turns leave
        of the pass is then filled, in turns again: short passes would let a flood fill the
        window, and with the window full the others' requests would wait behind it at the
        broker, where there are no turns. A sender that still has requests waits at the back
        of the turns; one that has none left leaves them. A sender's own requests keep their
        order; only different senders' are reordered. Requests of a closed channel are
        dropped (the broker delivers them again). O(what the pass takes + senders)."""
        chosen: list[_Admitted] = []
        for share in (per_sender, limit) if crowded else (per_sender,):
            for sender in list(self.queues):
                if len(chosen) >= limit:
                    break
                queue = self.queues.pop(sender)
                take = min(share, limit - len(chosen))
                while queue and take:
                    admitted = queue.popleft()
                    self._counted(admitted, -1)
                    if not _channel_closed(admitted.delivery):
                        chosen.append(admitted)
                        take -= 1
                if queue:
                    self.queues[sender] = queue  # to the back of the turns
        chosen.sort(key=lambda a: a.arrival)
        return chosen

    def put_back(self, admitted: list[_Admitted]) -> None:
        """Requests a failed pass took and did not finish: first in their senders' queues again."""
        by_sender: dict[str, list[_Admitted]] = {}
        for a in admitted:
            by_sender.setdefault(a.sender, []).append(a)
        for sender, items in by_sender.items():
            queue = self.queues.setdefault(sender, deque())
            queue.extendleft(reversed(items))
            for a in items:
                self._counted(a, 1)

    def floor(self, backlog: list[AbstractIncomingMessage]) -> dict[int, int]:
        """Per open channel, the lowest delivery tag still in hand (held back, or left for
        later in ``backlog``): a multiple acknowledgement must stay below it. A sender's
        requests on one channel come in tag order, so its first on an open channel is its
        lowest there; a closed channel's, at the front, are dropped (the broker redelivers)."""
        floor: dict[int, int] = {}
        firsts = [d for d in backlog if not _channel_closed(d)]
        for sender in list(self.queues):
            queue = self.queues[sender]
            while queue and _channel_closed(queue[0].delivery):
                self._counted(queue.popleft(), -1)
            if queue:
                firsts.append(queue[0].delivery)
            else:
                del self.queues[sender]
        for delivery in firsts:
            key, tag = id(delivery.channel), delivery.delivery_tag or 0
            floor[key] = min(floor.get(key, tag), tag)
        return floor


def serve(service: Service) -> int:
    """Run a service until SIGTERM/SIGINT; a failed start exits non-zero."""
    app = service.app()
    state: dict[str, Any] = {"failed": False}

    async def lifespan_guard(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await app(scope, receive, send)
            return
        try:
            await app(scope, receive, send)
        except BaseException:
            state["failed"] = True
            raise
        finally:
            state["server"].should_exit = True

    config = uvicorn.Config(lifespan_guard, host=service.settings.http_host, port=service.port,
                            log_level="warning", lifespan="on")
    server = state["server"] = uvicorn.Server(config)
    signal.signal(signal.SIGTERM, lambda *_: None)  # let uvicorn's own handler finish the shutdown
    asyncio.run(server.serve())
    return 1 if state["failed"] else 0
