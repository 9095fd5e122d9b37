"""The ledger in PostgreSQL (asyncpg pool).

Each batch is one transaction. A table's rows go in with one statement that skips rows
whose key is stored (``INSERT ... SELECT ... ORDER BY ord ON CONFLICT DO NOTHING``),
fed either by ``unnest`` of one array per column or, from ``copy_threshold`` rows on,
by a binary COPY into a temporary table dropped at commit (COPY alone cannot skip
conflicts). Measured here with synchronous_commit on (bench/ledger_write.py), unnest is
as fast or faster up to about 2,000 rows a table: below that, creating the temporary
table costs more than COPY saves. ``ORDER BY ord`` makes ``inserted_seq`` follow the
order the rows were given in. Prices are NUMERIC, meter maps JSONB of integers.
A deadlock or serialization failure between concurrent writers rolls the whole batch
back; the batch is idempotent, so it is simply run again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information

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
    InvalidRecord,
    RecordBatch,
    StoreNotOpen,
    WriteResult,
    check_types,
    current_members,
    current_registrations,
)

_KINDS = ", ".join(f"'{k}'" for k in ENTRY_KINDS)
_SCHEMA_LOCK = 0x6D6963726F7465  # pg_advisory_xact_lock key: "microte"

# Keep in step with docs/ledger-schema.md and sqlite.py.
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS schema_version (
    version      integer PRIMARY KEY,
    description  text    NOT NULL
);

CREATE TABLE IF NOT EXISTS regions (
    region       text    PRIMARY KEY
);

CREATE TABLE IF NOT EXISTS region_settings (
    region       text    PRIMARY KEY,
    settings     text    NOT NULL  -- JSON: the MICROTE_* market settings it runs with
);

CREATE TABLE IF NOT EXISTS region_community (
    region       text    PRIMARY KEY,
    community    text    NOT NULL  -- JSON: a simulated region's households and what they own
);

CREATE TABLE IF NOT EXISTS ledger_entries (
    entry_id      text    PRIMARY KEY,                         -- deterministic key
    inserted_seq  bigint  NOT NULL GENERATED ALWAYS AS IDENTITY, -- order of insertion
    region        text    NOT NULL,
    slot_start    bigint  NOT NULL,
    slot_end      bigint  NOT NULL CHECK (slot_end > slot_start),
    kind          text    NOT NULL CHECK (kind IN ({_KINDS})),
    seller        text    NOT NULL,
    buyer         text    NOT NULL,
    source        text    NOT NULL,
    quantity_wh   bigint  NOT NULL CHECK (quantity_wh >= 0),
    buy_price     numeric NOT NULL CHECK (buy_price >= 0),
    sell_price    numeric NOT NULL CHECK (sell_price >= 0),
    settlement_id text,
    matched_at_ms bigint,
    delivered_at  bigint  NOT NULL,
    revision      integer NOT NULL DEFAULT 0 CHECK (revision >= 0),
    reverses      boolean NOT NULL DEFAULT false
);
CREATE INDEX IF NOT EXISTS ledger_entries_by_slot ON ledger_entries (region, slot_start, slot_end, inserted_seq);

CREATE TABLE IF NOT EXISTS orders (
    region          text    NOT NULL,
    order_id        text    NOT NULL,
    client_order_id text    NOT NULL,
    participant_id  text    NOT NULL,
    side            text    NOT NULL CHECK (side IN ('bid', 'ask')),
    quantity_wh     bigint  NOT NULL CHECK (quantity_wh > 0),
    price           numeric NOT NULL CHECK (price >= 0),
    source          text    NOT NULL,
    slot_start      bigint  NOT NULL,
    slot_end        bigint  NOT NULL CHECK (slot_end > slot_start),
    seq             bigint  NOT NULL,
    submitted_at_ms bigint  NOT NULL,
    PRIMARY KEY (region, order_id)
);

CREATE TABLE IF NOT EXISTS settlements (
    region        text    NOT NULL,
    settlement_id text    NOT NULL,
    inserted_seq  bigint  NOT NULL GENERATED ALWAYS AS IDENTITY,
    slot_start    bigint  NOT NULL,
    slot_end      bigint  NOT NULL CHECK (slot_end > slot_start),
    source        text    NOT NULL,
    buyer         text    NOT NULL,
    seller        text    NOT NULL,
    bid_id        text    NOT NULL,
    ask_id        text    NOT NULL,
    quantity_wh   bigint  NOT NULL CHECK (quantity_wh > 0),
    buy_price     numeric NOT NULL CHECK (buy_price >= 0),
    sell_price    numeric NOT NULL CHECK (sell_price >= 0),
    matched_at_ms bigint  NOT NULL,
    PRIMARY KEY (region, settlement_id)
);
CREATE INDEX IF NOT EXISTS settlements_by_slot ON settlements (region, slot_start, slot_end, inserted_seq);

CREATE TABLE IF NOT EXISTS meter_readings (
    region           text   NOT NULL,
    participant_id   text   NOT NULL,
    slot_start       bigint NOT NULL,
    slot_end         bigint NOT NULL CHECK (slot_end > slot_start),
    import_wh        bigint NOT NULL CHECK (import_wh >= 0),
    export_wh        jsonb  NOT NULL CHECK (jsonb_typeof(export_wh) = 'object'),
    self_consumed_wh jsonb  NOT NULL CHECK (jsonb_typeof(self_consumed_wh) = 'object'),
    received_at_ms   bigint NOT NULL,
    PRIMARY KEY (region, participant_id, slot_start, slot_end)
);

CREATE TABLE IF NOT EXISTS reconciled_slots (
    region       text    NOT NULL,
    slot_start   bigint  NOT NULL,
    slot_end     bigint  NOT NULL CHECK (slot_end > slot_start),
    entry_count  integer NOT NULL CHECK (entry_count >= 0),
    PRIMARY KEY (region, slot_start, slot_end)
);

CREATE TABLE IF NOT EXISTS slot_adjustments (  -- a true-up revision of a reconciled slot
    region          text    NOT NULL,
    slot_start      bigint  NOT NULL,
    slot_end        bigint  NOT NULL CHECK (slot_end > slot_start),
    revision        integer NOT NULL CHECK (revision >= 1),
    participant_id  text    NOT NULL,  -- whose late reading it adjusts for
    entry_count     integer NOT NULL CHECK (entry_count >= 0),
    PRIMARY KEY (region, slot_start, slot_end, revision)
);

CREATE TABLE IF NOT EXISTS final_slots (  -- a slot whose true-up window closed
    region       text    NOT NULL,
    slot_start   bigint  NOT NULL,
    slot_end     bigint  NOT NULL CHECK (slot_end > slot_start),
    revisions    integer NOT NULL CHECK (revisions >= 0),
    PRIMARY KEY (region, slot_start, slot_end)
);

CREATE TABLE IF NOT EXISTS held_slots (
    region       text    NOT NULL,
    slot_start   bigint  NOT NULL,
    slot_end     bigint  NOT NULL CHECK (slot_end > slot_start),
    stage        text    NOT NULL CHECK (stage IN ('clearing', 'reconciliation')),
    error        text    NOT NULL,  -- why the services could not go on with the slot
    PRIMARY KEY (region, slot_start, slot_end)
);

CREATE TABLE IF NOT EXISTS rounds (
    region         text    NOT NULL,
    round_start    bigint  NOT NULL,
    fence          bigint  NOT NULL,
    started_at_ms  bigint  NOT NULL,
    PRIMARY KEY (region, round_start, fence)
);

CREATE TABLE IF NOT EXISTS membership_events (
    region          text    NOT NULL,
    participant_id  text    NOT NULL,
    event           text    NOT NULL CHECK (event IN ('joined', 'left')),
    at_ms           bigint  NOT NULL,
    PRIMARY KEY (region, participant_id, event, at_ms)
);

CREATE TABLE IF NOT EXISTS agent_registrations (
    region          text    NOT NULL,
    participant_id  text    NOT NULL,
    agent           text    NOT NULL,  -- the aggregator the participant named when it joined
    joined_at_ms    bigint  NOT NULL,
    PRIMARY KEY (region, participant_id, joined_at_ms)
);

CREATE TABLE IF NOT EXISTS connection_registrations (
    region          text    NOT NULL,
    participant_id  text    NOT NULL,
    import_w        bigint  CHECK (import_w >= 0),  -- the connection the member was held to from
    export_w        bigint  CHECK (export_w >= 0),  -- this join, in W; NULL: no limit
    joined_at_ms    bigint  NOT NULL,
    PRIMARY KEY (region, participant_id, joined_at_ms)
);

CREATE TABLE IF NOT EXISTS order_cancellations (
    region       text   NOT NULL,
    order_id     text   NOT NULL,  -- an order cancelled before its slot's gate closed
    slot_start   bigint NOT NULL,
    slot_end     bigint NOT NULL CHECK (slot_end > slot_start),
    PRIMARY KEY (region, order_id)
);

INSERT INTO schema_version (version, description)
VALUES ({SCHEMA_VERSION}, 'ledger_entries, orders, order_cancellations, settlements, meter_readings, reconciled_slots')
ON CONFLICT DO NOTHING;
"""

_ENTRY_TRUE_UP_COLUMNS = (("revision", "integer NOT NULL DEFAULT 0 CHECK (revision >= 0)"),
                          ("reverses", "boolean NOT NULL DEFAULT false"))

_TYPES = {
    "slot_start": "bigint",
    "slot_end": "bigint",
    "quantity_wh": "bigint",
    "matched_at_ms": "bigint",
    "delivered_at": "bigint",
    "seq": "bigint",
    "submitted_at_ms": "bigint",
    "import_wh": "bigint",
    "received_at_ms": "bigint",
    "entry_count": "integer",
    "revision": "integer",
    "revisions": "integer",
    "reverses": "boolean",
    "round_start": "bigint",
    "fence": "bigint",
    "started_at_ms": "bigint",
    "at_ms": "bigint",
    "joined_at_ms": "bigint",
    "import_w": "bigint",
    "export_w": "bigint",
    "price": "numeric",
    "buy_price": "numeric",
    "sell_price": "numeric",
}
_JSON = frozenset({"export_wh", "self_consumed_wh"})  # sent as text, cast on insert


@dataclass(frozen=True)
class _Table:
    name: str
    columns: tuple[str, ...]

    @property
    def _types(self) -> list[str]:
        return [_TYPES.get(c, "text") for c in self.columns]

    @property
    def _insert(self) -> str:
        values = ", ".join(f"{c}::jsonb" if c in _JSON else c for c in self.columns)
        return f"INSERT INTO {self.name} ({', '.join(self.columns)}) SELECT {values}"

    def unnest_sql(self) -> str:
        arrays = ", ".join(f"${i}::{t}[]" for i, t in enumerate(self._types, 1))
        return (
            f"{self._insert} FROM unnest({arrays}) WITH ORDINALITY AS incoming ({', '.join(self.columns)}, ord)"
            " ORDER BY ord ON CONFLICT DO NOTHING"
        )

    @property
    def staging(self) -> str:
        return f"incoming_{self.name}"

    def create_staging_sql(self) -> str:
        columns = ", ".join(f"{c} {t}" for c, t in zip(self.columns, self._types, strict=True))
        return f"CREATE TEMP TABLE {self.staging} (ord bigint, {columns}) ON COMMIT DROP"

    def insert_staged_sql(self) -> str:
        return f"{self._insert} FROM {self.staging} ORDER BY ord ON CONFLICT DO NOTHING"


_REGIONS = _Table("regions", ("region",))
_ORDERS = _Table("orders", rows.ORDER_COLUMNS)
_SETTLEMENTS = _Table("settlements", rows.SETTLEMENT_COLUMNS)
_READINGS = _Table("meter_readings", rows.READING_COLUMNS)
_ENTRIES = _Table("ledger_entries", rows.ENTRY_COLUMNS)
_RECONCILED = _Table("reconciled_slots", rows.RECONCILED_COLUMNS)
_ADJUSTED = _Table("slot_adjustments", rows.ADJUSTED_COLUMNS)
_FINALIZED = _Table("final_slots", rows.FINALIZED_COLUMNS)
_CANCELLATIONS = _Table("order_cancellations", rows.CANCELLATION_COLUMNS)
_HELD = _Table("held_slots", rows.HELD_COLUMNS)
_ROUNDS = _Table("rounds", rows.ROUND_COLUMNS)
_MEMBERSHIPS = _Table("membership_events", rows.MEMBERSHIP_COLUMNS)
_AGENTS = _Table("agent_registrations", rows.AGENT_COLUMNS)
_CONNECTIONS = _Table("connection_registrations", rows.CONNECTION_COLUMNS)
_SETTINGS = _Table("region_settings", ("region", "settings"))
_COMMUNITY = _Table("region_community", ("region", "community"))


def _inserted(status: str) -> int:
    # A command status reads "INSERT 0 <rows>".
    return int(status.rsplit(" ", 1)[1])


class PostgresLedgerStore:
    def __init__(
        self, dsn: str, *, min_size: int = 1, max_size: int = 8, copy_threshold: int = 2000, retries: int = 5
    ) -> None:
        self._dsn = dsn
        self._min_size, self._max_size = min_size, max_size
        self.copy_threshold = copy_threshold
        self._retries = retries
        self._pool: Any = None

    @property
    def dsn(self) -> str:
        return self._dsn

    async def open(self) -> None:
        if self._pool is not None:
            return
        pool = await asyncpg.create_pool(self._dsn, min_size=self._min_size, max_size=self._max_size)
        try:
            async with pool.acquire() as conn, conn.transaction():
                # Two processes starting at once must not race on CREATE TABLE IF NOT EXISTS.
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK)
                await conn.execute(SCHEMA)
                # Added after the first ledgers were written: a ledger without them gets them
                # (only then: ALTER TABLE locks the table even when the column exists).
                have = {r[0] for r in await conn.fetch(
                    "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() "
                    "AND table_name = 'ledger_entries'")}
                for column, declared in _ENTRY_TRUE_UP_COLUMNS:
                    if column not in have:
                        await conn.execute(f"ALTER TABLE ledger_entries ADD COLUMN {column} {declared}")
                version = await conn.fetchval("SELECT max(version) FROM schema_version")
            if version != SCHEMA_VERSION:
                raise RuntimeError(f"the database has ledger schema {version}; this code knows {SCHEMA_VERSION}")
        except BaseException:
            await pool.close()
            raise
        self._pool = pool

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def ping(self) -> bool:
        async with self._ready().acquire(timeout=5) as conn:
            return bool(await conn.fetchval("SELECT 1"))

    def _ready(self) -> Any:
        if self._pool is None:
            raise StoreNotOpen("the ledger store is not open")
        return self._pool

    async def write(self, batch: RecordBatch) -> WriteResult:
        pool = self._ready()
        check_types(batch)
        tables = (
            (_REGIONS, [(r,) for r in sorted(batch.regions())]),
            (_ORDERS, [rows.order_row(r, o) for r, o in batch.orders]),
            (_SETTLEMENTS, [rows.settlement_row(s) for s in batch.settlements]),
            (_READINGS, [rows.reading_row(*r) for r in batch.readings]),
            (_ENTRIES, [rows.entry_row(e) for e in batch.entries]),
            (_RECONCILED, [rows.reconciled_row(*r) for r in batch.reconciled]),
            (_CANCELLATIONS, [rows.cancellation_row(*c) for c in batch.cancellations]),
            (_HELD, [rows.held_row(*h) for h in batch.held]),
            (_ROUNDS, list(batch.rounds)),
            (_MEMBERSHIPS, list(batch.memberships)),
            (_AGENTS, list(batch.agents)),
            (_CONNECTIONS, list(batch.connections)),
            (_ADJUSTED, [rows.adjusted_row(*a) for a in batch.adjusted]),
            (_FINALIZED, [rows.finalized_row(*f) for f in batch.finalized]),
            (_SETTINGS, list(batch.market_settings)),
            (_COMMUNITY, list(batch.communities)),
        )
        for attempt in range(self._retries + 1):
            try:
                async with pool.acquire() as conn, conn.transaction():
                    counts = [await self._insert(conn, table, values) for table, values in tables]
                break
            except asyncpg.TransactionRollbackError:
                if attempt == self._retries:
                    raise
            except asyncpg.IntegrityConstraintViolationError as exc:
                raise ConstraintViolation(f"postgresql refused the batch: {exc}") from exc
            except asyncpg.DataError as exc:
                raise InvalidRecord(f"postgresql refused the batch: {exc}") from exc
        (_, orders, settlements, readings, entries, reconciled, cancellations, held, rounds_, members, agents,
         connections, adjusted, finalized, *_) = counts
        return WriteResult(entries, orders, settlements, readings, reconciled, cancellations, held, rounds_, members,
                           agents, connections, adjusted, finalized)

    async def _insert(self, conn: Any, table: _Table, values: Sequence[rows.Row]) -> int:
        if not values:
            return 0
        if len(values) < self.copy_threshold:
            columns = [list(column) for column in zip(*values, strict=True)]
            return _inserted(await conn.execute(table.unnest_sql(), *columns))
        await conn.execute(table.create_staging_sql())
        await conn.copy_records_to_table(
            table.staging, records=[(i, *row) for i, row in enumerate(values)], columns=("ord", *table.columns)
        )
        return _inserted(await conn.execute(table.insert_staged_sql()))

    async def _fetch(self, sql: str, *params: object) -> list[Any]:
        found: list[Any] = await self._ready().fetch(sql, *params)
        return found

    async def entries(self, region: str, start: int | None = None, end: int | None = None) -> list[LedgerEntry]:
        where, params = "region = $1", list[object]([region])
        if start is not None:
            params.append(start)
            where += f" AND slot_start >= ${len(params)}"
        if end is not None:
            params.append(end)
            where += f" AND slot_end <= ${len(params)}"
        found = await self._fetch(
            f"SELECT {', '.join(rows.ENTRY_COLUMNS)} FROM ledger_entries WHERE {where}"
            " ORDER BY slot_start, slot_end, inserted_seq",
            *params,
        )
        return [rows.entry_from(row) for row in found]

    async def orders(self, region: str) -> list[Order]:
        found = await self._fetch(
            f"SELECT {', '.join(rows.ORDER_COLUMNS)} FROM orders WHERE region = $1"
            ' ORDER BY slot_start, slot_end, seq, order_id COLLATE "C"',
            region,
        )
        return [rows.order_from(row) for row in found]

    async def settlements(self, region: str) -> list[Settlement]:
        found = await self._fetch(
            f"SELECT {', '.join(rows.SETTLEMENT_COLUMNS)} FROM settlements WHERE region = $1"
            " ORDER BY slot_start, slot_end, inserted_seq",
            region,
        )
        return [rows.settlement_from(row) for row in found]

    async def readings(self, region: str) -> list[Reading]:
        found = await self._fetch(
            f"SELECT {', '.join(c + '::text' if c in _JSON else c for c in rows.READING_COLUMNS)}"
            ' FROM meter_readings WHERE region = $1 ORDER BY slot_start, slot_end, participant_id COLLATE "C"',
            region,
        )
        return [rows.reading_from(row) for row in found]

    async def reconciled_slots(self, region: str) -> list[Slot]:
        found = await self._fetch(
            "SELECT slot_start, slot_end FROM reconciled_slots WHERE region = $1 ORDER BY slot_start, slot_end",
            region,
        )
        return [Slot(rows.as_int(row[0]), rows.as_int(row[1])) for row in found]

    async def adjustments(self, region: str) -> list[tuple[Slot, int, str]]:
        found = await self._fetch("SELECT slot_start, slot_end, revision, participant_id FROM slot_adjustments "
                                 "WHERE region = $1 ORDER BY slot_start, slot_end, revision", region)
        return [(Slot(rows.as_int(r[0]), rows.as_int(r[1])), rows.as_int(r[2]), str(r[3])) for r in found]

    async def final_slots(self, region: str) -> list[tuple[Slot, int]]:
        found = await self._fetch("SELECT slot_start, slot_end, revisions FROM final_slots WHERE region = $1 "
                                 "ORDER BY slot_start, slot_end", region)
        return [(Slot(rows.as_int(r[0]), rows.as_int(r[1])), rows.as_int(r[2])) for r in found]

    async def held_slots(self, region: str) -> list[HeldSlot]:
        found = await self._fetch(
            "SELECT slot_start, slot_end, stage, error FROM held_slots WHERE region = $1 ORDER BY slot_start, slot_end",
            region,
        )
        return [HeldSlot(Slot(rows.as_int(r[0]), rows.as_int(r[1])), str(r[2]), str(r[3])) for r in found]

    async def rounds(self, region: str) -> list[tuple[int, int]]:
        found = await self._fetch("SELECT round_start, fence FROM rounds WHERE region = $1 ORDER BY round_start, fence",
                                  region)
        return [(rows.as_int(r[0]), rows.as_int(r[1])) for r in found]

    async def members(self, region: str) -> list[str]:
        found = await self._fetch("SELECT participant_id, event, at_ms FROM membership_events WHERE region = $1",
                                  region)
        return current_members((str(r[0]), str(r[1]), rows.as_int(r[2])) for r in found)

    async def agents(self, region: str) -> dict[str, str]:
        events = await self._fetch("SELECT participant_id, event, at_ms FROM membership_events WHERE region = $1",
                                   region)
        named = await self._fetch("SELECT participant_id, agent, joined_at_ms FROM agent_registrations "
                                  "WHERE region = $1", region)
        return current_registrations(((str(r[0]), str(r[1]), rows.as_int(r[2])) for r in events),
                                     ((str(r[0]), str(r[1]), rows.as_int(r[2])) for r in named))

    async def connections(self, region: str) -> dict[str, tuple[int | None, int | None]]:
        events = await self._fetch("SELECT participant_id, event, at_ms FROM membership_events WHERE region = $1",
                                    region)
        held = await self._fetch("SELECT participant_id, import_w, export_w, joined_at_ms FROM "
                                  "connection_registrations WHERE region = $1", region)
        return current_registrations(((str(r[0]), str(r[1]), rows.as_int(r[2])) for r in events),
                                     ((str(r[0]), (rows.as_int_or_none(r[1]), rows.as_int_or_none(r[2])),
                                       rows.as_int(r[3])) for r in held))

    async def regions(self) -> list[str]:
        return [str(row[0]) for row in await self._fetch('SELECT region FROM regions ORDER BY region COLLATE "C"')]

    async def market_settings(self, region: str) -> str | None:
        found = await self._fetch("SELECT settings FROM region_settings WHERE region = $1", region)
        return str(found[0][0]) if found else None

    async def community(self, region: str) -> str | None:
        found = await self._fetch("SELECT community FROM region_community WHERE region = $1", region)
        return str(found[0][0]) if found else None

    async def cancelled_orders(self, region: str) -> list[str]:
        found = await self._fetch(
            "SELECT order_id FROM order_cancellations WHERE region = $1"
            ' ORDER BY slot_start, slot_end, order_id COLLATE "C"',
            region,
        )
        return [str(row[0]) for row in found]
