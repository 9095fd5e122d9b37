"""Trading strategies: what a household offers for a slot, and at what price. Pure.

- ``baseline``, after TREX's baseline trader: it trades its forecast net energy and does
  no price discovery, bidding one tick under the grid's buy price and asking one tick
  over the grid's sell price, so that any crossing pair clears near the middle.
- ``zic``, zero-intelligence constrained: uniform random prices on the tick between the
  grid's sell and buy prices, so it never bids above what the grid would charge nor asks
  below what the grid would pay.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

from services.participants.profiles import Household, load_wh, noise, solar_wh
from shared.market import PRICE_TICK, GridPrices, Slot


@dataclass(frozen=True)
class Quote:
    side: str
    quantity_wh: int
    price: Decimal
    source: str


def _price(h: Household, slot: Slot, side: str, grid: GridPrices) -> Decimal:
    """Each household quotes on its own residue of the tick grid (``h.index`` modulo
    ``h.size``), so no two households ever tie on price: equal prices would be ranked by
    arrival, and a simulation would no longer replay identically."""
    low, high = grid.sell_price.quantize(PRICE_TICK), grid.buy_price.quantize(PRICE_TICK)
    span = int((high - low) / PRICE_TICK) // h.size
    steps = 1 if h.strategy == "baseline" else noise(h.seed, slot, f"price-{side}").randint(1, max(span - 1, 1))
    ticks = min(steps * h.size + h.index, int((high - low) / PRICE_TICK))  # communities over ~700 may tie
    return high - PRICE_TICK * ticks if side == "bid" else low + PRICE_TICK * ticks


def quotes(h: Household, slot: Slot, tz: ZoneInfo, grid: GridPrices, soc_wh: int) -> list[Quote]:
    forecast = noise(h.seed, slot, "forecast")
    net = int((solar_wh(h, slot, tz) - load_wh(h, slot, tz)) * (0.9 + 0.2 * forecast.random()))
    out = []
    if net > 0:
        out.append(Quote("ask", net, _price(h, slot, "ask", grid), "solar"))
    elif net < 0:
        # Outside daylight only batteries can sell, so evening demand bids for battery energy.
        hour = datetime.fromtimestamp(slot.start, tz).hour
        source = "solar" if 7 <= hour < 19 else "bess"
        out.append(Quote("bid", -net, _price(h, slot, "bid", grid), source))
    if h.battery_wh and soc_wh > h.battery_wh * 7 // 10 and net <= 0:
        spare = min(soc_wh - h.battery_wh // 2, h.battery_power_w * slot.seconds // 3600 // 2)
        if spare > 0:
            out.append(Quote("ask", spare, _price(h, slot, "ask", grid), "bess"))
    return out
