"""The invariants of docs/market.md section 7 on generated slots.

Settlements come from ``clear()`` on generated books; meter readings are drawn around the
settled quantities (exactly, a little under or over, zero, anything) and some parties
send none. Each invariant is checked here directly, and ``violations()`` must agree.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal

from builders import REGION, SLOT, reading
from hypothesis import given
from hypothesis import strategies as st
from strategies import SOURCES, books

from shared.market import (
    GRID,
    MARKET,
    GridPrices,
    LedgerEntry,
    PricingRule,
    Reading,
    Settlement,
    amount,
    bills,
    clear,
    reconcile,
    true_up,
    violations,
)

ZERO = Decimal(0)
SETTLED = {"p2p", "bess_cover", "unconsumed", "shortfall"}
SUPPLIED = {"p2p", "bess_cover", "unconsumed"}
CONSUMED = {"p2p", "bess_cover"}


@dataclass(frozen=True)
class Case:
    settlements: list[Settlement]
    readings: list[Reading]
    grid: GridPrices


def around(draw: st.DrawFn, settled: int) -> int:
    """A meter value near ``settled``: exactly, a little under or over, zero, or anything."""
    return draw(st.one_of(
        st.just(settled), st.just(0), st.integers(0, 6000),
        st.integers(max(settled - 50, 0), settled + 50),
    ))


@st.composite
def cases(draw: st.DrawFn) -> Case:
    book = draw(books())
    rule = draw(st.sampled_from(list(PricingRule)))
    settlements = clear(book, region=REGION, slot=SLOT, rule=rule, matched_at_ms=7)
    sold: dict[tuple[str, str], int] = defaultdict(int)
    bought: dict[str, int] = defaultdict(int)
    for s in settlements:
        sold[(s.seller, s.source)] += s.quantity_wh
        bought[s.buyer] += s.quantity_wh
    parties = sorted({o.participant_id for o in book} | {"bystander"})
    readings = []
    for pid in parties:
        if draw(st.integers(0, 4)) == 0:
            continue  # no reading: counts as zeros
        export = {src: around(draw, sold[(pid, src)]) for src in SOURCES if draw(st.booleans())}
        self_consumed = {src: draw(st.integers(0, 300)) for src in SOURCES if draw(st.booleans())}
        readings.append(reading(pid, import_wh=around(draw, bought[pid]), export_wh=export,
                                self_consumed_wh=self_consumed))
    grid_sell = draw(st.sampled_from([Decimal("0.069"), Decimal("0"), Decimal("0.2"), Decimal("0.0001")]))
    fee = draw(st.sampled_from([Decimal("1.1"), Decimal("0"), Decimal("0.35")]))
    return Case(settlements, readings, GridPrices(buy_price=grid_sell * (1 + fee), sell_price=grid_sell))


def run(case: Case) -> list[LedgerEntry]:
    return reconcile(region=REGION, slot=SLOT, settlements=case.settlements, readings=case.readings, grid=case.grid)


@given(case=cases())
def test_violations_finds_nothing_wrong(case: Case) -> None:
    assert violations(case.settlements, case.readings, run(case)) == []


@given(case=cases())
def test_each_settlement_is_split_exactly_into_p2p_bess_cover_unconsumed_and_shortfall(case: Case) -> None:
    entries = run(case)
    for s in case.settlements:
        mine = [e for e in entries if e.settlement_id == s.settlement_id]
        assert sum(e.quantity_wh for e in mine if e.kind in SETTLED) == s.quantity_wh
        for e in mine:
            if e.kind in SETTLED:
                assert (e.seller, e.buyer, e.buy_price, e.sell_price) == (s.seller, s.buyer, s.buy_price, s.sell_price)
        # What is unconsumed is exported for the buyer once; what is short is compensated once.
        for origin in {s.source, "bess"}:
            unconsumed = sum(e.quantity_wh for e in mine if e.kind == "unconsumed" and e.source == origin)
            exported = [e for e in mine if e.kind == "unconsumed_export" and e.source == origin]
            assert sum(e.quantity_wh for e in exported) == unconsumed
            assert all((e.seller, e.buyer, e.buy_price) == (s.buyer, GRID, case.grid.sell_price) for e in exported)
        shortfall = sum(e.quantity_wh for e in mine if e.kind == "shortfall")
        penalties = [e for e in mine if e.kind == "shortfall_penalty"]
        assert sum(e.quantity_wh for e in penalties) == shortfall
        assert all((e.seller, e.buyer, e.buy_price) == (s.buyer, s.seller, case.grid.buy_price) for e in penalties)
        if s.source == "bess":
            assert not any(e.kind == "bess_cover" for e in mine)  # a battery contract has no cover


@given(case=cases())
def test_every_reported_export_and_import_is_accounted_for_once(case: Case) -> None:
    entries = run(case)
    reported = {r.participant_id: r for r in case.readings}
    parties = set(reported) | {s.buyer for s in case.settlements} | {s.seller for s in case.settlements}
    for pid in parties:
        r = reported.get(pid)
        for src in SOURCES:
            supplied = sum(e.quantity_wh for e in entries if e.kind in SUPPLIED and e.seller == pid and e.source == src)
            to_grid = sum(e.quantity_wh for e in entries if e.kind == "grid_export" and e.seller == pid
                          and e.source == src)
            assert supplied + to_grid == (r.export_wh.get(src, 0) if r else 0)
        consumed = sum(e.quantity_wh for e in entries if e.kind in CONSUMED and e.buyer == pid)
        from_grid = sum(e.quantity_wh for e in entries if e.kind == "grid_import" and e.buyer == pid)
        assert consumed + from_grid == (r.import_wh if r else 0)


@given(case=cases())
def test_no_quantity_is_negative_and_self_consumption_is_recorded_exactly_as_reported(case: Case) -> None:
    entries = run(case)
    for e in entries:
        assert isinstance(e.quantity_wh, int) and e.quantity_wh > 0
        assert e.buy_price >= 0 and e.sell_price >= 0
        assert e.seller != e.buyer or e.kind == "self_consumption"
    got = {(e.seller, e.source): e.quantity_wh for e in entries if e.kind == "self_consumption"}
    expected = {(r.participant_id, src): wh for r in case.readings for src, wh in r.self_consumed_wh.items() if wh}
    assert got == expected


@given(case=cases())
def test_money_sums_to_zero_exactly_over_participants_grid_and_market(case: Case) -> None:
    entries = run(case)
    net: dict[str, Decimal] = defaultdict(Decimal)  # received minus paid
    for e in entries:
        paid, received = amount(e.quantity_wh, e.buy_price), amount(e.quantity_wh, e.sell_price)
        assert type(paid) is Decimal and type(received) is Decimal
        net[e.buyer] -= paid
        net[e.seller] += received
        net[MARKET] += paid - received
    assert sum(net.values(), ZERO) == ZERO
    assert net[MARKET] >= 0  # the operator only ever keeps a spread
    b = bills(entries)
    assert set(b) <= set(net)
    for party, value in net.items():
        if value or party in b:
            assert b[party].received - b[party].paid == value, party


@given(case=cases(), seed=st.integers(0, 2**32))
def test_a_replay_gives_identical_entries_with_unique_ids_whatever_order_the_readings_arrive_in(
    case: Case, seed: int
) -> None:
    first = run(case)
    shuffled = list(case.readings)
    random.Random(seed).shuffle(shuffled)
    second = reconcile(region=REGION, slot=SLOT, settlements=case.settlements, readings=shuffled, grid=case.grid)
    assert first == second
    assert repr(first) == repr(second)
    assert len({e.entry_id for e in first}) == len(first)


@given(case=cases(), late_count=st.integers(0, 4), seed=st.integers(0, 2**32))
def test_a_true_up_appends_revisions_each_summing_to_zero_whose_net_is_the_reconciliation_with_every_reading(
    case: Case, late_count: int, seed: int
) -> None:
    """Some readings arrive late, one by one: every revision balances on its own, nothing
    is negative, ids never repeat, and the net is what every reading on time would give."""
    shuffled = list(case.readings)
    random.Random(seed).shuffle(shuffled)
    late, on_time = shuffled[:late_count], shuffled[late_count:]
    revisions = true_up(region=REGION, slot=SLOT, settlements=case.settlements, readings=on_time, late=late,
                        grid=case.grid)
    assert len(revisions) == 1 + len(late)
    every = [e for revision in revisions for e in revision]
    assert len({e.entry_id for e in every}) == len(every)
    for k, revision in enumerate(revisions):
        assert all(e.revision == k and e.quantity_wh > 0 for e in revision)
        assert k > 0 or not any(e.reverses for e in revision)
        money = bills(revision).values()
        assert sum((b.received - b.paid for b in money), ZERO) == ZERO, k
    net: dict[tuple[object, ...], int] = defaultdict(int)
    for e in every:
        net[(e.kind, e.settlement_id, e.seller, e.buyer, e.source, e.buy_price, e.sell_price)] += e.signed_wh
    assert all(wh >= 0 for wh in net.values())
    expected = {(e.kind, e.settlement_id, e.seller, e.buyer, e.source, e.buy_price, e.sell_price): e.quantity_wh
                for e in run(case)}
    assert {key: wh for key, wh in net.items() if wh} == expected
    assert violations(case.settlements, case.readings, every) == []
