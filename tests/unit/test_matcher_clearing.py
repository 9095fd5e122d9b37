"""The matcher's ``clear_slot`` publishes what it published before the columnar path.

A fake service stands in for Redis and RabbitMQ: its state holds a book of stored
``OrderAccepted`` bytes, and what the matcher publishes is kept. The expected messages
are made here the way the matcher made them before, one ``Order`` and one ``Settlement``
at a time; they must be the same messages, in the same order, to the byte.
"""

from __future__ import annotations

import random
from collections import defaultdict
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from builders import REGION, SLOT
from strategies import random_book, random_large_book

from services.matcher.handlers import Matcher
from shared.market import Order, PricingRule, Slot, clear
from shared.messages import decode_as, encode
from shared.messages import types as t
from shared.messages.convert import order_from_wire, order_to_wire, settlement_to_wire, slot_to_wire
from shared.runtime.metrics import JOULES_PER_WH, create_metrics
from shared.runtime.settings import MarketSettings, Settings
from shared.runtime.topology import SETTLEMENTS, SLOT_CLEARED, Keys

MATCHED_AT_MS = 540_000


class FakeState:
    def __init__(self, raws: list[bytes]) -> None:
        self.raws = raws
        self.finished: list[Slot] = []
        self.agent_of: dict[str, str] = {}

    async def agents(self) -> dict[str, str]:
        return dict(self.agent_of)

    async def book(self, slot: Slot) -> list[bytes]:
        return list(self.raws)

    async def finish_clearing(self, slot: Slot) -> None:
        self.finished.append(slot)


class FakeLog:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def info(self, event: str, **kw: Any) -> None:
        self.events.append((event, kw))

    exception = warning = info


class FakeService:
    name = "matcher"
    region = REGION

    def __init__(self, raws: list[bytes], rule: PricingRule) -> None:
        self.settings = Settings(market=MarketSettings(region=REGION, rule=rule), service_key="k" * 40)
        self.state = FakeState(raws)
        self.metrics = create_metrics()
        self.keys = Keys(REGION)
        self.log = FakeLog()
        self.published: list[tuple[t.Message, str]] = []

    async def state_ready(self) -> None:
        pass

    async def publish_all(self, items: list[tuple[t.Message, str]]) -> None:
        self.published.extend(items)

    async def publish(self, message: t.Message, routing_key: str) -> None:
        self.published.append((message, routing_key))


def before(raws: list[bytes], rule: PricingRule) -> list[tuple[t.Message, str]]:
    """What ``clear_slot`` published before the columnar path, made the way it made it."""
    keys, wire_slot = Keys(REGION), slot_to_wire(SLOT)
    try:
        orders = [order_from_wire(decode_as(raw, t.OrderAccepted)) for raw in raws]
        settlements = clear(orders, region=REGION, slot=SLOT, rule=rule, matched_at_ms=MATCHED_AT_MS)
        records = [settlement_to_wire(s) for s in settlements]
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        return [(t.SlotCleared(region=REGION, slot=wire_slot, rule=str(rule), matched_at_ms=MATCHED_AT_MS,
                               order_count=len(raws), settlements=[], failure=error[:1000]),
                 keys.fact(SLOT_CLEARED))]
    by_party: dict[str, list[t.SettlementRecord]] = defaultdict(list)
    for record in records:
        by_party[record.buyer].append(record)
        by_party[record.seller].append(record)
    cleared = t.SlotCleared(region=REGION, slot=wire_slot, rule=str(rule), matched_at_ms=MATCHED_AT_MS,
                            order_count=len(orders), settlements=records)
    return [(cleared, keys.fact(SLOT_CLEARED))] + [
        (t.SettlementsNotice(region=REGION, participant_id=p, slot=wire_slot, settlements=mine),
         keys.to(p, SETTLEMENTS))
        for p, mine in sorted(by_party.items())
    ]


async def cleared_by_matcher(raws: list[bytes], rule: PricingRule, agents: dict[str, str] | None = None
                             ) -> FakeService:
    svc = FakeService(raws, rule)
    svc.state.agent_of = agents or {}
    await Matcher(svc).clear_slot(SLOT, matched_at_ms=MATCHED_AT_MS)  # type: ignore[arg-type]
    assert svc.state.finished == [SLOT]
    return svc


def wire(book: list[Order]) -> list[bytes]:
    return [encode(order_to_wire(o, region=REGION)) for o in book]


def books() -> list[list[Order]]:
    rng = random.Random("matcher")
    return [[], *(random_book(rng) for _ in range(20)), random_large_book(rng, 3000, 40, "random"),
            random_large_book(rng, 3000, 40, "runs", levels=6)]


@pytest.mark.parametrize("rule", list(PricingRule))
async def test_clear_slot_publishes_the_same_messages_as_before(rule: PricingRule) -> None:
    for book in books():
        raws = wire(book)
        svc = await cleared_by_matcher(raws, rule)
        expected = before(raws, rule)
        assert [(encode(m), k) for m, k in svc.published] == [(encode(m), k) for m, k in expected]
        cleared = expected[0][0]
        assert isinstance(cleared, t.SlotCleared) and not cleared.failure


async def test_the_notices_of_households_with_an_agent_go_to_the_agent_in_one_bundle() -> None:
    rng = random.Random("agents")
    raws = wire(random_large_book(rng, 400, 30, "random"))
    expected = before(raws, PricingRule.MIDPOINT)
    parties = sorted(m.participant_id for m, _ in expected[1:] if isinstance(m, t.SettlementsNotice))
    agents = {p: ("agg0" if i % 2 else "agg1") for i, p in enumerate(parties) if i % 3}
    svc = await cleared_by_matcher(raws, PricingRule.MIDPOINT, agents)
    keys = Keys(REGION)
    assert encode(svc.published[0][0]) == encode(expected[0][0])  # the same SlotCleared
    direct = {m.participant_id: m for m, k in svc.published[1:] if isinstance(m, t.SettlementsNotice)}
    assert all(k == keys.to(m.participant_id, SETTLEMENTS) for m, k in svc.published[1:]
               if isinstance(m, t.SettlementsNotice))
    bundles = [(m, k) for m, k in svc.published[1:] if isinstance(m, t.AgentBundle)]
    assert sorted(m.participant_id for m, _ in bundles) == ["agg0", "agg1"]
    assert all(k == keys.to(m.participant_id, SETTLEMENTS) for m, k in bundles)
    bundled = {n.participant_id: (m.participant_id, n) for m, _ in bundles for n in m.notices}
    assert set(direct) == {p for p in parties if p not in agents}
    assert {p: agent for p, (agent, _) in bundled.items()} == agents
    # every party's notice is the one it got before, once, whichever way it went
    before_by_party = {m.participant_id: encode(m) for m, _ in expected[1:]}
    got = {**{p: encode(n) for p, n in direct.items()}, **{p: encode(n) for p, (_, n) in bundled.items()}}
    assert got == before_by_party


@pytest.mark.parametrize("rule", list(PricingRule))
async def test_clear_slot_sets_the_metrics_as_before(rule: PricingRule) -> None:
    book = random_large_book(random.Random("metrics"), 2000, 30, "random")
    svc = await cleared_by_matcher(wire(book), rule)
    settlements = clear(book, region=REGION, slot=SLOT, rule=rule, matched_at_ms=MATCHED_AT_MS)
    energy = sum(s.quantity_wh for s in settlements)
    paid = sum(s.buy_price * s.quantity_wh for s in settlements)
    assert isinstance(paid, Decimal) and energy

    def value(name: str, **labels: str) -> float | None:
        return svc.metrics.registry.get_sample_value(name, {"region": REGION, **labels})

    for side in ("bid", "ask"):
        assert value("microte_book_orders", side=side) == sum(1 for o in book if o.side == side)
    for source in ("solar", "wind", "bess"):
        wh = sum(s.quantity_wh for s in settlements if s.source == source)
        assert value("microte_matched_energy_joules_total", source=source) == (wh * JOULES_PER_WH if wh else None)
    assert value("microte_settlements_total") == len(settlements)
    assert value("microte_slot_matched_energy_joules") == energy * JOULES_PER_WH
    assert value("microte_slot_price_dollars_per_kwh") == float(paid / energy)
    assert svc.log.events[-1] == ("slot_cleared", {"slot": str(SLOT), "orders": len(book),
                                                   "settlements": len(settlements), "energy_wh": energy})


@pytest.mark.parametrize("poison", [b"\xc1 not msgpack", encode(t.SlotRecorded(region=REGION, slot=slot_to_wire(SLOT),
                                                                                 entry_count=1))])
async def test_a_poison_book_is_held_with_the_same_failure_as_before(poison: bytes) -> None:
    raws = [*wire(random_book(random.Random(5), 10)), poison]
    svc = await cleared_by_matcher(raws, PricingRule.MIDPOINT)
    expected = before(raws, PricingRule.MIDPOINT)
    assert [(encode(m), k) for m, k in svc.published] == [(encode(m), k) for m, k in expected]
    held = svc.published[0][0]
    assert isinstance(held, t.SlotCleared) and held.failure.startswith("Undecodable: ")


async def test_an_order_off_the_tick_holds_the_slot_with_the_same_failure_as_before() -> None:
    book = random_book(random.Random(9), 10)
    off_tick = msgspec.structs.replace(order_to_wire(book[0], region=REGION), price="0.12345")
    raws = [*wire(book[1:]), encode(off_tick)]
    svc = await cleared_by_matcher(raws, PricingRule.PAY_AS_BID)
    expected = before(raws, PricingRule.PAY_AS_BID)
    assert [(encode(m), k) for m, k in svc.published] == [(encode(m), k) for m, k in expected]
    held = svc.published[0][0]
    assert isinstance(held, t.SlotCleared) and held.failure.startswith("InvalidPrice: ")
