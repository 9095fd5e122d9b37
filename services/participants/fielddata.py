"""Field data for simulated households, offline, from what well-kept packages of the field
ship inside their wheels (the extra "profiles"; README, "Where the data comes from"):

- PV power from irradiance with pvlib: the sun's position, the plane of the array (tilt
  and azimuth), cell temperature (Faiman) and PVWatts' DC model, losses and inverter. The
  irradiance comes from a typical-year weather file (pvlib's TMY3 files, or the German
  test reference years that demandlib ships), or from pvlib's clear-sky model anywhere on
  earth (Ineichen, with the Linke turbidity climatology pvlib ships).
- Household load from BDEW's 2025 standard load profile H25 with its dynamisation, as
  demandlib ships it, scaled to each household's annual consumption.

Both are series of mean power over a year (hourly for weather, 15 minutes for H25). A
slot gets the energy of an interpolation that keeps each step's energy: the power is linear
between step centres, and each step's part is scaled so that the whole step holds exactly
the data's energy. A slot shorter than the data's resolution thus gets a smooth share, and
the slots of a step add up to the step's energy.

Pure and deterministic: every value is a function of the data, the household and the slot.
Physics in floats; what reaches the market is integer Wh (services/participants/profiles.py).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path

import numpy as np

HOUR_S = 3600
DAY_S = 86400

# weather name -> what it is (docs/scenarios.md and the README list them with their sources)
WEATHER = {
    "clear-sky": "pvlib's clear-sky model (Ineichen, Linke turbidity climatology) at [location]'s latitude "
                 "and longitude, every day cloudless",
    "tmy3-723170": "TMY3 of Greensboro, North Carolina (36.1 N, 79.95 W), shipped with pvlib",
    "tmy3-703165": "TMY3 of Sand Point, Alaska (55.3 N, 160.5 W), shipped with pvlib",
    **{f"dwd-try-{n:02d}": f"the DWD test reference year 2010 of German climate region {n}, shipped with demandlib"
       for n in range(1, 16)},
}
LOADS = ("synthetic", "bdew-h25")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """pvlib and demandlib warn of pandas deprecations that are theirs, not the user's."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        yield


@dataclass(frozen=True)
class Site:
    """Where a community's panels are and what weather they get (see ``WEATHER``); the
    latitude and longitude are the weather file's own station unless it is ``clear-sky``."""

    weather: str
    latitude: float = 0.0
    longitude: float = 0.0

    def described(self) -> str:
        if self.weather == "clear-sky":
            return (f"pvlib's clear-sky model (Ineichen, Linke turbidity climatology) at {self.latitude:g}, "
                    f"{self.longitude:g}, every day cloudless")
        return WEATHER[self.weather]


class YearSeries:
    """Mean power (W) over a year at ``step_s``, read at positions given in seconds into
    the year (``position``, from an absolute time); the year wraps around."""

    def __init__(self, watts: np.ndarray, step_s: int, position: Callable[[int], float]) -> None:
        self.watts = np.asarray(watts, dtype=float)
        self.step_s = step_s
        self.position = position

    def wh(self, start: int, end: int) -> float:
        """Energy over [start, end), UNIX seconds, from the energy-keeping interpolation."""
        n, step = len(self.watts), self.step_s
        at = self.position(start) / step  # in steps; the length is the interval's, whatever DST does
        stop = at + (end - start) / step
        total = 0.0
        while at < stop - 1e-12:
            k = int(at // 1)
            upto = min(stop, k + 1)
            total += self._share(k % n, at - k, upto - k)
            at = upto
        return total * step / HOUR_S

    def _share(self, k: int, a: float, b: float) -> float:
        """Mean power x steps within step ``k`` from ``a`` to ``b`` (fractions of the step)."""
        w = self.watts
        before, p, after = float(w[k - 1]), float(w[k]), float(w[(k + 1) % len(w)])
        whole = (before + 6 * p + after) / 8  # the integral of the linear interpolation over the step
        if whole <= 0:
            return p * (b - a)

        def integral(x: float) -> float:  # of the linear interpolation from the step's start to x
            if x <= 0.5:
                return before * x + (p - before) * (x * x / 2 + x / 2)
            return 0.125 * before + 0.375 * p + p * (x - 0.5) + (after - p) * (x - 0.5) ** 2 / 2

        return p * (integral(b) - integral(a)) / whole


def _seconds_into_year(moment: datetime) -> float:
    """Seconds since 1 January 00:00 of ``moment``'s year, of its wall clock."""
    return (moment.replace(tzinfo=None) - datetime(moment.year, 1, 1)).total_seconds()


def _fixed_offset(hours: float) -> Callable[[int], float]:
    """Positions in a typical year kept in standard time ``hours`` from UTC, by day of the
    year (a leap year's 31 December reads the 30th: a typical year has 365 days)."""
    def position(t: int) -> float:
        local = datetime.fromtimestamp(t, UTC) + timedelta(hours=hours)
        return min(_seconds_into_year(local), 364 * DAY_S + local.hour * HOUR_S + local.minute * 60 + local.second)
    return position


@dataclass(frozen=True)
class _Weather:
    """A typical year, hourly, step k covering hour k of the year in ``utc_offset`` time."""

    latitude: float
    longitude: float
    utc_offset: float
    ghi: np.ndarray
    dni: np.ndarray
    dhi: np.ndarray
    temp_air: np.ndarray
    wind_speed: np.ndarray


def _hour_index(month: np.ndarray, day: np.ndarray, hour_ending: np.ndarray) -> np.ndarray:
    """Step of an hour given as month, day and the hour it ends (1..24), in a 365-day year."""
    starts = np.cumsum([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30])
    index: np.ndarray = ((starts[month - 1] + day - 1) * 24 + hour_ending - 1).astype(int)
    return index


def _hourly(index: np.ndarray, values: np.ndarray) -> np.ndarray:
    out = np.zeros(365 * 24)
    keep = (index >= 0) & (index < len(out))
    out[index[keep]] = values[keep]
    return out


@functools.cache
def _sun(latitude: float, longitude: float, utc_offset: float) -> tuple[np.ndarray, np.ndarray]:
    """Apparent zenith and azimuth at the middle of each hour of a 365-day year."""
    import pandas as pd
    import pvlib

    start = pd.Timestamp("2025-01-01 00:30") - pd.Timedelta(hours=utc_offset)
    times = pd.date_range(start.tz_localize("UTC"), periods=365 * 24, freq="h")
    sun = pvlib.solarposition.get_solarposition(times, latitude, longitude)
    return sun["apparent_zenith"].to_numpy(), sun["azimuth"].to_numpy()


@functools.cache
def weather(name: str, latitude: float = 0.0, longitude: float = 0.0) -> _Weather:
    """The named weather as hourly arrays (``WEATHER``)."""
    with _quiet():
        return _weather(name, latitude, longitude)


def _weather(name: str, latitude: float, longitude: float) -> _Weather:
    import pvlib

    if name == "clear-sky":
        import pandas as pd

        offset = round(longitude / 15)  # solar time, near enough: only the step's position depends on it
        times = pd.date_range((pd.Timestamp("2025-01-01 00:30") - pd.Timedelta(hours=offset)).tz_localize("UTC"),
                              periods=365 * 24, freq="h")
        sky = pvlib.location.Location(latitude, longitude).get_clearsky(times, model="ineichen")
        hours = len(times)
        return _Weather(latitude, longitude, offset, sky["ghi"].to_numpy(), sky["dni"].to_numpy(),
                        sky["dhi"].to_numpy(), np.full(hours, 20.0), np.full(hours, 1.0))
    if name.startswith("tmy3-"):
        data, meta = pvlib.iotools.read_tmy3(Path(pvlib.__file__).parent / "data" / _TMY3[name],
                                             map_variables=True)
        when = data["Date (MM/DD/YYYY)"].str.split("/", expand=True).astype(int)
        hour = data["Time (HH:MM)"].str.slice(0, 2).astype(int).to_numpy()
        index = _hour_index(when[0].to_numpy(), when[1].to_numpy(), hour)
        return _Weather(float(meta["latitude"]), float(meta["longitude"]), float(meta["TZ"]),
                        *(_hourly(index, data[c].to_numpy(dtype=float))
                          for c in ("ghi", "dni", "dhi", "temp_air", "wind_speed")))
    if name.startswith("dwd-try-"):
        return _dwd_try(int(name.removeprefix("dwd-try-")))
    raise ValueError(f"unknown weather {name!r} (known: {', '.join(WEATHER)})")


_TMY3 = {"tmy3-723170": "723170TYA.CSV", "tmy3-703165": "703165TY.csv"}


def _dwd_try(region: int) -> _Weather:
    """A DWD test reference year: hours 1..24 in MEZ (UTC+1), direct (B) and diffuse (D)
    irradiance on the horizontal plane; the station's place from the file's header."""
    import demandlib
    import pandas as pd

    path = Path(demandlib.__file__).parent / "vdi" / "resources_weather" / f"TRY2010_{region:02d}_Jahr.dat"
    text = path.read_text(encoding="latin-1")
    place = re.search(r"Lage: (\d+)\D+?(\d+)'N.*?(\d+)\D+?(\d+)'O", text)
    if place is None:
        raise ValueError(f"{path}: no station position in its header")
    latitude = int(place[1]) + int(place[2]) / 60
    longitude = int(place[3]) + int(place[4]) / 60
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("***")) - 1
    data = pd.read_csv(path, sep=r"\s+", skiprows=header, comment="*", encoding="latin-1")
    index = _hour_index(data["MM"].to_numpy(), data["DD"].to_numpy(), data["HH"].to_numpy())
    zenith, _ = _sun(latitude, longitude, 1.0)
    direct = _hourly(index, data["B"].to_numpy(dtype=float))
    diffuse = _hourly(index, data["D"].to_numpy(dtype=float))
    cos = np.cos(np.radians(zenith))
    dni = np.where(zenith < 87, direct / np.maximum(cos, 0.05), 0.0)
    return _Weather(latitude, longitude, 1.0, direct + diffuse, np.minimum(dni, 1100.0), diffuse,
                    _hourly(index, data["t"].to_numpy(dtype=float)), _hourly(index, data["WG"].to_numpy(dtype=float)))


@functools.cache
def pv_per_kw(site: Site, tilt: int, azimuth: int) -> YearSeries:
    """AC power of 1 kW of panels (DC, at standard conditions) facing ``tilt`` degrees up
    from horizontal towards ``azimuth`` (degrees from north, 180 = south), hour by hour."""
    import pvlib

    w = weather(site.weather, site.latitude, site.longitude)
    with _quiet():
        zenith, sun_azimuth = _sun(w.latitude, w.longitude, w.utc_offset)
    poa = pvlib.irradiance.get_total_irradiance(tilt, azimuth, zenith, sun_azimuth, w.dni, w.ghi, w.dhi,
                                                albedo=0.2, model="isotropic")["poa_global"]
    poa = np.nan_to_num(np.asarray(poa, dtype=float), nan=0.0).clip(min=0)
    cell = pvlib.temperature.faiman(poa, w.temp_air, w.wind_speed)
    dc = pvlib.pvsystem.pvwatts_dc(poa, cell, pdc0=1000.0, gamma_pdc=-0.0037)
    dc = dc * (1 - pvlib.pvsystem.pvwatts_losses() / 100)  # soiling, shading, wiring, mismatch, ... (14 %)
    ac = pvlib.inverter.pvwatts(dc, pdc0=1000.0 / 0.96)
    return YearSeries(np.nan_to_num(np.asarray(ac, dtype=float)).clip(min=0), HOUR_S, _fixed_offset(w.utc_offset))


@functools.cache
def h25(year: int, tz: tzinfo) -> YearSeries:
    """BDEW's household profile H25 (dynamised) for the local calendar ``year``, as mean
    power for 1 kWh a year, every 15 minutes of local wall-clock time."""
    import pandas as pd
    from demandlib.bdew import H25

    index = pd.date_range(f"{year}-01-01", f"{year + 1}-01-01", freq="15min", inclusive="left")
    with _quiet():
        profile = np.asarray(H25(index), dtype=float)
    hours = len(index) / 4
    watts = profile / profile.mean() * 1000 / hours  # 1 kWh over the year: mean power 1000 Wh / hours

    def position(t: int) -> float:
        return _seconds_into_year(datetime.fromtimestamp(t, tz))
    return YearSeries(watts, 900, position)


SINK_C = 40.0  # the heat pump's supply temperature: underfloor heating


def cop(temp_air: np.ndarray) -> np.ndarray:
    """An air-source heat pump's coefficient of performance at the outdoor temperature:
    Staffell et al. (2012)'s regression over field and lab data, supplying ``SINK_C``."""
    lift = SINK_C - np.asarray(temp_air, dtype=float)
    result: np.ndarray = np.clip(6.81 - 0.121 * lift + 0.000630 * lift**2, 1.5, 6.0)
    return result


@functools.cache
def heat_pump_per_kwh(site: Site) -> YearSeries:
    """A heat pump's electric power, hour by hour, for 1 kWh of heat a year: BDEW's heat
    profile of a detached house (EFH, with hot water) from the weather's temperature
    (demandlib), over the COP at that temperature."""
    import pandas as pd
    from demandlib.bdew import HeatBuilding

    w = weather(site.weather, site.latitude, site.longitude)
    index = pd.date_range("2025-01-01", periods=365 * 24, freq="h")
    with _quiet():
        heat = HeatBuilding(index, temperature=pd.Series(w.temp_air, index=index), annual_heat_demand=1.0,
                            shlp_type="EFH", building_class=5, wind_class=0, ww_incl=True).get_bdew_profile()
    share = np.asarray(heat, dtype=float)
    share = share / share.sum()  # of the year's heat, each hour
    return YearSeries(share * 1000 / cop(w.temp_air), HOUR_S, _fixed_offset(w.utc_offset))


class MeasuredError(ValueError):
    """A measured series that cannot be read; the message says where and why."""


@dataclass(frozen=True)
class Measured:
    """A household's own measured series (a CSV file): ``load`` and, if the file has it,
    ``pv``, each as mean power over the file's steps, read as ``YearSeries`` do; a run
    longer than the file replays it from its start again."""

    load: YearSeries
    pv: YearSeries | None


@functools.cache
def measured(path: str) -> Measured:
    """Reads ``time,load_wh[,pv_wh]``: the start of each interval (ISO 8601 with its UTC
    offset), and the energy used (and produced) in it, in Wh; intervals of one length."""
    import csv

    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
            columns = set(rows[0]) if rows else set()
    except OSError as exc:
        raise MeasuredError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if not {"time", "load_wh"} <= columns:
        raise MeasuredError(f"{path}: needs the columns time and load_wh (and pv_wh if it has PV), "
                            f"found {', '.join(sorted(columns)) or 'none'}")
    if len(rows) < 2:
        raise MeasuredError(f"{path}: needs two rows or more")
    starts, load, pv = [], [], []
    for line, row in enumerate(rows, 2):
        try:
            at = datetime.fromisoformat(row["time"])
            if at.tzinfo is None:
                raise ValueError("no UTC offset")
            starts.append(int(at.timestamp()))
            load.append(float(row["load_wh"]))
            if "pv_wh" in columns:
                pv.append(float(row["pv_wh"]))
        except (TypeError, ValueError) as exc:
            raise MeasuredError(f"{path}:{line}: {exc}") from None
        if min(load[-1], pv[-1] if pv else 0.0) < 0 or not all(np.isfinite([load[-1], *pv[-1:]])):
            raise MeasuredError(f"{path}:{line}: energy must be a number of 0 or more")
    step = starts[1] - starts[0]
    for line, (a, b) in enumerate(itertools.pairwise(starts), 3):
        if b - a != step or step <= 0:
            raise MeasuredError(f"{path}:{line}: every interval must be {step} s long, in time order")
    period, first = step * len(starts), starts[0]

    def position(t: int) -> float:
        return float((t - first) % period)

    def series(wh: list[float]) -> YearSeries:
        return YearSeries(np.array(wh) * HOUR_S / step, step, position)

    return Measured(series(load), series(pv) if pv else None)
