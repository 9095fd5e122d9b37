"""Ledger stores: one interface (``LedgerStore``), three back-ends, chosen by URL.

``open_ledger(url)`` returns an unopened store; ``await store.open()`` connects and
creates the schema if it is missing. URLs:

- ``memory://`` a private in-memory store; ``memory://NAME`` one shared in this process;
- ``sqlite:///relative/path.sqlite`` or ``sqlite:////absolute/path.sqlite``;
- ``postgresql://user@host:port/db`` (``postgres://`` too).

The schema is documented in docs/ledger-schema.md.
"""

from __future__ import annotations

from shared.runtime.ledger.base import (
    SCHEMA_VERSION,
    ConstraintViolation,
    HeldSlot,
    InvalidRecord,
    LedgerStore,
    RecordBatch,
    StoreNotOpen,
    WriteResult,
)
from shared.runtime.ledger.memory import MemoryLedgerStore
from shared.runtime.ledger.postgres import PostgresLedgerStore
from shared.runtime.ledger.sqlite import SqliteLedgerStore

__all__ = [
    "SCHEMA_VERSION",
    "ConstraintViolation",
    "HeldSlot",
    "InvalidRecord",
    "LedgerStore",
    "MemoryLedgerStore",
    "PostgresLedgerStore",
    "RecordBatch",
    "SqliteLedgerStore",
    "StoreNotOpen",
    "WriteResult",
    "open_ledger",
]


def open_ledger(url: str) -> LedgerStore:
    """The store a URL names (not yet opened). Raises ValueError for an unknown URL."""
    if url.startswith("memory://"):
        return MemoryLedgerStore(url.removeprefix("memory://"))
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        if not path:
            raise ValueError(f"{url!r} names no file: use sqlite:///relative/path or sqlite:////absolute/path")
        return SqliteLedgerStore(path)
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresLedgerStore(url)
    raise ValueError(f"unknown ledger URL {url!r}: use memory://, sqlite:///PATH or postgresql://...")
