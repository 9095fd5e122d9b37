"""The MicroTE market as a pure library: no I/O, no clock, no randomness of its own.

Everything a service needs to decide anything about the market is here; services only
decode, call these functions, and persist or publish the results.
"""

from shared.market.invariants import violations
from shared.market.ledger import GRID, MARKET, Bill, EntryKind, LedgerEntry, bills, entry_id
from shared.market.matching import Book, PricingRule, Settlement, clear, match_book, settlement_id
from shared.market.numbers import (
    MAX_ORDER_WH,
    MAX_PRICE,
    MAX_READING_SOURCES,
    MAX_READING_WH,
    PRICE_TICK,
    amount,
    check_price_cap,
    parse_price,
    price_to_ticks,
)
from shared.market.orders import (
    SOURCES,
    Order,
    OrderTerms,
    Pool,
    Rejection,
    Side,
    accept,
    classify_source,
    simultaneous_seq,
    validate_order,
)
from shared.market.reasons import RejectReason
from shared.market.reconciliation import Reading, adjust, check_reading, in_true_up_window, reconcile, true_up
from shared.market.tariff import GridPrices, Tariff
from shared.market.timing import RoundWindows, Schedule, Slot

__all__ = [
    "GRID",
    "MARKET",
    "MAX_ORDER_WH",
    "MAX_PRICE",
    "MAX_READING_SOURCES",
    "MAX_READING_WH",
    "PRICE_TICK",
    "SOURCES",
    "Bill",
    "Book",
    "EntryKind",
    "GridPrices",
    "LedgerEntry",
    "Order",
    "OrderTerms",
    "Pool",
    "PricingRule",
    "Reading",
    "RejectReason",
    "Rejection",
    "RoundWindows",
    "Schedule",
    "Settlement",
    "Side",
    "Slot",
    "Tariff",
    "accept",
    "adjust",
    "amount",
    "bills",
    "check_price_cap",
    "check_reading",
    "classify_source",
    "clear",
    "entry_id",
    "in_true_up_window",
    "match_book",
    "parse_price",
    "price_to_ticks",
    "reconcile",
    "settlement_id",
    "simultaneous_seq",
    "true_up",
    "validate_order",
    "violations",
]
