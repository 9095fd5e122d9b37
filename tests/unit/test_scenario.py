"""Scenario files: the shipped examples load; households are drawn within each group's
spreads, the same for the same seed; every mistake is one clear error naming the file and
the place; the command line overrides the scenario, which overrides the defaults, and the
scenario's tariff reaches the services' settings."""

from __future__ import annotations

import argparse
from decimal import Decimal
from pathlib import Path

import pytest

from services import cli
from services.participants.scenario import ScenarioError, load
from shared.runtime.settings import from_env

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "scenarios").glob("*.toml"))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "s.toml"
    path.write_text(text)
    return path


def demo_args(*argv: str) -> argparse.Namespace:
    return cli.with_scenario(cli.parser().parse_args(["demo", *argv]))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_each_example_loads_and_runs_with_the_services_settings(path: Path) -> None:
    scenario = load(path)
    args = demo_args(str(path))
    homes = args.homes
    assert homes and len(homes) == sum(g.count for g in scenario.groups) == args.participants
    assert [h.participant_id for h in homes] == [f"h{i:03d}" for i in range(len(homes))]
    assert all(h.size == len(homes) and h.index == i for i, h in enumerate(homes))
    settings = from_env(cli.demo_env(args, {}))  # every value the services take, checked
    assert settings.rounds == scenario.market["rounds"]
    assert settings.market.schedule.duration == scenario.market["round_seconds"]
    assert str(settings.market.rule) == scenario.market["rule"]
    assert settings.market.tariff.timezone == scenario.market["timezone"]


def test_households_are_drawn_within_their_groups_and_the_same_for_the_same_seed(tmp_path: Path) -> None:
    path = write(tmp_path, """
[[households]]
count = 30
solar_kw = {min = 3, max = 4.5}
base_load_w = 400
battery_share = 0.5
battery_kwh = {choices = [5, 13.5]}
battery_kw = 2.5
strategy = "zic"

[[households]]
count = 10
battery_share = 0
""")
    scenario = load(path)
    homes = scenario.households(1)
    sunny, dark = homes[:30], homes[30:]
    assert all(3000 <= h.solar_peak_w <= 4500 and h.base_load_w == 400 and h.strategy == "zic" for h in sunny)
    assert {h.battery_wh for h in sunny} == {0, 5000, 13500}
    assert all(h.battery_power_w == (2500 if h.battery_wh else 0) for h in sunny)
    assert all(h.solar_peak_w == 0 and h.battery_wh == 0 and 250 <= h.base_load_w <= 900 for h in dark)
    assert [h.strategy for h in dark[:2]] == ["baseline", "zic"]  # by turns, as the default community
    assert scenario.households(1) == homes
    assert scenario.households(2) != homes


@pytest.mark.parametrize(("text", "says"), [
    ("[market\n", "not TOML"),
    ("wibble = 1", "the top level has no key 'wibble' (known: community, description, households, location, market, "
                   "name, tariff)"),
    ("[location]\nweather = 'sunny'", "location.weather: one of clear-sky, tmy3-723170"),
    ("[location]\nweather = 'clear-sky'\nlatitude = 49.3",
     "location.longitude: degrees from -180 to 180 are required with the clear-sky weather, not None"),
    ("[location]\nweather = 'clear-sky'\nlatitude = 91\nlongitude = 0", "location.latitude: degrees from -90 to 90"),
    ("[location]\nweather = 'dwd-try-04'\nlatitude = 52\nlongitude = 13", "weather dwd-try-04 is measured at its own"),
    ("[location]\nweather = 'clear-sky'\nlatitude = 1\nlongitude = 2\nheight = 3", "[location] has no key 'height'"),
    ("[[households]]\ncount = 2\nsolar_tilt = 20", "households #1: solar_tilt and solar_azimuth need a [location]"),
    ("[location]\nweather = 'dwd-try-04'\n[[households]]\ncount = 2\nsolar_tilt = 91",
     "households #1.solar_tilt: degrees from 0 to 90"),
    ("[location]\nweather = 'dwd-try-04'\n[[households]]\ncount = 2\nsolar_azimuth = {choices = [90, 400]}",
     "households #1.solar_azimuth: degrees from 0 to 360"),
    ("[[households]]\ncount = 2\nload = 'h0'", "households #1.load: one of synthetic, bdew-h25, not 'h0'"),
    ("[[households]]\ncount = 2\nload = 'bdew-h25'", "annual consumption is needed with load = 'bdew-h25'"),
    ("[[households]]\ncount = 2\nannual_kwh = 3000", "annual_kwh: goes with load = 'bdew-h25'"),
    ("[[households]]\ncount = 1\nmeasured = 'none.csv'", "households #1.measured: "),
    ("[[households]]\ncount = 1\nmeasured = 3", "households #1.measured: a CSV file's path, not 3"),
    ("[location]\nweather = 'dwd-try-04'\n[community]\nparticipants = 5", "[location] sets the PV of [[households]]"),
    ("[[households]]\ncount = 2\nstrategy = 'bandit'\nstrategy_params = {greed = 1}",
     "households #1.strategy_params: bandit takes no 'greed' (it takes: arms, epsilon)"),
    ("[[households]]\ncount = 2\nstrategy = 'bandit'\nstrategy_params = {arms = 'many'}",
     "households #1.strategy_params.arms: bandit reads it as int, not 'many'"),
    ("[[households]]\ncount = 2\nstrategy_params = {epsilon = 0.2}",
     "strategy_params: baseline takes no 'epsilon' (it takes: nothing)"),
    ("[[households]]\ncount = 2\nstrategy = 'zic'\nstrategy_params = 3", "strategy_params: a table"),
    ("[[households]]\ncount = 2\nload = 'bdew-h25'\nannual_kwh = 2e6", "beyond what one household has (1,000,000 kW"),
    ("[[households]]\ncount = 2\nbattery_efficiency = 1.2", "households #1.battery_efficiency: a share from 0 to 1"),
    ("[[households]]\ncount = 2\nbattery_efficiency = 0", "a battery that gives nothing back"),
    ("[[households]]\ncount = 2\nbattery_soc_min = 0.5\nbattery_soc_max = 0.5", "battery_soc_min: must be below"),
    ("[[households]]\ncount = 2\nev_share = 0.5\nev_kw = 7", "ev_share: needs ev_kwh_per_day and ev_kw too"),
    ("[[households]]\ncount = 2\nev_kw = 7", "households #1.ev_kw: goes with ev_share"),
    ("[[households]]\ncount = 2\nheat_pump_share = 1\nheat_kwh = 9000\nheat_pump_kw = 5",
     "heat_pump_share: heat pumps follow the temperature of a weather file"),
    ("[location]\nweather = 'clear-sky'\nlatitude = 1\nlongitude = 2\n[[households]]\ncount = 2\n"
     "heat_pump_share = 1\nheat_kwh = 9000\nheat_pump_kw = 5", "heat pumps follow the temperature of a weather"),
    ("[market]\ntz = 'UTC'", "[market] has no key 'tz'"),
    ("[market]\nrounds = '10'", "market.rounds: must be a whole number, not '10'"),
    ("[market]\nrounds = 0", "market.rounds: must be 1 or more"),
    ("[market]\nround_seconds = 1.5", "market.round_seconds: must be a whole number"),
    ("[tariff]\ngrid_price = true", "tariff.grid_price: must be a number or a string"),
    ("[tariff]\ngrid_price = 'abc'", "[tariff]: bad microte setting: MICROTE_GRID_PRICE 'abc' is not a number"),
    ("[tariff]\nfee_ratio = -1", "[tariff]: bad microte setting: grid price and fee ratio must be >= 0"),
    ("[tariff]\ntime_of_use = '13:1=0.1'", "MICROTE_TIME_OF_USE: '13:1=0.1' has a month or hour out of range"),
    ("[community]\nrequests = 'batch'", "community.requests: 'round' or 'single'"),
    ("[community]\naggregators = -1", "community.aggregators: must be 0 or more"),
    ("[community]\nparticipants = 5\n[[households]]\ncount = 2", "both say how many households"),
    ("households = 3", "households must be an array of tables"),
    ("[[households]]\nsolar_kw = 3", "households #1.count: a whole number of 1 or more is required, not None"),
    ("[[households]]\ncount = 0", "households #1.count"),
    ("[[households]]\ncount = 2\npanels = 1", "[[households]] #1 has no key 'panels'"),
    ("[[households]]\ncount = 2\nsolar_share = 1.5", "households #1.solar_share: a share from 0 to 1"),
    ("[[households]]\ncount = 2\nsolar_kw = {min = 9, max = 3}", "min 9 is above max 3"),
    ("[[households]]\ncount = 2\nsolar_kw = 3.0005", "3.0005 is finer than 1 W"),
    ("[[households]]\ncount = 2\nsolar_kw = -1", "-1 is not a number of 0 or more"),
    ("[[households]]\ncount = 2\nsolar_kw = nan", "NaN is not a number of 0 or more"),
    ("[[households]]\ncount = 2\nbattery_kwh = inf", "Infinity is not a number of 0 or more"),
    ("[[households]]\ncount = 2\nbattery_kwh = 1e30", "is beyond what one household has (10,000 kW or kWh)"),
    ("[[households]]\ncount = 2\nsolar_share = nan", "households #1.solar_share: a share from 0 to 1"),
    ("[[households]]\ncount = 2\nbattery_kwh = {mean = 5}", "{min = A, max = B} or {choices = [A, B, ...]}"),
    ("[[households]]\ncount = 2\nbattery_kwh = {choices = []}", "{choices = [A, B, ...]}"),
    ("[[households]]\ncount = 2\nstrategy = 'greedy'",
     "households #1.strategy: 'greedy' is no strategy: one of baseline, zic, bandit, arbitrage"),
])
def test_a_mistake_is_one_error_that_names_the_file_and_the_place(tmp_path: Path, text: str, says: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ScenarioError) as error:
        load(path)
    assert str(error.value).startswith(f"scenario {path}: ")
    assert says in str(error.value)


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="cannot be read"):
        load(tmp_path / "nowhere.toml")


@pytest.mark.parametrize(("text", "argv", "says"), [
    ("[market]\nstart = 'noon'", [], "start: 'noon' is not a local time"),
    ("[market]\ntimezone = 'Mars/Olympus'", [], "'Mars/Olympus' is not a known IANA time zone"),
    ("[market]\nrule = 'cheapest'", [], "market.rule: one of midpoint"),
    ("[[households]]\ncount = 2", ["--participants", "3"], "--participants and the households of scenario"),
])
def test_the_command_refuses_a_bad_scenario_with_one_line_and_exit_2(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str, argv: list[str], says: str) -> None:
    path = write(tmp_path, text)
    assert cli.main(["demo", str(path), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("microte: ") and len(err.splitlines()) == 1 and says in err, err


def test_the_command_line_overrides_the_scenario_which_overrides_the_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, """
[market]
timezone = "Europe/Berlin"
start = "2026-01-15T08:00"
rounds = 96
round_seconds = 900
rule = "pay_as_bid"
[tariff]
grid_price = 0.30
fee_ratio = "1.25"
time_of_use = "1-2:17-19=0.42"
[community]
seed = 3
participants = 12
aggregators = 0
""")
    args = demo_args(str(path), "--rounds", "4", "--rule", "uniform")
    assert (args.rounds, args.rule, args.round_seconds, args.participants, args.seed) == (4, "uniform", 900, 12, 3)
    assert (args.aggregators, args.requests, args.homes) == (0, "round", None)  # requests: the default
    settings = from_env(cli.demo_env(args, {"MICROTE_GRID_PRICE": "0.1"}))  # the scenario's tariff wins
    tariff = settings.market.tariff
    assert (tariff.price, tariff.fee_ratio, tariff.timezone) == (Decimal("0.30"), Decimal("1.25"), "Europe/Berlin")
    assert tariff.time_of_use[1][18] == Decimal("0.42")
    assert settings.start_time == 1768460400  # 08:00 in Berlin, 07:00 UTC
    plain = demo_args()
    assert (plain.rounds, plain.participants, plain.timezone, plain.homes) == (1440, 20, "America/Vancouver", None)


def test_a_plug_in_strategy_is_found_beside_the_scenario(tmp_path: Path) -> None:
    (tmp_path / "mine.py").write_text(
        "from decimal import Decimal\n"
        "from services.participants.strategies import Strategy\n"
        "class Fixed(Strategy):\n"
        "    def price(self, slot, side, grid):\n"
        "        return Decimal('0.1')\n")
    path = write(tmp_path, "[[households]]\ncount = 3\nsolar_kw = 5\nstrategy = 'mine.py:Fixed'")
    homes = load(path).households(1)
    assert {h.strategy for h in homes} == {f"{tmp_path / 'mine.py'}:Fixed"}
    with pytest.raises(ScenarioError, match=r"households #1\.strategy: strategy '\S*nope\.py:X': no file \S*nope\.py$"):
        load(write(tmp_path, "[[households]]\ncount = 3\nstrategy = 'nope.py:X'"))


def test_the_community_record_keeps_the_batteries_charge_per_slot_in_all_and_at_its_extremes() -> None:
    import json

    from services.participants.profiles import Household
    from services.participants.scenario import community_record

    def home(pid: str, battery_wh: int) -> Household:
        return Household(participant_id=pid, seed=1, solar_peak_w=4000, base_load_w=300, battery_wh=battery_wh,
                         battery_power_w=5000, strategy="baseline")

    homes = [home("a", 10000), home("b", 5000), home("c", 0)]
    charge = {(120, 180): {"a": 2500, "b": 5000}, (60, 120): {"a": 10000, "b": 1}}
    kept = json.loads(community_record(homes, charge=charge))
    assert kept["battery"] == {"capacity_wh": 15000, "charge": [[60, 120, 10001, 0, 1000], [120, 180, 7500, 250, 1000]]}
    assert json.loads(community_record(homes))["battery"] == {"capacity_wh": 15000, "charge": []}


def test_field_data_without_its_packages_is_one_line_that_says_what_to_install(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    found = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pvlib" else found(name, *a))
    path = write(tmp_path, "[location]\nweather = 'dwd-try-04'\n[[households]]\ncount = 2\nload = 'bdew-h25'\n"
                           "annual_kwh = 3000")
    with pytest.raises(ScenarioError) as error:
        load(path)
    assert str(error.value) == (f"scenario {path}: its field data needs pvlib, not installed here: "
                                "pip install 'microte[profiles]' (make venv installs them)")


def test_a_household_replays_its_measured_series_from_a_file_beside_the_scenario(tmp_path: Path) -> None:
    (tmp_path / "pilot").mkdir()
    (tmp_path / "pilot" / "h1.csv").write_text("time,load_wh\n2026-06-21T00:00:00-07:00,120\n"
                                               "2026-06-21T00:15:00-07:00,80\n")
    homes = load(write(tmp_path, "[[households]]\ncount = 1\nmeasured = 'pilot/h1.csv'\nsolar_kw = 0")).households(1)
    assert homes[0].measured == str(tmp_path / "pilot" / "h1.csv")
    with pytest.raises(ScenarioError, match="the measured load replaces load and base_load_w"):
        load(write(tmp_path, "[[households]]\ncount = 1\nmeasured = 'pilot/h1.csv'\nbase_load_w = 300"))


def test_a_groups_strategy_parameters_reach_each_households_trader(tmp_path: Path) -> None:
    from services.participants.strategies import Arbitrage, Bandit, make_strategy

    homes = load(write(tmp_path, "[[households]]\ncount = 2\nstrategy = 'bandit'\n"
                                 "strategy_params = {epsilon = 0.25, arms = 5}\n"
                                 "[[households]]\ncount = 1\nstrategy = 'arbitrage'\n"
                                 "strategy_params = {sell_from = 19}")).households(1)
    bandit, arbitrage = make_strategy(homes[0]), make_strategy(homes[2])
    assert isinstance(bandit, Bandit) and (bandit.EPSILON, bandit.ARMS) == (0.25, 5)
    assert len(bandit.value["bid"]) == 5
    assert isinstance(arbitrage, Arbitrage) and arbitrage.sell_from == 19
    assert Bandit(homes[0]).EPSILON == 0.25 and Bandit.EPSILON == 0.1  # the class keeps its default


def test_german_weather_needs_demandlib_which_ships_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    found = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "demandlib" else found(name, *a))
    path = write(tmp_path, "[location]\nweather = 'dwd-try-04'\n[[households]]\ncount = 2")
    with pytest.raises(ScenarioError, match="its field data needs demandlib, not installed here"):
        load(path)
