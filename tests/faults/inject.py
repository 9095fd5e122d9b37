"""Fault and attack injectors for the fault suite: what a ``during`` hook does to a run.

A hook is ``async def hook(f: FaultContext) -> None``; it starts once the clock runs and
the simulation goes on beside it. For example::

    async def hook(f: FaultContext) -> None:
        await f.at_round(20)
        await f.down_for("matcher", 25)          # SIGTERM, 25 s down, start, healthy

    async def hook(f: FaultContext) -> None:
        await f.at_round(20)
        await f.servers.redis.arestart()         # the private Redis, not the shared one

Every wait polls a condition against a deadline; the only sleeps are the length of a
fault itself (how long a service or server stays down).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import aio_pika

from services.ensemble import Ensemble
from services.participants.community import Community
from shared.messages import CONTENT_TYPE, encode
from shared.messages import types as t
from shared.runtime.settings import Settings

if TYPE_CHECKING:
    from tests.faults.harness import Servers

NOT_MSGPACK = b"\xc1 this is not msgpack"


def rounds_started(community: Community) -> int:
    """Distinct rounds the households have started (a round start seen twice counts once)."""
    return max((len(p.played) for p in community.participants), default=0)


async def at_round(community: Community, n: int, timeout_s: float = 300.0) -> int:
    """Wait until round ``n`` (1-based) has started; the round count reached."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while (seen := rounds_started(community)) < n:
        if community.finished.is_set():
            raise AssertionError(f"the simulation ended after {seen} rounds, before round {n}")
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise TimeoutError(f"round {n} did not start within {timeout_s} s (at round {seen})")
        community.rounds_seen.clear()
        with contextlib.suppress(TimeoutError):  # woken at each round start; re-checked every half second
            await asyncio.wait_for(community.rounds_seen.wait(), timeout=min(0.5, remaining))
    return seen


async def wait_until(condition: Callable[[], bool | Awaitable[bool]], timeout_s: float, what: str,
                     every_s: float = 0.1) -> None:
    """Poll ``condition`` until it holds; TimeoutError naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if not isinstance(value, bool):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} within {timeout_s} s")
        await asyncio.sleep(every_s)


# --- Services ---------------------------------------------------------------------------


async def kill_service(ensemble: Ensemble, name: str, *, restart: bool = True) -> None:
    """SIGKILL a service (``matcher``, ``clock``, ``matcher#2``...); start it again at once."""
    await asyncio.to_thread(ensemble.kill, name)
    if restart:
        await start_service(ensemble, name)


async def stop_service(ensemble: Ensemble, name: str) -> int:
    """SIGTERM a service and wait for it to exit (without blocking the event loop)."""
    return await asyncio.to_thread(ensemble.stop, name)


async def start_service(ensemble: Ensemble, name: str, timeout_s: float = 60.0) -> None:
    ensemble.start(name)
    await ensemble.wait_healthy(name, timeout_s)


async def down_for(ensemble: Ensemble, name: str, seconds: float, *, how: str = "stop") -> None:
    """Take a service down (``how``: "stop" = SIGTERM, "kill" = SIGKILL) for ``seconds``."""
    if how == "kill":
        await kill_service(ensemble, name, restart=False)
    elif how == "stop":
        await stop_service(ensemble, name)
    else:
        raise ValueError(f"how must be 'stop' or 'kill', not {how!r}")
    await asyncio.sleep(seconds)  # the fault itself
    await start_service(ensemble, name)


# --- Messages ---------------------------------------------------------------------------


async def publish(amqp_url: str, routing_key: str, bodies: Iterable[bytes], *,
                  content_type: str = CONTENT_TYPE, user_id: str | None = None, persistent: bool = False,
                  batch: int = 2000) -> int:
    """Publish raw bodies on the ``microte`` exchange, ``batch`` at a time; how many were sent."""
    sent = 0
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=False)
        exchange = await channel.get_exchange("microte")
        mode = aio_pika.DeliveryMode.PERSISTENT if persistent else aio_pika.DeliveryMode.NOT_PERSISTENT
        pending: list[Awaitable[object]] = []
        for body in bodies:
            pending.append(exchange.publish(aio_pika.Message(body, content_type=content_type, user_id=user_id,
                                                             delivery_mode=mode), routing_key=routing_key))
            if len(pending) >= batch:
                await asyncio.gather(*pending)
                sent += len(pending)
                pending.clear()
        if pending:
            await asyncio.gather(*pending)
            sent += len(pending)
        # A round trip on the channel: everything before it has reached the broker.
        await channel.declare_queue(exclusive=True, auto_delete=True)
    return sent


async def publish_junk(amqp_url: str, routing_key: str, n: int, body: bytes = NOT_MSGPACK, **kw: object) -> int:
    """``n`` copies of ``body`` (undecodable by default) on ``routing_key``."""
    return await publish(amqp_url, routing_key, (body for _ in range(n)), **kw)  # type: ignore[arg-type]


async def send_as(amqp_url: str, region: str, kind: str, message: t.Message, *, user_id: str | None = None,
                  copies: int = 1) -> int:
    """A well-formed request on ``<region>.in.<kind>``, whoever it claims to come from (forgery)."""
    return await publish(amqp_url, f"{region}.in.{kind}", (encode(message) for _ in range(copies)),
                         user_id=user_id, persistent=True)


# --- The context a hook gets --------------------------------------------------------------


@dataclass
class FaultContext:
    """What a ``during`` hook may touch: the services, the community, the private servers."""

    ensemble: Ensemble
    community: Community
    servers: Servers
    settings: Settings
    env: dict[str, str]
    notes: list[str] = field(default_factory=list)  # what the hook did, for the test's messages

    @property
    def region(self) -> str:
        return self.settings.region

    @property
    def amqp_url(self) -> str:
        return self.settings.amqp_url

    @property
    def household_ids(self) -> list[str]:
        return [p.pid for p in self.community.participants]

    @property
    def round(self) -> int:
        return rounds_started(self.community)

    def note(self, text: str) -> None:
        self.notes.append(f"round {self.round}: {text}")

    async def at_round(self, n: int, timeout_s: float = 300.0) -> int:
        return await at_round(self.community, n, timeout_s)

    async def kill(self, service: str, *, restart: bool = True) -> None:
        self.note(f"SIGKILL {service}" + (", restarted" if restart else ""))
        await kill_service(self.ensemble, service, restart=restart)

    async def down_for(self, service: str, seconds: float, *, how: str = "stop") -> None:
        self.note(f"{service} down ({how}) for {seconds} s")
        await down_for(self.ensemble, service, seconds, how=how)

    async def junk(self, n: int, kind: str = "order", body: bytes = NOT_MSGPACK,
                   routing_key: str | None = None) -> int:
        """``n`` junk messages on ``<region>.in.<kind>`` (or ``routing_key``) of the private broker."""
        key = routing_key or f"{self.region}.in.{kind}"
        self.note(f"{n} junk messages on {key}")
        return await publish_junk(self.amqp_url, key, n, body)

    async def forge(self, kind: str, message: t.Message, *, user_id: str | None = None, copies: int = 1) -> int:
        """Send ``message`` (e.g. a SubmitOrder naming another household) on ``<region>.in.<kind>``."""
        self.note(f"forged {type(message).__name__} on {kind}")
        return await send_as(self.amqp_url, self.region, kind, message, user_id=user_id, copies=copies)

    async def server_down_for(self, which: str, seconds: float, *, how: str = "stop") -> None:
        """Take the private ``rabbit``, ``redis`` or ``postgres`` down for ``seconds``, then start it."""
        server = getattr(self.servers, which)
        self.note(f"{which} down ({how}) for {seconds} s")
        if how == "kill":
            await server.akill()
        else:
            await server.astop()
        await asyncio.sleep(seconds)  # the fault itself
        await server.astart()
