"""Ledger write throughput: the stores against a bare INSERT, on this machine.

Writes N ledger entries in batches (default 100,000 in batches of 500), one transaction
per batch, through ``SqliteLedgerStore`` and ``PostgresLedgerStore`` (both its write
paths), then writes them all again (every row a duplicate, as in a replay). Baselines in
the same run: a bare ``executemany`` INSERT without ON CONFLICT into a scratch table,
once with no keys or indexes (the floor) and once with the ledger's own keys and indexes
(so the difference from the store is the store itself: ON CONFLICT, type checks, row
building). Same durability everywhere: SQLite WAL + synchronous=FULL, PostgreSQL as the
server is configured. Each figure is the best of ``--repeat`` runs on a fresh table.

    .venv/bin/python bench/ledger_write.py [--rows 100000] [--batch 500] [--repeat 3] [--pg-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information

from shared.market import EntryKind, LedgerEntry, Slot, entry_id
from shared.runtime.ledger import PostgresLedgerStore, RecordBatch, SqliteLedgerStore
from shared.runtime.ledger import postgres as pg_schema
from shared.runtime.ledger import sqlite as sqlite_schema
from shared.runtime.ledger.rows import ENTRY_COLUMNS, entry_row

KINDS = (EntryKind.P2P, EntryKind.GRID_EXPORT, EntryKind.GRID_IMPORT, EntryKind.SELF_CONSUMPTION)
Step = Callable[[], Awaitable[int]]  # writes everything once, returns rows inserted


def make_entries(n: int) -> list[LedgerEntry]:
    """Entries shaped like a reconciled community: 50 per one-minute slot, 5-digit prices."""
    entries = []
    for i in range(n):
        slot = Slot(1_700_000_040 + 60 * (i // 50), 1_700_000_100 + 60 * (i // 50))
        kind, seller, buyer = KINDS[i % 4], f"p{i % 97}", f"p{(i * 7) % 89}"
        entries.append(
            LedgerEntry(
                entry_id=entry_id("bench", slot, kind, f"s{i}", seller, buyer, "solar"),
                region="bench",
                slot=slot,
                kind=kind,
                seller=seller,
                buyer=buyer,
                source="solar",
                quantity_wh=100 + i % 5000,
                buy_price=Decimal("0.10725"),
                sell_price=Decimal("0.1072"),
                settlement_id=f"s{i}",
                matched_at_ms=slot.start * 1000 - 60_000,
                delivered_at=slot.end,
            )
        )
    return entries


def chunks(rows: Sequence[LedgerEntry], size: int) -> list[Sequence[LedgerEntry]]:
    return [rows[i : i + size] for i in range(0, len(rows), size)]


class Bench:
    def __init__(self, rows: int, repeat: int) -> None:
        self.rows, self.repeat = rows, repeat

    async def measure(self, labels: Sequence[str], fresh: Callable[[], Awaitable[Sequence[Step]]]) -> None:
        """Best of ``repeat``: each run gets fresh targets, then runs its steps in order."""
        best = [0.0] * len(labels)
        inserted = [0] * len(labels)
        for _ in range(self.repeat):
            steps = await fresh()
            for i, step in enumerate(steps):
                started = time.perf_counter()
                inserted[i] = await step()
                best[i] = max(best[i], self.rows / (time.perf_counter() - started))
        for label, rate, n in zip(labels, best, inserted, strict=True):
            print(f"  {label:<62} {rate:>9,.0f} rows/s  ({n:,} inserted)")


def machine_info(pg_version: str) -> None:
    def first(path: str, prefix: str) -> str:
        lines = Path(path).read_text().splitlines()
        return next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith(prefix)), "?")

    mem_gib = int(first("/proc/meminfo", "MemTotal").split()[0]) / 1024**2
    print(f"machine   {platform.node()}: {platform.system()} {platform.release()} {platform.machine()}")
    print(f"cpu       {first('/proc/cpuinfo', 'model name')}, {os.cpu_count()} logical cores; memory {mem_gib:.1f} GiB")
    print("load      {:.2f} {:.2f} {:.2f} (1, 5, 15 min) at start".format(*os.getloadavg()))
    print(f"python    {sys.version.split()[0]}; sqlite {sqlite3.sqlite_version}; asyncpg {asyncpg.__version__}")
    print(f"postgres  {pg_version}")


async def bench_sqlite(bench: Bench, entries: list[LedgerEntry], batch: int, directory: Path) -> None:
    print(f"SQLite (WAL, synchronous=FULL, files in {directory})")
    batches = chunks(entries, batch)

    async def fresh_store() -> Sequence[Step]:
        path = directory / f"{uuid.uuid4().hex}.sqlite"
        store = SqliteLedgerStore(path)
        await store.open()

        async def write_all() -> int:
            return sum([(await store.write(RecordBatch(entries=b))).entries for b in batches])

        async def again_then_close() -> int:
            inserted = await write_all()
            await store.close()
            return inserted

        return write_all, again_then_close

    await bench.measure(
        [f"store.write, {batch}/batch, new rows", f"store.write, {batch}/batch, all duplicates"], fresh_store
    )

    # The baselines get their rows ready-made: only the INSERT and the commit are timed.
    # "No keys": the ledger's column types, no keys, no indexes, no constraints.
    heap = f"{sqlite_schema.SCHEMA}; CREATE TABLE scratch AS SELECT {', '.join(ENTRY_COLUMNS)} FROM ledger_entries;"
    prepared = [[tuple(str(v) if isinstance(v, Decimal) else v for v in entry_row(e)) for e in b] for b in batches]
    insert = f"({', '.join(ENTRY_COLUMNS)}) VALUES ({', '.join('?' * len(ENTRY_COLUMNS))})"

    def bare(schema: str, table: str) -> Callable[[], Awaitable[Sequence[Step]]]:
        async def fresh() -> Sequence[Step]:
            conn = sqlite3.connect(directory / f"{uuid.uuid4().hex}.sqlite", isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.executescript(schema)

            async def run() -> int:
                for rows in prepared:
                    conn.execute("BEGIN IMMEDIATE")
                    conn.executemany(f"INSERT INTO {table} {insert}", rows)
                    conn.execute("COMMIT")
                conn.close()
                return len(entries)

            return (run,)

        return fresh

    await bench.measure([f"baseline: bare executemany INSERT, no keys, {batch}/batch"], bare(heap, "scratch"))
    await bench.measure(
        [f"baseline: bare executemany INSERT, ledger's keys, {batch}/batch"],
        bare(sqlite_schema.SCHEMA, "ledger_entries"),
    )


async def bench_postgres(bench: Bench, entries: list[LedgerEntry], batch: int, url: str) -> None:
    print("PostgreSQL (one connection busy at a time)")
    batches = chunks(entries, batch)

    async def reset(conn: asyncpg.Connection) -> None:
        await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")

    for label, threshold in (("unnest", 10**9), ("COPY to temp table", 1)):

        async def fresh_store(threshold: int = threshold) -> Sequence[Step]:
            conn = await asyncpg.connect(url)
            await reset(conn)
            await conn.close()
            store = PostgresLedgerStore(url, copy_threshold=threshold)
            await store.open()

            async def write_all() -> int:
                return sum([(await store.write(RecordBatch(entries=b))).entries for b in batches])

            async def again_then_close() -> int:
                inserted = await write_all()
                await store.close()
                return inserted

            return write_all, again_then_close

        await bench.measure(
            [
                f"store.write via {label}, {batch}/batch, new rows",
                f"store.write via {label}, {batch}/batch, all duplicates",
            ],
            fresh_store,
        )

    prepared = [[entry_row(e) for e in b] for b in batches]
    columns = ", ".join(ENTRY_COLUMNS)
    values = ", ".join(f"${i}" for i in range(1, len(ENTRY_COLUMNS) + 1))

    def bare(schema: str, table: str, copy: bool = False) -> Callable[[], Awaitable[Sequence[Step]]]:
        async def fresh() -> Sequence[Step]:
            conn = await asyncpg.connect(url)
            await reset(conn)
            await conn.execute(schema)

            async def run() -> int:
                for rows in prepared:
                    async with conn.transaction():
                        if copy:
                            await conn.copy_records_to_table(table, records=rows, columns=ENTRY_COLUMNS)
                        else:
                            await conn.executemany(f"INSERT INTO {table} ({columns}) VALUES ({values})", rows)
                await conn.close()
                return len(entries)

            return (run,)

        return fresh

    # Same column types as the ledger, no keys, no indexes, no constraints.
    heap = f"{pg_schema.SCHEMA}; CREATE TABLE scratch AS SELECT {columns} FROM ledger_entries WITH NO DATA"
    await bench.measure([f"baseline: bare executemany INSERT, no keys, {batch}/batch"], bare(heap, "scratch"))
    await bench.measure(
        [f"baseline: bare executemany INSERT, ledger's keys, {batch}/batch"], bare(pg_schema.SCHEMA, "ledger_entries")
    )
    await bench.measure([f"reference: bare COPY, no keys, {batch}/batch"], bare(heap, "scratch", copy=True))


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()

    admin = await asyncpg.connect(args.pg_url)
    version = await admin.fetchval("SELECT version()")
    sync = await admin.fetchval("SHOW synchronous_commit")
    name = f"microte_bench_{uuid.uuid4().hex[:12]}"
    await admin.execute(f"CREATE DATABASE {name}")
    machine_info(f"{version.split(' on ')[0]}; synchronous_commit={sync}")
    entries = make_entries(args.rows)
    bench = Bench(args.rows, args.repeat)
    print(
        f"workload  {args.rows:,} ledger entries, {args.batch} per batch, one transaction per batch, "
        f"best of {args.repeat}\n"
    )
    try:
        with tempfile.TemporaryDirectory(prefix="microte-bench-") as tmp:
            await bench_sqlite(bench, entries, args.batch, Path(tmp))
        await bench_postgres(bench, entries, args.batch, urlsplit(args.pg_url)._replace(path=f"/{name}").geturl())
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
