"""Two replicas of every service, two clocks among them: each slot is cleared once and
reconciled once, only one clock leads, and the ledger is the one a single set writes."""

from __future__ import annotations

import json
from pathlib import Path

from tests.e2e.conftest import run, sim_env
from tests.e2e.test_ledger import ROUNDS, check_audit, ledger_of


def events(log_dir: Path, prefix: str, event: str) -> list[dict[str, object]]:
    found = []
    for log in log_dir.glob(f"{prefix}*.log"):
        for line in log.read_text().splitlines():
            if line.startswith("{") and json.loads(line).get("event") == event:
                found.append(json.loads(line))
    return found


async def test_two_replicas_of_every_service_clear_and_reconcile_each_slot_once(region: str, tmp_path: Path) -> None:
    single, double = f"sqlite:///{tmp_path / 'single.sqlite'}", f"sqlite:///{tmp_path / 'double.sqlite'}"
    await run(sim_env(region, single, ROUNDS), tmp_path / "single")
    env = sim_env(region, double, ROUNDS)
    await run(env, tmp_path / "double", replicas=2)
    logs = tmp_path / "double" / "logs"
    cleared = [e["slot"] for e in events(logs, "matcher", "slot_cleared")]
    reconciled = [e["slot"] for e in events(logs, "meter-collector", "slot_reconciled")]
    leaders = {e["holder"] for e in events(logs, "clock", "clock_leading")}
    assert len(cleared) == len(set(cleared)) == ROUNDS  # each round closes one slot
    assert len(reconciled) == len(set(reconciled)) == ROUNDS
    assert len(leaders) == 1
    assert await ledger_of(double, region) == await ledger_of(single, region)
    await check_audit(double, env)


async def leader(ensemble: object) -> str:
    """The clock whose /metrics says it holds the lease."""
    import urllib.request

    for name in ("clock", "clock#2"):
        url = ensemble.url(name, "/metrics")  # type: ignore[attr-defined]
        with urllib.request.urlopen(url, timeout=5) as page:
            if any(line.startswith("microte_clock_leader{") and line.endswith(" 1.0")
                   for line in page.read().decode().splitlines()):
                return name
    raise AssertionError("no clock leads")


async def test_when_the_leading_clock_dies_the_standby_takes_over_with_a_higher_fence(region: str,
                                                                                      tmp_path: Path) -> None:
    import asyncio

    from services.ensemble import Ensemble
    from services.participants.community import Community

    async def kill_leader(ensemble: Ensemble, sim: Community) -> None:
        while sim.tally.rounds < ROUNDS // 2:
            sim.rounds_seen.clear()
            await asyncio.wait_for(sim.rounds_seen.wait(), timeout=60)
        ensemble.kill(await leader(ensemble))

    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    env = sim_env(region, url, ROUNDS)
    await run(env, tmp_path, during=kill_leader, replicas=2)
    leading = events(tmp_path / "logs", "clock", "clock_leading")
    assert sorted(int(e["fence"]) for e in leading) == [1, 2]  # type: ignore[call-overload]
    assert len({e["holder"] for e in leading}) == 2
    await check_audit(url, env)
