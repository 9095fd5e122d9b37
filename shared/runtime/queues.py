"""Asking the broker about a queue: its ready messages and its consumers (a passive declare
on a connection of its own, opened on first use)."""

from __future__ import annotations

from dataclasses import dataclass

import aio_pika
import aio_pika.abc
import aio_pika.exceptions


@dataclass(frozen=True)
class QueueState:
    messages: int  # ready, not yet delivered
    consumers: int


class QueueInspector:
    def __init__(self, amqp_url: str) -> None:
        self.amqp_url = amqp_url
        self._connection: aio_pika.abc.AbstractRobustConnection | None = None

    async def states(self, names: list[str]) -> dict[str, QueueState | None]:
        """Each queue's state, or None for a queue that does not exist."""
        if self._connection is None or self._connection.is_closed:
            self._connection = await aio_pika.connect_robust(self.amqp_url)
        found: dict[str, QueueState | None] = {}
        for name in names:
            channel = await self._connection.channel()  # a missing queue closes its channel
            try:
                result = (await channel.declare_queue(name, passive=True)).declaration_result
                found[name] = QueueState(int(result.message_count or 0), int(result.consumer_count or 0))
            except aio_pika.exceptions.ChannelClosed:
                found[name] = None
            finally:
                if not channel.is_closed:
                    await channel.close()
        return found

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()
