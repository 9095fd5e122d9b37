"""Exact numbers: integer Wh, decimal $/kWh prices on a 0.0001 tick, exact money.

No binary float takes part in any of these: every conversion is exact or raises.
"""

from __future__ import annotations

import re
from decimal import Context, Decimal, Inexact, InvalidOperation

PRICE_TICK = Decimal("0.0001")
TICKS_PER_DOLLAR = 10_000
ZERO = Decimal(0)

# Arithmetic on money must never round silently: this context raises instead.
EXACT = Context(prec=60, traps=[Inexact, InvalidOperation])

# --- upper bounds on what a participant may send (enforced by validation) -------------
#
# Every quantity is an exact Python int in the core, but the matcher keeps its columns in
# numpy int64 and the ledger stores int64; the bounds keep every sum far inside that range.

# One order: 1 GWh. Far above any household or community battery in one slot (a 1 MW
# community battery delivers 1 MWh = 10**6 Wh in an hour), yet a million orders of this
# size sum to 10**15 Wh, about 1/9000 of the int64 range: no cumulative sum can overflow.
MAX_ORDER_WH = 10**9

# One meter value (import_wh, or one source's export_wh / self_consumed_wh): 1 GWh, on the
# same reasoning as an order; a meter that reports more is broken or lying.
MAX_READING_WH = 10**9

# A member's registered connection, in W: 1 GW, far beyond any household or community
# connection; with a slot of at most a day it bounds energy at 8.64e13 Wh * 3600, still an
# exact integer in a double (the Redis scripts check it in Lua numbers).
MAX_CONNECTION_W = 10**9

# Sources in one meter map: only the known sources (solar, wind, bess) make sense, and a
# map cannot name one twice. ``shared.market.orders.SOURCES`` has exactly this many.
MAX_READING_SOURCES = 3

# The hard ceiling on the configurable price cap, in $/kWh: some fifty times the highest
# wholesale market price cap in the world (AEMO's, about 17.5 $/kWh in 2024-25). Its tick
# count (10**7) and the money of a full order at it (10**9 $) are small, exact numbers.
# Settings refuse a larger ``price_cap`` (``check_price_cap``); validation never lets a
# price above it through, whatever cap it is given.
MAX_PRICE = Decimal("1000")


class InvalidPrice(ValueError):
    """A price that is not a finite, non-negative multiple of the 0.0001 tick."""


def price_to_ticks(price: Decimal) -> int:
    """Exact integer number of ticks in ``price``; raises if it is off the tick."""
    if not isinstance(price, Decimal) or not price.is_finite():
        raise InvalidPrice(f"price must be a finite Decimal, got {price!r}")
    ticks = price * TICKS_PER_DOLLAR
    if ticks != ticks.to_integral_value():
        raise InvalidPrice(f"price {price} is not on the {PRICE_TICK} tick")
    return int(ticks)


# Plain decimal text ("0.1449", "-3", "12.50000"); anything else takes the Decimal route.
# At most 24 whole digits: then ``price * TICKS_PER_DOLLAR`` of a price on the tick has at
# most 28 significant digits, which ``price_to_ticks`` computes exactly too.
_PLAIN_PRICE = re.compile(r"(-?)([0-9]{1,24})(?:\.([0-9]{1,60}))?")
_TICK_DIGITS = 4  # TICKS_PER_DOLLAR = 10**4


def text_to_ticks(text: str) -> int:
    """``price_to_ticks(Decimal(text))``, exactly, without a Decimal for plain decimal text.

    Raises what that raises: ``InvalidPrice`` for a price off the tick (or not finite),
    ``decimal.InvalidOperation`` for text that is not a number at all."""
    plain = _PLAIN_PRICE.fullmatch(text)
    if plain is not None:
        sign, whole, fraction = plain.groups()
        fraction = fraction or ""
        if not fraction[_TICK_DIGITS:].strip("0"):
            ticks = int(whole) * TICKS_PER_DOLLAR + int(fraction[:_TICK_DIGITS].ljust(_TICK_DIGITS, "0"))
            return -ticks if sign else ticks
    return price_to_ticks(Decimal(text))


def ticks_to_price(ticks: int) -> Decimal:
    return (Decimal(ticks) / TICKS_PER_DOLLAR).quantize(PRICE_TICK)


def half_ticks_to_price(half_ticks: int) -> Decimal:
    """A price given in half ticks: a midpoint of two tick prices may need one more digit."""
    if half_ticks % 2 == 0:
        return ticks_to_price(half_ticks // 2)
    return EXACT.divide(Decimal(half_ticks), Decimal(2 * TICKS_PER_DOLLAR))


def amount(quantity_wh: int, price: Decimal) -> Decimal:
    """Money for ``quantity_wh`` at ``price`` $/kWh, exact: quantity_wh / 1000 * price."""
    return EXACT.multiply(Decimal(quantity_wh), price).scaleb(-3, EXACT)


def parse_price(value: Decimal | str | int) -> Decimal:
    """A price from its exact text or Decimal form; floats are refused on purpose."""
    if isinstance(value, bool) or not isinstance(value, (Decimal, str, int)):
        raise InvalidPrice(f"price must be decimal text, got {type(value).__name__}")
    try:
        price = Decimal(value)
    except InvalidOperation as exc:
        raise InvalidPrice(f"price {value!r} is not a number") from exc
    price_to_ticks(price)
    return price


def check_price_cap(cap: Decimal) -> Decimal:
    """``cap`` if it can be a region's price cap: on the tick, within [0, ``MAX_PRICE``]."""
    price_to_ticks(cap)
    if cap < 0 or cap > MAX_PRICE:
        raise InvalidPrice(f"price cap {cap} must be within [0, {MAX_PRICE}] $/kWh")
    return cap


def held_connection(declared: int | None, cap: int) -> int | None:
    """The connection, in W, a member is held to: its own, capped by the region's ``cap``
    (0: the region has none); None: no limit."""
    if cap and (declared is None or declared > cap):
        return cap
    return declared


# A member's spending limit counts money in units of 10**-7 $: an order of q Wh at t ticks
# (0.0001 $/kWh) is worth exactly q * t units. A limit is at most MAX_SPEND_LIMIT $, so
# that a day's sum stays an exact integer in a double (2 * 10**15 < 2**53) in the Redis
# scripts; an order worth more than the limit is refused before any sum is taken.
SPEND_UNITS_PER_DOLLAR = 10**7
MAX_SPEND_LIMIT = Decimal(10**8)


def spend_units(quantity_wh: int, price: Decimal) -> int:
    """What a bid of ``quantity_wh`` at ``price`` may cost, exactly, in 10**-7 $."""
    return quantity_wh * price_to_ticks(price)


def check_spend_limit(limit: Decimal) -> int:
    """A spending limit in $ as units of 10**-7 $ (0: none); ValueError if it is negative,
    above MAX_SPEND_LIMIT or finer than 10**-7 $."""
    if not limit.is_finite() or limit < 0 or limit > MAX_SPEND_LIMIT:
        raise ValueError(f"a spending limit is 0 to {MAX_SPEND_LIMIT} $, got {limit}")
    units = limit * SPEND_UNITS_PER_DOLLAR
    if units != units.to_integral_value():
        raise ValueError(f"a spending limit has at most 7 decimals, got {limit}")
    return int(units)
