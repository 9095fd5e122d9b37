"""Provisional and final settlement through the real services (docs/market.md section 7,
"True-up"), in simulation, where market time is the rounds' (60 s each).

Four households sell 1000 Wh of solar each to one buyer in one slot, then fall silent (their
liveness lapses after five seconds; the buyer's heartbeats keep it alive on a loaded
machine too), so the slot is reconciled without their readings: a
shortfall each, and the buyer's whole import from the grid. Their readings then arrive 1, 5
and 30 minutes after the slot's end, within the 45-minute window, and one 46 minutes after:
three adjustments, each with exactly the entries expected and money summing to zero, the
fourth reading refused, and, once the window has closed, every party's final statement."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path

import pytest

from microte import Client, Refused
from services.ensemble import Ensemble, purge_region
from shared.market import LedgerEntry, Slot, bills
from shared.messages import types as t
from shared.messages.convert import slot_from_wire
from shared.runtime.audit import audit
from shared.runtime.ledger import LedgerStore, open_ledger
from shared.runtime.settings import from_env
from tests.e2e.conftest import sim_env
from tests.faults.inject import wait_until

pytestmark = pytest.mark.e2e

WINDOW_S = 45 * 60
LATE_MIN = {"s1": 1, "s5": 5, "s30": 30, "s46": 46}
P, GRID_BUY = Decimal("0.1"), Decimal("0.1449")


def rows(entries: list[LedgerEntry]) -> list[tuple[object, ...]]:
    return sorted((e.reverses, str(e.kind), e.seller, e.buyer, e.quantity_wh, e.buy_price, e.sell_price)
                  for e in entries)


async def keep_alive(client: Client) -> None:
    """A heartbeat every half second: a member the rounds wait for, whatever their pace."""
    while True:
        await client.send(t.Heartbeat(region=client.region, participant_id=client.participant_id))
        await asyncio.sleep(0.5)


async def statements(client: Client, slot: t.Slot, until_stage: str) -> list[t.Statement]:
    """The client's statements of ``slot`` that came, up to the first of ``until_stage``."""
    found: list[t.Statement] = []
    async with asyncio.timeout(60):
        async for event in client.events():
            if isinstance(event, t.Statement) and event.slot == slot:
                found.append(event)
                if event.stage == until_stage:
                    return found
    raise AssertionError("unreachable")


async def test_late_readings_within_the_window_are_trued_up_and_one_past_it_is_refused(region: str,
                                                                                      tmp_path: Path) -> None:
    ledger = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    env = sim_env(region, ledger, 60, MICROTE_TRUE_UP_S=str(WINDOW_S), MICROTE_MEMBER_TIMEOUT_S="5",
                  MICROTE_ROUND_TIMEOUT_S="10", MICROTE_MIN_MEMBERS="1")
    settings = from_env(env)
    sellers = list(LATE_MIN)
    ensemble = Ensemble(env, tmp_path / "logs")
    try:
        await ensemble.start_all(("ledger-writer", "order-intake", "matcher", "meter-collector"))
        async with Client(settings.amqp_url, region, "b") as buyer, \
                Client(settings.amqp_url, region, "s1") as s1, Client(settings.amqp_url, region, "s5") as s5, \
                Client(settings.amqp_url, region, "s30") as s30, Client(settings.amqp_url, region, "s46") as s46:
            seller = dict(zip(sellers, (s1, s5, s30, s46), strict=True))
            for c in (buyer, *seller.values()):
                await c.join()
            alive = asyncio.create_task(keep_alive(buyer))  # the sellers' liveness lapses, the buyer's not
            await ensemble.start_all(("clock",))
            r = await buyer.next_round()
            slot = r.next_settle
            await buyer.order("bid", 4000, "0.11", slot)
            for c in seller.values():
                await c.order("ask", 1000, "0.09", slot)
            answers: dict[str, t.ReadingAccepted | str] = {}
            while r.current_round.start < slot.end + 47 * 60:  # market time; the sellers stay silent
                late = {pid for pid, minutes in LATE_MIN.items() if r.current_round.start == slot.end + minutes * 60}
                for pid in late:
                    try:
                        answers[pid] = await seller[pid].reading(slot, 0, {"solar": 1000})
                    except Refused as refused:
                        answers[pid] = refused.reason
                    if pid == "s1":  # sent again (a lost answer): the same late reading, no second adjustment
                        again = await seller[pid].reading(slot, 0, {"solar": 999})
                        assert (again.duplicate, again.late, again.export_wh) == (True, True, {"solar": 1000})
                await buyer.reading(r.current_round, 4000 if r.current_round == slot else 0)
                await buyer.finish(r.current_round.start)
                r = await buyer.next_round()
            alive.cancel()
            assert answers["s46"] == "already_reconciled"
            for pid in ("s1", "s5", "s30"):
                accepted = answers[pid]
                assert isinstance(accepted, t.ReadingAccepted) and accepted.late, (pid, accepted)
            mine = await statements(s1, slot, "final")
            assert [s.stage for s in mine] == ["provisional", "adjustment", "final"]
            assert [len(s.entries) for s in mine] == [2, 3, 5]
            assert (await statements(buyer, slot, "final"))[-1].stage == "final"

        assert ensemble.stop("clock") == 0  # no more rounds: no slot's window closes from here on
        store = open_ledger(ledger)
        await store.open()
        try:
            x = slot_from_wire(slot)
            await wait_until(lambda: _final(store, region, x), 30, "the slot's final record in the ledger")
            for name in ("matcher", "meter-collector", "ledger-writer"):  # the ledger holds still for the reads
                assert ensemble.stop(name) == 0, name
            final = dict(await store.final_slots(region))  # every slot whose window closed; only x was adjusted
            assert final.pop(x) == 3 and set(final.values()) == {0}
            assert await store.adjustments(region) == [(x, 1, "s1"), (x, 2, "s5"), (x, 3, "s30")]
            entries = [e for e in await store.entries(region) if e.slot == x]
            by_revision = {k: [e for e in entries if e.revision == k] for k in range(4)}
            assert rows(by_revision[0]) == sorted(
                [(False, "shortfall", pid, "b", 1000, P, P) for pid in sellers]
                + [(False, "shortfall_penalty", "b", pid, 1000, GRID_BUY, GRID_BUY) for pid in sellers]
                + [(False, "grid_import", "grid", "b", 4000, GRID_BUY, GRID_BUY)])
            for k, pid in enumerate(("s1", "s5", "s30"), 1):
                assert rows(by_revision[k]) == sorted([
                    (True, "shortfall", pid, "b", 1000, P, P),
                    (True, "shortfall_penalty", "b", pid, 1000, GRID_BUY, GRID_BUY),
                    (True, "grid_import", "grid", "b", 1000, GRID_BUY, GRID_BUY),
                    (False, "p2p", pid, "b", 1000, P, P)]), k
            for k, revision in by_revision.items():
                assert sum((b.received - b.paid for b in bills(revision).values()), Decimal(0)) == 0, k
            net = bills(entries)
            assert net["b"].net_cost == Decimal("0.4") + Decimal("0.1449") - Decimal("0.1449")  # 4 kWh at 0.1
            assert net["s46"].net_cost == Decimal("0.1449") - Decimal("0.1")  # its shortfall stands
            checked = await audit(store, settings.market)
            assert checked.ok, checked.problems
            assert (checked.adjustments, checked.final) == (3, len(final) + 1)
        finally:
            await store.close()
    finally:
        ensemble.stop_all()
        await purge_region(settings.amqp_url, settings.redis_url, region, ["b", *sellers])


async def _final(store: LedgerStore, region: str, slot: Slot) -> bool:
    return slot in dict(await store.final_slots(region))
