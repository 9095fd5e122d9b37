"""Exact numbers: integer Wh, decimal $/kWh prices on a 0.0001 tick, exact money.

No binary float takes part in any of these: every conversion is exact or raises.
"""

from __future__ import annotations

from decimal import Context, Decimal, Inexact, InvalidOperation

PRICE_TICK = Decimal("0.0001")
TICKS_PER_DOLLAR = 10_000
ZERO = Decimal(0)

# Arithmetic on money must never round silently: this context raises instead.
EXACT = Context(prec=60, traps=[Inexact, InvalidOperation])


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
