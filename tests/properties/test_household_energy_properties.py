"""A simulated household's meter always matches what happened, for every device mix (PV
from a synthetic curve or from field data, a battery with losses and state-of-charge
bounds, an EV, a heat pump, any load profile) and whatever it sold and bought: per slot,
what it used is what it imported plus what it used of its own; what it produced is what it
used, exported and stored; the battery stays within its bounds and its power, and loses
energy only through its efficiency."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from services.participants.fielddata import Site
from services.participants.profiles import Household, deliver, load_wh, solar_wh
from shared.market import Slot
from shared.market.timezones import zone

TZ = zone("Europe/Berlin")
START = 1783029600  # 2026-07-03 00:00 in Berlin: slots are drawn over the year from here
SITES = [None, Site("dwd-try-04"), Site("clear-sky", 52.5, 13.4)]


@st.composite
def households(draw: st.DrawFn) -> Household:
    site = draw(st.sampled_from(SITES))
    battery = draw(st.sampled_from([0, 5000, 13500]))
    soc_min = draw(st.integers(0, 400))
    heat = site is not None and site.weather != "clear-sky" and draw(st.booleans())
    ev = draw(st.booleans())
    return Household(
        "h", draw(st.integers(0, 2**31)), solar_peak_w=draw(st.sampled_from([0, 3000, 9000])),
        base_load_w=draw(st.integers(100, 1500)), battery_wh=battery,
        battery_power_w=draw(st.integers(1000, 8000)) if battery else 0, strategy="zic", site=site,
        solar_tilt=draw(st.integers(0, 90)), solar_azimuth=draw(st.integers(0, 360)),
        load=draw(st.sampled_from(["synthetic", "bdew-h25"])), annual_wh=draw(st.integers(1_000_000, 6_000_000)),
        battery_efficiency=draw(st.sampled_from([1000, 950, 850])), soc_min=soc_min,
        soc_max=draw(st.integers(soc_min + 100, 1000)),
        ev_daily_wh=draw(st.integers(2000, 20000)) if ev else 0, ev_charger_w=draw(st.sampled_from([3700, 11000])),
        heat_annual_wh=draw(st.integers(5_000_000, 20_000_000)) if heat else 0,
        heat_pump_w=draw(st.integers(2000, 6000)))


@settings(max_examples=300, deadline=None)
@given(h=households(), at=st.integers(0, 365 * 96 - 1), seconds=st.sampled_from([60, 900]),
       soc_share=st.floats(0, 1), sold=st.dictionaries(st.sampled_from(["solar", "bess"]), st.integers(0, 3000)),
       bought=st.integers(0, 3000), grid_charge=st.sampled_from([0, 0, 500, 5000]))
def test_energy_is_conserved_per_household_and_slot(h: Household, at: int, seconds: int, soc_share: float,
                                                     sold: dict[str, int], bought: int, grid_charge: int) -> None:
    slot = Slot(START + at * 900, START + at * 900 + seconds)
    low, high = h.battery_wh * h.soc_min // 1000, h.battery_wh * h.soc_max // 1000
    soc = low + int((high - low) * soc_share)
    d = deliver(h, slot, TZ, soc, sold, bought, grid_charge)
    gen, used = solar_wh(h, slot, TZ), load_wh(h, slot, TZ)
    for value in (d.import_wh, *d.export_wh.values(), *d.self_consumed_wh.values(), d.soc_wh):
        assert value >= 0
    own, power = d.self_consumed_wh, h.battery_power_w * seconds // 3600
    # what it used came from somewhere; the rest of its import went into its battery
    assert d.import_wh + own.get("solar", 0) + own.get("bess", 0) == used + d.charged_from_import_wh
    stored_from_sun = gen - d.export_wh.get("solar", 0) - own.get("solar", 0)  # what the battery took
    assert stored_from_sun >= 0 and d.charged_from_import_wh >= 0
    assert stored_from_sun + d.charged_from_import_wh <= power  # charging, from both, within its power
    assert d.charged_from_import_wh <= max(bought - (used - own.get("solar", 0)), 0) + grid_charge
    given = own.get("bess", 0) + d.export_wh.get("bess", 0)
    assert given <= power  # its own use and what it sent out share one limit
    assert low <= d.soc_wh <= high
    taken = stored_from_sun + d.charged_from_import_wh
    lost = soc + taken - given - d.soc_wh
    if h.battery_efficiency == 1000:
        assert lost == 0
    else:  # its losses, and only its losses, to within a Wh of rounding each way
        assert lost >= 0
        way = math.sqrt(h.battery_efficiency / 1000)
        assert lost <= taken * (1 - way) + given * (1 / way - 1) + 3
    if not h.battery_wh:
        assert given == 0 and taken == 0
