"""Trading strategies as plug-ins: the built-in prices stay within the grid's prices on
the tick; the bandit learns the price that pays best in a
market that buys only up to a limit; a plug-in from a file is found, and a wrong one is a
clear error."""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from services.participants.profiles import Household, community
from services.participants.strategies import (
    PRICE_TICK,
    Bandit,
    Baseline,
    Strategy,
    Trade,
    Zic,
    make_strategy,
    offers,
    strategy_class,
)
from shared.market import GridPrices, Slot

GRID = GridPrices(buy_price=Decimal("0.0759"), sell_price=Decimal("0.0690"))
TZ = ZoneInfo("UTC")
NOON = Slot(1782043200, 1782043260)  # 2026-06-21 12:00 UTC


def home(index: int = 0, size: int = 20, strategy: str = "baseline") -> Household:
    return Household(participant_id=f"h{index:03d}", seed=1234 + index, solar_peak_w=6000, base_load_w=400,
                     battery_wh=0, battery_power_w=0, strategy=strategy, index=index, size=size)


def test_baseline_quotes_one_step_inside_the_grid_and_households_tie() -> None:
    for i in range(20):
        h = home(i)
        ask, bid = Baseline(h).price(NOON, "ask", GRID), Baseline(h).price(NOON, "bid", GRID)
        assert ask == Decimal("0.0690") + PRICE_TICK  # the same for every household: the market ranks ties
        assert bid == Decimal("0.0759") - PRICE_TICK


def test_zic_prices_stay_strictly_between_the_grid_prices_on_the_tick() -> None:
    for start in range(NOON.start, NOON.start + 60 * 50, 60):
        slot = Slot(start, start + 60)
        prices = [Zic(home(i)).price(slot, side, GRID) for i in range(20) for side in ("ask", "bid")]
        assert all(GRID.sell_price < p < GRID.buy_price and p == p.quantize(PRICE_TICK) for p in prices)
        assert len(set(prices)) > 10  # random, seeded by household and slot


def test_the_quantities_are_the_households_and_the_strategy_only_prices_them() -> None:
    h = home(3, strategy="zic")
    made = make_strategy(h).quotes(NOON, TZ, GRID, 0)
    assert [(q.side, q.quantity_wh, q.source) for q in made] == offers(h, NOON, TZ, 0)
    assert made and all(q.side == "ask" for q in made)  # noon sun on 6 kW


def test_the_bandit_learns_the_highest_price_the_market_still_takes() -> None:
    """Buyers take an ask at up to 60 % of the spread, at its price: the best arm asks just
    under that. The bandit must find it, and its greedy choice must be that arm."""
    low, high = GRID.sell_price, GRID.buy_price
    limit = low + (high - low) * Decimal("0.6")
    trader = Bandit(home(0, size=1, strategy="bandit"))
    offered = 500

    def market(price: Decimal) -> list[Trade]:
        return [Trade("ask", offered, price, "solar")] if price <= limit else []

    for n in range(600):
        slot = Slot(NOON.start + 86400 * n, NOON.start + 86400 * n + 60)  # noon, day after day
        made = trader.quotes(slot, TZ, GRID, 0)
        assert len(made) == 1 and made[0].side == "ask"
        offered = made[0].quantity_wh
        trader.settled(slot, market(made[0].price))
    prices = [low + PRICE_TICK * ((int((high - low) / PRICE_TICK)) * (a + 1) // (Bandit.ARMS + 1))
              for a in range(Bandit.ARMS)]
    best = max(a for a, p in enumerate(prices) if p <= limit)
    values = trader.value["ask"]
    assert values.index(max(values)) == best, values
    assert all(v == 0 for a, v in enumerate(values) if prices[a] > limit)  # never paid above the limit


def test_a_slot_without_trades_teaches_the_bandit_that_its_arm_paid_nothing() -> None:
    trader = Bandit(home(0, size=1, strategy="bandit"))
    made = trader.quotes(NOON, TZ, GRID, 0)
    trader.settled(NOON, [])
    assert sum(trader.pulls["ask"]) == 1 and max(trader.value["ask"]) == 0.0 and made


def test_a_plug_in_from_a_file_prices_the_households_offers(tmp_path: Path) -> None:
    plugin = tmp_path / "mine.py"
    plugin.write_text(
        "from decimal import Decimal\n"
        "from services.participants.strategies import Strategy\n"
        "class Fixed(Strategy):\n"
        "    def price(self, slot, side, grid):\n"
        "        return Decimal('0.0725')\n")
    found = strategy_class(f"{plugin}:Fixed")
    assert issubclass(found, Strategy)
    made = make_strategy(home(strategy=f"{plugin}:Fixed")).quotes(NOON, TZ, GRID, 0)
    assert made and all(q.price == Decimal("0.0725") for q in made)


@pytest.mark.parametrize(("name", "says"), [
    ("greedy", "'greedy' is no strategy: one of baseline, zic, bandit, arbitrage"),
    ("nowhere.py:X", "no file nowhere.py"),
    ("no_such_module_here:X", "cannot be imported"),
    ("services.participants.profiles:community", "has no class community with quotes() and settled()"),
])
def test_a_wrong_strategy_is_a_clear_error(name: str, says: str) -> None:
    with pytest.raises(ValueError) as error:
        strategy_class(name)
    assert says in str(error.value)


def test_the_default_community_trades_with_the_built_in_strategies() -> None:
    assert {type(make_strategy(h)) for h in community(10, 7)} == {Baseline, Zic}


def test_bandits_share_one_price_grid_so_that_an_ask_and_a_bid_can_meet() -> None:
    asks, bids = Bandit(home(0, strategy="bandit")), Bandit(home(1, strategy="bandit"))
    levels = set()
    for arm in range(Bandit.ARMS):
        asks.arm = bids.arm = lambda slot, side, arm=arm: arm  # type: ignore[method-assign]
        ask, bid = asks.price(NOON, "ask", GRID), bids.price(NOON, "bid", GRID)
        assert GRID.sell_price < ask < GRID.buy_price and GRID.sell_price < bid < GRID.buy_price
        levels.add(ask)
        assert bid == bids.price(NOON, "bid", GRID)
    bids.arm = lambda slot, side: Bandit.ARMS - 1 - 4  # type: ignore[method-assign]
    asks.arm = lambda slot, side: 4  # type: ignore[method-assign]
    assert asks.price(NOON, "ask", GRID) == bids.price(NOON, "bid", GRID)  # the middle level, from both sides
    assert len(levels) == Bandit.ARMS


def test_the_plug_in_example_of_the_scenario_docs_runs(tmp_path: Path) -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "scenarios.md").read_text()
    code = re.findall(r"^```python\n(.*?)^```", docs, re.S | re.M)
    assert len(code) == 1
    (tmp_path / "halfway.py").write_text(code[0])
    made = make_strategy(home(strategy=f"{tmp_path / 'halfway.py'}:HalfWay")).quotes(NOON, TZ, GRID, 0)
    assert made and all(q.price == Decimal("0.0724") for q in made)  # (0.0690 + 0.0759) / 2 = 0.07245, half to even


@pytest.mark.parametrize(("code", "says"), [
    ("def broken(:\n", "cannot be imported (SyntaxError"),
    ("raise RuntimeError('no')\n", "cannot be imported (RuntimeError: no)"),
    ("from services.participants.strategies import Baseline\nclass P(Baseline):\n"
     "    def __init__(self):\n        pass\n", "P(household) fails (TypeError"),
])
def test_a_plug_in_that_fails_is_refused_in_one_line(tmp_path: Path, code: str, says: str) -> None:
    (tmp_path / "bad.py").write_text(code)
    with pytest.raises(ValueError) as error:
        strategy_class(f"{tmp_path / 'bad.py'}:P")
    assert says in str(error.value)


def test_a_plug_in_may_use_dataclasses(tmp_path: Path) -> None:
    (tmp_path / "dc.py").write_text(
        "from dataclasses import dataclass\n"
        "from services.participants.strategies import Baseline\n"
        "@dataclass\nclass Knob:\n    ticks: int = 1\n"
        "class WithKnob(Baseline):\n    pass\n")
    assert strategy_class(f"{tmp_path / 'dc.py'}:WithKnob").__name__ == "WithKnob"


def test_the_battery_trader_charges_off_peak_buys_at_midday_and_sells_in_the_evening_and_at_the_peak() -> None:
    from services.participants.strategies import Arbitrage

    battery = Household("h001", seed=7, solar_peak_w=0, base_load_w=300, battery_wh=10_000, battery_power_w=4000,
                        strategy="arbitrage", index=1, size=20, battery_efficiency=900, soc_min=100, soc_max=900)
    trader = make_strategy(battery)
    assert isinstance(trader, Arbitrage)
    peak, cheap = GridPrices(Decimal("0.15"), Decimal("0.069")), GridPrices(Decimal("0.0759"), Decimal("0.069"))
    day = 1782000000 - 1782000000 % 86400  # 2026-06-21 00:00 UTC

    def slot(hour: int) -> Slot:
        return Slot(day + hour * 3600, day + hour * 3600 + 900)

    trader.quotes(slot(2), TZ, cheap, 5000)  # the first price it sees: nothing to compare it with
    assert trader.grid_charge_wh(slot(2)) == 0
    at_peak = trader.quotes(slot(8), TZ, peak, 5000)  # the dearest it has seen: it sells, even in the morning
    assert [q.side for q in at_peak] == ["ask"] and 0 < at_peak[0].quantity_wh < 1000  # its power less its own load
    made = trader.quotes(slot(23), TZ, cheap, 5000)  # back to the cheap price: charge from the grid
    assert trader.grid_charge_wh(slot(23)) == 1000 and not [q for q in made if q.side == "ask"]
    assert trader.grid_charge_wh(slot(23)) == 0  # once
    midday = [q for q in Arbitrage(battery).quotes(slot(12), TZ, cheap, 5000) if q.side == "bid" and q.quantity_wh
              == 1000]
    assert midday and GRID.sell_price < midday[0].price < cheap.buy_price  # its neighbours' surplus, over the grid's
    evening = Arbitrage(battery).quotes(slot(19), TZ, cheap, 5000)  # it buys nothing, and sells within its power
    assert [(q.side, q.source) for q in evening] == [("ask", "bess")] and 0 < evening[0].quantity_wh < 1000
    assert cheap.sell_price < evening[0].price < cheap.buy_price
    assert not [q for q in Arbitrage(battery).quotes(slot(19), TZ, cheap, 1000) if q.side == "ask"]  # at its floor


def test_energy_the_trader_charges_from_the_grid_goes_through_the_meter_into_the_battery() -> None:
    from services.participants.profiles import deliver, load_wh

    battery = Household("h001", seed=7, solar_peak_w=0, base_load_w=300, battery_wh=10_000, battery_power_w=4000,
                        strategy="arbitrage", battery_efficiency=810)
    night = Slot(1782032400, 1782033300)
    plain = deliver(battery, night, TZ, 2000, {}, 0)
    charged = deliver(battery, night, TZ, 2000, {}, 0, grid_charge_wh=1000)
    load = load_wh(battery, night, TZ)
    assert plain.import_wh == 0 and plain.self_consumed_wh == {"bess": load}  # alone, its battery covers the night
    # charging from the grid, it takes its load from the grid too: no loss both ways
    assert charged.import_wh == load + 1000 and "bess" not in charged.self_consumed_wh
    assert charged.charged_from_import_wh == 1000 and charged.soc_wh == 2000 + 900  # 90 % each way
