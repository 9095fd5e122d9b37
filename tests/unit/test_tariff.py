"""Grid prices per slot, from the slot's own local start time (docs/market.md section 8).

Every instant is written as a UTC wall-clock time; the local time it maps to is worked
out by hand in the comment beside it (IST is UTC+5:30; Berlin is UTC+2 in summer time and
UTC+1 in winter; Vancouver is UTC-8 in winter, UTC-7 in summer time, and UTC-7 for good
from November 2026 in the pinned tzdata 2026 data).
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfoNotFoundError

import pytest

from shared.market import GridPrices, Tariff

BASE = Decimal("0.069")
PEAK = Decimal("0.2")


def utc(year: int, month: int, day: int, hour: int, minute: int = 0) -> int:
    return int(datetime(year, month, day, hour, minute, tzinfo=UTC).timestamp())


def test_the_default_prices_are_exactly_0_1449_to_buy_and_0_069_to_sell() -> None:
    prices = Tariff().prices_at(utc(2024, 1, 15, 12))
    assert prices == GridPrices(buy_price=Decimal("0.1449"), sell_price=Decimal("0.069"))
    assert (str(prices.buy_price), str(prices.sell_price)) == ("0.1449", "0.069")


def test_the_buy_price_is_the_price_times_one_plus_the_fee_ratio() -> None:
    prices = Tariff(price=Decimal("0.1"), fee_ratio=Decimal("0.25")).prices_at(0)
    assert (prices.buy_price, prices.sell_price) == (Decimal("0.125"), Decimal("0.1"))


# --- time of use -----------------------------------------------------------------------


def test_time_of_use_replaces_the_price_for_its_month_and_weekday_hour() -> None:
    tariff = Tariff(time_of_use={1: {9: PEAK}, 7: {9: Decimal("0.3"), 17: Decimal("0.25")}})
    # 2024-01-15 and 2024-07-15 are Mondays.
    assert tariff.prices_at(utc(2024, 1, 15, 9)) == GridPrices(Decimal("0.42"), PEAK)
    assert tariff.prices_at(utc(2024, 7, 15, 9)) == GridPrices(Decimal("0.63"), Decimal("0.3"))
    assert tariff.prices_at(utc(2024, 7, 15, 17)).sell_price == Decimal("0.25")
    # Other hours of those months, and months without a table, keep the base price.
    assert tariff.prices_at(utc(2024, 1, 15, 10)).sell_price == BASE
    assert tariff.prices_at(utc(2024, 1, 15, 8)).sell_price == BASE
    assert tariff.prices_at(utc(2024, 7, 15, 16)).sell_price == BASE
    assert tariff.prices_at(utc(2024, 3, 11, 9)).sell_price == BASE


@pytest.mark.parametrize("day", [13, 14])  # 2024-01-13 is a Saturday, the 14th a Sunday
def test_on_a_weekend_the_base_price_applies_whatever_the_table_says(day: int) -> None:
    tariff = Tariff(time_of_use={1: dict.fromkeys(range(24), PEAK)})
    assert tariff.prices_at(utc(2024, 1, day, 9)).sell_price == BASE
    assert tariff.prices_at(utc(2024, 1, 12, 9)).sell_price == PEAK  # Friday
    assert tariff.prices_at(utc(2024, 1, 15, 9)).sell_price == PEAK  # Monday


@pytest.mark.parametrize(
    ("t", "expected"),
    [
        (utc(2024, 1, 15, 9, 0), PEAK),
        (utc(2024, 1, 15, 9, 15), PEAK),
        (utc(2024, 1, 15, 9, 45), PEAK),
        (utc(2024, 1, 15, 9, 59), PEAK),
        (utc(2024, 1, 15, 8, 59), BASE),
        (utc(2024, 1, 15, 10, 0), BASE),
    ],
)
def test_a_slot_not_starting_on_the_hour_takes_the_price_of_the_local_hour_it_starts_in(
    t: int, expected: Decimal
) -> None:
    assert Tariff(time_of_use={1: {9: PEAK}}).prices_at(t).sell_price == expected


def test_in_a_half_hour_zone_a_slot_starting_at_half_past_utc_falls_in_the_next_local_hour() -> None:
    tariff = Tariff(timezone="Asia/Kolkata", time_of_use={1: {9: PEAK}})
    assert tariff.prices_at(utc(2024, 1, 15, 3, 30)).sell_price == PEAK  # 09:00 IST
    assert tariff.prices_at(utc(2024, 1, 15, 4, 15)).sell_price == PEAK  # 09:45 IST
    assert tariff.prices_at(utc(2024, 1, 15, 3, 0)).sell_price == BASE  # 08:30 IST
    assert tariff.prices_at(utc(2024, 1, 15, 4, 30)).sell_price == BASE  # 10:00 IST
    assert tariff.prices_at(utc(2024, 1, 15, 9, 0)).sell_price == BASE  # 14:30 IST; 09:00 UTC means nothing


def test_the_weekday_is_the_local_one() -> None:
    # Sunday 18:30 UTC is Monday 00:00 in Kolkata; Saturday 02:00 UTC is Friday 18:00 in Vancouver.
    kolkata = Tariff(timezone="Asia/Kolkata", time_of_use={1: {0: PEAK}})
    assert kolkata.prices_at(utc(2024, 1, 14, 18, 30)).sell_price == PEAK
    vancouver = Tariff(timezone="America/Vancouver", time_of_use={1: {18: PEAK}})
    assert vancouver.prices_at(utc(2024, 1, 13, 2)).sell_price == PEAK
    assert Tariff(time_of_use={1: {18: PEAK}}).prices_at(utc(2024, 1, 13, 18)).sell_price == BASE


def test_the_month_is_the_local_one() -> None:
    # 2024-01-31 (Wednesday) 20:00 UTC is Thursday 2024-02-01 01:30 in Kolkata.
    tariff = Tariff(timezone="Asia/Kolkata", time_of_use={2: {1: PEAK}, 1: {20: Decimal("0.5")}})
    assert tariff.prices_at(utc(2024, 1, 31, 20)).sell_price == PEAK


def test_across_the_end_of_summer_time_in_berlin_the_same_utc_hour_is_a_different_local_hour() -> None:
    # Summer time ends on Sunday 2024-10-27. 07:00 UTC is 09:00 on Friday the 25th, 08:00 on Monday the 28th.
    tariff = Tariff(timezone="Europe/Berlin", time_of_use={10: {8: Decimal("0.11"), 9: Decimal("0.19")}})
    assert tariff.prices_at(utc(2024, 10, 25, 7)).sell_price == Decimal("0.19")
    assert tariff.prices_at(utc(2024, 10, 28, 7)).sell_price == Decimal("0.11")


def test_across_the_start_of_summer_time_in_vancouver_the_same_utc_hour_is_a_different_local_hour() -> None:
    # Summer time starts on Sunday 2024-03-10. 17:00 UTC is 09:00 on Friday the 8th, 10:00 on Monday the 11th.
    tariff = Tariff(timezone="America/Vancouver", time_of_use={3: {9: Decimal("0.15"), 10: Decimal("0.25")}})
    assert tariff.prices_at(utc(2024, 3, 8, 17)).sell_price == Decimal("0.15")
    assert tariff.prices_at(utc(2024, 3, 11, 17)).sell_price == Decimal("0.25")
    assert tariff.prices_at(utc(2024, 3, 11, 16)).sell_price == Decimal("0.15")
    assert tariff.prices_at(utc(2024, 3, 11, 17)).buy_price == Decimal("0.525")


# --- bad tables ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"price": Decimal("-0.01")},
        {"fee_ratio": Decimal("-0.1")},
        {"price": Decimal("0.00005")},
        {"time_of_use": {0: {9: PEAK}}},
        {"time_of_use": {13: {9: PEAK}}},
        {"time_of_use": {1: {24: PEAK}}},
        {"time_of_use": {1: {-1: PEAK}}},
        {"time_of_use": {1: {9: Decimal("0.12345")}}},
    ],
)
def test_a_tariff_with_a_bad_price_month_or_hour_raises(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Tariff(**kwargs)


def test_a_tariff_in_an_unknown_timezone_raises() -> None:
    with pytest.raises(ZoneInfoNotFoundError):
        Tariff(timezone="Mars/Olympus_Mons")


def test_local_time_comes_from_the_pinned_tzdata_not_from_the_machine(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine whose zone files say otherwise (here: a Vancouver that is UTC) changes no price."""
    import shutil
    import zoneinfo
    from importlib import resources

    from shared.market.timezones import zone

    (tmp_path / "America").mkdir()
    with resources.as_file(resources.files("tzdata.zoneinfo").joinpath("UTC")) as source:
        shutil.copy(source, tmp_path / "America" / "Vancouver")
    zoneinfo.reset_tzpath(to=[str(tmp_path)])
    zoneinfo.ZoneInfo.clear_cache()
    zone.cache_clear()
    try:
        assert datetime(2026, 12, 7, tzinfo=zoneinfo.ZoneInfo("America/Vancouver")).utcoffset().total_seconds() == 0
        # Monday 2026-12-07 19:00 UTC is 12:00 in Vancouver on UTC-7 (tzdata 2026), 11:00 on UTC-8
        noon = Tariff(timezone="America/Vancouver", time_of_use={12: {12: PEAK}})
        assert noon.base_price_at(utc(2026, 12, 7, 19)) == PEAK
        assert noon.base_price_at(utc(2026, 12, 7, 18, 59)) == BASE
    finally:
        zoneinfo.reset_tzpath()
        zoneinfo.ZoneInfo.clear_cache()
        zone.cache_clear()


@pytest.mark.parametrize("name", ["Mars/Olympus", "../../etc/passwd", "America", "", "UTC/../UTC"])
def test_a_name_that_is_no_zone_of_tzdata_is_refused(name: str) -> None:
    with pytest.raises(ZoneInfoNotFoundError):
        Tariff(timezone=name)
