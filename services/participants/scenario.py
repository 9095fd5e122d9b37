"""Scenario files: a simulated community and its market in one TOML file, run with
``microte demo SCENARIO`` or compared with ``microte compare SCENARIO``.

A scenario names the market (time zone, local start, rounds and their length, pricing
rule), the grid tariff (base price, fee ratio, time-of-use table) and the community (seed,
how households send their requests, and the households themselves, one group at a time,
each value fixed or drawn from a distribution). Every value is checked on loading; an error
names the file, the place in it and what is allowed. Numbers are read as decimals, never as
binary floats, so prices and kilowatts are exact. The format: docs/scenarios.md.
"""

from __future__ import annotations

import importlib.util
import json
import random
import tomllib
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfoNotFoundError

from services.participants.fielddata import LOADS, WEATHER, MeasuredError, Site, measured
from services.participants.profiles import Household
from services.participants.strategies import strategy_class
from shared.runtime.settings import SettingsError, from_env

ALTERNATE = ("baseline", "zic")  # the default community's strategies, by turns

# [market]: option name -> the type of its value
MARKET_KEYS = {"timezone": str, "start": str, "rounds": int, "round_seconds": int, "rule": str}
# [tariff]: key -> the MICROTE_* setting it feeds
TARIFF_KEYS = {"grid_price": "MICROTE_GRID_PRICE", "fee_ratio": "MICROTE_FEE_RATIO",
               "time_of_use": "MICROTE_TIME_OF_USE", "price_cap": "MICROTE_PRICE_CAP"}
COMMUNITY_KEYS = {"seed": int, "participants": int, "aggregators": int, "requests": str}
# [[households]]: key -> (unit factor to whole W or Wh, or None for a share / a word)
GROUP_KEYS = {"count": None, "solar_kw": 1000, "solar_share": None, "base_load_w": 1, "battery_kwh": 1000,
              "battery_kw": 1000, "battery_share": None, "strategy": None, "solar_tilt": 1, "solar_azimuth": 1,
              "load": None, "annual_kwh": 1000, "battery_efficiency": None, "battery_soc_min": None,
              "battery_soc_max": None, "ev_share": None, "ev_kwh_per_day": 1000, "ev_kw": 1000,
              "heat_pump_share": None, "heat_kwh": 1000, "heat_pump_kw": 1000, "measured": None,
              "strategy_params": None}
TOP_KEYS = {"name", "description", "location", "market", "tariff", "community", "households"}
LOCATION_KEYS = {"weather": str, "latitude": object, "longitude": object}
MOST_W = 10_000_000  # a household's PV, battery or load beyond 10 MW (MWh) is a typing error
MOST_A_YEAR_WH = 1_000_000_000  # and a year's consumption or heat beyond 1 GWh
YEARLY = {"annual_kwh", "heat_kwh"}


class ScenarioError(ValueError):
    """A scenario file that cannot be run; the message says where and why."""


@dataclass(frozen=True)
class Spread:
    """A value of a group: fixed (``low == high``), uniform between two bounds, or one of
    several choices; whole W or Wh."""
    low: int = 0
    high: int = 0
    choices: tuple[int, ...] = ()

    def draw(self, rng: random.Random) -> int:
        if self.choices:
            return rng.choice(self.choices)
        return self.low if self.low == self.high else rng.randint(self.low, self.high)


@dataclass(frozen=True)
class Group:
    count: int
    solar_w: Spread
    solar_share: Decimal
    base_load_w: Spread
    battery_wh: Spread
    battery_power_w: Spread
    battery_share: Decimal
    strategy: str  # a strategy (built-in or plug-in), or "alternate" (baseline and zic by turns, as by default)
    solar_tilt: Spread = Spread(30, 30)  # degrees from horizontal (with a [location] only)
    solar_azimuth: Spread = Spread(180, 180)  # degrees from north
    load: str = "synthetic"  # or "bdew-h25", scaled to annual_wh
    annual_wh: Spread = Spread(0, 0)
    battery_efficiency: int = 1000  # per mille: round trip
    soc_min: int = 0  # per mille of the capacity
    soc_max: int = 1000
    ev_share: Decimal = Decimal(0)
    ev_daily_wh: Spread = Spread(0, 0)
    ev_charger_w: Spread = Spread(0, 0)
    heat_pump_share: Decimal = Decimal(0)
    heat_annual_wh: Spread = Spread(0, 0)
    heat_pump_w: Spread = Spread(0, 0)
    measured: str = ""  # a CSV file of the households' own measured series
    strategy_params: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Scenario:
    path: Path
    name: str
    description: str
    market: dict[str, Any]  # option -> value: timezone, start, rounds, round_seconds, rule
    tariff: dict[str, str]  # MICROTE_* setting -> its text
    community: dict[str, Any]  # option -> value: seed, participants, aggregators, requests
    groups: tuple[Group, ...]
    site: Site | None = None  # [location]: PV from field data (services/participants/fielddata.py)

    def households(self, seed: int) -> list[Household]:
        """The households of the groups, drawn with ``seed``: the same seed, the same homes."""
        rng = random.Random(seed)
        size = sum(g.count for g in self.groups)
        homes: list[Household] = []
        for group in self.groups:
            for _ in range(group.count):
                i = len(homes)
                solar = group.solar_w.draw(rng) if rng.random() < group.solar_share else 0
                battery = group.battery_wh.draw(rng) if rng.random() < group.battery_share else 0
                strategy = group.strategy if group.strategy != "alternate" else ALTERNATE[i % 2]
                home = Household(participant_id=f"h{i:03d}", seed=rng.randrange(2**31), solar_peak_w=solar,
                                 base_load_w=group.base_load_w.draw(rng), battery_wh=battery,
                                 battery_power_w=group.battery_power_w.draw(rng) if battery else 0,
                                 strategy=strategy, index=i, size=size)
                # What came later is drawn from a generator of the household's own, so that a
                # scenario written before it still gives the same households.
                more = random.Random(f"devices|{home.seed}")
                ev = more.random() < group.ev_share
                heat = more.random() < group.heat_pump_share
                homes.append(replace(
                    home, site=self.site, solar_tilt=group.solar_tilt.draw(more),
                    solar_azimuth=group.solar_azimuth.draw(more), load=group.load,
                    annual_wh=group.annual_wh.draw(more), battery_efficiency=group.battery_efficiency,
                    soc_min=group.soc_min, soc_max=group.soc_max,
                    ev_daily_wh=group.ev_daily_wh.draw(more) if ev else 0,
                    ev_charger_w=group.ev_charger_w.draw(more) if ev else 0,
                    heat_annual_wh=group.heat_annual_wh.draw(more) if heat else 0,
                    heat_pump_w=group.heat_pump_w.draw(more) if heat else 0, measured=group.measured,
                    strategy_params=group.strategy_params))
        return homes


def load(path: str | Path) -> Scenario:
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = tomllib.load(f, parse_float=Decimal)
    except OSError as exc:
        raise ScenarioError(f"scenario {path}: cannot be read ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"scenario {path}: not TOML: {exc}") from None
    where = _Where(path)
    where.keys(data, TOP_KEYS, "the top level")
    market = where.table(data, "market", MARKET_KEYS)
    tariff = {TARIFF_KEYS[k]: _decimal_text(v, where.at("tariff", k))
              for k, v in where.table(data, "tariff", dict.fromkeys(TARIFF_KEYS, object)).items()}
    try:  # the tariff as the services take it, checked here so that an error names the file
        from_env({**tariff, "MICROTE_TIMEZONE": market.get("timezone", "UTC")})
    except SettingsError as exc:
        raise ScenarioError(f"scenario {path}: [tariff]: {exc}") from None
    except ZoneInfoNotFoundError:
        pass  # the time zone's own check says it better (microte demo: market.timezone)
    community = where.table(data, "community", COMMUNITY_KEYS)
    for key in ("participants", "rounds", "round_seconds"):
        for section in (community, market):
            if key in section and section[key] < 1:
                raise ScenarioError(f"{where.at('community' if section is community else 'market', key)}: "
                                    f"must be 1 or more, not {section[key]}")
    if community.get("aggregators", 0) < 0:
        raise ScenarioError(f"{where.at('community', 'aggregators')}: must be 0 or more")
    if "requests" in community and community["requests"] not in ("round", "single"):
        raise ScenarioError(f"{where.at('community', 'requests')}: 'round' or 'single', not {community['requests']!r}")
    raw_groups = data.get("households", [])
    if not isinstance(raw_groups, list) or not all(isinstance(g, dict) for g in raw_groups):
        raise ScenarioError(f"scenario {path}: households must be an array of tables, [[households]]")
    site = _site(where.table(data, "location", LOCATION_KEYS), where) if "location" in data else None
    groups = tuple(_group(g, where, n) for n, g in enumerate(raw_groups, 1))
    for n, g in enumerate(raw_groups, 1):
        if site is None and {"solar_tilt", "solar_azimuth"} & set(g):
            raise ScenarioError(f"{where.at(f'households #{n}')}: solar_tilt and solar_azimuth need a [location] "
                                "with its weather (without one, PV follows a synthetic curve)")
        if groups[n - 1].heat_pump_share and (site is None or site.weather == "clear-sky"):
            raise ScenarioError(f"{where.at(f'households #{n}', 'heat_pump_share')}: heat pumps follow the "
                                "temperature of a weather file: [location] weather = 'dwd-try-..' or 'tmy3-..'")
    if groups and "participants" in community:
        raise ScenarioError(f"scenario {path}: [community] participants and [[households]] both say how many "
                            "households there are: leave out one")
    for key in ("name", "description"):
        if not isinstance(data.get(key, ""), str):
            raise ScenarioError(f"scenario {path}: {key} must be a string")
    needs = ({"pvlib"} if site else set()) | ({"demandlib"} if any(
        g.load == "bdew-h25" or g.heat_pump_share for g in groups) or (site and site.weather.startswith("dwd-try-"))
        else set())
    if site and not groups:
        raise ScenarioError(f"scenario {path}: [location] sets the PV of [[households]] groups; the default "
                            "community of [community] participants has synthetic profiles: describe the households")
    missing = sorted(n for n in needs if importlib.util.find_spec(n) is None)
    if missing:
        raise ScenarioError(f"scenario {path}: its field data needs {' and '.join(missing)}, not installed here: "
                            "pip install 'microte[profiles]' (make venv installs them)")
    return Scenario(path=path, name=str(data.get("name", path.stem)), description=str(data.get("description", "")),
                    market=market, tariff=tariff, community=community, groups=groups, site=site)


def _site(table: dict[str, Any], where: _Where) -> Site:
    """[location]: the weather the panels get, and for the clear-sky model where they are."""
    name = table.get("weather")
    if name not in WEATHER:
        raise ScenarioError(f"{where.at('location', 'weather')}: one of {', '.join(WEATHER)}, not {_shown(name)}")
    place: dict[str, Any] = {k: table[k] for k in ("latitude", "longitude") if k in table}
    if name != "clear-sky":
        if place:
            raise ScenarioError(f"{where.at('location')}: weather {name} is measured at its own station; "
                                "latitude and longitude go with weather = 'clear-sky' only")
        return Site(name)
    for key, most in (("latitude", 90), ("longitude", 180)):
        value = place.get(key)
        if isinstance(value, bool) or not isinstance(value, int | Decimal) or not _finite(value) \
                or not -most <= value <= most:
            raise ScenarioError(f"{where.at('location', key)}: degrees from -{most} to {most} are required "
                                f"with the clear-sky weather, not {_shown(value)}")
    return Site(name, float(place["latitude"]), float(place["longitude"]))


class _Where:
    """Where a value sits, for error messages, and the checks of a table's keys and types."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def at(self, *place: str) -> str:
        return f"scenario {self.path}: {'.'.join(place)}"

    def keys(self, table: dict[str, Any], known: set[str] | dict[str, Any], what: str) -> None:
        unknown = sorted(set(table) - set(known))
        if unknown:
            raise ScenarioError(f"scenario {self.path}: {what} has no key {', '.join(map(repr, unknown))} "
                                f"(known: {', '.join(sorted(known))})")

    def table(self, data: dict[str, Any], name: str, known: dict[str, Any]) -> dict[str, Any]:
        table = data.get(name, {})
        if not isinstance(table, dict):
            raise ScenarioError(f"scenario {self.path}: {name} must be a table, [{name}]")
        self.keys(table, known, f"[{name}]")
        for key, value in table.items():
            kind = known[key]
            if kind is not object and (not isinstance(value, kind) or isinstance(value, bool)):
                raise ScenarioError(f"{self.at(name, key)}: must be {_KIND[kind]}, not {_shown(value)}")
        return dict(table)


_KIND = {str: "a string", int: "a whole number"}


def _finite(value: int | Decimal) -> bool:
    """Not TOML's nan or inf (``parse_float=Decimal`` makes them Decimal NaN and Infinity)."""
    return isinstance(value, int) or value.is_finite()


def _shown(value: Any) -> str:
    """A value as the file writes it: numbers plain, the rest quoted."""
    return str(value) if isinstance(value, int | Decimal) and not isinstance(value, bool) else repr(value)


def _decimal_text(value: Any, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        raise ScenarioError(f"{where}: must be a number or a string, not {_shown(value)}")
    return str(value)


def _group(g: dict[str, Any], where: _Where, n: int) -> Group:
    place = f"households #{n}"
    where.keys(g, GROUP_KEYS, f"[[households]] #{n}")
    count = g.get("count")
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ScenarioError(f"{where.at(place, 'count')}: a whole number of 1 or more is required, not {_shown(count)}")
    strategy = g.get("strategy", "alternate")
    if not isinstance(strategy, str):
        raise ScenarioError(f"{where.at(place, 'strategy')}: must be a string, not {_shown(strategy)}")
    file, sep, attr = strategy.rpartition(":")
    if sep and file.endswith(".py") and not Path(file).is_absolute():  # a plug-in beside the scenario
        strategy = f"{where.path.parent / file}:{attr}"
    if strategy != "alternate":
        try:
            strategy_class(strategy)
        except ValueError as exc:
            raise ScenarioError(f"{where.at(place, 'strategy')}: {exc}" + ("" if sep else ", or 'alternate'")) from None

    params = _strategy_params(g.get("strategy_params", {}), strategy, where.at(place, "strategy_params"))

    def spread(key: str, default: Any) -> Spread:
        return _spread(g.get(key, default), GROUP_KEYS[key] or 1, where.at(place, key),
                       MOST_A_YEAR_WH if key in YEARLY else MOST_W)

    def share(key: str, default: Decimal) -> Decimal:
        value = g.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | Decimal) or not _finite(value) \
                or not 0 <= value <= 1:
            raise ScenarioError(f"{where.at(place, key)}: a share from 0 to 1 is required, not {_shown(value)}")
        return Decimal(value)

    def degrees(key: str, default: int, most: int) -> Spread:
        value = spread(key, default)
        if max((value.high, *value.choices)) > most:
            raise ScenarioError(f"{where.at(place, key)}: degrees from 0 to {most}")
        return value

    load = g.get("load", "synthetic")
    if load not in LOADS:
        raise ScenarioError(f"{where.at(place, 'load')}: one of {', '.join(LOADS)}, not {_shown(load)}")
    annual = spread("annual_kwh", 0)
    if (load == "bdew-h25") != ("annual_kwh" in g):
        raise ScenarioError(f"{where.at(place, 'annual_kwh')}: " + (
            "a household's annual consumption is needed with load = 'bdew-h25'" if load == "bdew-h25" else
            "goes with load = 'bdew-h25' (the synthetic load follows base_load_w)"))
    def per_mille(key: str, default: Decimal) -> int:
        return int(share(key, default) * 1000)

    soc_min, soc_max = per_mille("battery_soc_min", Decimal(0)), per_mille("battery_soc_max", Decimal(1))
    if soc_min >= soc_max:
        raise ScenarioError(f"{where.at(place, 'battery_soc_min')}: must be below battery_soc_max")
    efficiency = per_mille("battery_efficiency", Decimal(1))
    if not efficiency:
        raise ScenarioError(f"{where.at(place, 'battery_efficiency')}: a battery that gives nothing back")
    devices = {}
    for device, keys in (("ev_share", ("ev_kwh_per_day", "ev_kw")), ("heat_pump_share", ("heat_kwh", "heat_pump_kw"))):
        if device in g and not all(k in g for k in keys):
            raise ScenarioError(f"{where.at(place, device)}: needs {' and '.join(keys)} too")
        if device not in g and any(k in g for k in keys):
            raise ScenarioError(f"{where.at(place, next(k for k in keys if k in g))}: goes with {device}")
        devices.update({k: spread(k, 0) for k in keys})
    series = g.get("measured", "")
    if not isinstance(series, str):
        raise ScenarioError(f"{where.at(place, 'measured')}: a CSV file's path, not {_shown(series)}")
    if series:
        series = str(where.path.parent / series)
        if load != "synthetic" or "base_load_w" in g:
            raise ScenarioError(f"{where.at(place, 'measured')}: the measured load replaces load and base_load_w")
        try:
            measured(series)
        except MeasuredError as exc:
            raise ScenarioError(f"{where.at(place, 'measured')}: {exc}") from None
    solar = spread("solar_kw", 0)
    battery = spread("battery_kwh", 0)
    return Group(count=count, solar_w=solar, solar_share=share("solar_share", Decimal(1)), measured=series,
                 strategy_params=params,
                 battery_efficiency=efficiency, soc_min=soc_min, soc_max=soc_max,
                 ev_share=share("ev_share", Decimal(0)), ev_daily_wh=devices["ev_kwh_per_day"],
                 ev_charger_w=devices["ev_kw"], heat_pump_share=share("heat_pump_share", Decimal(0)),
                 heat_annual_wh=devices["heat_kwh"], heat_pump_w=devices["heat_pump_kw"],
                 base_load_w=spread("base_load_w", {"min": 250, "max": 900}), battery_wh=battery,
                 battery_power_w=spread("battery_kw", 5), battery_share=share("battery_share", Decimal(1)),
                 strategy=strategy, solar_tilt=degrees("solar_tilt", 30, 90),
                 solar_azimuth=degrees("solar_azimuth", 180, 360), load=load, annual_wh=annual)


def _strategy_params(table: Any, strategy: str, where: str) -> tuple[tuple[str, str], ...]:
    """``strategy_params = {name = value, ...}``: checked against what the strategy takes
    (its ``PARAMETERS``; a plug-in without them takes any), kept as written."""
    if not isinstance(table, dict):
        raise ScenarioError(f"{where}: a table, {{name = value, ...}}, not {_shown(table)}")
    if not table:
        return ()
    names = ALTERNATE if strategy == "alternate" else (strategy,)
    for name in names:
        known = strategy_class(name).PARAMETERS
        if known is None:
            continue
        unknown = sorted(set(table) - set(known))
        if unknown:
            raise ScenarioError(f"{where}: {name} takes no {', '.join(map(repr, unknown))} "
                                f"(it takes: {', '.join(sorted(known)) or 'nothing'})")
        for key, value in table.items():
            try:
                if isinstance(value, bool) or not isinstance(value, int | Decimal | str):
                    raise ValueError
                known[key](str(value))
            except ValueError:
                raise ScenarioError(f"{where}.{key}: {name} reads it as {known[key].__name__}, not "
                                    f"{_shown(value)}") from None
    return tuple(sorted((k, str(v)) for k, v in table.items()))


def _spread(value: Any, unit: int, where: str, most: int = MOST_W) -> Spread:
    """A number; ``{min = A, max = B}``, uniform; or ``{choices = [A, B, ...]}``; in whole W or Wh."""
    def whole(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int | Decimal) or not _finite(v) or v < 0:
            raise ScenarioError(f"{where}: {_shown(v)} is not a number of 0 or more")
        exact = Decimal(v) * unit
        if exact > most:
            raise ScenarioError(f"{where}: {v} is beyond what one household has ({most // 1000:,} kW or kWh)")
        if exact != exact.to_integral_value():
            raise ScenarioError(f"{where}: {v} is finer than 1 W (Wh)")
        return int(exact)

    if isinstance(value, dict):
        if set(value) == {"min", "max"}:
            low, high = whole(value["min"]), whole(value["max"])
            if low > high:
                raise ScenarioError(f"{where}: min {value['min']} is above max {value['max']}")
            return Spread(low, high)
        if set(value) == {"choices"} and isinstance(value["choices"], list) and value["choices"]:
            return Spread(choices=tuple(whole(v) for v in value["choices"]))
        raise ScenarioError(f"{where}: a number, {{min = A, max = B}} or {{choices = [A, B, ...]}}, not {value!r}")
    fixed = whole(value)
    return Spread(fixed, fixed)


def community_record(homes: list[Household], name: str = "", description: str = "",
                     charge: dict[tuple[int, int], dict[str, int]] | None = None) -> str:
    """Who a simulated region's households are and what they own, as the ledger keeps it
    (``RecordBatch.communities``; docs/ledger-schema.md, ``region_community``), and, from
    ``charge`` (``Tally.charge``), its batteries' state of charge at the end of each slot
    they delivered: ``[start, end, stored Wh of all, lowest and highest household's charge
    in per mille of its capacity]``, by slot."""
    def kilo(value: int) -> str:
        return str(Decimal(value) / 1000)

    capacity = {h.participant_id: h.battery_wh for h in homes if h.battery_wh}
    slots = []
    for (start, end), stored in sorted((charge or {}).items()):
        shares = [wh * 1000 // capacity[pid] for pid, wh in stored.items() if pid in capacity]
        if shares:
            slots.append([start, end, sum(wh for pid, wh in stored.items() if pid in capacity), min(shares),
                          max(shares)])
    return json.dumps({
        "name": name, "description": description,
        "households": [{"id": h.participant_id, "pv_kw": kilo(h.solar_peak_w), "battery_kwh": kilo(h.battery_wh),
                        "battery_kw": kilo(h.battery_power_w), "base_load_w": h.base_load_w, "strategy": h.strategy,
                        "load": "measured" if h.measured else h.load, "annual_kwh": kilo(h.annual_wh),
                        "ev_kwh_per_day": kilo(h.ev_daily_wh),
                        "ev_kw": kilo(h.ev_charger_w), "heat_kwh": kilo(h.heat_annual_wh),
                        "heat_pump_kw": kilo(h.heat_pump_w),
                        **({"solar_tilt": h.solar_tilt, "solar_azimuth": h.solar_azimuth} if h.site else {})}
                       for h in homes],
        "weather": next((h.site.described() for h in homes if h.site), "synthetic: a sine curve with random "
                        "clouds, the same every day of the year"),
        "battery": {"capacity_wh": sum(capacity.values()), "charge": slots}}, sort_keys=True)
