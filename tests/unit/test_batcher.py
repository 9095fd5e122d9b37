"""The ledger-writer's group commit: one bad record fails only its own message."""

from __future__ import annotations

import asyncio
from decimal import Decimal

from services.ledger_writer.batcher import Batcher
from shared.runtime.ledger import ConstraintViolation, MemoryLedgerStore, RecordBatch, WriteResult
from tests.builders import REGION, order, reading


async def store_and_batcher() -> tuple[MemoryLedgerStore, Batcher, list[RecordBatch]]:
    store = MemoryLedgerStore()
    await store.open()
    committed: list[RecordBatch] = []

    async def after_commit(batch: RecordBatch, result: WriteResult, seconds: float) -> None:
        committed.append(batch)

    return store, Batcher(store, after_commit=after_commit, linger_s=0.05), committed


async def test_one_bad_record_fails_alone_and_the_others_of_its_batch_are_written() -> None:
    store, batcher, committed = await store_and_batcher()
    good = [RecordBatch(orders=[(REGION, order(f"o{i}", f"h{i}", "bid", 100, "0.1", seq=i))]) for i in range(5)]
    bad = RecordBatch(orders=[(REGION, order("bad", "h9", "bid", 100, Decimal("-1"), seq=9))])  # price < 0

    results = await asyncio.gather(*(batcher.write(b) for b in [*good[:2], bad, *good[2:]]), return_exceptions=True)

    assert [type(r) for r in results] == [type(None)] * 2 + [ConstraintViolation] + [type(None)] * 3
    assert sorted(o.order_id for o in await store.orders(REGION)) == [f"o{i}" for i in range(5)]
    assert len(committed) == 5  # the merged transaction failed; each good part went in on its own


async def test_a_batch_of_good_records_is_one_transaction() -> None:
    store, batcher, committed = await store_and_batcher()
    parts = [RecordBatch(readings=[(REGION, reading(f"h{i}", import_wh=i), 0)]) for i in range(10)]

    await asyncio.gather(*(batcher.write(p) for p in parts))

    assert len(committed) == 1
    assert len(await store.readings(REGION)) == 10


async def test_an_outage_fails_every_message_of_the_batch_so_that_each_is_kept_and_retried() -> None:
    store, batcher, committed = await store_and_batcher()

    class Away(ConnectionError):
        pass

    async def refuse(batch: RecordBatch) -> WriteResult:
        raise Away("database away")

    store.write = refuse  # type: ignore[method-assign]
    parts = [RecordBatch(readings=[(REGION, reading(f"h{i}"), 0)]) for i in range(3)]
    results = await asyncio.gather(*(batcher.write(p) for p in parts), return_exceptions=True)

    assert all(isinstance(r, Away) for r in results)
    assert committed == []
