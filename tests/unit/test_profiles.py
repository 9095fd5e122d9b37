"""A simulated household's meter: what it bought for a slot comes through its meter before
its battery covers anything, so bought energy is used, not booked as unconsumed."""

from __future__ import annotations

from services.participants.profiles import Household, deliver, load_wh, solar_wh
from shared.market import Slot
from shared.market.timezones import zone

NIGHT = Slot(1782032400, 1782032460)  # 2026-06-21 02:00 in Vancouver: no sun
TZ = zone("America/Vancouver")
HOME = Household("h001", seed=3, solar_peak_w=4000, base_load_w=600, battery_wh=10_000, battery_power_w=5000,
                 strategy="baseline")


def test_what_it_bought_is_imported_and_the_battery_covers_only_the_rest() -> None:
    load = load_wh(HOME, NIGHT, TZ)
    assert solar_wh(HOME, NIGHT, TZ) == 0 and load > 2
    alone = deliver(HOME, NIGHT, TZ, soc_wh=5_000, sold={})
    assert (alone.import_wh, alone.self_consumed_wh.get("bess")) == (0, load)  # its battery covers the night
    bought = deliver(HOME, NIGHT, TZ, soc_wh=5_000, sold={}, bought_wh=load // 2)
    assert bought.import_wh == load // 2  # the energy it bought arrives and is used
    assert bought.self_consumed_wh.get("bess") == load - load // 2 and bought.soc_wh == 5_000 - (load - load // 2)
    more = deliver(HOME, NIGHT, TZ, soc_wh=5_000, sold={}, bought_wh=load * 2)  # bought more than it needs:
    assert "bess" not in more.self_consumed_wh and more.charged_from_import_wh == load  # the rest charges
    assert more.import_wh == 2 * load and more.soc_wh == 5_000 + load  # its battery, through its meter
    without = Household("h002", seed=3, solar_peak_w=0, base_load_w=600, battery_wh=0, battery_power_w=0,
                        strategy="baseline")
    assert deliver(without, NIGHT, TZ, soc_wh=0, sold={}, bought_wh=10 * load).import_wh == load_wh(without, NIGHT, TZ)


def test_an_ev_charges_its_days_energy_from_when_it_comes_home() -> None:
    from datetime import datetime

    from services.participants.profiles import ev_wh

    ev = Household("h002", seed=5, solar_peak_w=0, base_load_w=400, battery_wh=0, battery_power_w=0,
                   strategy="zic", ev_daily_wh=9000, ev_charger_w=3700)
    day = int(datetime(2026, 6, 22, tzinfo=TZ).timestamp())
    minutes = [Slot(day + m * 60, day + m * 60 + 60) for m in range(24 * 60)]
    drawn = [ev_wh(ev, s, TZ) for s in minutes]
    charging = [m for m, wh in enumerate(drawn) if wh]
    today = [m for m in charging if m >= 16 * 60]
    assert today and today[0] <= 20 * 60  # home between 16:00 and 20:00
    assert today == list(range(today[0], today[-1] + 1))  # at full power, without a break, until it is full
    assert abs(sum(drawn[m] for m in today) - 9000) <= len(today)  # the day's energy, within a Wh a minute
    assert max(drawn) == 3700 * 60 // 3600
    assert load_wh(ev, minutes[today[0]], TZ) > load_wh(Household("h002", 5, 0, 400, 0, 0, "zic"), minutes[today[0]],
                                                        TZ)


def test_a_heat_pump_draws_more_in_the_cold_and_about_its_heat_over_its_cop_in_a_year() -> None:
    from datetime import datetime

    from services.participants.fielddata import Site, heat_pump_per_kwh
    from services.participants.profiles import heat_pump_wh

    berlin = zone("Europe/Berlin")
    site = Site("dwd-try-04")
    hp = Household("h003", seed=9, solar_peak_w=0, base_load_w=400, battery_wh=0, battery_power_w=0,
                   strategy="zic", site=site, heat_annual_wh=12_000_000, heat_pump_w=6000)

    def week(month: int) -> int:
        start = int(datetime(2026, month, 10, tzinfo=berlin).timestamp())
        return sum(heat_pump_wh(hp, Slot(start + q * 900, start + q * 900 + 900)) for q in range(7 * 96))

    assert week(1) > 4 * week(7)
    per_kwh = heat_pump_per_kwh(site).watts.sum() / 1000  # kWh of electricity for 1 kWh of heat a year
    assert 1 / 4.0 < per_kwh < 1 / 2.5  # a seasonal COP between 2.5 and 4 near Berlin
