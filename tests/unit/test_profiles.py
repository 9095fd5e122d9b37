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
    more = deliver(HOME, NIGHT, TZ, soc_wh=5_000, sold={}, bought_wh=load * 2)
    assert more.import_wh == load and "bess" not in more.self_consumed_wh  # bought more than it needs
