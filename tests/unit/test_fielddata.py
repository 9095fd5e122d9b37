"""Field data, offline: PV from pvlib over shipped weather and clear sky, household load
from BDEW's H25 as demandlib ships it, and the interpolation that keeps each step's energy."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pytest

from services.participants.fielddata import Site, YearSeries, h25, pv_per_kw, weather
from services.participants.profiles import Household, load_wh, solar_wh
from shared.market import Slot
from shared.market.timezones import zone

BERLIN = zone("Europe/Berlin")
POTSDAM = Site("dwd-try-04")


def at(local: str, tz=BERLIN) -> int:  # type: ignore[no-untyped-def]
    return int(datetime.fromisoformat(local).replace(tzinfo=tz).timestamp())


def test_slots_shorter_than_a_step_share_its_energy_exactly_and_smoothly() -> None:
    series = YearSeries(np.array([0.0, 1000.0, 4000.0, 0.0]), 3600, lambda t: float(t))
    for k in range(4):  # each hour's minutes add up to the hour's energy
        minutes = [series.wh(k * 3600 + m * 60, k * 3600 + m * 60 + 60) for m in range(60)]
        assert sum(minutes) == pytest.approx(series.watts[k])
        assert min(minutes) >= 0
    rising = [series.wh(3600 + m * 60, 3600 + m * 60 + 60) for m in range(60)]
    assert rising == sorted(rising) and rising[0] < rising[-1]  # towards the brighter hour: no steps
    assert series.wh(0, 4 * 3600) == pytest.approx(5000)  # longer than a step: the sum of the steps
    assert series.wh(4 * 3600, 5 * 3600) == pytest.approx(0)  # the year wraps around


def test_pv_knows_the_season_the_night_and_where_the_panels_face() -> None:
    south, north = pv_per_kw(POTSDAM, 30, 180), pv_per_kw(POTSDAM, 30, 0)
    year = south.watts.sum() / 1000
    assert 850 < year < 1100  # kWh per kWp a year near Berlin
    assert north.watts.sum() < 0.8 * south.watts.sum()

    def day(series: YearSeries, date: str) -> float:
        return series.wh(at(f"{date}T00:00"), at(f"{date}T00:00") + 86400)

    june = sum(day(south, f"2026-06-{d:02d}") for d in range(1, 31))
    december = sum(day(south, f"2026-12-{d:02d}") for d in range(1, 32))
    assert june > 3 * december
    assert south.wh(at("2026-06-21T01:00"), at("2026-06-21T03:00")) == 0  # night
    home = Household("h", 1, 5000, 0, 0, 0, "zic", site=POTSDAM)
    noon = Slot(at("2026-06-21T13:00"), at("2026-06-21T13:01"))
    assert solar_wh(home, noon, BERLIN) == int(south.wh(noon.start, noon.end) * 5)


def test_clear_sky_depends_on_the_latitude() -> None:
    equator, arctic = pv_per_kw(Site("clear-sky", 0.0, 0.0), 10, 180), pv_per_kw(Site("clear-sky", 66.0, 0.0), 10, 180)
    assert equator.watts.sum() > 1.3 * arctic.watts.sum()
    assert weather("clear-sky", 49.28, -123.12).latitude == 49.28


@pytest.mark.parametrize("name", ["tmy3-723170", "tmy3-703165", "dwd-try-01", "dwd-try-15"])
def test_every_weather_file_reads_a_whole_year(name: str) -> None:
    w = weather(name)
    assert len(w.ghi) == 365 * 24 and np.all(w.ghi >= 0) and w.ghi.max() > 500
    assert np.all(w.dhi <= w.ghi + 1e-9)
    assert pv_per_kw(Site(name), 30, 180).watts.sum() / 1000 > 600


def test_h25_is_a_year_of_one_kwh_and_each_home_uses_its_own_year() -> None:
    series = h25(2026, BERLIN)
    assert series.wh(at("2026-01-01T00:00"), at("2027-01-01T00:00")) == pytest.approx(1000, rel=1e-3)
    evening, night = series.wh(at("2026-01-14T18:00"), at("2026-01-14T19:00")), \
        series.wh(at("2026-01-14T03:00"), at("2026-01-14T04:00"))
    assert evening > 2 * night
    homes = [Household(f"h{i}", seed, 0, 0, 0, 0, "zic", load="bdew-h25", annual_wh=3_000_000)
             for i, seed in enumerate((1, 2))]
    january = [Slot(at("2026-01-14T00:00") + m * 900, at("2026-01-14T00:00") + m * 900 + 900) for m in range(96 * 14)]
    used = [[load_wh(h, s, BERLIN) for s in january] for h in homes]
    assert used[0] != used[1]  # no two homes are copies
    fortnight = series.wh(january[0].start, january[-1].end) * 3000
    for mine in used:  # each near its share of the year, whatever its shift and its jitter
        assert sum(mine) == pytest.approx(fortnight, rel=0.05)


def write_series(path, rows: list[str], header: str = "time,load_wh,pv_wh") -> str:  # type: ignore[no-untyped-def]
    path.write_text("\n".join([header, *rows]) + "\n")
    return str(path)


def test_a_households_measured_series_is_replayed_with_its_energy_per_interval(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from services.participants.fielddata import measured

    rows = [f"2026-06-21T{h:02d}:{m:02d}:00-07:00,{100 + 10 * (4 * h + m // 15)},{50 * (m // 15)}"
            for h in range(24) for m in (0, 15, 30, 45)]
    path = write_series(tmp_path / "h1.csv", rows)
    series = measured(path)
    tz = zone("America/Vancouver")
    start = int(datetime(2026, 6, 21, 10, tzinfo=tz).timestamp())
    minutes = [series.load.wh(start + 60 * m, start + 60 * m + 60) for m in range(15)]
    assert sum(minutes) == pytest.approx(100 + 10 * 40)  # 10:00-10:15, its interval's energy
    assert minutes == sorted(minutes)  # rising towards the next interval, smoothly
    assert series.pv is not None and series.pv.wh(start + 900, start + 1800) == pytest.approx(50)
    home = Household("h", 1, 0, 0, 0, 0, "zic", measured=path)
    quarter = Slot(start, start + 900)
    assert load_wh(home, quarter, tz) == int(series.load.wh(start, start + 900))
    assert solar_wh(home, quarter, tz) == 0  # 10:00-10:15 produced 0 Wh
    day = 86400
    assert series.load.wh(start + day, start + day + 900) == pytest.approx(series.load.wh(start, start + 900))


@pytest.mark.parametrize(("rows", "header", "says"), [
    (["2026-06-21T00:00:00-07:00,1"], "time,load_wh", "needs two rows or more"),
    (["2026-06-21T00:00:00-07:00,1", "2026-06-21T00:15:00-07:00,1"], "time,energy",
     "needs the columns time and load_wh"),
    (["2026-06-21T00:00:00,1", "2026-06-21T00:15:00,1"], "time,load_wh", ":2: no UTC offset"),
    (["2026-06-21T00:00:00-07:00,1", "2026-06-21T00:15:00-07:00,-1"], "time,load_wh", ":3: energy must be"),
    (["2026-06-21T00:00:00-07:00,1", "2026-06-21T00:15:00-07:00,1", "2026-06-21T00:45:00-07:00,1"], "time,load_wh",
     ":4: every interval must be 900 s long"),
    (["2026-06-21T00:00:00-07:00,x", "2026-06-21T00:15:00-07:00,1"], "time,load_wh", ":2: could not convert"),
])
def test_a_measured_series_that_cannot_be_read_says_where(tmp_path, rows: list[str], header: str,  # type: ignore[no-untyped-def]
                                                         says: str) -> None:
    from services.participants.fielddata import MeasuredError, measured

    path = write_series(tmp_path / "bad.csv", rows, header)
    with pytest.raises(MeasuredError) as error:
        measured(path)
    assert str(error.value).startswith(path) and says in str(error.value)
