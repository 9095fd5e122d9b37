"""The ledger store, under the name first planned for it; it lives in ``shared.runtime.ledger``."""

from shared.runtime.ledger import (
    SCHEMA_VERSION,
    ConstraintViolation,
    InvalidRecord,
    LedgerStore,
    MemoryLedgerStore,
    PostgresLedgerStore,
    RecordBatch,
    SqliteLedgerStore,
    StoreNotOpen,
    WriteResult,
    open_ledger,
)

__all__ = [
    "SCHEMA_VERSION",
    "ConstraintViolation",
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
