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
from shared.market.ledger import EntryKind
from shared.runtime.settings import from_env
from tests.e2e.conftest import PARTICIPANTS, opened, run, sim_env

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
AGENT = ROOT / "examples" / "agent.py"
ROUNDS = 12
# A settlement's quantity is delivered, covered by a battery, not consumed, or short.
SETTLED = {EntryKind.P2P, EntryKind.BESS_COVER, EntryKind.UNCONSUMED, EntryKind.SHORTFALL}


def test_the_readme_carries_the_example_agent_as_it_is() -> None:
    assert AGENT.read_text() in (ROOT / "README.md").read_text()


async def test_the_example_agent_trades_through_the_real_services(region: str, tmp_path: Path) -> None:
    ledger = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    # Every round waits for the agent too (it is one more member), so it plays them all,
    # however late its process starts.
    env = sim_env(region, ledger, ROUNDS, MICROTE_MIN_MEMBERS=str(PARTICIPANTS + 1))
    settings = from_env(env)
    done: dict[str, object] = {}

    async def agent(ensemble: Ensemble, sim: Community) -> None:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(AGENT), settings.amqp_url, region, "agent1", str(ROUNDS), cwd=ROOT,
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
    assert len(rounds) == ROUNDS and all(refused == "0" for _, refused in rounds), out
    store = await opened(ledger)
    try:
        everyone = await store.entries(region)
    finally:
        await store.close()
    entries = [e for e in everyone if "agent1" in (e.buyer, e.seller)]
    reconciled = {e.slot.start for e in everyone}
    told = sum(int(n) for n in re.findall(r"^slot \d+: (\d+) ledger entries$", out, re.M))
    assert entries, "the agent's orders and readings made no ledger entry"
    assert 0 < told <= len(entries), out
    # What it sold, as its settlements notices told it, is what the ledger settled for it.
    sold = {int(slot): int(wh) for slot, wh in re.findall(r"^slot (\d+): sold (\d+) Wh$", out, re.M)
            if int(slot) in reconciled}  # the last slots it sold in are delivered after the run
    assert sold and sum(sold.values()) > 0, out
    for slot, wh in sold.items():
        assert sum(e.quantity_wh for e in entries if e.slot.start == slot and e.seller == "agent1"
                   and e.settlement_id is not None and e.kind in SETTLED) == wh, slot
