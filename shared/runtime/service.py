"""What every service is made of: a broker, a Redis state, handlers, metrics and health.

A service subscribes one durable queue to the routing keys it needs and gives a handler
per message type. The scaffold decodes strictly, binds log context, acknowledges only
after the handler returned (so after its work is durable), and never lets bad input
crash the process or block the queue:

- bytes that do not decode go to the dead-letter queue with the reason in the headers,
  or, when they name a valid participant, get a ``malformed`` rejection;
- a handler that fails is retried once (requeued), then dead-lettered.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import uvicorn
from faststream import AckPolicy
from faststream.asgi import AsgiFastStream, AsgiResponse, get
from faststream.message import StreamMessage
from faststream.rabbit import Channel, RabbitBroker, RabbitQueue
from faststream.rabbit.annotations import RabbitMessage
from faststream.rabbit.prometheus import RabbitPrometheusMiddleware
from prometheus_client import make_asgi_app
from redis.asyncio import BlockingConnectionPool, Redis

from shared.messages import CONTENT_TYPE, Undecodable, decode, encode, sender_of
from shared.messages.types import FinishRound, Message, Rejected, RoundStarted
from shared.runtime.logs import bind_context, configure_logging
from shared.runtime.metrics import create_metrics, initialise
from shared.runtime.settings import Settings
from shared.runtime.state import RegionState
from shared.runtime.topology import (
    DEAD_LETTER_EXCHANGE,
    EXCHANGE,
    REJECTED,
    Keys,
    dead_letter_queue,
    service_queue,
)

Handler = Callable[[Any], Awaitable[None]]
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")


async def _raw(msg: StreamMessage[Any]) -> bytes:
    # Never let FastStream guess a body format: hostile input must reach our decoder.
    return msg.body


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
        self.log = configure_logging(name, self.region, settings.log_level)
        self.metrics = create_metrics()
        initialise(self.metrics, self.region)
        self.broker = RabbitBroker(
            settings.amqp_url,
            graceful_timeout=15.0,
            logger=None,
            middlewares=[RabbitPrometheusMiddleware(registry=self.metrics.registry, app_name=f"microte-{name}",
                                                    custom_labels={"region": self.region})],
        )
        # A blocking pool waits for a free connection instead of failing when many
        # handlers run at once (up to the prefetch count).
        pool = BlockingConnectionPool.from_url(settings.redis_url, max_connections=64, timeout=30,
                                               socket_timeout=30, health_check_interval=15)
        self.redis: Redis = Redis(connection_pool=pool)
        self.state = RegionState(self.redis, self.region)
        self._bindings: list[tuple[RabbitQueue, str]] = []
        self._background: list[Callable[[], Coroutine[Any, Any, None]]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._on_start: list[Callable[[], Awaitable[None]]] = []
        self._on_stop: list[Callable[[], Awaitable[None]]] = []

    # --- wiring ----------------------------------------------------------------------------

    def consume(
        self,
        keys: list[str],
        handlers: dict[type[Message], Handler],
        *,
        prefetch: int = 64,
        single_active: bool = False,
    ) -> None:
        """Subscribe this service's queue to ``keys``; route each message type to its handler."""
        queue = service_queue(self.region, self.name, keys[0], single_active=single_active)
        self._bindings += [(queue, key) for key in keys[1:]]

        @self.broker.subscriber(queue, EXCHANGE, ack_policy=AckPolicy.MANUAL,
                                channel=Channel(prefetch_count=prefetch), decoder=_raw)
        async def on_message(msg: RabbitMessage) -> None:
            await self._dispatch(msg, handlers)

    def background(self, loop: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """A loop started once consuming has begun, cancelled at shutdown."""
        self._background.append(loop)

    def on_start(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Runs before consuming starts; a failure stops the process."""
        self._on_start.append(hook)

    def on_stop(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Runs after consuming has stopped and in-flight messages are done."""
        self._on_stop.append(hook)

    async def _declare(self) -> None:
        await self.broker.connect()
        exchange = await self.broker.declare_exchange(EXCHANGE)
        dlx = await self.broker.declare_exchange(DEAD_LETTER_EXCHANGE)
        dead = await self.broker.declare_queue(dead_letter_queue(self.region))
        await dead.bind(dlx, routing_key=f"{self.region}.#", robust=True)
        for queue, key in self._bindings:
            declared = await self.broker.declare_queue(queue)
            await declared.bind(exchange, routing_key=key, robust=True)
        await self.redis.ping()
        for hook in self._on_start:
            await hook()

    # --- inbound ---------------------------------------------------------------------------

    async def _dispatch(self, msg: RabbitMessage, handlers: dict[type[Message], Handler]) -> None:
        body: bytes = msg.body
        try:
            message = decode(body)
        except Undecodable as exc:
            await self._refuse(msg, body, str(exc))
            return
        handler = handlers.get(type(message))
        if handler is None or message.region != self.region:
            why = "wrong_region" if handler is not None else f"unexpected {type(message).__name__}"
            await self.dead_letter(msg, why)
            return
        if not await self._identity_holds(msg, message):
            return
        context = {"message_id": msg.message_id, "message_type": type(message).__name__}
        if (pid := getattr(message, "participant_id", None)) is not None:
            context["participant_id"] = pid
        if isinstance(message, RoundStarted):
            context["round"] = str(message.current_round.start)
        elif isinstance(message, FinishRound):
            context["round"] = str(message.round_start)
        if (slot := getattr(message, "slot", None)) is not None:
            context["slot"] = f"{slot.start}-{slot.end}"
        with bind_context(**context):
            try:
                await handler(message)
            except Exception as exc:
                if msg.raw_message.redelivered:
                    self.log.exception("handler_failed_dead_lettered")
                    await self.dead_letter(msg, f"handler_error: {type(exc).__name__}")
                else:
                    self.log.exception("handler_failed_will_retry")
                    await msg.nack(requeue=True)
                return
        await msg.ack()

    async def _identity_holds(self, msg: RabbitMessage, message: Message) -> bool:
        """With broker identity, a request counts only from the user it names."""
        pid = getattr(message, "participant_id", None)
        if self.settings.identity != "broker_user" or pid is None or ".in." not in (msg.raw_message.routing_key or ""):
            return True
        user = msg.raw_message.user_id
        if user == pid:
            return True
        self.log.warning("identity_mismatch", claimed=pid, user=user)
        self.metrics.rejected_requests.labels(self.region, self.name, type(message).__name__, "identity_mismatch").inc()
        if user and _ID.match(user):
            # Answer the sender it really is, never the participant it claimed to be.
            await self.publish(Rejected(region=self.region, participant_id=user, request=type(message).__name__,
                                        reason="identity_mismatch",
                                        detail=f"connected as {user!r}, sent as {pid!r}"),
                               self.keys.to(user, REJECTED))
            await msg.ack()
        else:
            await self.dead_letter(msg, "identity_mismatch: no user_id")
        return False

    async def _refuse(self, msg: RabbitMessage, body: bytes, why: str) -> None:
        sender = sender_of(body)
        routing_key = msg.raw_message.routing_key or ""
        if sender is not None and ".in." in routing_key:
            pid, reference = sender
            self.log.warning("request_malformed", participant_id=pid, reason=why)
            self.metrics.rejected_requests.labels(self.region, self.name, "unknown", "malformed").inc()
            await self.publish(Rejected(region=self.region, participant_id=pid, request="unknown",
                                        reason="malformed", detail=why[:1000], reference=reference),
                               self.keys.to(pid, REJECTED))
            await msg.ack()
            return
        await self.dead_letter(msg, f"undecodable: {why}")

    async def dead_letter(self, msg: RabbitMessage, reason: str) -> None:
        """Park a message in the region's dead-letter queue, with why, then acknowledge it."""
        self.log.warning("dead_lettered", reason=reason, routing_key=msg.raw_message.routing_key)
        self.metrics.dead_letters.labels(self.region, self.name, reason.split(":")[0]).inc()
        await self.broker.publish(
            msg.body, exchange=DEAD_LETTER_EXCHANGE, routing_key=msg.raw_message.routing_key or self.region,
            persist=True, headers={"x-microte-reason": reason[:500], "x-microte-service": self.name},
            message_id=msg.message_id, content_type=msg.content_type or "application/octet-stream",
        )
        await msg.ack()

    # --- outbound --------------------------------------------------------------------------

    async def publish(self, message: Message, routing_key: str) -> None:
        """Persistent, confirmed. The id is the content's hash, so a replay is recognisable."""
        body = encode(message)
        message_id = hashlib.blake2b(body, digest_size=12).hexdigest()
        for _ in range(2 if self.settings.duplicate_delivery else 1):
            await self.broker.publish(body, exchange=EXCHANGE, routing_key=routing_key, persist=True,
                                      content_type=CONTENT_TYPE, message_id=message_id,
                                      timestamp=None, headers={"x-microte-service": self.name})

    async def publish_all(self, items: list[tuple[Message, str]]) -> None:
        await asyncio.gather(*(self.publish(m, k) for m, k in items))

    # --- the process -----------------------------------------------------------------------

    def app(self) -> AsgiFastStream:
        service = self

        @get
        async def health(scope: Any) -> AsgiResponse:
            try:
                ok = service.broker.running and await service.broker.ping(timeout=2.0)
                ok = ok and bool(await service.redis.ping())
            except Exception:
                ok = False
            return AsgiResponse(b"ok" if ok else b"unavailable", status_code=200 if ok else 503)

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
            self._tasks = [asyncio.create_task(loop()) for loop in self._background]
            self.log.info("service_started", port=self.port)

        @app.on_shutdown
        async def stop_background() -> None:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

        @app.after_shutdown
        async def close_redis() -> None:
            for hook in self._on_stop:
                await hook()
            await self.redis.aclose()
            self.log.info("service_stopped")

        return app


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
