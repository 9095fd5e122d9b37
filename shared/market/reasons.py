"""Machine-readable rejection reasons, named after the rule that was broken."""

from __future__ import annotations

from enum import StrEnum


class RejectReason(StrEnum):
    MALFORMED = "malformed"
    INVALID_QUANTITY = "invalid_quantity"
    QUANTITY_TOO_LARGE = "quantity_too_large"  # above numbers.MAX_ORDER_WH
    INVALID_PRICE = "invalid_price"
    UNKNOWN_SOURCE = "unknown_source"
    INVALID_SIDE = "invalid_side"
    MISALIGNED_SLOT = "misaligned_slot"
    GATE_CLOSED = "gate_closed"
    BEYOND_HORIZON = "beyond_horizon"
    MARKET_NOT_OPEN = "market_not_open"
    NOT_A_MEMBER = "not_a_member"
    IDENTITY_MISMATCH = "identity_mismatch"
    NOT_ENTITLED = "not_entitled"  # a batch's sender is not the agent of the participant it names
    TOO_MANY_ORDERS = "too_many_orders"  # beyond the orders one participant may submit for one slot
    RATE_LIMITED = "rate_limited"  # beyond the requests per second one participant may send
    # offers (or bids) for one slot, or a reading, beyond the member's connection times the slot's length
    BEYOND_CONNECTION = "beyond_connection"
    INVALID_CONNECTION = "invalid_connection"  # a join whose connection is negative or absurd
    BEYOND_SPEND_LIMIT = "beyond_spend_limit"  # bids for one day worth more than the member may spend
    UNKNOWN_ORDER = "unknown_order"
    INVALID_READING = "invalid_reading"
    READING_TOO_LARGE = "reading_too_large"  # a value above numbers.MAX_READING_WH
    SLOT_NOT_DELIVERED = "slot_not_delivered"
    ALREADY_RECONCILED = "already_reconciled"
    WRONG_REGION = "wrong_region"
