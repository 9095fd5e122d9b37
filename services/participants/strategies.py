"""Trading strategies: what a household offers for a slot, and at what price.

A strategy is a class with one small interface (``Strategy``): the community makes one
instance per household for the whole run, asks it for its quotes each round, and tells it
what it traded once the slot's settlements are in. Most strategies only set prices: they
override ``price`` and leave the quantities (the household's forecast net energy and its
battery's surplus, ``offers``) as they are. One that decides quantities too (a battery
trader) overrides ``quotes``. The built-in ones:

- ``baseline``, after TREX's baseline trader: it trades its forecast net energy and does
  no price discovery, bidding one tick under the grid's buy price and asking one tick
  over the grid's sell price, so that any crossing pair clears near the middle.
- ``zic``, zero-intelligence constrained: random prices on the tick between the grid's
  sell and buy prices, so it never bids above what the grid would charge nor asks below
  what the grid would pay.
- ``arbitrage``, a battery trader: it trades its forecast net energy as ``baseline`` does,
  and runs its battery for profit. On the cheapest grid price it has seen in a day (the
  night of a time-of-use tariff, when prices differ) it charges its battery from the grid;
  at midday it keeps its own surplus for its battery and bids for its neighbours' to fill
  the rest; in the evening, and whenever
  the grid price is the dearest it has seen, it sells what its battery holds above its
  lower bound. Households that sell it energy get more than the grid pays, households
  that buy from it pay less than the grid charges.
- ``bandit``, a learning trader in the spirit of the TREX experiments: an epsilon-greedy
  bandit over a discrete grid of prices between the grid's two prices, one per side; its
  reward is what a slot's trades gained against the grid, per Wh offered. Seeded: its
  exploration is a function of the household's seed and the slot.

A plug-in is any class of this shape, named as ``package.module:Class`` (importable) or
``path/to/file.py:Class`` in a scenario's ``strategy`` (docs/scenarios.md).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import sys
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import ClassVar
from zoneinfo import ZoneInfo

from services.participants.profiles import Household, load_wh, noise, solar_wh
from shared.market import PRICE_TICK, GridPrices, Slot


@dataclass(frozen=True)
class Quote:
    side: str  # "bid" or "ask"
    quantity_wh: int
    price: Decimal
    source: str  # "solar" or "bess"


@dataclass(frozen=True)
class Trade:
    """One settlement of the household in a slot: the side it was on, and the price it got
    (sellers) or paid (buyers)."""
    side: str
    quantity_wh: int
    price: Decimal
    source: str


def offers(h: Household, slot: Slot, tz: ZoneInfo, soc_wh: int) -> list[tuple[str, int, str]]:
    """What the household has to trade for a slot: (side, Wh, source); its forecast net
    energy, and what its battery holds above 70 % when it needs none of it."""
    forecast = noise(h.seed, slot, "forecast")
    net = int((solar_wh(h, slot, tz) - load_wh(h, slot, tz)) * (0.9 + 0.2 * forecast.random()))
    out = []
    if net > 0:
        out.append(("ask", net, "solar"))
    elif net < 0:
        # Outside daylight only batteries can sell, so evening demand bids for battery energy.
        hour = datetime.fromtimestamp(slot.start, tz).hour
        out.append(("bid", -net, "solar" if 7 <= hour < 19 else "bess"))
    if h.battery_wh and soc_wh > h.battery_wh * 7 // 10 and net <= 0:
        spare = min(soc_wh - h.battery_wh // 2, h.battery_power_w * slot.seconds // 3600 // 2)
        if spare > 0:
            out.append(("ask", spare, "bess"))
    return out


class Strategy:
    """A household's trader, one instance per household for the whole run. ``PARAMETERS``
    names what a scenario may set (``strategy_params``) and how each is read; a plug-in
    without it takes any, as text, in ``self.params``."""

    PARAMETERS: ClassVar[dict[str, type] | None] = None

    def __init__(self, home: Household) -> None:
        self.home = home
        self.params: dict[str, str] = dict(home.strategy_params)

    def quotes(self, slot: Slot, tz: ZoneInfo, grid: GridPrices, soc_wh: int) -> list[Quote]:
        """The orders for ``slot``, given the grid's prices for it and the battery's charge now."""
        return [Quote(side, wh, self.price(slot, side, grid), source)
                for side, wh, source in offers(self.home, slot, tz, soc_wh)]

    def price(self, slot: Slot, side: str, grid: GridPrices) -> Decimal:
        raise NotImplementedError(f"{type(self).__name__} must define price() or quotes()")

    def settled(self, slot: Slot, trades: list[Trade]) -> None:
        """What it traded in ``slot`` (nothing: an empty list), once the slot is delivered."""

    def grid_charge_wh(self, slot: Slot) -> int:
        """Energy its battery should take from the grid in ``slot`` (optional; the default,
        and a plug-in without this method: none)."""
        return 0


def _bounds(grid: GridPrices) -> tuple[Decimal, Decimal, int]:
    """The grid's sell and buy prices on the tick, and the ticks between them."""
    low, high = grid.sell_price.quantize(PRICE_TICK), grid.buy_price.quantize(PRICE_TICK)
    return low, high, int((high - low) / PRICE_TICK)


def _steps_in(side: str, grid: GridPrices, steps: int) -> Decimal:
    """``steps`` ticks inside the grid's prices: down from its buy price for a bid, up from
    its sell price for an ask (at most the whole spread). Households quote the same prices;
    the market ranks the ties (docs/market.md: in simulation by a lottery per slot)."""
    low, high, span = _bounds(grid)
    ticks = min(steps, span)
    return high - PRICE_TICK * ticks if side == "bid" else low + PRICE_TICK * ticks


class Baseline(Strategy):
    PARAMETERS: ClassVar[dict[str, type] | None] = {}

    def price(self, slot: Slot, side: str, grid: GridPrices) -> Decimal:
        return _steps_in(side, grid, 1)


class Zic(Strategy):
    PARAMETERS: ClassVar[dict[str, type] | None] = {}

    def price(self, slot: Slot, side: str, grid: GridPrices) -> Decimal:
        span = _bounds(grid)[2]
        return _steps_in(side, grid, noise(self.home.seed, slot, f"price-{side}").randint(1, max(span - 1, 1)))


class Bandit(Strategy):
    """Epsilon-greedy over a price grid that every bandit shares: ``ARMS`` levels evenly
    between the grid's sell and buy prices (level ``k`` is ``k / (ARMS + 1)`` of the way up,
    on the tick). Arm ``a`` asks level ``a + 1`` or bids level ``ARMS - a``: a higher arm is
    greedier on either side, and an ask and a bid can meet at one price (``equal_price``).
    The reward of a slot is what its trades gained against the grid (sellers over the grid's
    sell price, buyers under its buy price) per Wh offered, as a share of the spread: 0 to 1."""

    ARMS = 9
    EPSILON = 0.1
    PARAMETERS: ClassVar[dict[str, type] | None] = {"epsilon": float, "arms": int}  # explores how often; levels

    def __init__(self, home: Household) -> None:
        super().__init__(home)
        self.EPSILON = float(self.params.get("epsilon", self.EPSILON))
        self.ARMS = int(self.params.get("arms", self.ARMS))
        self.value = {side: [0.0] * self.ARMS for side in ("bid", "ask")}
        self.pulls = {side: [0] * self.ARMS for side in ("bid", "ask")}
        self.chosen: dict[tuple[int, int], tuple[str, int, int, GridPrices]] = {}  # slot -> side, arm, Wh, grid

    def arm(self, slot: Slot, side: str) -> int:
        rng = noise(self.home.seed, slot, f"bandit-{side}")
        if rng.random() < self.EPSILON or not any(self.pulls[side]):
            return rng.randrange(self.ARMS)
        values = self.value[side]
        return values.index(max(values))

    def quotes(self, slot: Slot, tz: ZoneInfo, grid: GridPrices, soc_wh: int) -> list[Quote]:
        made = super().quotes(slot, tz, grid, soc_wh)
        sides = {q.side for q in made}
        if len(sides) == 1:  # one side a slot: that side's arm learns from it
            side = sides.pop()
            self.chosen[slot.start, slot.end] = (side, self.arm(slot, side), sum(q.quantity_wh for q in made), grid)
        return made

    def price(self, slot: Slot, side: str, grid: GridPrices) -> Decimal:
        arm = self.arm(slot, side)  # the same arm for the slot until it is settled
        low, _, span = _bounds(grid)
        level = arm + 1 if side == "ask" else self.ARMS - arm
        return low + PRICE_TICK * (span * level // (self.ARMS + 1))

    def settled(self, slot: Slot, trades: list[Trade]) -> None:
        chosen = self.chosen.pop((slot.start, slot.end), None)
        if chosen is None:
            return
        side, arm, offered, grid = chosen
        low, high, span = _bounds(grid)
        if not offered or not span:
            return
        gain = sum(t.quantity_wh * ((t.price - low) if side == "ask" else (high - t.price))
                   for t in trades if t.side == side)
        reward = float(gain / (offered * (high - low)))
        self.pulls[side][arm] += 1
        self.value[side][arm] += (reward - self.value[side][arm]) / self.pulls[side][arm]


class Arbitrage(Strategy):
    """A battery trader (see the module's description): it bids half way between the grid's
    two prices and asks three quarters of the way up, so both sides of each trade beat the
    grid; its own surplus and deficit it prices as ``baseline`` does."""

    DAY_S = 86400
    PARAMETERS: ClassVar[dict[str, type] | None] = {"sell_from": int, "buy_from": int, "buy_until": int}  # hours

    def __init__(self, home: Household) -> None:
        super().__init__(home)
        self.sell_from = int(self.params.get("sell_from", 17))
        self.buy_hours = range(int(self.params.get("buy_from", 10)), int(self.params.get("buy_until", 15)))
        self.seen: list[tuple[int, Decimal]] = []  # (slot start, grid buy price) of the last day
        self.charge_from_grid: dict[tuple[int, int], int] = {}

    def quotes(self, slot: Slot, tz: ZoneInfo, grid: GridPrices, soc_wh: int) -> list[Quote]:
        h = self.home
        self.seen = [(t, p) for t, p in self.seen if t > slot.start - self.DAY_S] + [(slot.start, grid.buy_price)]
        cheapest, dearest = min(p for _, p in self.seen), max(p for _, p in self.seen)
        span = _bounds(grid)[2]
        made = [Quote(side, wh, _steps_in(side, grid, 1), source)
                for side, wh, source in offers(h, slot, tz, soc_wh) if source == "solar" or side == "bid"]
        if not h.battery_wh:
            return made
        way = (h.battery_efficiency / 1000) ** 0.5
        power = h.battery_power_w * slot.seconds // 3600
        room = int((h.battery_wh * h.soc_max // 1000 - soc_wh) / way)
        spare = int((soc_wh - h.battery_wh * h.soc_min // 1000) * way)
        hour = datetime.fromtimestamp(slot.start, tz).hour
        if cheapest < dearest and grid.buy_price == cheapest:  # off-peak: charge from the grid
            self.charge_from_grid[slot.start, slot.end] = max(min(room, power), 0)
        elif hour in self.buy_hours and room > 0:  # its own surplus first, then its neighbours'
            take, surplus = min(room, power), sum(q.quantity_wh for q in made if q.side == "ask")
            made = [q for q in made if q.side == "bid"]
            if surplus > take:
                made.append(Quote("ask", surplus - take, _steps_in("ask", grid, 1), "solar"))
            elif take > surplus:
                made.append(Quote("bid", take - surplus, _steps_in("bid", grid, max(span // 2, 1)), "solar"))
        elif hour >= self.sell_from or (cheapest < dearest and grid.buy_price == dearest):
            # Its battery covers its own load first: it buys nothing and sells the rest.
            need = sum(q.quantity_wh for q in made if q.side == "bid")
            sell = min(spare, power) - need
            if sell > 0:
                made = [q for q in made if q.side == "ask"]
                made.append(Quote("ask", sell, _steps_in("ask", grid, max(span * 3 // 4, 1)), "bess"))
        return made

    def grid_charge_wh(self, slot: Slot) -> int:
        return self.charge_from_grid.pop((slot.start, slot.end), 0)


BUILT_IN: dict[str, type[Strategy]] = {"baseline": Baseline, "zic": Zic, "bandit": Bandit, "arbitrage": Arbitrage}


@functools.cache
def strategy_class(name: str) -> type[Strategy]:
    """A built-in strategy by name, or a plug-in: ``package.module:Class`` or
    ``path/to/file.py:Class``. Raises ValueError saying what is wrong."""
    if name in BUILT_IN:
        return BUILT_IN[name]
    where, sep, attr = name.rpartition(":")
    if not sep or not where or not attr:
        raise ValueError(f"{name!r} is no strategy: one of {', '.join(BUILT_IN)}, or a plug-in "
                         "'package.module:Class' or 'path/to/file.py:Class'")
    if where.endswith(".py") and not Path(where).is_file():
        raise ValueError(f"strategy {name!r}: no file {where}")
    try:
        if where.endswith(".py"):
            module_name = f"microte_strategy_{Path(where).stem}"
            spec = importlib.util.spec_from_file_location(module_name, where)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module  # as an import does (dataclasses look for it there)
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
    except Exception as exc:  # a plug-in is somebody's code: whatever fails in it is its error, said in one line
        raise ValueError(f"strategy {name!r}: {where} cannot be imported ({type(exc).__name__}: {exc})") from None
    found = getattr(module, attr, None)
    if not (isinstance(found, type) and callable(getattr(found, "quotes", None))
            and callable(getattr(found, "settled", None))):
        raise ValueError(f"strategy {name!r}: {where} has no class {attr} with quotes() and settled()")
    try:  # made once for a household, as the community makes it for each
        found(Household(participant_id="h000", seed=0, solar_peak_w=0, base_load_w=1, battery_wh=0,
                        battery_power_w=0, strategy=name))
    except Exception as exc:
        raise ValueError(f"strategy {name!r}: {attr}(household) fails ({type(exc).__name__}: {exc})") from None
    return found


def make_strategy(home: Household) -> Strategy:
    return strategy_class(home.strategy)(home)
