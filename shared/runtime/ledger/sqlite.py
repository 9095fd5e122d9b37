"""The ledger in one SQLite file (stdlib ``sqlite3``, no extra dependency).

One connection, used only from one dedicated worker thread and serialised by an
``asyncio.Lock``, so the event loop never blocks on disk. WAL journal with
``synchronous=FULL``: a write returns only after its commit is on disk. Each batch is one
``BEGIN IMMEDIATE ... COMMIT`` (the write lock is taken up front, so two processes on the
same file queue instead of failing half-way). Prices are TEXT holding the exact decimal;
the tables are STRICT so no REAL ever lands in them.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import TypeVar

from shared.market.ledger import LedgerEntry
from shared.market.matching import Settlement
from shared.market.orders import Order
from shared.market.reconciliation import Reading
from shared.market.timing import Slot
from shared.runtime.ledger import rows
from shared.runtime.ledger.base import (
    ENTRY_KINDS,
    SCHEMA_VERSION,
    ConstraintViolation,
    HeldSlot,
    RecordBatch,
    StoreNotOpen,
    WriteResult,
    check_types,
    current_members,
    current_registrations,
)

T = TypeVar("T")

_KINDS = ", ".join(f"'{k}'" for k in ENTRY_KINDS)
# Added after the first ledgers were written: a ledger without them gets them on opening.
_ENTRY_TRUE_UP_COLUMNS = (("revision", "INTEGER NOT NULL DEFAULT 0 CHECK (revision >= 0)"),
                          ("reverses", "INTEGER NOT NULL DEFAULT 0 CHECK (reverses IN (0, 1))"))

# Keep in step with docs/ledger-schema.md and postgres.py.
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS schema_version (
    version      INTEGER PRIMARY KEY,
    description  TEXT    NOT NULL
) STRICT;

CREATE TABLE IF NOT EXISTS regions (
    region       TEXT    PRIMARY KEY
) STRICT;

CREATE TABLE IF NOT EXISTS region_settings (
    region       TEXT    PRIMARY KEY,
    settings     TEXT    NOT NULL     -- JSON: the MICROTE_* market settings it runs with
) STRICT;

CREATE TABLE IF NOT EXISTS region_community (
    region       TEXT    PRIMARY KEY,
    community    TEXT    NOT NULL     -- JSON: a simulated region's households and what they own
) STRICT;

CREATE TABLE IF NOT EXISTS ledger_entries (
    inserted_seq  INTEGER PRIMARY KEY AUTOINCREMENT,  -- order of insertion; the rowid
    entry_id      TEXT    NOT NULL UNIQUE,            -- deterministic key
    region        TEXT    NOT NULL,
    slot_start    INTEGER NOT NULL,
    slot_end      INTEGER NOT NULL CHECK (slot_end > slot_start),
    kind          TEXT    NOT NULL CHECK (kind IN ({_KINDS})),
    seller        TEXT    NOT NULL,
    buyer         TEXT    NOT NULL,
    source        TEXT    NOT NULL,
    quantity_wh   INTEGER NOT NULL CHECK (quantity_wh >= 0),
    buy_price     TEXT    NOT NULL CHECK (substr(buy_price, 1, 1) <> '-'),
    sell_price    TEXT    NOT NULL CHECK (substr(sell_price, 1, 1) <> '-'),
    settlement_id TEXT,
    matched_at_ms INTEGER,
    delivered_at  INTEGER NOT NULL,
    {_ENTRY_TRUE_UP_COLUMNS[0][0]} {_ENTRY_TRUE_UP_COLUMNS[0][1]},
    {_ENTRY_TRUE_UP_COLUMNS[1][0]} {_ENTRY_TRUE_UP_COLUMNS[1][1]}
) STRICT;
CREATE INDEX IF NOT EXISTS ledger_entries_by_slot ON ledger_entries (region, slot_start, slot_end, inserted_seq);

CREATE TABLE IF NOT EXISTS orders (
    region          TEXT    NOT NULL,
    order_id        TEXT    NOT NULL,
    client_order_id TEXT    NOT NULL,
    participant_id  TEXT    NOT NULL,
    side            TEXT    NOT NULL CHECK (side IN ('bid', 'ask')),
    quantity_wh     INTEGER NOT NULL CHECK (quantity_wh > 0),
    price           TEXT    NOT NULL CHECK (substr(price, 1, 1) <> '-'),
    source          TEXT    NOT NULL,
    slot_start      INTEGER NOT NULL,
    slot_end        INTEGER NOT NULL CHECK (slot_end > slot_start),
    seq             INTEGER NOT NULL,
    submitted_at_ms INTEGER NOT NULL,
    PRIMARY KEY (region, order_id)
) STRICT;

CREATE TABLE IF NOT EXISTS settlements (
    inserted_seq  INTEGER PRIMARY KEY AUTOINCREMENT,
    region        TEXT    NOT NULL,
    settlement_id TEXT    NOT NULL,
    slot_start    INTEGER NOT NULL,
    slot_end      INTEGER NOT NULL CHECK (slot_end > slot_start),
    source        TEXT    NOT NULL,
    buyer         TEXT    NOT NULL,
    seller        TEXT    NOT NULL,
    bid_id        TEXT    NOT NULL,
    ask_id        TEXT    NOT NULL,
    quantity_wh   INTEGER NOT NULL CHECK (quantity_wh > 0),
    buy_price     TEXT    NOT NULL CHECK (substr(buy_price, 1, 1) <> '-'),
    sell_price    TEXT    NOT NULL CHECK (substr(sell_price, 1, 1) <> '-'),
    matched_at_ms INTEGER NOT NULL,
    UNIQUE (region, settlement_id)
) STRICT;
CREATE INDEX IF NOT EXISTS settlements_by_slot ON settlements (region, slot_start, slot_end, inserted_seq);

CREATE TABLE IF NOT EXISTS meter_readings (
    region           TEXT    NOT NULL,
    participant_id   TEXT    NOT NULL,
    slot_start       INTEGER NOT NULL,
    slot_end         INTEGER NOT NULL CHECK (slot_end > slot_start),
    import_wh        INTEGER NOT NULL CHECK (import_wh >= 0),
    export_wh        TEXT    NOT NULL CHECK (json_type(export_wh) = 'object'),
    self_consumed_wh TEXT    NOT NULL CHECK (json_type(self_consumed_wh) = 'object'),
    received_at_ms   INTEGER NOT NULL,
    PRIMARY KEY (region, participant_id, slot_start, slot_end)
) STRICT;

CREATE TABLE IF NOT EXISTS reconciled_slots (
    region       TEXT    NOT NULL,
    slot_start   INTEGER NOT NULL,
    slot_end     INTEGER NOT NULL CHECK (slot_end > slot_start),
    entry_count  INTEGER NOT NULL CHECK (entry_count >= 0),
    PRIMARY KEY (region, slot_start, slot_end)
) STRICT;

CREATE TABLE IF NOT EXISTS slot_adjustments (  -- a true-up revision of a reconciled slot
    region          TEXT    NOT NULL,
    slot_start      INTEGER NOT NULL,
    slot_end        INTEGER NOT NULL CHECK (slot_end > slot_start),
    revision        INTEGER NOT NULL CHECK (revision >= 1),
    participant_id  TEXT    NOT NULL,  -- whose late reading it adjusts for
    entry_count     INTEGER NOT NULL CHECK (entry_count >= 0),
    PRIMARY KEY (region, slot_start, slot_end, revision)
) STRICT;

CREATE TABLE IF NOT EXISTS final_slots (  -- a slot whose true-up window closed
    region       TEXT    NOT NULL,
    slot_start   INTEGER NOT NULL,
    slot_end     INTEGER NOT NULL CHECK (slot_end > slot_start),
    revisions    INTEGER NOT NULL CHECK (revisions >= 0),
    PRIMARY KEY (region, slot_start, slot_end)
) STRICT;

CREATE TABLE IF NOT EXISTS held_slots (
    region       TEXT    NOT NULL,
    slot_start   INTEGER NOT NULL,
    slot_end     INTEGER NOT NULL CHECK (slot_end > slot_start),
    stage        TEXT    NOT NULL CHECK (stage IN ('clearing', 'reconciliation')),
    error        TEXT    NOT NULL,  -- why the services could not go on with the slot
    PRIMARY KEY (region, slot_start, slot_end)
) STRICT;

CREATE TABLE IF NOT EXISTS rounds (
    region         TEXT    NOT NULL,
    round_start    INTEGER NOT NULL,
    fence          INTEGER NOT NULL,
    started_at_ms  INTEGER NOT NULL,
    PRIMARY KEY (region, round_start, fence)
) STRICT;

CREATE TABLE IF NOT EXISTS membership_events (
    region          TEXT    NOT NULL,
    participant_id  TEXT    NOT NULL,
    event           TEXT    NOT NULL CHECK (event IN ('joined', 'left')),
    at_ms           INTEGER NOT NULL,
    PRIMARY KEY (region, participant_id, event, at_ms)
) STRICT;

CREATE TABLE IF NOT EXISTS agent_registrations (
    region          TEXT    NOT NULL,
    participant_id  TEXT    NOT NULL,
    agent           TEXT    NOT NULL,  -- the aggregator the participant named when it joined
    joined_at_ms    INTEGER NOT NULL,
    PRIMARY KEY (region, participant_id, joined_at_ms)
) STRICT;

CREATE TABLE IF NOT EXISTS connection_registrations (
    region          TEXT    NOT NULL,
    participant_id  TEXT    NOT NULL,
    import_w        INTEGER CHECK (import_w >= 0),  -- the connection the member was held to from
    export_w        INTEGER CHECK (export_w >= 0),  -- this join, in W; NULL: no limit
    joined_at_ms    INTEGER NOT NULL,
    PRIMARY KEY (region, participant_id, joined_at_ms)
) STRICT;

CREATE TABLE IF NOT EXISTS order_cancellations (
    region       TEXT    NOT NULL,
    order_id     TEXT    NOT NULL,  -- an order cancelled before its slot's gate closed
    slot_start   INTEGER NOT NULL,
    slot_end     INTEGER NOT NULL CHECK (slot_end > slot_start),
    PRIMARY KEY (region, order_id)
) STRICT;

INSERT INTO schema_version (version, description)
VALUES ({SCHEMA_VERSION}, 'ledger_entries, orders, order_cancellations, settlements, meter_readings, reconciled_slots')
ON CONFLICT DO NOTHING;
"""


def _insert(table: str, columns: Sequence[str]) -> str:
    marks = ", ".join("?" * len(columns))
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks}) ON CONFLICT DO NOTHING"


_INSERT_REGION = "INSERT INTO regions (region) VALUES (?) ON CONFLICT DO NOTHING"
_INSERT_ORDER = _insert("orders", rows.ORDER_COLUMNS)
_INSERT_SETTLEMENT = _insert("settlements", rows.SETTLEMENT_COLUMNS)
_INSERT_READING = _insert("meter_readings", rows.READING_COLUMNS)
_INSERT_ENTRY = _insert("ledger_entries", rows.ENTRY_COLUMNS)
_INSERT_RECONCILED = _insert("reconciled_slots", rows.RECONCILED_COLUMNS)
_INSERT_ADJUSTED = _insert("slot_adjustments", rows.ADJUSTED_COLUMNS)
_INSERT_FINALIZED = _insert("final_slots", rows.FINALIZED_COLUMNS)
_INSERT_CANCELLATION = _insert("order_cancellations", rows.CANCELLATION_COLUMNS)
_INSERT_HELD = _insert("held_slots", rows.HELD_COLUMNS)
_INSERT_ROUND = _insert("rounds", rows.ROUND_COLUMNS)
_INSERT_MEMBERSHIP = _insert("membership_events", rows.MEMBERSHIP_COLUMNS)
_INSERT_AGENT = _insert("agent_registrations", rows.AGENT_COLUMNS)
_INSERT_CONNECTION = _insert("connection_registrations", rows.CONNECTION_COLUMNS)
_INSERT_SETTINGS = _insert("region_settings", ("region", "settings"))
_INSERT_COMMUNITY = _insert("region_community", ("region", "community"))


def _priced(row: rows.Row, prices: tuple[int, ...]) -> rows.Row:
    """The row with its Decimal prices as their exact text."""
    values = list(row)
    for i in prices:
        price = values[i]
        assert isinstance(price, Decimal)
        values[i] = str(price)
    return tuple(values)


class SqliteLedgerStore:
    def __init__(self, path: str | Path, *, busy_timeout_s: float = 30.0) -> None:
        self._path = Path(path)
        self._busy_timeout_s = busy_timeout_s
        self._conn: sqlite3.Connection | None = None
        self._thread: ThreadPoolExecutor | None = None
        self._lock = asyncio.Lock()

    @property
    def path(self) -> Path:
        return self._path

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        async with self._lock:
            conn, thread = self._conn, self._thread
            if conn is None or thread is None:
                raise StoreNotOpen("the ledger store is not open")
            return await asyncio.get_running_loop().run_in_executor(thread, fn, conn)

    async def open(self) -> None:
        async with self._lock:
            if self._conn is not None:
                return
            thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-sqlite")
            try:
                self._conn = await asyncio.get_running_loop().run_in_executor(thread, self._connect)
            except BaseException:
                thread.shutdown(wait=False)
                raise
            self._thread = thread

    def _connect(self) -> sqlite3.Connection:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: no implicit transactions; each write says BEGIN IMMEDIATE.
        conn = sqlite3.connect(self._path, timeout=self._busy_timeout_s, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.executescript(f"BEGIN IMMEDIATE;{SCHEMA}")
            try:
                have = {str(r[1]) for r in conn.execute("PRAGMA table_info(ledger_entries)")}
                for column, declared in _ENTRY_TRUE_UP_COLUMNS:
                    if column not in have:
                        conn.execute(f"ALTER TABLE ledger_entries ADD COLUMN {column} {declared}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            (version,) = conn.execute("SELECT max(version) FROM schema_version").fetchone()
            if version != SCHEMA_VERSION:
                raise RuntimeError(f"{self._path} has ledger schema {version}; this code knows {SCHEMA_VERSION}")
        except BaseException:
            conn.close()
            raise
        return conn

    async def close(self) -> None:
        async with self._lock:
            conn, thread = self._conn, self._thread
            self._conn = self._thread = None
            if conn is not None and thread is not None:
                await asyncio.get_running_loop().run_in_executor(thread, conn.close)
                thread.shutdown(wait=True)

    async def ping(self) -> bool:
        return bool(await self._run(lambda conn: conn.execute("SELECT 1").fetchone()))

    async def write(self, batch: RecordBatch) -> WriteResult:
        if self._conn is None:
            raise StoreNotOpen("the ledger store is not open")
        check_types(batch)
        tables = (
            (_INSERT_REGION, [(r,) for r in sorted(batch.regions())]),
            (_INSERT_ORDER, [_priced(rows.order_row(r, o), rows.ORDER_PRICES) for r, o in batch.orders]),
            (_INSERT_SETTLEMENT, [_priced(rows.settlement_row(s), rows.SETTLEMENT_PRICES) for s in batch.settlements]),
            (_INSERT_READING, [rows.reading_row(*r) for r in batch.readings]),
            (_INSERT_ENTRY, [_priced(rows.entry_row(e), rows.ENTRY_PRICES) for e in batch.entries]),
            (_INSERT_RECONCILED, [rows.reconciled_row(*r) for r in batch.reconciled]),
            (_INSERT_CANCELLATION, [rows.cancellation_row(*c) for c in batch.cancellations]),
            (_INSERT_HELD, [rows.held_row(*h) for h in batch.held]),
            (_INSERT_ROUND, list(batch.rounds)),
            (_INSERT_MEMBERSHIP, list(batch.memberships)),
            (_INSERT_AGENT, list(batch.agents)),
            (_INSERT_CONNECTION, list(batch.connections)),
            (_INSERT_ADJUSTED, [rows.adjusted_row(*a) for a in batch.adjusted]),
            (_INSERT_FINALIZED, [rows.finalized_row(*f) for f in batch.finalized]),
            (_INSERT_SETTINGS, list(batch.market_settings)),
            (_INSERT_COMMUNITY, list(batch.communities)),
        )

        def transaction(conn: sqlite3.Connection) -> list[int]:
            inserted = []
            conn.execute("BEGIN IMMEDIATE")
            try:
                for sql, values in tables:
                    before = conn.total_changes
                    if values:
                        conn.executemany(sql, values)
                    inserted.append(conn.total_changes - before)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return inserted

        try:
            counts = await self._run(transaction)
        except sqlite3.IntegrityError as exc:
            raise ConstraintViolation(f"sqlite refused the batch: {exc}") from exc
        (_, orders, settlements, readings, entries, reconciled, cancellations, held, rounds_, members, agents,
         connections, adjusted, finalized, *_) = counts
        return WriteResult(entries, orders, settlements, readings, reconciled, cancellations, held, rounds_, members,
                           agents, connections, adjusted, finalized)

    async def _select(self, sql: str, *params: object) -> list[tuple[object, ...]]:
        return await self._run(lambda conn: conn.execute(sql, params).fetchall())

    async def entries(self, region: str, start: int | None = None, end: int | None = None) -> list[LedgerEntry]:
        where, params = "region = ?", list[object]([region])
        if start is not None:
            where, params = f"{where} AND slot_start >= ?", [*params, start]
        if end is not None:
            where, params = f"{where} AND slot_end <= ?", [*params, end]
        found = await self._select(
            f"SELECT {', '.join(rows.ENTRY_COLUMNS)} FROM ledger_entries WHERE {where}"
            " ORDER BY slot_start, slot_end, inserted_seq",
            *params,
        )
        return [rows.entry_from(row) for row in found]

    async def orders(self, region: str) -> list[Order]:
        found = await self._select(
            f"SELECT {', '.join(rows.ORDER_COLUMNS)} FROM orders WHERE region = ?"
            " ORDER BY slot_start, slot_end, seq, order_id",
            region,
        )
        return [rows.order_from(row) for row in found]

    async def settlements(self, region: str) -> list[Settlement]:
        found = await self._select(
            f"SELECT {', '.join(rows.SETTLEMENT_COLUMNS)} FROM settlements WHERE region = ?"
            " ORDER BY slot_start, slot_end, inserted_seq",
            region,
        )
        return [rows.settlement_from(row) for row in found]

    async def readings(self, region: str) -> list[Reading]:
        found = await self._select(
            f"SELECT {', '.join(rows.READING_COLUMNS)} FROM meter_readings WHERE region = ?"
            " ORDER BY slot_start, slot_end, participant_id",
            region,
        )
        return [rows.reading_from(row) for row in found]

    async def reconciled_slots(self, region: str) -> list[Slot]:
        found = await self._select(
            "SELECT slot_start, slot_end FROM reconciled_slots WHERE region = ? ORDER BY slot_start, slot_end",
            region,
        )
        return [Slot(rows.as_int(start), rows.as_int(end)) for start, end in found]

    async def adjustments(self, region: str) -> list[tuple[Slot, int, str]]:
        found = await self._select("SELECT slot_start, slot_end, revision, participant_id FROM slot_adjustments "
                                 "WHERE region = ? ORDER BY slot_start, slot_end, revision", region)
        return [(Slot(rows.as_int(r[0]), rows.as_int(r[1])), rows.as_int(r[2]), str(r[3])) for r in found]

    async def final_slots(self, region: str) -> list[tuple[Slot, int]]:
        found = await self._select("SELECT slot_start, slot_end, revisions FROM final_slots WHERE region = ? "
                                 "ORDER BY slot_start, slot_end", region)
        return [(Slot(rows.as_int(r[0]), rows.as_int(r[1])), rows.as_int(r[2])) for r in found]

    async def held_slots(self, region: str) -> list[HeldSlot]:
        found = await self._select(
            "SELECT slot_start, slot_end, stage, error FROM held_slots WHERE region = ? ORDER BY slot_start, slot_end",
            region,
        )
        return [HeldSlot(Slot(rows.as_int(r[0]), rows.as_int(r[1])), str(r[2]), str(r[3])) for r in found]

    async def rounds(self, region: str) -> list[tuple[int, int]]:
        found = await self._select("SELECT round_start, fence FROM rounds WHERE region = ? ORDER BY round_start, fence",
                                   region)
        return [(rows.as_int(r[0]), rows.as_int(r[1])) for r in found]

    async def members(self, region: str) -> list[str]:
        found = await self._select("SELECT participant_id, event, at_ms FROM membership_events WHERE region = ?",
                                   region)
        return current_members((str(r[0]), str(r[1]), rows.as_int(r[2])) for r in found)

    async def agents(self, region: str) -> dict[str, str]:
        events = await self._select("SELECT participant_id, event, at_ms FROM membership_events WHERE region = ?",
                                    region)
        named = await self._select("SELECT participant_id, agent, joined_at_ms FROM agent_registrations "
                                   "WHERE region = ?", region)
        return current_registrations(((str(r[0]), str(r[1]), rows.as_int(r[2])) for r in events),
                                     ((str(r[0]), str(r[1]), rows.as_int(r[2])) for r in named))

    async def connections(self, region: str) -> dict[str, tuple[int | None, int | None]]:
        events = await self._select("SELECT participant_id, event, at_ms FROM membership_events WHERE region = ?",
                                    region)
        held = await self._select("SELECT participant_id, import_w, export_w, joined_at_ms FROM "
                                  "connection_registrations WHERE region = ?", region)
        return current_registrations(((str(r[0]), str(r[1]), rows.as_int(r[2])) for r in events),
                                     ((str(r[0]), (rows.as_int_or_none(r[1]), rows.as_int_or_none(r[2])),
                                       rows.as_int(r[3])) for r in held))

    async def regions(self) -> list[str]:
        return [str(r) for (r,) in await self._select("SELECT region FROM regions ORDER BY region")]

    async def market_settings(self, region: str) -> str | None:
        found = await self._select("SELECT settings FROM region_settings WHERE region = ?", region)
        return str(found[0][0]) if found else None

    async def community(self, region: str) -> str | None:
        found = await self._select("SELECT community FROM region_community WHERE region = ?", region)
        return str(found[0][0]) if found else None

    async def cancelled_orders(self, region: str) -> list[str]:
        found = await self._select(
            "SELECT order_id FROM order_cancellations WHERE region = ? ORDER BY slot_start, slot_end, order_id",
            region,
        )
        return [str(oid) for (oid,) in found]
