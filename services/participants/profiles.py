"""Seeded, reproducible households: solar, load and battery over delivery slots.

Pure: every value is a function of the household's seed and the slot, so a run can be
replayed exactly. Physical simulation only; what reaches the market is integer Wh.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from services.participants.fielddata import Site, h25, heat_pump_per_kwh, measured, pv_per_kw
from shared.market import Slot


@dataclass(frozen=True)
class Household:
    participant_id: str
    seed: int
    solar_peak_w: int  # 0: no panels
    base_load_w: int
    battery_wh: int  # 0: no battery
    battery_power_w: int
    strategy: str  # "baseline" or "zic"
    index: int = 0  # position in the community
    size: int = 1  # size of the community
    # Field data (services/participants/fielddata.py): with a site, PV from its weather
    # through pvlib, the panels tilted and facing as said; with load "bdew-h25", BDEW's
    # household profile scaled to ``annual_wh``. Without, the synthetic curves below.
    site: Site | None = None
    solar_tilt: int = 30  # degrees from horizontal
    solar_azimuth: int = 180  # degrees from north: 180 faces south
    load: str = "synthetic"
    annual_wh: int = 0
    # The battery: round-trip efficiency (half of its loss charging, half discharging) and
    # the share of its capacity it keeps between (its state-of-charge bounds), in per mille.
    battery_efficiency: int = 1000
    soc_min: int = 0
    soc_max: int = 1000
    # An electric vehicle (0: none): plugged in on arrival home (16:00-20:00, drawn each
    # day) it charges at ``ev_charger_w`` until it has the day's ``ev_daily_wh``.
    ev_daily_wh: int = 0
    ev_charger_w: int = 0
    # A heat pump (0: none): the house's heat demand (BDEW's profile for a detached house,
    # from the weather's temperature) over its COP at that temperature, at most ``heat_pump_w``.
    heat_annual_wh: int = 0
    heat_pump_w: int = 0
    # Its own measured series (a CSV file, ``fielddata.measured``): its load, and its PV if
    # the file has it, replayed as measured instead of a profile.
    measured: str = ""
    # Its strategy's parameters, (name, value as written), e.g. (("epsilon", "0.2"),).
    strategy_params: tuple[tuple[str, str], ...] = ()


def community(size: int, seed: int, battery_share: float = 0.3, solar_share: float = 0.6) -> list[Household]:
    rng = random.Random(seed)
    homes = []
    for i in range(size):
        has_solar = rng.random() < solar_share
        has_battery = has_solar and rng.random() < battery_share / max(solar_share, 1e-9)
        homes.append(Household(
            participant_id=f"h{i:03d}",
            seed=rng.randrange(2**31),
            solar_peak_w=rng.randrange(3000, 9000) if has_solar else 0,
            base_load_w=rng.randrange(250, 900),
            battery_wh=rng.choice((5000, 10000, 13500)) if has_battery else 0,
            battery_power_w=5000,
            strategy="baseline" if i % 2 == 0 else "zic",
            index=i,
            size=size,
        ))
    return homes


def noise(seed: int, slot: Slot, what: str) -> random.Random:
    digest = hashlib.blake2b(f"{seed}|{slot.start}|{what}".encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "big"))


def _local_hour(slot: Slot, tz: ZoneInfo) -> float:
    local = datetime.fromtimestamp((slot.start + slot.end) / 2, tz)
    return local.hour + local.minute / 60 + local.second / 3600


def solar_wh(h: Household, slot: Slot, tz: ZoneInfo) -> int:
    if h.measured and (pv := measured(h.measured).pv) is not None:
        return int(pv.wh(slot.start, slot.end))
    if not h.solar_peak_w:
        return 0
    if h.site is not None:
        return int(pv_per_kw(h.site, h.solar_tilt, h.solar_azimuth).wh(slot.start, slot.end) * h.solar_peak_w / 1000)
    hour = _local_hour(slot, tz)
    if not 6.0 < hour < 20.0:
        return 0
    clear_sky = math.sin(math.pi * (hour - 6.0) / 14.0) ** 1.5
    cloud = 0.6 + 0.4 * noise(h.seed, slot, "cloud").random()
    return int(h.solar_peak_w * clear_sky * cloud * slot.seconds / 3600)


def load_wh(h: Household, slot: Slot, tz: ZoneInfo) -> int:
    """All the household uses in the slot: its appliances, its EV and its heat pump."""
    return base_load_wh(h, slot, tz) + ev_wh(h, slot, tz) + heat_pump_wh(h, slot)


def base_load_wh(h: Household, slot: Slot, tz: ZoneInfo) -> int:
    """Its appliances and lights: as measured, BDEW's H25, or the synthetic curve."""
    if h.measured:
        return int(measured(h.measured).load.wh(slot.start, slot.end))
    if h.load == "bdew-h25":
        return _h25_wh(h, slot, tz)
    hour = _local_hour(slot, tz)
    shape = 1.0 + 1.2 * math.exp(-((hour - 7.5) ** 2) / 2) + 1.8 * math.exp(-((hour - 19.0) ** 2) / 3)
    jitter = 0.7 + 0.6 * noise(h.seed, slot, "load").random()
    return max(1, int(h.base_load_w * shape * jitter * slot.seconds / 3600))


def _h25_wh(h: Household, slot: Slot, tz: ZoneInfo) -> int:
    """BDEW's H25 scaled to the household's year, shifted by up to 45 minutes either way
    and varied slot by slot (a factor of 0.6 to 1.4, 1 on average), both seeded by the
    household: no two homes are copies, and each uses its annual energy on average."""
    shift = int(noise(h.seed, Slot(0, 1), "load-shift").uniform(-2700, 2700))
    start, end = slot.start - shift, slot.end - shift
    year = datetime.fromtimestamp(start, tz).year
    jitter = 0.6 + 0.8 * noise(h.seed, slot, "load").random()
    return max(1, int(h25(year, tz).wh(start, end) * h.annual_wh / 1000 * jitter))


def ev_wh(h: Household, slot: Slot, tz: ZoneInfo) -> int:
    """What its EV draws in the slot: from arrival home (16:00 to 20:00, drawn for each day)
    at full charger power until the day's energy is in (uncontrolled charging, as most EVs
    charge today), by the next morning at the latest."""
    if not h.ev_daily_wh or not h.ev_charger_w:
        return 0
    day = datetime.fromtimestamp(slot.start, tz).replace(hour=0, minute=0, second=0, microsecond=0)
    total = 0.0
    for midnight in (day - timedelta(days=1), day):
        day_start = int(midnight.timestamp())
        arrive = midnight + timedelta(hours=16 + 4 * noise(h.seed, Slot(day_start, day_start + 1), "ev").random())
        start = int(arrive.timestamp())
        end = min(start + h.ev_daily_wh * 3600 // h.ev_charger_w, start + 15 * 3600)  # gone by the morning
        overlap = min(end, slot.end) - max(start, slot.start)
        total += max(overlap, 0) * h.ev_charger_w / 3600
    return int(total)


def heat_pump_wh(h: Household, slot: Slot) -> int:
    """What its heat pump draws: the heat demand's electricity at the hour's COP, varied
    slot by slot like the load (0.8 to 1.2), at most its power."""
    if not h.heat_annual_wh or h.site is None:
        return 0
    jitter = 0.8 + 0.4 * noise(h.seed, slot, "heat").random()
    wh = heat_pump_per_kwh(h.site).wh(slot.start, slot.end) * h.heat_annual_wh / 1000 * jitter
    return int(min(wh, h.heat_pump_w * slot.seconds / 3600))


@dataclass(frozen=True)
class Delivery:
    """What the meter measures for one slot, and the battery's charge after it."""

    import_wh: int
    export_wh: dict[str, int]
    self_consumed_wh: dict[str, int]
    soc_wh: int
    charged_from_import_wh: int = 0  # of the import, what went into the battery


def deliver(h: Household, slot: Slot, tz: ZoneInfo, soc_wh: int, sold: dict[str, int],
            bought_wh: int = 0, grid_charge_wh: int = 0) -> Delivery:
    """Own load first, then what was sold, then the battery charges from what is left. Load
    that solar does not cover comes first from what the household bought for the slot (it
    arrives through its meter), and only the rest from its battery, then the grid. What the
    battery sold goes out after that; and when the sun gave less than the household sold
    as solar, its battery fills the gap as far as it can (the market books that as
    ``bess_cover``). What it bought beyond its load, and then ``grid_charge_wh`` from the
    grid (its trader's choice), charge the battery through the meter. The battery keeps
    between its state-of-charge bounds and within its power in each direction; its
    round-trip loss is split evenly between charging and discharging, so it stores less
    than it takes and gives less than it loses."""
    gen, load = solar_wh(h, slot, tz), load_wh(h, slot, tz)
    own_solar = min(gen, load)
    surplus, deficit = gen - own_solar, load - own_solar
    power_wh = h.battery_power_w * slot.seconds // 3600
    low, high = h.battery_wh * h.soc_min // 1000, h.battery_wh * h.soc_max // 1000
    way = math.sqrt(h.battery_efficiency / 1000)  # the efficiency of each way
    sold_solar, sold_bess = sold.get("solar", 0), sold.get("bess", 0)
    soc = soc_wh

    def take(offered: int, power_left: int) -> int:
        """Store up to ``offered`` Wh: what it takes, after adding what it keeps of it."""
        nonlocal soc
        taken = min(offered, power_left, max(int((high - soc) / way), 0))
        soc += int(taken * way)
        return taken

    def draw(wanted: int, power_left: int) -> int:
        """Give out up to ``wanted`` Wh: what it gives, after taking it from the charge."""
        nonlocal soc
        given = min(wanted, power_left, max(int((soc - low) * way), 0))
        soc -= min(math.ceil(given / way), soc - low) if given else 0
        return given

    charge = take(max(surplus - sold_solar, 0), power_wh)
    # Charging from the grid, it takes its load from the grid too (never both ways at once).
    discharge = 0 if grid_charge_wh else draw(max(deficit - bought_wh, 0), power_wh)
    to_network = draw(sold_bess + max(sold_solar - surplus, 0), power_wh - discharge)
    from_import = take(max(bought_wh - deficit, 0) + grid_charge_wh, power_wh - charge)
    export = {k: v for k, v in (("solar", surplus - charge), ("bess", to_network)) if v}
    own = {k: v for k, v in (("solar", own_solar), ("bess", discharge)) if v}
    return Delivery(import_wh=deficit - discharge + from_import, export_wh=export, self_consumed_wh=own, soc_wh=soc,
                    charged_from_import_wh=from_import)
