"""The client SDK (``microte.client``) against the real services: the README's example
agent trades beside a simulated community, and what it was told is what the ledger holds."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import pytest

from services.demo import During
from services.ensemble import Ensemble, purge_region
from services.participants.community import Community
from shared.market.ledger import FINANCIAL_KINDS
from shared.runtime.settings import from_env
from tests.e2e.conftest import opened, run, sim_env

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
AGENT = ROOT / "examples" / "agent.py"
ROUNDS, PLAYED = 16, 5  # every slot it sold in is reconciled before the last round


def test_the_readme_carries_the_example_agent_as_it_is() -> None:
    assert AGENT.read_text() in (ROOT / "README.md").read_text()


async def test_the_example_agent_trades_through_the_real_services(region: str, tmp_path: Path) -> None:
    ledger = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    env = sim_env(region, ledger, ROUNDS)
    settings = from_env(env)
    done: dict[str, object] = {}

    async def agent(ensemble: Ensemble, sim: Community) -> None:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(AGENT), settings.amqp_url, region, "agent1", str(PLAYED), cwd=ROOT,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 180)
        done.update(rc=proc.returncode, out=out.decode(), err=err.decode())

    during: During = agent
    try:
        await run(env, tmp_path, during=during)
    finally:
        await purge_region(settings.amqp_url, settings.redis_url, region, ["agent1"])
    assert done["rc"] == 0, done["err"]
    out = str(done["out"])
    rounds = re.findall(r"^round (\d+): (\d+) refused$", out, re.M)
    assert len(rounds) == PLAYED and all(refused == "0" for _, refused in rounds), out
    store = await opened(ledger)
    try:
        entries = [e for e in await store.entries(region) if "agent1" in (e.buyer, e.seller)]
    finally:
        await store.close()
    told = sum(int(n) for n in re.findall(r"^slot \d+: (\d+) ledger entries$", out, re.M))
    assert entries, "the agent's orders and readings made no ledger entry"
    assert 0 < told <= len(entries), out
    # What it sold, as its settlements notices told it, is what the ledger settled for it.
    sold = {int(slot): int(wh) for slot, wh in re.findall(r"^slot (\d+): sold (\d+) Wh$", out, re.M)}
    assert sold and sum(sold.values()) > 0, out
    for slot, wh in sold.items():
        assert sum(e.quantity_wh for e in entries if e.slot.start == slot and e.seller == "agent1"
                   and e.settlement_id is not None and e.kind not in FINANCIAL_KINDS) == wh, slot
