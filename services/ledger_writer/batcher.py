"""Group commit: many messages' records go into one transaction; each message is
acknowledged only after the transaction holding its records has committed.

When a merged transaction fails on its data (not because the database is away), each
message's records are written again on their own, so one bad record fails only its
own message and never takes the other households' records with it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, fields

from shared.runtime.ledger import LedgerStore, RecordBatch, WriteResult
from shared.runtime.outages import is_outage


@dataclass
class _Pending:
    parts: list[RecordBatch] = field(default_factory=list)
    waiters: list[asyncio.Future[None]] = field(default_factory=list)
    rows: int = 0


def _rows(batch: RecordBatch) -> int:
    return sum(len(getattr(batch, f.name)) for f in fields(batch))


def merge(parts: list[RecordBatch]) -> RecordBatch:
    return RecordBatch(**{f.name: [x for p in parts for x in getattr(p, f.name)] for f in fields(RecordBatch)})


class Batcher:
    def __init__(
        self,
        store: LedgerStore,
        *,
        after_commit: Callable[[RecordBatch, WriteResult, float], Awaitable[None]],
        max_rows: int = 2000,
        linger_s: float = 0.01,
    ) -> None:
        self.store = store
        self.after_commit = after_commit
        self.max_rows = max_rows
        self.linger_s = linger_s
        self._pending = _Pending()
        self._flushing = asyncio.Lock()
        self._timer: asyncio.TimerHandle | None = None
        self._flushes: set[asyncio.Future[None]] = set()

    @property
    def backlog(self) -> int:
        return self._pending.rows

    async def write(self, batch: RecordBatch) -> None:
        """Returns once ``batch`` is committed; raises if its transaction failed."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        pending = self._pending
        pending.parts.append(batch)
        pending.waiters.append(done)
        pending.rows += _rows(batch)
        if pending.rows >= self.max_rows:
            self._start_flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.linger_s, self._start_flush)
        await done

    def _start_flush(self) -> None:
        task = asyncio.ensure_future(self.flush())
        self._flushes.add(task)  # keep a reference until it is done
        task.add_done_callback(self._flushes.discard)

    async def flush(self) -> None:
        async with self._flushing:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            pending, self._pending = self._pending, _Pending()
            if not pending.waiters:
                return
            try:
                await self._commit(merge(pending.parts))
            except Exception as exc:
                if is_outage(exc) or len(pending.parts) == 1:
                    _resolve(pending.waiters, exc)
                    return
                for part, waiter in zip(pending.parts, pending.waiters, strict=True):
                    try:
                        await self._commit(part)
                    except Exception as own:
                        _resolve([waiter], own)
                    else:
                        _resolve([waiter], None)
                return
            _resolve(pending.waiters, None)

    async def _commit(self, batch: RecordBatch) -> None:
        started = time.perf_counter()
        result = await self.store.write(batch)
        await self.after_commit(batch, result, time.perf_counter() - started)


def _resolve(waiters: list[asyncio.Future[None]], error: BaseException | None) -> None:
    for waiter in waiters:
        if waiter.done():
            continue
        if error is None:
            waiter.set_result(None)
        else:
            waiter.set_exception(error)
