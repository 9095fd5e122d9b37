"""Grid prices (docs/market.md section 8), per slot, from the slot's own local start time.

``sell_price = price`` (what the grid pays for export), ``buy_price = price * (1 +
fee_ratio)`` (what it charges for import). A time-of-use table replaces ``price`` by
month and local hour on weekdays. Local time comes from ``zoneinfo`` with the pinned
``tzdata`` (``shared.market.timezones``), so half-hour zones
and DST changes are right, and slots that do not start on the hour take the price of the
local hour they start in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from shared.market.numbers import EXACT, price_to_ticks
from shared.market.timezones import zone

DEFAULT_PRICE = Decimal("0.069")
DEFAULT_FEE_RATIO = Decimal("1.1")


@dataclass(frozen=True, slots=True)
class GridPrices:
    buy_price: Decimal  # the grid sells to participants at this price
    sell_price: Decimal  # the grid buys from participants at this price


@dataclass(frozen=True)
class Tariff:
    """``time_of_use[month][hour] = price`` for weekday hours (month 1-12, hour 0-23)."""

    price: Decimal = DEFAULT_PRICE
    fee_ratio: Decimal = DEFAULT_FEE_RATIO
    timezone: str = "UTC"
    time_of_use: Mapping[int, Mapping[int, Decimal]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.price < 0 or self.fee_ratio < 0:
            raise ValueError("grid price and fee ratio must be >= 0")
        price_to_ticks(self.price)
        for month, hours in self.time_of_use.items():
            if not 1 <= month <= 12 or any(not 0 <= h <= 23 for h in hours):
                raise ValueError(f"time-of-use table has a bad month or hour: {month} {sorted(hours)}")
            for value in hours.values():
                price_to_ticks(value)
        zone(self.timezone)  # raises for an unknown zone

    def base_price_at(self, t: int) -> Decimal:
        local = datetime.fromtimestamp(t, zone(self.timezone))
        if local.weekday() < 5:
            hours = self.time_of_use.get(local.month)
            if hours is not None and local.hour in hours:
                return hours[local.hour]
        return self.price

    def prices_at(self, t: int) -> GridPrices:
        price = self.base_price_at(t)
        return GridPrices(buy_price=EXACT.multiply(price, 1 + self.fee_ratio), sell_price=price)
