"""The HTML report's key figures, exact on a ledger built with the market core, and the
page: one file with every plot and Plotly's JavaScript inlined once."""

from __future__ import annotations

import re
from decimal import Decimal

from services.export import Export, household_rows, slot_rows
from services.html_report import figures, gini, render
from tests.unit.test_export import MARKET, ledger


def exported() -> Export:
    return Export(slot_rows(MARKET, *ledger()), household_rows(MARKET, *ledger()))


def test_gini_of_equal_savings_is_zero_and_of_one_winner_is_two_thirds_for_three() -> None:
    assert gini([Decimal(1)] * 3) == 0
    assert gini([Decimal(0), Decimal(0), Decimal(3)]) == Decimal(2) / 3
    assert gini([]) is None and gini([Decimal(-1), Decimal(1)]) is None  # no positive mean


def test_the_key_figures_add_up_the_ledger() -> None:
    done = exported()
    f = figures(done, MARKET.schedule.duration)
    (slot,) = done.slots
    assert (f.slots, f.households) == (1, 3)
    assert f.load_wh == 950 + 300 and f.production_wh == 1200 + 300  # imports + self, exports + self
    assert f.traded_wh == 1000 and f.local_price == Decimal("0.11")  # pay as bid: what buyers paid
    assert f.import_wh == slot["grid_import_wh"] and f.export_wh == slot["grid_export_wh"]
    assert f.self_sufficiency == 1 - Decimal(f.import_wh) / 1250
    assert f.self_consumption == 1 - Decimal(f.export_wh) / 1500
    assert f.peak_import_kw == Decimal(f.import_wh) * 60 / 1000  # Wh in a 60 s slot, as kW
    assert f.saving_usd == sum(r["saving_usd"] for r in done.households)  # type: ignore[misc]


def test_the_page_has_the_scenario_the_figures_and_every_plot_offline() -> None:
    page = render(exported(), MARKET, verdict="PASS")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "region r1" in page and "pay_as_bid" in page and "2026-06-21 11:00 PDT" in page
    assert "self-sufficiency" in page and "Gini" in page and "<td>PASS</td>" in page
    assert page.count('class="plotly-graph-div"') == 5
    assert page.count("* plotly.js v") == 1  # plotly.js itself, inlined once
    assert not re.search(r"<script[^>]*\bsrc=", page)  # nothing fetched from the network


def test_the_comparison_page_sets_the_rules_side_by_side() -> None:
    from dataclasses import replace

    from services.html_report import render_comparison
    from shared.market import PricingRule

    midpoint = replace(MARKET, rule=PricingRule.MIDPOINT, region="r1-midpoint")
    page = render_comparison([(MARKET, exported(), True), (midpoint, exported(), False)])
    header = page.split("<h2>Key figures</h2>")[1].split("</tr>")[0]
    assert header == "<table><tr><th></th><th>pay_as_bid</th><th>midpoint</th>"
    assert "<td>PASS</td><td>FAIL</td>" in page and "r1, r1-midpoint" in page
    assert page.count('class="plotly-graph-div"') == 4 and page.count("* plotly.js v") == 1


def test_a_simulated_community_shows_what_each_household_owns_beside_its_bill() -> None:
    import json

    from services.participants.profiles import Household
    from services.participants.scenario import community_record

    done = exported()
    ids = [str(r["participant"]) for r in done.households]
    homes = [Household(participant_id=pid, seed=1, solar_peak_w=4500 * (i != 1), base_load_w=300 + i,
                       battery_wh=13500 * (i == 0), battery_power_w=5000 * (i == 0), strategy="bandit",
                       index=i, size=len(ids)) for i, pid in enumerate(ids)]
    community = json.loads(community_record(homes, "tiny", "three homes"))
    page = render(done, MARKET, verdict="PASS", community=community)
    assert "<td>tiny - three homes</td>" in page
    assert "<th>PV from</th><td>synthetic: a sine curve" in page
    assert "<th>load profiles</th><td>synthetic 3</td>" in page
    assert "<td>2 with PV (9 kW in all); 1 with a battery (13.5 kWh, 5 kW in all); strategies: bandit 3</td>" in page
    table = page.split("<h2>Households</h2>")[1].split("</table>")[0]
    first = done.households[0]
    assert (f"<tr><td>{ids[0]}</td><td>4.5</td><td>13.5 / 5</td><td>300</td><td>bandit</td>"
            f"<td>{Decimal(str(first['bill_usd'])):.2f}</td>") in table
    assert f"<tr><td>{ids[1]}</td><td>-</td><td>-</td><td>301</td>" in table
    assert "not recorded in the ledger" not in page
    assert "not recorded in the ledger" in render(done, MARKET, verdict="PASS")


def test_a_simulated_communitys_battery_charge_is_plotted_and_a_live_regions_is_said_to_be_missing() -> None:
    import json

    from services.participants.profiles import Household
    from services.participants.scenario import community_record

    done = exported()
    (slot,) = done.slots
    start, end = int(str(slot["slot_start"])), int(str(slot["slot_end"]))
    homes = [Household(participant_id=p, seed=1, solar_peak_w=4000, base_load_w=300, battery_wh=wh,
                       battery_power_w=5000, strategy="zic") for p, wh in (("a", 10000), ("b", 5000))]
    community = json.loads(community_record(homes, charge={(start, end): {"a": 2500, "b": 5000}}))
    page = render(done, MARKET, verdict="PASS", community=community)
    assert page.count('class="plotly-graph-div"') == 6
    chart = page.split("Battery state of charge at the end of each slot")[0].rsplit('id="chart-', 1)[1]
    assert '"y":[50.0]' in chart and '"y":[25.0]' in chart and '"y":[100.0]' in chart  # all, emptiest, fullest
    assert "Battery state of charge is not plotted" not in page
    alone = render(done, MARKET, verdict="PASS")
    assert alone.count('class="plotly-graph-div"') == 5 and "Battery state of charge is not plotted" in alone
