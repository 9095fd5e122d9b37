"""The dashboards and alert rules reference only metrics that running services export:
scrape /metrics from the five services during a simulation and compare with the list
the deploy tests check the dashboards and alerts against."""

from __future__ import annotations

import asyncio
import re
import urllib.request
from pathlib import Path

from services.ensemble import SERVICES, Ensemble
from services.participants.community import Community
from tests.e2e.conftest import run, sim_env

LISTED = Path(__file__).parents[1] / "deploy" / "exported_metrics.txt"
# Present in a healthy run; the others (timeouts, dead letters, cancels, ...) are declared
# but get samples only when what they count happens.
MUST_HAVE_SAMPLES = {
    "microte_orders_total", "microte_order_ack_latency_seconds", "microte_clearing_duration_seconds",
    "microte_settlements_total", "microte_meter_readings_total", "microte_reconciliation_duration_seconds",
    "microte_ledger_write_duration_seconds", "microte_ledger_rows_written_total",
    "microte_rounds_total", "microte_round_duration_seconds", "microte_clock_fence",
    "microte_messages_received_total", "microte_batch_duration_seconds", "microte_batch_size",
    "microte_messages_published_total",
}


def listed(sources: tuple[str, ...]) -> set[str]:
    names, source = set(), ""
    for line in LISTED.read_text().splitlines():
        if m := re.match(r"#\s*source:\s*(\w+)", line):
            source = m.group(1)
        elif line.strip() and not line.startswith("#") and source in sources:
            names.add(line.strip())
    return names


def scrape(url: str) -> tuple[set[str], set[str]]:
    """(declared families, families with a non-zero sample) of one /metrics page.

    Series exist at zero from the start, so only a non-zero value shows that something
    was counted."""
    with urllib.request.urlopen(url, timeout=5) as page:
        text = page.read().decode()
    declared = set(re.findall(r"^# TYPE (\S+) ", text, re.M))
    sampled = set()
    for name, value in re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{[^}]*\})? (\S+)$", text, re.M):
        if name.endswith("_created") or float(value) == 0:
            continue
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        sampled.add(base if base in declared else name)
    return declared, sampled


async def test_every_metric_the_dashboards_may_use_is_exported_by_running_services(
        region: str, tmp_path: Path) -> None:
    declared: set[str] = set()
    sampled: set[str] = set()

    async def collect(ensemble: Ensemble, sim: Community) -> None:
        while sim.tally.rounds < 5:
            sim.rounds_seen.clear()
            await asyncio.wait_for(sim.rounds_seen.wait(), timeout=60)
        for name in SERVICES:
            d, s = await asyncio.to_thread(scrape, ensemble.url(name, "/metrics"))
            declared.update(d)
            sampled.update(s)

    await run(sim_env(region, f"sqlite:///{tmp_path / 'ledger.sqlite'}", 8), tmp_path, during=collect)
    expected = listed(("services",))
    assert expected, "the metric list is empty"
    assert sorted(expected - declared - sampled) == []
    assert sorted(MUST_HAVE_SAMPLES - sampled) == []
    assert {"microte_ledger_money_imbalance_dollars", "microte_ledger_energy_imbalance_joules"} <= declared
