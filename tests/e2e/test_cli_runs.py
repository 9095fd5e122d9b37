"""``microte`` as a user runs it, a process against the real RabbitMQ, Redis and PostgreSQL:
a short demo shows progress and reports with the pricing rule it was given; servers that
refuse or are away end a command in one line; Ctrl-C stops the demo and its services in
seconds. (Without servers: tests/unit/test_cli.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import html
import os
import queue
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import pandas as pd
import pytest

from services.ensemble import purge_region
from services.participants.community import agent_ids
from services.participants.profiles import community
from shared.market import EntryKind, LedgerEntry, Settlement, bills
from shared.runtime.ledger import LedgerStore, open_ledger
from shared.runtime.settings import from_env

pytestmark = pytest.mark.e2e

PROGRESS = re.compile(r"^\s+round\s+(\d+)\s+market time \d+")
PARTICIPANTS = 4


@pytest.fixture
async def region() -> AsyncIterator[str]:
    """A fresh region, its queues and round state deleted afterwards (the demo deletes them
    itself; this is for a run that failed half way)."""
    name = "cli" + secrets.token_hex(4)
    yield name
    settings = from_env()
    ids = [h.participant_id for h in community(PARTICIPANTS, 7)] + agent_ids(1)
    await purge_region(settings.amqp_url, settings.redis_url, name, ids)


def microte(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """``microte ARGS`` in a process group of its own (with the services it starts), as a
    terminal runs it in the foreground."""
    return subprocess.Popen([sys.executable, "-m", "services.cli", *args], cwd=cwd, text=True,
                            env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, start_new_session=True)


@contextlib.contextmanager
def killed_at_the_end(proc: subprocess.Popen[str]) -> Iterator[subprocess.Popen[str]]:
    """Whatever happens, no process of the group outlives the test."""
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def run(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 240
        ) -> tuple[int, str, str]:
    with killed_at_the_end(microte(*args, cwd=cwd, env=env)) as proc:
        out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


@contextlib.asynccontextmanager
async def scenario_run(tmp_path: Path, path: Path, prefix: str) -> AsyncIterator[tuple[str, str, LedgerStore]]:
    """``microte demo`` of a scenario file in a fresh region, audited clean; then its region,
    its ledger's URL and the ledger, open."""
    region, ledger = prefix + secrets.token_hex(4), f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    code, out, err = run("demo", str(path), "--region", region, "--ledger", ledger, cwd=tmp_path, timeout=600)
    assert code == 0 and "PASS" in out, (out + err)[-3000:]
    store = open_ledger(ledger)
    await store.open()
    try:
        yield region, ledger, store
    finally:
        await store.close()


async def ledger_totals(url: str, region: str) -> tuple[list[Settlement], list[LedgerEntry]]:
    store = open_ledger(url)
    await store.open()
    try:
        return await store.settlements(region), await store.entries(region)
    finally:
        await store.close()


def one_line_error(err: str) -> str:
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("microte: "), err
    return lines[0]


def group_members(pgid: int) -> list[int]:
    """The processes still in a process group (the demo's services are in the demo's)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[2]) == pgid:
                    found.append(int(entry.name))
    return found


def test_version(tmp_path: Path) -> None:
    code, out, err = run("--version", cwd=tmp_path, timeout=60)
    assert code == 0, err
    assert re.fullmatch(r"microte \d+\.\d+\.\d+\S*\n", out)


def test_a_short_demo_shows_progress_and_reports_with_its_rule(region: str, tmp_path: Path) -> None:
    ledger = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    demo = ("demo", "--rounds", "5", "--participants", str(PARTICIPANTS), "--start", "2026-06-21T11:00",
            "--region", region, "--ledger", ledger)
    code, out, err = run(*demo, "--rule", "pay_as_bid", cwd=tmp_path)
    assert code == 0, err
    assert "Traceback" not in err
    shown = [int(m.group(1)) for line in err.splitlines() if (m := PROGRESS.match(line))]
    assert shown == [1, 2, 3, 4, 5], err  # a short run shows every round
    assert f"microte report: region {region}, 5 slots, rule pay_as_bid" in out
    assert "in 0 settlements" not in out  # there is trade, so the rule matters to the re-derivation
    assert "PASS" in out
    assert (tmp_path / "var" / "logs" / region).is_dir()  # the services' logs, under the working folder
    page = tmp_path / "var" / "reports" / f"{region}.html"  # and the HTML report
    assert f"HTML report (key figures and plots): var/reports/{region}.html" in out
    assert f"region {region}" in page.read_text() and "<td>PASS</td>" in page.read_text()
    # The ledger keeps the region's settings: the report re-derives with them, whatever the
    # environment says, and a --rule that contradicts them is an error.
    code, out, err = run("report", "--ledger", ledger, "--region", region, cwd=tmp_path,
                         env={"MICROTE_PRICING_RULE": "midpoint", "MICROTE_GRID_PRICE": "0.5"})
    assert code == 0 and f"region {region}, 5 slots, rule pay_as_bid" in out and "PASS" in out, out + err
    reported = out
    code, out, err = run("report", "--ledger", ledger, "--region", region, "--rule", "pay_as_bid",
                         "--html", str(tmp_path / "again.html"), cwd=tmp_path)
    assert code == 0 and "rule pay_as_bid" in out and "PASS" in out, out + err
    assert (tmp_path / "again.html").read_text().count('class="plotly-graph-div"') == 6  # battery charge too
    code, out, err = run("report", "--ledger", ledger, "--region", region, "--rule", "midpoint", cwd=tmp_path)
    assert code == 2, out + err
    assert one_line_error(err) == (f"microte: region {region} ran with the pricing rule pay_as_bid, not midpoint: "
                                   "leave out --rule (the ledger keeps the region's settings)")
    # The export says what the report says: traded energy and the savings, from the same ledger.
    code, written, err = run("export", "--ledger", ledger, "--region", region, "--out", str(tmp_path / "out"),
                             cwd=tmp_path)
    assert code == 0, err
    assert written.split() == [str(tmp_path / "out" / "slots.csv"), str(tmp_path / "out" / "households.csv")]
    code, _, err = run("export", "--ledger", ledger, "--region", region, "--out", str(tmp_path / "out"),
                       "--format", "parquet", cwd=tmp_path)
    assert code == 0, err
    traded = re.search(r"energy traded peer to peer \(settled\)\s+([\d.]+) kWh", reported)
    saved = re.search(r"^  all\s+(-?[\d.]+)$", reported, re.M)
    assert traded and saved, reported
    # read back as a notebook would, with pandas: equal to the ledger's totals, in both formats
    settlements, entries = asyncio.run(ledger_totals(ledger, region))
    for slots, households in (
            (pd.read_csv(tmp_path / "out" / "slots.csv"), pd.read_csv(tmp_path / "out" / "households.csv",
                                                                         dtype={"bill_usd": str, "saving_usd": str})),
            (pd.read_parquet(tmp_path / "out" / "slots.parquet"), pd.read_parquet(tmp_path / "out" /
                                                                                   "households.parquet"))):
        assert len(slots) == 5
        assert int(slots["p2p_settled_wh"].sum()) == sum(s.quantity_wh for s in settlements) \
            == Decimal(traded.group(1)) * 1000
        bills_ = bills(entries)
        exported = {p: Decimal(str(b)) for p, b in zip(households["participant"], households["bill_usd"], strict=True)}
        assert {p for p in bills_ if p not in ("grid", "market")} <= set(exported)
        assert exported == {p: bills_[p].net_cost if p in bills_ else 0 for p in exported}  # 0: metered, no entry
        saving = sum((Decimal(str(v)) for v in households["saving_usd"]), Decimal(0))
        assert saving.quantize(Decimal("0.01")) == Decimal(saved.group(1))
        homes = {h.participant_id: h for h in community(PARTICIPANTS, 7)}  # the demo's households, as recorded
        assert {p: (int(pv), s) for p, pv, s in zip(households["participant"], households["pv_w"],
                                                    households["strategy"], strict=True)} == \
               {p: (homes[p].solar_peak_w, homes[p].strategy) for p in households["participant"]}
        capacity = sum(h.battery_wh for h in homes.values())
        assert capacity and all(0 <= int(wh) <= capacity for wh in slots["battery_stored_wh"])  # every slot's
    # A second demo in the same region of the same ledger would wait forever: refused up front.
    code, out, err = run(*demo, cwd=tmp_path, timeout=60)
    assert code == 2
    assert f"region {region} already has a run" in one_line_error(err)


SCENARIOS = sorted((Path(__file__).resolve().parents[2] / "scenarios").glob("*.toml"))


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
async def test_each_shipped_scenario_runs_through_the_services_and_audits_clean(path: Path, tmp_path: Path) -> None:
    """Three of its rounds: its households, rule and round length, through the real services."""
    from services.participants.scenario import load

    scenario = load(path)
    homes = scenario.households(scenario.community.get("seed", 7))
    region = "scn" + secrets.token_hex(4)
    try:
        code, out, err = run("demo", str(path), "--rounds", "3", "--region", region,
                             "--ledger", f"sqlite:///{tmp_path / 'ledger.sqlite'}", cwd=tmp_path, timeout=600)
        assert code == 0 and "Traceback" not in err, err[-3000:]
        seconds = scenario.market["round_seconds"]
        assert f"region {region}, {len(homes)} participants, 3 rounds of {seconds} s," in err, err[-3000:]
        assert f"microte report: region {region}, 3 slots, rule {scenario.market['rule']}" in out, out[-3000:]
        assert re.search(r"^  ledger invariants and re-derivation of 3 slots, \d+ entries: PASS$", out, re.M), out
        # the ledger keeps who the households are: the HTML report shows what each owns
        page = (tmp_path / "var" / "reports" / f"{region}.html").read_text()
        assert f"<td>{html.escape(scenario.name + ' - ' + scenario.description)}</td>" in page
        table = page.split("<h2>Households</h2>")[1].split("</table>")[0]
        assert table.count("<tr><td>h") == len(homes)
        first = homes[0]
        assert f"<tr><td>h000</td><td>{Decimal(first.solar_peak_w) / 1000 if first.solar_peak_w else '-'}</td>" in table
    finally:
        settings = from_env()
        ids = [h.participant_id for h in homes] + agent_ids(scenario.community.get("aggregators", 1))
        await purge_region(settings.amqp_url, settings.redis_url, region, ids)


@pytest.mark.parametrize("how", [("scenarios/learning-50.toml", "--rounds", "12"),
                                 ("--participants", "30", "--aggregators", "0", "--requests", "single", "--rounds", "8",
                                  "--start", "2026-06-21T11:00")], ids=["bandits-one-aggregator", "on-their-own"])
async def test_runs_with_price_ties_replay_to_the_same_ledger(tmp_path: Path, how: tuple[str, ...]) -> None:
    """The same run twice, with many orders tied on price: the learning scenario's bandits
    on their shared price grid, through one aggregator; and 30 households on their own, one
    message per request, arriving in whatever order the machine makes, quoting plain
    baseline and zic prices. A simulated round's orders rank by a lottery per slot, never by
    arrival, so both runs rank the ties alike and record the same ledger."""
    region = "rep" + secrets.token_hex(4)  # the same region, a ledger for each run
    ledgers = [f"sqlite:///{tmp_path / f'ledger{n}.sqlite'}" for n in range(2)]
    root = Path(__file__).resolve().parents[2]
    args = [str(root / a) if a.endswith(".toml") else a for a in how]
    orders, recorded = [], []
    for ledger in ledgers:
        code, out, err = run("demo", *args, "--region", region, "--ledger", ledger, cwd=tmp_path, timeout=600)
        assert code == 0 and "PASS" in out, (out + err)[-3000:]
        store = open_ledger(ledger)
        await store.open()
        try:
            orders.append(await store.orders(region))
            recorded.append((await store.settlements(region), await store.entries(region)))
        finally:
            await store.close()
    prices = Counter((o.slot, o.side, o.price) for o in orders[0])
    assert sum(n for n in prices.values() if n > 1) > 20, "the run has hardly any price ties to rank"
    assert [(o.participant_id, o.client_order_id, o.side, o.quantity_wh, o.price, o.seq) for o in orders[0]] == \
           [(o.participant_id, o.client_order_id, o.side, o.quantity_wh, o.price, o.seq) for o in orders[1]]
    (s1, e1), (s2, e2) = recorded
    assert s1, "nothing traded"

    def settled(s: Settlement) -> tuple[object, ...]:
        return s.slot, s.buyer, s.seller, s.source, s.quantity_wh, s.buy_price, s.sell_price

    def booked(e: LedgerEntry) -> tuple[object, ...]:
        return e.slot, e.kind, e.seller, e.buyer, e.source, e.quantity_wh, e.buy_price, e.sell_price

    assert sorted(map(settled, s1)) == sorted(map(settled, s2))
    assert sorted(map(booked, e1), key=str) == sorted(map(booked, e2), key=str)
    assert {s.settlement_id for s in s1} == {s.settlement_id for s in s2}  # the very same ids
    assert {e.entry_id for e in e1} == {e.entry_id for e in e2}


async def test_noon_to_evening_batteries_sell_and_cover_evs_charge_and_equal_price_trades(tmp_path: Path) -> None:
    """The learning scenario's whole afternoon and evening: batteries sell (``bess``
    settlements) and fill solar gaps (``bess_cover``), the buyers' EVs charge when they come
    home (every meter reading is what the household's devices used, EV included), and the
    learning traders trade a meaningful volume under ``equal_price``."""
    from services.participants.profiles import ev_wh, load_wh
    from services.participants.scenario import load
    from shared.market.timezones import zone

    path = Path(__file__).resolve().parents[2] / "scenarios" / "learning-50.toml"
    scenario = load(path)
    homes = {h.participant_id: h for h in scenario.households(scenario.community["seed"])}
    region, ledger = "noon" + secrets.token_hex(4), f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    code, out, err = run("demo", str(path), "--region", region, "--ledger", ledger, cwd=tmp_path, timeout=600)
    assert code == 0 and "PASS" in out, (out + err)[-3000:]
    assert "rule equal_price" in out
    store = open_ledger(ledger)
    await store.open()
    try:
        settlements, entries, readings = (await store.settlements(region), await store.entries(region),
                                          await store.readings(region))
    finally:
        await store.close()
    assert sum(s.quantity_wh for s in settlements) > 50_000  # over 50 kWh between the learners
    assert sum(s.quantity_wh for s in settlements if s.source == "bess") > 5_000
    assert any(e.kind is EntryKind.BESS_COVER for e in entries)
    tz = zone(scenario.market["timezone"])
    charged = 0
    for r in readings:  # what each meter says the household used is what its devices used
        h = homes[r.participant_id]  # (and its battery, charged from energy it bought beyond its load)
        metered, used = r.import_wh + sum(r.self_consumed_wh.values()), load_wh(h, r.slot, tz)
        assert used <= metered <= used + h.battery_power_w * r.slot.seconds // 3600, r
        assert metered == used or h.battery_wh, r
        charged += ev_wh(h, r.slot, tz)
    assert charged > 10_000 and sum(1 for h in homes.values() if h.ev_daily_wh) >= 5


async def test_battery_traders_sell_at_the_time_of_use_peak_and_charge_from_the_grid_after_it(tmp_path: Path) -> None:
    """``arbitrage`` households under a time-of-use tariff, noon to 22:00: once they have
    seen the 17:00-20:00 peak, their batteries sell into it (``bess`` settlements in peak
    slots), and after it, at the cheap price again, they charge from the grid through their
    meters (they import more than their devices use)."""
    from services.participants.profiles import load_wh
    from services.participants.scenario import load
    from shared.market.timezones import zone

    path = tmp_path / "tou.toml"
    path.write_text("""
[market]
timezone = "America/Vancouver"
start = "2026-07-15T12:00"
rounds = 40
round_seconds = 900
rule = "midpoint"
[tariff]
grid_price = 0.069
fee_ratio = 1.1
time_of_use = "6-9:17-20=0.15"
[community]
seed = 4
aggregators = 1
[[households]]
count = 6
solar_kw = {min = 4, max = 8}
battery_kwh = 10
battery_kw = 4
battery_efficiency = 0.9
strategy = "arbitrage"
[[households]]
count = 8
base_load_w = {min = 500, max = 1200}
battery_share = 0
strategy = "zic"
""")
    scenario = load(path)
    homes = {h.participant_id: h for h in scenario.households(4)}
    async with scenario_run(tmp_path, path, "tou") as (region, _, store):
        settlements, readings = await store.settlements(region), await store.readings(region)
    tz = zone("America/Vancouver")

    def hour(at: int) -> int:
        return datetime.fromtimestamp(at, tz).hour

    sold_at_peak = [s for s in settlements if s.source == "bess" and 17 <= hour(s.slot.start) < 20
                    and homes[s.seller].strategy == "arbitrage"]
    assert sum(s.quantity_wh for s in sold_at_peak) > 2_000
    from_grid = sum(r.import_wh + sum(r.self_consumed_wh.values()) - load_wh(homes[r.participant_id], r.slot, tz)
                    for r in readings if homes[r.participant_id].battery_wh and hour(r.slot.start) >= 20)
    assert from_grid > 5_000


@pytest.mark.parametrize(("env", "extra", "says"), [
    ({"MICROTE_AMQP_URL": "amqp://guest:wrong@127.0.0.1:5672/"}, (),
     "RabbitMQ at amqp://guest:***@127.0.0.1:5672/ refused user 'guest'"),
    ({"MICROTE_AMQP_URL": "amqp://guest:guest@127.0.0.1:5672/no-such-vhost"}, (), "does its virtual host exist?"),
    ({}, ("--ledger", "postgresql://postgres@127.0.0.1:1/x"),
     "the ledger database postgresql://postgres@127.0.0.1:1/x is not reachable"),
    ({}, ("--ledger", f"postgresql://postgres@127.0.0.1:5432/microte_none_{secrets.token_hex(3)}"),
     "does not exist"),
])
def test_a_server_that_refuses_or_is_away_ends_the_demo_in_one_line(
        region: str, tmp_path: Path, env: dict[str, str], extra: tuple[str, ...], says: str) -> None:
    began = time.monotonic()
    code, out, err = run("demo", "--rounds", "3", "--participants", str(PARTICIPANTS), "--region", region,
                         "--ledger", f"sqlite:///{tmp_path / 'ledger.sqlite'}", *extra, cwd=tmp_path, env=env,
                         timeout=60)
    assert code == 1
    assert says in one_line_error(err)
    assert "wrong@" not in err
    assert out == ""
    assert time.monotonic() - began < 30  # checked before any service starts
    assert not (tmp_path / "var").exists()


def test_compare_runs_each_rule_on_the_same_community_and_writes_one_page(tmp_path: Path) -> None:
    page = tmp_path / "compare.html"
    code, out, err = run("compare", "--rules", "midpoint,uniform", "--rounds", "4", "--participants",
                         str(PARTICIPANTS), "--start", "2026-06-21T11:00", "--ledger",
                         f"sqlite:///{tmp_path / 'ledger.sqlite'}", "--out", str(page), cwd=tmp_path)
    assert code == 0, err
    regions = re.findall(r"^microte report: region (\S+), 4 slots, rule (\w+)$", out, re.M)
    assert [rule for _, rule in regions] == ["midpoint", "uniform"]
    assert len({region.rsplit("-", 1)[0] for region, _ in regions}) == 1  # one run, a region per rule
    assert out.rstrip().endswith(f"comparison of midpoint, uniform: {page}")
    text = page.read_text()
    assert "<th>midpoint</th><th>uniform</th>" in text and text.count('class="plotly-graph-div"') == 4
    assert text.count("<td>PASS</td>") == 2


def test_compare_runs_the_same_scenario_with_each_strategy_and_writes_one_page(tmp_path: Path) -> None:
    page = tmp_path / "compare.html"
    scenario = Path(__file__).resolve().parents[2] / "scenarios" / "vancouver-june-20.toml"
    code, out, err = run("compare", str(scenario), "--rules", "equal_price", "--strategies", "zic,bandit",
                         "--rounds", "4", "--start", "2026-06-21T12:00", "--ledger",
                         f"sqlite:///{tmp_path / 'ledger.sqlite'}", "--out", str(page), cwd=tmp_path)
    assert code == 0, err
    regions = re.findall(r"^microte report: region (\S+), 4 slots, rule equal_price$", out, re.M)
    assert [r.rsplit("-", 1)[1] for r in regions] == ["zic", "bandit"], out[-2000:]
    assert out.rstrip().endswith(f"comparison of zic, bandit: {page}")
    text = page.read_text()
    assert "<th>zic</th><th>bandit</th>" in text and text.count("<td>PASS</td>") == 2
    for region, strategy in zip(regions, ("zic", "bandit"), strict=True):  # every household traded with it
        households = (tmp_path / "var" / "reports" / f"{region}.html").read_text().split("<h2>Households</h2>")[1]
        assert households.count(f"<td>{strategy}</td>") == 20


def test_a_time_of_use_tariff_prices_the_slots_it_names_and_the_audit_agrees(tmp_path: Path) -> None:
    """Monday 2026-06-22 11:00-11:02 in Vancouver; the table prices June's 11 o'clock."""
    ledger = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    code, out, err = run("demo", "--rounds", "3", "--participants", str(PARTICIPANTS), "--start", "2026-06-22T11:00",
                         "--ledger", ledger, "--region", "tou" + secrets.token_hex(3), cwd=tmp_path,
                         env={"MICROTE_TIME_OF_USE": "6:11=0.2000"})
    assert code == 0, err
    region = re.search(r"^microte report: region (\S+), 3 slots", out, re.M)
    assert region and "PASS" in out, out
    code, _, err = run("export", "--ledger", ledger, "--region", region.group(1), "--out", str(tmp_path / "out"),
                       cwd=tmp_path)
    assert code == 0, err
    slots = pd.read_csv(tmp_path / "out" / "slots.csv", dtype=str)
    assert list(slots["grid_sell_price"]) == ["0.2"] * 3 and list(slots["grid_buy_price"]) == ["0.42"] * 3


async def test_a_household_replays_its_measured_series_through_the_services(tmp_path: Path) -> None:
    """A metered home's CSV (15-minute intervals) in a scenario: its meter readings in the
    ledger are the file's energy, shared out over 1-minute slots."""
    from services.participants.fielddata import measured

    rows = [f"2026-06-21T11:{m:02d}:00-07:00,{300 + 60 * m // 15},{0 if m < 15 else 120}" for m in (0, 15, 30, 45)]
    (tmp_path / "h000.csv").write_text("time,load_wh,pv_wh\n" + "\n".join(rows) + "\n")
    path = tmp_path / "metered.toml"
    path.write_text("""
[market]
timezone = "America/Vancouver"
start = "2026-06-21T11:10"
rounds = 8
[[households]]
count = 1
measured = "h000.csv"
[[households]]
count = 3
solar_kw = 4
""")
    async with scenario_run(tmp_path, path, "csv") as (region, _, store):
        readings = [r for r in await store.readings(region) if r.participant_id == "h000"]
    series = measured(str(tmp_path / "h000.csv"))
    assert len(readings) == 8
    for r in readings:
        assert r.import_wh + sum(r.self_consumed_wh.values()) == int(series.load.wh(r.slot.start, r.slot.end))
        produced = sum(r.export_wh.values()) + sum(r.self_consumed_wh.values())
        assert produced == (int(series.pv.wh(r.slot.start, r.slot.end)) if series.pv else 0)


async def test_a_scenarios_time_of_use_reaches_every_service_in_local_time_across_a_dst_change(
        tmp_path: Path) -> None:
    """Hourly rounds from Friday 23 October 2026 06:00 to Monday 10:00 in Berlin, over the
    end of summer time (Sunday 03:00 CEST is 02:00 CET). The scenario's table prices 07:00
    to 08:00 local on weekdays: Friday's is 05:00 UTC, Monday's 06:00 UTC. The clock's
    round starts carry it (the households' orders are priced inside it), the
    meter-collector reconciles with it (the ledger's grid entries), and the export agrees."""
    path = tmp_path / "dst.toml"
    path.write_text("""
[market]
timezone = "Europe/Berlin"
start = "2026-10-23T06:00"
rounds = 78
round_seconds = 3600
rule = "midpoint"
[tariff]
grid_price = 0.069
fee_ratio = 1
time_of_use = "10:7=0.3"
[community]
participants = 4
aggregators = 1
""")
    async with scenario_run(tmp_path, path, "dst") as (region, ledger, store):
        entries, orders = await store.entries(region), await store.orders(region)
    friday, monday = 1792731600, 1792994400  # 2026-10-23 05:00 UTC (07:00 CEST), 2026-10-26 06:00 UTC (07:00 CET)
    peak = {friday, monday}
    imports = {e.slot.start: e.buy_price for e in entries if e.kind is EntryKind.GRID_IMPORT}
    assert {t for t, price in imports.items() if price == Decimal("0.6")} == peak  # 0.3 x (1 + 1)
    assert all(price == Decimal("0.138") for t, price in imports.items() if t not in peak)
    assert friday + 3600 * 24 in imports and monday - 3600 in imports  # Saturday 07:00, Monday 06:00 CET: base
    bids = {o.slot.start: o.price for o in orders if o.side == "bid"}
    assert all(bids[t] > Decimal("0.138") for t in peak if t in bids) and any(t in bids for t in peak)
    code, _, err = run("export", "--ledger", ledger, "--region", region, "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert code == 0, err
    slots = pd.read_csv(tmp_path / "out" / "slots.csv", dtype=str)
    priced = slots[slots["grid_sell_price"] == "0.3"]
    assert list(priced["local_start"]) == ["2026-10-23T07:00:00+02:00", "2026-10-26T07:00:00+01:00"]


def test_simulate_with_a_wrong_password_is_one_line(tmp_path: Path) -> None:
    code, _, err = run("simulate", "--rounds", "2", cwd=tmp_path, timeout=60,
                       env={"MICROTE_AMQP_URL": "amqp://guest:wrong@127.0.0.1:5672/",
                            "MICROTE_REGION": "cli" + secrets.token_hex(4)})
    assert code == 1
    assert "refused user 'guest'" in one_line_error(err)


def test_simulate_without_the_regions_services_says_so_in_one_line(tmp_path: Path) -> None:
    region = "cli" + secrets.token_hex(4)
    code, out, err = run("simulate", "--rounds", "2", "--wait", "1", cwd=tmp_path, timeout=60,
                         env={"MICROTE_REGION": region})
    assert code == 1
    waiting, error = err.splitlines()  # one line while it waits, one when it gives up; no traceback
    assert waiting.startswith(f"microte: waiting for region {region}'s services")
    assert error.startswith(f"microte: region {region}'s services are not running")
    assert "round" not in out  # nothing was sent: no community joined a market that is not there


async def test_simulate_plays_a_scenarios_households_against_services_started_with_its_settings(
        tmp_path: Path) -> None:
    """The scenario's market, with four rounds, as the services' MICROTE_* settings (what a user
    exports before `microte serve`), then `microte simulate SCENARIO`: its 50 households
    trade; a shell whose settings differ from the scenario's is refused first."""
    from services.ensemble import Ensemble
    from services.participants.scenario import load

    text = (Path(__file__).resolve().parents[2] / "scenarios" / "learning-50.toml").read_text()
    path = tmp_path / "four.toml"
    path.write_text(text.replace("rounds = 32 ", "rounds = 4 "))
    scenario = load(path)
    assert scenario.market["rounds"] == 4
    region = "sim" + secrets.token_hex(4)
    ledger = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    env = {"MICROTE_REGION": region, "MICROTE_LEDGER_URL": ledger, "MICROTE_TIMEZONE": "America/Vancouver",
           "MICROTE_START_TIME": "1782068400", "MICROTE_ROUNDS": "4", "MICROTE_ROUND_SECONDS": "900",
           "MICROTE_PRICING_RULE": "equal_price", "MICROTE_MIN_MEMBERS": "50",
           "MICROTE_SERVICE_KEY": secrets.token_hex(32)}
    code, out, err = run("simulate", str(path), cwd=tmp_path, timeout=60,
                         env={**env, "MICROTE_PRICING_RULE": "midpoint"})
    assert code == 2 and one_line_error(err) == (
        f"microte: scenario {path} is not what the services run (their settings are this shell's MICROTE_* "
        "variables): MICROTE_PRICING_RULE: midpoint -> equal_price (the services' -> the scenario's); export the "
        "scenario's settings for the services too, or run `microte demo SCENARIO`, which starts them with it")
    ensemble = Ensemble(env, tmp_path / "logs")
    homes = scenario.households(scenario.community["seed"])
    try:
        await ensemble.start_all(("ledger-writer", "order-intake", "matcher", "meter-collector", "clock"))
        code, out, err = await asyncio.to_thread(run, "simulate", str(path), cwd=tmp_path, timeout=300, env=env)
        assert code == 0, err[-3000:]
        assert "simulation done: 4 rounds" in out, out
    finally:
        ensemble.stop_all()
        settings = from_env(env)
        await purge_region(settings.amqp_url, settings.redis_url, region, [h.participant_id for h in homes]
                           + agent_ids(1))
    store = open_ledger(ledger)
    await store.open()
    try:
        parties = {p for s in await store.settlements(region) for p in (s.seller, s.buyer)}
    finally:
        await store.close()
    assert parties <= {h.participant_id for h in homes} and len(parties) >= 10, parties  # the scenario's homes


class Lines:
    """A pipe's lines as they come, read by a thread (a test never sleeps blindly on them)."""

    def __init__(self, pipe: object) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(pipe,), daemon=True)
        self._thread.start()

    def _read(self, pipe: object) -> None:
        for line in pipe:  # type: ignore[attr-defined]
            self._queue.put(line)
        self._queue.put(None)

    def until(self, pattern: re.Pattern[str], timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            self.seen.append(line)
            if pattern.match(line):
                return line
        raise AssertionError(f"no line like {pattern.pattern!r} within {timeout_s} s:\n{''.join(self.seen)}")

    def rest(self, timeout_s: float = 10) -> str:
        self._thread.join(timeout_s)
        while (line := self._queue.get_nowait() if not self._queue.empty() else None) is not None:
            self.seen.append(line)
        return "".join(self.seen)


@pytest.mark.parametrize("ctrl_c", ["terminal", "parent only"])
def test_ctrl_c_stops_the_demo_and_its_services_in_seconds(region: str, tmp_path: Path, ctrl_c: str) -> None:
    """A terminal's Ctrl-C reaches the whole foreground group (the demo and its services);
    a SIGINT to the demo alone must stop them too."""
    proc = microte("demo", "--rounds", "400", "--participants", str(PARTICIPANTS), "--region", region,
                   "--ledger", f"sqlite:///{tmp_path / 'ledger.sqlite'}", cwd=tmp_path)
    with killed_at_the_end(proc):
        err = Lines(proc.stderr)
        err.until(PROGRESS, timeout_s=120)
        err.until(re.compile(r"^\s+round\s+21\s"), timeout_s=60)  # progress every 20 rounds: the rounds run
        if ctrl_c == "terminal":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGINT)
        began = time.monotonic()
        code = proc.wait(15)
        took = time.monotonic() - began
        said = err.rest()
        out = proc.stdout.read() if proc.stdout else ""
        assert code == 130, said
        assert took < 15
        assert "Traceback" not in said
        ledger = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
        assert said.splitlines()[-1] == (f"microte: interrupted; services stopped; what ran so far is region {region} "
                                         f"in the ledger {ledger} (microte report --region {region} --ledger "
                                         f"{ledger})"), said
        assert "microte report" not in out
        assert group_members(proc.pid) == []  # every service has exited
    # The region's queues and round state were deleted on the way out.
    settings = from_env()
    assert asyncio.run(_region_keys(settings.redis_url, region)) == []


async def _region_keys(redis_url: str, region: str) -> list[bytes]:
    from redis.asyncio import Redis

    redis = Redis.from_url(redis_url)
    try:
        return [k async for k in redis.scan_iter(match=f"mt:\\{{{region}\\}}:*", count=1000)]
    finally:
        await redis.aclose()
