"""Every worked example of docs/market.md, rebuilt with the market core and checked figure by figure.

The expected figures are read from the page itself, so that the page and the code cannot
drift apart: a tabular example is found by the ``<!-- example: NAME -->`` marker before it
(its block runs to the next marker or heading) and its Markdown table is parsed; a figure
stated in running text is found in its example block or section by a regular expression
that quotes the page's wording. When the page no longer says a figure in those words, the
test fails and names the sentence it looked for. The inputs (books, readings, tariffs) are
read from the page too; only the code's fixed inputs that the page states in passing (a
valid order to vary, the round an order is sent in) are written here, next to the place
in the page they come from.
"""

from __future__ import annotations

import ast
import operator
import re
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, Inexact
from pathlib import Path
from typing import Any

import pytest

from services.order_intake.handlers import order_id
from shared.market import (
    GRID,
    MARKET,
    MAX_ORDER_WH,
    MAX_PRICE,
    MAX_READING_SOURCES,
    MAX_READING_WH,
    PRICE_TICK,
    SOURCES,
    Bill,
    EntryKind,
    GridPrices,
    LedgerEntry,
    Order,
    OrderTerms,
    Pool,
    PricingRule,
    Reading,
    Rejection,
    RejectReason,
    Schedule,
    Settlement,
    Slot,
    Tariff,
    accept,
    amount,
    bills,
    check_price_cap,
    classify_source,
    clear,
    parse_price,
    price_to_ticks,
    reconcile,
    true_up,
    validate_order,
    violations,
)
from shared.market.numbers import EXACT, InvalidPrice, half_ticks_to_price, text_to_ticks, ticks_to_price
from shared.market.orders import DEFAULT_PRICE_CAP
from shared.market.timezones import zone as pinned_zone
from shared.runtime.settings import from_env

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "market.md").read_text()

MARKER = re.compile(r"^<!-- example: (\S+) -->$", re.M)
HEADING = re.compile(r"^#{1,6} ", re.M)
SECTION_HEADING = re.compile(r"^## ", re.M)
TABLE_RULE = re.compile(r"\|(\s*:?-+:?\s*\|)+")
SLOT_TEXT = re.compile(r"\[(\d+), (\d+)\)")


# --- reading the page -------------------------------------------------------------------


def example(name: str) -> str:
    """The block of the page that starts at ``<!-- example: name -->``."""
    found = [m for m in MARKER.finditer(DOC) if m.group(1) == name]
    assert len(found) == 1, f"docs/market.md needs exactly one '<!-- example: {name} -->' marker"
    start = found[0].end()
    ends = [m.start() for m in (MARKER.search(DOC, start), HEADING.search(DOC, start)) if m]
    return DOC[start : min(ends, default=len(DOC))]


def section(number: int) -> str:
    """Section ``number`` of the page, from its ``## n.`` heading to the next one."""
    head = re.search(rf"^## {number}\. .*$", DOC, re.M)
    assert head, f"docs/market.md has no section '## {number}.'"
    end = SECTION_HEADING.search(DOC, head.end())
    return DOC[head.end() : end.start() if end else len(DOC)]


def plain(text: str) -> str:
    return text.replace("`", "").strip()


def prose(block: str, *, until_table: bool = False) -> str:
    """The running text of ``block`` (tables left out), backticks dropped, on one line."""
    lines: list[str] = []
    for line in block.splitlines():
        if line.lstrip().startswith("|"):
            if until_table:
                break
            continue
        lines.append(line)
    return " ".join(plain(" ".join(lines)).split())


def cells(line: str) -> list[str]:
    return [plain(c) for c in line.strip()[1:-1].split("|")]


def tables(block: str) -> list[list[dict[str, str]]]:
    """Every Markdown table in ``block``, as rows keyed by the header (backticks dropped)."""
    found: list[list[dict[str, str]]] = []
    lines = block.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("|") and i + 1 < len(lines) and TABLE_RULE.fullmatch(lines[i + 1].strip()):
            header = cells(lines[i])
            rows: list[dict[str, str]] = []
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(dict(zip(header, cells(lines[i]), strict=True)))
                i += 1
            found.append(rows)
        else:
            i += 1
    return found


def table(block: str, first_column: str) -> list[dict[str, str]]:
    """The one table in ``block`` whose first column is headed ``first_column``."""
    found = [t for t in tables(block) if t and next(iter(t[0])) == first_column]
    assert len(found) == 1, f"expected one table headed {first_column!r}, found {len(found)}"
    return found[0]


def find(pattern: str, text: str) -> re.Match[str]:
    m = re.search(pattern, text)
    assert m, f"docs/market.md no longer says (as a regular expression): {pattern}"
    return m


def slot_in(text: str) -> Slot:
    m = SLOT_TEXT.fullmatch(text.strip())
    assert m, f"not a slot [start, end): {text!r}"
    return Slot(int(m.group(1)), int(m.group(2)))


def dec(text: str) -> Decimal:
    return Decimal(text)


# "Settlement ids are 24 hex digits and are cut to their first 8 here." (page introduction)
_ID = find(r"Settlement ids are (\d+) hex digits and are cut to their first (\d+) here",
           prose(DOC.split("## Contents")[0]))
ID_DIGITS, ID_CUT = int(_ID.group(1)), int(_ID.group(2))


def short(full_id: str) -> str:
    assert re.fullmatch(rf"[0-9a-f]{{{ID_DIGITS}}}", full_id), full_id
    return full_id[:ID_CUT]


_OPS: dict[type[ast.operator], Callable[[int, int], int]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
}


def evaluate(expr: str, names: Mapping[str, int]) -> int | bool:
    """A formula of the page (``T+(k-1)d``, ``slot.start < T + k*d``), computed safely."""
    source = re.sub(r"(?<=[)k])(?=d)", "*", expr.replace(" ", ""))  # "(k-1)d" -> "(k-1)*d", "kd" -> "k*d"

    def ev(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], ast.Lt):
            return ev(node.left) < ev(node.comparators[0])
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            return names[f"{node.value.id}.{node.attr}"]
        if isinstance(node, ast.Name):
            return names[node.id]
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        raise AssertionError(f"unexpected {ast.dump(node)} in formula {expr!r}")

    result: int | bool = ev(ast.parse(source, mode="eval"))
    return result


# --- building inputs ----------------------------------------------------------------------


def valid_order(**changes: Any) -> dict[str, Any]:
    """An order ``validate_order`` accepts in round T = 1782151200 for slot X (the first
    row of section 2's timeline: "check_order_slot(X, 1782151200) is None")."""
    terms: dict[str, Any] = dict(
        participant_id="h1", side="bid", quantity_wh=500, price=Decimal("0.1200"), source="solar",
        slot=Slot(1782151320, 1782151380), schedule=Schedule(), round_start=1782151200,
    )
    terms.update(changes)
    return terms


def accepted(
    oid: str, participant: str, side: str, wh: int, price: str, source: str, slot: Slot, seq: int
) -> Order:
    """An order of the page, through ``validate_order`` and ``accept`` as order-intake does,
    sent in the last round that takes orders for ``slot``."""
    schedule = Schedule()
    round_start = schedule.closes_at(slot) - schedule.duration
    terms = validate_order(participant_id=participant, side=side, quantity_wh=wh, price=Decimal(price),
                           source=source, slot=slot, schedule=schedule, round_start=round_start)
    assert isinstance(terms, OrderTerms), terms
    return accept(terms, order_id=oid, client_order_id=f"c-{oid}", seq=seq, submitted_at_ms=round_start * 1000)


ORDER_WORDS = re.compile(
    r"\b(?P<who>[a-z]+) (?P<verb>asked|bid)\b"
    r"|(?P<wh>\d+) wh(?: of (?P<source>[a-z]+))? at (?P<price>\d+\.\d+) \(order (?P<oid>\w+)\)"
)


def orders_in(text: str, slot: Slot) -> list[Order]:
    """Orders stated as "alice asked 1000 Wh of solar at 0.0900 (order `a`), bob bid 1000 Wh
    at 0.1100 (order `b`)": a missing source is the one stated before it."""
    orders: list[Order] = []
    who = verb = source = None
    for m in ORDER_WORDS.finditer(text.lower()):
        if m.group("who"):
            who, verb = m.group("who"), m.group("verb")
            continue
        source = m.group("source") or source
        assert who and verb and source, f"an order without participant, side or source: {m.group(0)!r}"
        side = "ask" if verb == "asked" else "bid"
        orders.append(accepted(m.group("oid"), who, side, int(m.group("wh")), m.group("price"), source, slot,
                               seq=len(orders) + 1))
    return orders


READING_WORDS = re.compile(
    r"[;.](?=\s|$)"
    r"|\b(?P<who>[a-z]+) (?P<verb>exports|imports|sends no reading)\b"
    r"|\b(?P<verb2>exports|imports|self-consumes)\b"
    r"|, (?P<who2>[a-z]+) (?P<wh2>\d+)\b"
    r"|\b(?P<wh>\d+)(?: wh)?(?: (?P<source>solar|wind|bess))?\b"
)


def readings_in(text: str, slot: Slot) -> tuple[list[Reading], set[str]]:
    """Readings stated as "alice exports 1500 Wh solar and self-consumes 300 Wh solar; bob
    imports 1200 Wh" (or "bob imports 500, carol 300"), and who "sends no reading"."""
    imports: dict[str, int] = {}
    exports: dict[str, dict[str, int]] = defaultdict(dict)
    selfs: dict[str, dict[str, int]] = defaultdict(dict)
    silent: set[str] = set()
    who: str | None = None
    verb: str | None = None
    for m in READING_WORDS.finditer(text.lower()):
        if m.group("who"):
            who, verb = m.group("who"), m.group("verb")
            if verb == "sends no reading":
                silent.add(who)
            continue
        if m.group("verb2"):
            verb = m.group("verb2")
            continue
        if m.group("who2") and verb == "imports":
            who, wh, source = m.group("who2"), int(m.group("wh2")), None
        elif m.group("wh") and verb in ("exports", "imports", "self-consumes"):
            wh, source = int(m.group("wh")), m.group("source")
        else:
            if not m.group("wh") and not m.group("who2"):
                verb = None  # the end of a clause
            continue
        assert who is not None
        if verb == "imports":
            assert source is None and who not in imports, m.group(0)
            imports[who] = wh
        else:
            assert source is not None, f"{verb} without a source: {m.group(0)!r}"
            (exports if verb == "exports" else selfs)[who][source] = wh
    names = set(imports) | set(exports) | set(selfs)
    assert not names & silent, f"{names & silent} both send and do not send a reading"
    readings = [Reading(participant_id=p, slot=slot, import_wh=imports.get(p, 0), export_wh=dict(exports[p]),
                        self_consumed_wh=dict(selfs[p])) for p in sorted(names)]
    return readings, silent


def full_delivery(settlements: list[Settlement], slot: Slot) -> list[Reading]:
    """Readings under which every settlement is delivered and used exactly."""
    imports: dict[str, int] = defaultdict(int)
    exports: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for s in settlements:
        imports[s.buyer] += s.quantity_wh
        exports[s.seller][s.source] += s.quantity_wh
    parties = sorted(set(imports) | set(exports))
    return [Reading(p, slot, imports.get(p, 0), dict(exports.get(p, {}))) for p in parties]


def money_sum(bill_of: Mapping[str, Bill]) -> Decimal:
    return sum((b.received - b.paid for b in bill_of.values()), Decimal(0))


# --- section 2: time ------------------------------------------------------------------------


def timeline_inputs() -> tuple[int, Slot]:
    text = prose(example("timeline"))
    t = int(find(r"the round T = (\d+)", text).group(1))
    x = slot_in(find(r"slot X = (\[\d+, \d+\))", text).group(1))
    return t, x


def test_schedule_defaults_are_those_of_section_2_and_of_the_settings() -> None:
    text = prose(section(2))
    d = int(find(r"MICROTE_ROUND_SECONDS, default (\d+)\)", text).group(1))
    k = int(find(r"MICROTE_CLOSE_STEPS, default (\d+), at least (\d+)\)", text).group(1))
    h = int(find(r"MICROTE_HORIZON_S, default (\d+)\)", text).group(1))
    m = find(r"With the default schedule \((\d+) s rounds, close_steps (\d+), horizon (\d+) s\)",
             prose(example("timeline")))
    assert (d, k, h) == tuple(int(g) for g in m.groups())
    assert Schedule() == Schedule(duration=d, close_steps=k, horizon_s=h)
    assert from_env({}).market.schedule == Schedule()
    least = int(find(r"MICROTE_CLOSE_STEPS, default \d+, at least (\d+)\)", text).group(1))
    Schedule(close_steps=least)
    with pytest.raises(ValueError):
        Schedule(close_steps=least - 1)


def test_window_formulas_of_section_2() -> None:
    rows = table(section(2), "window")
    text = prose(section(2))
    gate = find(r"gate_closed\(slot, T\) is (slot\.start < T \+ k\*d)", text).group(1)
    closes = find(r"closes_at\(slot\) = (slot\.start - \(k-1\)\*d)", text).group(1)
    assert [r["window"] for r in rows] == ["current_round", "last_settle", "next_settle"]
    t = 1782151200  # a multiple of both durations below
    for d in (60, 900):
        for k in (1, 2, 4):
            schedule = Schedule(duration=d, close_steps=k, horizon_s=86_400)
            windows = schedule.windows(t)
            for row in rows:
                start, end = row["interval"].strip("[)").split(",")
                expected = Slot(int(evaluate(start, {"T": t, "d": d, "k": k})),
                                int(evaluate(end, {"T": t, "d": d, "k": k})))
                assert getattr(windows, row["window"]) == expected, (d, k, row)
            for start in range(t - 2 * d, t + 6 * d, d):
                slot = Slot(start, start + d)
                names = {"T": t, "d": d, "k": k, "slot.start": start}
                assert schedule.gate_closed(slot, t) == evaluate(gate, names)
                assert schedule.closes_at(slot) == evaluate(closes, names)
    # "With k = 1 a slot would be matched at the very start of its own delivery."
    assert find(r"With k = (\d+) a slot would be matched at the very start of its own delivery", text).group(1) == "1"
    _, x = timeline_inputs()
    assert Schedule(close_steps=1).closes_at(x) == x.start


def test_timeline_round_is_the_stated_date() -> None:
    text = prose(example("timeline"))
    t, _ = timeline_inputs()
    stated = find(r"T = \d+ \((\w+ \d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC\)", text).group(1)
    assert datetime.fromtimestamp(t, UTC).strftime("%A %Y-%m-%d %H:%M:%S") == stated


def test_timeline_table() -> None:
    schedule = Schedule()
    t, x = timeline_inputs()
    rows = table(example("timeline"), "round start")
    states = []
    for i, row in enumerate(rows):
        r = int(row["round start"])
        assert r == t + i * schedule.duration
        w = schedule.windows(r)
        assert row["current_round"] == str(w.current_round)
        assert row["last_settle (cleared now)"] == str(w.last_settle)
        assert row["next_settle"] == str(w.next_settle)
        what = row["slot X"]
        if what.startswith("open:"):
            states.append("open")
            assert int(find(r"check_order_slot\(X, (\d+)\) is None", what).group(1)) == r
            assert schedule.check_order_slot(x, r) is None
            assert not schedule.gate_closed(x, r)
            assert x == w.next_settle
            assert "last round that takes orders for it" in what
            assert schedule.check_order_slot(x, r + schedule.duration) is RejectReason.GATE_CLOSED
        elif what.startswith("gate closed"):
            states.append("closed")
            assert "(gate_closed)" in what
            assert schedule.gate_closed(x, r)
            assert schedule.check_order_slot(x, r) is RejectReason.GATE_CLOSED
            closes_at = int(find(r"closes_at\(X\) = (\d+)", what).group(1))
            assert schedule.closes_at(x) == closes_at == r
            assert x == w.last_settle
            matched_at_ms = int(find(r"matched_at_ms = (\d+)", what).group(1))
            # section 2: "it is closes_at(slot) * 1000"
            assert matched_at_ms == schedule.closes_at(x) * 1000
        elif what.startswith("delivered"):
            states.append("delivered")
            assert x == w.current_round
        else:
            raise AssertionError(f"unexpected state of X: {what!r}")
    assert states == ["open", "closed", "delivered"]


def test_timeline_orders_and_fifteen_minute_rounds() -> None:
    text = prose(example("timeline"))
    schedule = Schedule()
    r = int(find(r"In round (\d+), an order for", text).group(1))
    claims = re.findall(r"(\[\d+, \d+\))(?: \(ending exactly at T \+ (\d+)\))? (?:gets (\w+)|is (accepted))", text)
    assert len(claims) == 4, claims
    for slot_text, ending, reason, ok in claims:
        slot = slot_in(slot_text)
        if ending:
            assert slot.end == r + int(ending) == r + schedule.horizon_s
        result = validate_order(**valid_order(slot=slot, round_start=r))
        if ok:
            assert isinstance(result, OrderTerms), (slot, result)
            assert schedule.check_order_slot(slot, r) is None
        else:
            assert isinstance(result, Rejection) and result.reason == RejectReason(reason), (slot, result)
            assert schedule.check_order_slot(slot, r) == RejectReason(reason)
    m = find(r"With (\d+)-minute rounds \(Schedule\(duration=(\d+)\)\) the same round's next_settle is "
             r"(\[\d+, \d+\)) and last_settle (\[\d+, \d+\))", text)
    assert int(m.group(1)) * 60 == int(m.group(2))
    w = Schedule(duration=int(m.group(2))).windows(r)
    assert (w.next_settle, w.last_settle) == (slot_in(m.group(3)), slot_in(m.group(4)))


def test_realtime_reading_deadline_of_the_timeline_slot() -> None:
    text = prose(section(2))
    deadline = int(find(r"MICROTE_READING_DEADLINE_S \(default (\d+)\) after the slot's end", text).group(1))
    latest = int(find(r"With the defaults, slot X above is reconciled at the latest at (\d+)", text).group(1))
    _, x = timeline_inputs()
    assert from_env({}).market.reading_deadline_s == deadline
    assert x.end + deadline == latest


# --- section 4: orders ----------------------------------------------------------------------


def test_order_ids_of_section_4() -> None:
    text = prose(example("order-ids"))
    m = find(r'\("([\w-]+)", "([\w-]+)", "([\w-]+)", (\[\d+, \d+\))\) always gives ([0-9a-f]+), '
             r"and the same client id in the next slot gives ([0-9a-f]+)", text)
    region, participant, client_id, slot_text, first, second = m.groups()
    slot = slot_in(slot_text)
    following = Slot(slot.end, slot.end + slot.seconds)
    assert order_id(region, participant, client_id, slot) == first
    assert order_id(region, participant, client_id, following) == second
    assert len(first) == ID_DIGITS  # the same 24 hex digits as a settlement id


def test_order_fields_and_price_examples_of_section_4() -> None:
    text = prose(section(4))
    fields = {row["field"]: row["meaning"] for row in table(section(4), "field")}
    low, exponent = find(r"energy in Wh, (\d+) to MAX_ORDER_WH = 10\^(\d+)", fields["quantity_wh"]).groups()
    assert 10 ** int(exponent) == MAX_ORDER_WH
    assert isinstance(validate_order(**valid_order(quantity_wh=int(low))), OrderTerms)
    assert isinstance(validate_order(**valid_order(quantity_wh=MAX_ORDER_WH)), OrderTerms)
    assert_rejected(valid_order(quantity_wh=int(low) - 1), RejectReason.INVALID_QUANTITY)
    assert_rejected(valid_order(quantity_wh=MAX_ORDER_WH + 1), RejectReason.QUANTITY_TOO_LARGE)

    fine, not_fine = find(r'\("([\d.]*\d)" is fine, "([\d.]*\d)" is not\)', text).groups()
    terms = validate_order(**valid_order(price=Decimal(fine)))
    assert isinstance(terms, OrderTerms)
    assert str(terms.price) == fine  # "The accepted order keeps the price text as sent."
    assert_rejected(valid_order(price=Decimal(not_fine)), RejectReason.INVALID_PRICE)
    assert_rejected(valid_order(price=-PRICE_TICK), RejectReason.INVALID_PRICE)  # "at least 0"

    cap, most = find(r"MICROTE_PRICE_CAP \(default (\d+) \$/kWh; the setting itself may not exceed "
                     r"MAX_PRICE = (\d+) \$/kWh", text).groups()
    assert DEFAULT_PRICE_CAP == Decimal(cap) == from_env({}).market.price_cap
    assert Decimal(most) == MAX_PRICE
    assert isinstance(validate_order(**valid_order(price=Decimal(cap))), OrderTerms)
    assert_rejected(valid_order(price=Decimal(cap) + PRICE_TICK), RejectReason.INVALID_PRICE)
    # "validation never lets a price above 1000 through whatever the cap"
    big_cap = MAX_PRICE * 2
    assert isinstance(validate_order(**valid_order(price=MAX_PRICE, price_cap=big_cap)), OrderTerms)
    assert_rejected(valid_order(price=MAX_PRICE + PRICE_TICK, price_cap=big_cap), RejectReason.INVALID_PRICE)
    check_price_cap(MAX_PRICE)
    with pytest.raises(InvalidPrice):
        check_price_cap(MAX_PRICE + PRICE_TICK)


def assert_rejected(order: dict[str, Any], reason: RejectReason) -> None:
    result = validate_order(**order)
    assert isinstance(result, Rejection) and result.reason is reason, (order, result)


def test_sides_sources_and_pools_of_section_4() -> None:
    text = prose(section(4))
    reasons = {row["reason"]: row["when"] for row in table(section(4), "reason")}
    refused = find(r"\(([A-Za-z]+) and ([A-Za-z]+) are refused\)", reasons["invalid_side"]).groups()
    for side in refused:
        assert_rejected(valid_order(side=side), RejectReason.INVALID_SIDE)
    for side in find(r"side \| text \| (\w+) \(buy\) or (\w+) \(sell\)", "side | text | " +
                     {r["field"]: r["meaning"] for r in table(section(4), "field")}["side"]).groups():
        assert isinstance(validate_order(**valid_order(side=side)), OrderTerms)

    non_dispatch_a, non_dispatch_b, dispatch = find(
        r"(\w+) and (\w+) form the \*non-dispatch\* pool, (\w+) the \*dispatch\* pool", text).groups()
    pools = {non_dispatch_a: Pool.NON_DISPATCH, non_dispatch_b: Pool.NON_DISPATCH, dispatch: Pool.DISPATCH}
    assert set(pools) == set(SOURCES)
    for source, pool in pools.items():
        for spelled in (source, source.upper(), source.capitalize()):  # "any case"
            assert classify_source(spelled) == (source, pool)
            terms = validate_order(**valid_order(source=spelled))
            assert isinstance(terms, OrderTerms) and terms.source == source
    other = find(r"Anything else, (\w+) included, is unknown_source", text).group(1)
    assert classify_source(other) is None
    assert_rejected(valid_order(source=other), RejectReason.UNKNOWN_SOURCE)


def test_validate_order_returns_the_first_rule_broken_in_the_order_of_section_4() -> None:
    text = prose(section(4))
    m = find(r"validate_order checks ([a-z, ]+?) and the slot \(([a-z, ]+)\), and returns the first rule broken",
             text)
    checks = [*m.group(1).split(", "), "slot"]
    # one broken value per check (hard-coded; each reason is the one section 4's reasons table names)
    bad: dict[str, tuple[dict[str, Any], RejectReason]] = {
        "side": ({"side": "buy"}, RejectReason.INVALID_SIDE),
        "quantity": ({"quantity_wh": 0}, RejectReason.INVALID_QUANTITY),
        "price": ({"price": Decimal("0.12345")}, RejectReason.INVALID_PRICE),
        "source": ({"source": "grid"}, RejectReason.UNKNOWN_SOURCE),
        "slot": ({"slot": Slot(1782151350, 1782151410)}, RejectReason.MISALIGNED_SLOT),
    }
    assert checks == list(bad)
    for i, name in enumerate(checks):
        changes: dict[str, Any] = {}
        for later in checks[i:]:
            changes.update(bad[later][0])
        assert_rejected(valid_order(**changes), bad[name][1])
    # the slots of section 2's timeline example that get these three reasons in round 1782151200
    slot_checks = {
        "alignment": (Slot(1782151350, 1782151410), RejectReason.MISALIGNED_SLOT),
        "gate": (Slot(1782151260, 1782151320), RejectReason.GATE_CLOSED),
        "horizon": (Slot(1782237600, 1782237660), RejectReason.BEYOND_HORIZON),
    }
    assert m.group(2).split(", ") == list(slot_checks)
    for slot, reason in slot_checks.values():
        assert_rejected(valid_order(slot=slot), reason)


def test_rejection_reasons_table_lists_every_reason() -> None:
    listed = [row["reason"] for row in table(section(4), "reason")]
    assert sorted(listed) == sorted(r.value for r in RejectReason)


# --- section 5: matching -------------------------------------------------------------------


@dataclass(frozen=True)
class BookExample:
    region: str
    slot: Slot
    matched_at_ms: int
    orders: list[Order]


def book_example() -> BookExample:
    block = example("matching-book")
    text = prose(block)
    m = find(r"Slot X = (\[\d+, \d+\)), region (\w+), seq in the order listed", text)
    slot, region = slot_in(m.group(1)), m.group(2)
    call = find(r'Each rule below is clear\(orders, region="(\w+)", slot=X, rule=\.\.\., matched_at_ms=(\d+)\)',
                text)
    assert call.group(1) == region
    orders = [accepted(row["order"], row["participant"], row["side"], int(row["Wh"]), row["$/kWh"], row["source"],
                       slot, seq=int(row["seq"])) for row in table(block, "order")]
    assert [o.seq for o in orders] == list(range(1, len(orders) + 1))  # "seq in the order listed"
    return BookExample(region, slot, int(call.group(2)), orders)


def clear_book(book: BookExample, rule: PricingRule) -> list[Settlement]:
    return clear(book.orders, region=book.region, slot=book.slot, rule=rule, matched_at_ms=book.matched_at_ms)


def test_pricing_rules_table_and_book_setup() -> None:
    rows = table(section(5), "rule")
    names = [row["rule"].split()[0] for row in rows]
    assert sorted(names) == sorted(rule.value for rule in PricingRule)
    default = [row["rule"].split()[0] for row in rows if "(default)" in row["rule"]]
    assert default == [PricingRule.MIDPOINT.value] == [from_env({}).market.rule.value]
    book = book_example()
    # section 2: matched_at_ms is closes_at(slot) * 1000
    assert book.matched_at_ms == Schedule().closes_at(book.slot) * 1000
    assert "Passing the same orders in reverse order gives identical settlements" in prose(example("matching-book"))
    for rule in PricingRule:
        assert clear(list(reversed(book.orders)), region=book.region, slot=book.slot, rule=rule,
                     matched_at_ms=book.matched_at_ms) == clear_book(book, rule)


@pytest.mark.parametrize("rule", list(PricingRule), ids=str)
def test_matching_example(rule: PricingRule) -> None:
    block = example(f"matching-{rule.value}")
    book = book_example()
    settlements = clear_book(book, rule)
    got = [(str(i), short(s.settlement_id), s.source, f"{s.bid_id} ({s.buyer})", f"{s.ask_id} ({s.seller})",
            str(s.quantity_wh), str(s.buy_price), str(s.sell_price)) for i, s in enumerate(settlements, 1)]
    expected = [(row["#"], row["settlement"], row["source"], row["bid (buyer)"], row["ask (seller)"], row["Wh"],
                 row["buy_price"], row["sell_price"]) for row in table(block, "#")]
    assert got == expected
    for s in settlements:
        assert (s.region, s.slot, s.matched_at_ms) == (book.region, book.slot, book.matched_at_ms)
        # section 10: "A settlement price therefore never has more than five decimals."
        assert all(-int(p.as_tuple().exponent) <= 5 for p in (s.buy_price, s.sell_price))

    text = prose(block)
    paid = sum((amount(s.quantity_wh, s.buy_price) for s in settlements), Decimal(0))
    received = sum((amount(s.quantity_wh, s.sell_price) for s in settlements), Decimal(0))
    assert paid == dec(find(r"Buyers pay ([\d.]*\d) \$", text).group(1))
    sellers = find(r"sellers (?:receive|get) (the same|([\d.]*\d) \$)", text)
    assert received == (paid if sellers.group(1) == "the same" else dec(sellers.group(2)))
    spread = re.search(r"the market operator keeps the ([\d.]*\d) \$ spread", text)
    assert paid - received == (dec(spread.group(1)) if spread else 0)
    # Delivered in full, the bills give the market operator exactly that spread.
    readings = full_delivery(settlements, book.slot)
    entries = reconcile(region=book.region, slot=book.slot, settlements=settlements, readings=readings,
                        grid=Tariff().prices_at(book.slot.start))
    assert violations(settlements, readings, entries) == []
    bill_of = bills(entries)
    assert bill_of.get(MARKET, Bill()).received == paid - received
    assert money_sum(bill_of) == 0


def test_uniform_within_each_pairs_limits_example_of_section_5() -> None:
    block = example("matching-uniform-limits")
    book = book_example()
    slot = book.slot
    orders = [accepted(row["order"], row["participant"], row["side"], int(row["Wh"]), row["$/kWh"], row["source"],
                       slot, seq=int(row["seq"])) for row in table(block, "order")]
    settlements = clear(orders, region=book.region, slot=slot, rule=PricingRule.UNIFORM, matched_at_ms=0)
    got = {(s.bid_id, s.ask_id): (s.buy_price, s.sell_price) for s in settlements}
    text = prose(block)
    clearing = dec(find(r"sets the clearing price \([\d.]+ \+ [\d.]+\) / 2 = ([\d.]+)", text).group(1))
    crossed = dec(find(r"b1 and\s+a2 trade at ([\d.]+), a2's ask", text).group(1))
    assert got == {("b1", "a2"): (crossed, crossed), ("b2", "a1"): (clearing, clearing)}
    assert [(s.bid_id, s.ask_id) for s in settlements] == [("b1", "a2"), ("b2", "a1")]


def test_midpoint_walk_as_told_in_section_5() -> None:
    text = prose(example("matching-midpoint"))
    book = book_example()
    by_id = {o.order_id: o for o in book.orders}
    settlements = clear_book(book, PricingRule.MIDPOINT)
    filled: dict[str, int] = defaultdict(int)
    for s in settlements:
        filled[s.bid_id] += s.quantity_wh
        filled[s.ask_id] += s.quantity_wh
    ask, lapse = find(r"\((\w+) with (\w+); (\w+)'s other (\d+) Wh lapse\)", text).groups()[2:]
    assert by_id[ask].quantity_wh - filled[ask] == int(lapse)
    bid, passed, owner = find(r"Then (\w+), the dearest solar bid, passes over (\w+), the cheapest ask, "
                              r"because both are (\w+)'s", text).groups()
    assert by_id[bid].participant_id == by_id[passed].participant_id == owner
    assert not [s for s in settlements if (s.bid_id, s.ask_id) == (bid, passed)]
    assert all(s.buyer != s.seller for s in settlements)  # no self-trade
    late, like = find(r"(\w+) is priced like (\w+) but was accepted later, so it gets nothing", text).groups()
    assert by_id[late].price == by_id[like].price and by_id[late].seq > by_id[like].seq
    assert filled[late] == 0
    a, b, mid = find(r"\(([\d.]*\d) \+ ([\d.]*\d)\) / 2 = ([\d.]*\d)", text).groups()
    assert str(half_ticks_to_price(price_to_ticks(dec(a)) + price_to_ticks(dec(b)))) == mid
    assert mid in {str(s.buy_price) for s in settlements}


def test_pay_as_bid_single_pair_of_section_5() -> None:
    text = prose(example("matching-pay_as_bid"))
    assert find(r"The pairs and quantities are the (\w+) ones", text).group(1) == PricingRule.MIDPOINT.value
    book = book_example()
    pairs = {rule: [(s.bid_id, s.ask_id, s.quantity_wh) for s in clear_book(book, rule)]
             for rule in (PricingRule.PAY_AS_BID, PricingRule.MIDPOINT)}
    assert pairs[PricingRule.PAY_AS_BID] == pairs[PricingRule.MIDPOINT]

    wh, source, ask_price, bid_price = find(
        r"alice asks (\d+) Wh of (\w+) at ([\d.]*\d), bob bids ([\d.]*\d), both delivered in full", text).groups()
    slot = book.slot
    orders = [accepted("a", "alice", "ask", int(wh), ask_price, source, slot, 1),
              accepted("b", "bob", "bid", int(wh), bid_price, source, slot, 2)]
    settlements = clear(orders, region=book.region, slot=slot, rule=PricingRule.PAY_AS_BID,
                        matched_at_ms=book.matched_at_ms)
    readings = full_delivery(settlements, slot)
    entries = reconcile(region=book.region, slot=slot, settlements=settlements, readings=readings,
                        grid=Tariff().prices_at(slot.start))
    buy, sell = find(r"the p2p entry carries buy_price ([\d.]*\d) and sell_price ([\d.]*\d)", text).groups()
    assert [(e.kind, str(e.buy_price), str(e.sell_price)) for e in entries] == [(EntryKind.P2P, buy, sell)]
    bob, alice, market = find(r"bills gives bob paid ([\d.]*\d) \$, alice received ([\d.]*\d) \$, "
                              r"market received ([\d.]*\d) \$", text).groups()
    bill_of = bills(entries)
    assert (bill_of["bob"].paid, bill_of["alice"].received, bill_of[MARKET].received) == (
        dec(bob), dec(alice), dec(market))
    assert violations(settlements, readings, entries) == []
    assert money_sum(bill_of) == 0


# --- section 7: reconciliation -------------------------------------------------------------

RECONCILIATION_LABELS = [m.group(1).removeprefix("reconciliation-") for m in MARKER.finditer(DOC)
                         if m.group(1).startswith("reconciliation-") and m.group(1) != "reconciliation-setup"]


@dataclass(frozen=True)
class Setup:
    region: str
    slot: Slot
    settlements: list[Settlement]
    grid_buy: str
    grid_sell: str


def reconciliation_setup() -> Setup:
    text = prose(example("reconciliation-setup"))
    slot = slot_in(find(r"one settlement in slot X = (\[\d+, \d+\))", text).group(1))
    region = find(r'Each is reconcile\(region="(\w+)", slot=X', text).group(1)
    rule = PricingRule(find(r"so (\w+) gives settlement", text).group(1))
    settlements = clear(orders_in(text, slot), region=region, slot=slot, rule=rule,
                        matched_at_ms=Schedule().closes_at(slot) * 1000)
    sid, wh, price = find(r"gives settlement (\w+), (\d+) Wh at ([\d.]*\d) \$/kWh", text).groups()
    assert [(short(s.settlement_id), s.quantity_wh, str(s.buy_price), str(s.sell_price)) for s in settlements] == [
        (sid, int(wh), price, price)]
    buy, sell = find(r"Grid prices are the defaults, buy ([\d.]*\d) and sell ([\d.]*\d) \$/kWh", text).groups()
    return Setup(region, slot, settlements, buy, sell)


def test_reconciliation_setup_and_default_grid_prices() -> None:
    setup = reconciliation_setup()
    grid = Tariff().prices_at(setup.slot.start)
    assert (str(grid.buy_price), str(grid.sell_price)) == (setup.grid_buy, setup.grid_sell)


def test_every_reconciliation_example_has_a_marker() -> None:
    worked = section(7)[section(7).index("### Worked examples"):]
    labels = re.findall(r"^\*\*([A-Z]'?)\. ", worked, re.M)
    assert labels and labels == RECONCILIATION_LABELS


def kind_rules() -> dict[str, dict[str, str]]:
    return {row["kind (EntryKind)"]: row for row in table(section(7), "kind (EntryKind)")}


def test_entry_kinds_table_lists_every_kind_and_the_examples_cover_them() -> None:
    assert sorted(kind_rules()) == sorted(k.value for k in EntryKind)
    shown = {row["kind"] for label in RECONCILIATION_LABELS for row in table(example(f"reconciliation-{label}"),
                                                                             "kind")}
    assert shown == {k.value for k in EntryKind}


def check_against_kind_table(e: LedgerEntry, s: Settlement | None, grid_buy: Decimal, grid_sell: Decimal) -> None:
    """The entry is what section 7's table of entry kinds says an entry of its kind is."""
    rule = kind_rules()[e.kind.value]

    def party(spec: str, other: str) -> str | None:
        if spec.startswith("settlement "):
            assert s is not None
            return {"settlement seller": s.seller, "settlement buyer": s.buyer}[spec]
        if spec == "grid":
            return GRID
        if spec == "itself":
            return other
        assert spec == "participant", spec
        return None  # any participant

    seller_spec, buyer_spec = (p.strip() for p in rule["seller → buyer"].split("→"))
    seller, buyer = party(seller_spec, e.buyer), party(buyer_spec, e.seller)
    assert seller in (None, e.seller) and buyer in (None, e.buyer), (e, rule)
    assert GRID not in {e.seller, e.buyer} - {seller, buyer}, (e, rule)
    assert (e.settlement_id is not None) == (s is not None) == ("settlement" in rule["seller → buyer"])
    source = rule["source"]
    allowed = {
        "settlement's": {s.source} if s else set(),
        "bess": {"bess"},
        "origin (source or bess)": {s.source, "bess"} if s else set(),
        "origin": {s.source, "bess"} if s else set(),
        "its source": set(SOURCES),
        "grid": {"grid"},
    }[source]
    assert e.source in allowed, (e, rule)
    prices = {
        "settlement's": (s.buy_price, s.sell_price) if s else None,
        "grid sell": (grid_sell, grid_sell),
        "grid buy": (grid_buy, grid_buy),
        "0": (Decimal(0), Decimal(0)),
    }[rule["prices"]]
    assert (e.buy_price, e.sell_price) == prices, (e, rule)


def net_claims(text: str, bill_of: Mapping[str, Bill]) -> int:
    """Checks "Net: alice -0.1345 $ (she earns 0.10 + 0.0345), bob 0.12898 $, grid 0.00552 $."."""
    m = re.search(r"Net: (.+?)\.(?=\s|$)", text)
    if not m:
        return 0
    stated = dict(re.findall(r"([a-z]+) (-?[\d.]*\d) \$", m.group(1)))
    assert set(stated) == set(bill_of), (stated, bill_of)
    for who, net in stated.items():
        assert bill_of[who].net_cost == dec(net), (who, bill_of[who])
    for who, parts in re.findall(r"([a-z]+) -?[\d.]*\d \$ \((?:she|he) earns ([\d.+ ]+)\)", m.group(1)):
        assert bill_of[who].received == sum((dec(p) for p in parts.split(" + ")), Decimal(0))
    return 1


def by_kind(entries: list[LedgerEntry], kind: EntryKind) -> list[LedgerEntry]:
    return [e for e in entries if e.kind is kind]


Claim = Callable[[re.Match[str], dict[str, Bill], list[LedgerEntry], list[Settlement]], None]


def _c_paid(m: re.Match[str], b: dict[str, Bill], es: list[LedgerEntry], ss: list[Settlement]) -> None:
    assert (b["alice"].sold_wh, b["alice"].received) == (int(m.group(1)), dec(m.group(2)))


def _c_bob(m: re.Match[str], b: dict[str, Bill], es: list[LedgerEntry], ss: list[Settlement]) -> None:
    paid, back, wh, net = m.groups()
    assert (b["bob"].paid, b["bob"].received, b["bob"].net_cost) == (dec(paid), dec(back), dec(net))
    [export] = by_kind(es, EntryKind.UNCONSUMED_EXPORT)
    assert (export.seller, export.buyer, export.quantity_wh, export.received) == ("bob", GRID, int(wh), dec(back))


def _grid_pays(m: re.Match[str], b: dict[str, Bill], es: list[LedgerEntry], ss: list[Settlement]) -> None:
    assert b[GRID].net_cost == dec(m.group(1))


def _grid_receives(m: re.Match[str], b: dict[str, Bill], es: list[LedgerEntry], ss: list[Settlement]) -> None:
    assert -b[GRID].net_cost == dec(m.group(1))


def _d_penalty(m: re.Match[str], b: dict[str, Bill], es: list[LedgerEntry], ss: list[Settlement]) -> None:
    payer, payee, money, wh = m.groups()
    [penalty] = by_kind(es, EntryKind.SHORTFALL_PENALTY)
    assert (penalty.buyer, penalty.seller, penalty.paid) == (payer, payee, dec(money))
    [imported] = by_kind(es, EntryKind.GRID_IMPORT)
    assert (imported.buyer, imported.quantity_wh, imported.paid) == (payee, int(wh), dec(money))


def _contract(m: re.Match[str], b: dict[str, Bill], es: list[LedgerEntry], ss: list[Settlement]) -> None:
    [s] = ss
    assert b["bob"].net_cost == dec(m.group(1)) == amount(s.quantity_wh, s.buy_price)


def _d_alice(m: re.Match[str], b: dict[str, Bill], es: list[LedgerEntry], ss: list[Settlement]) -> None:
    net, received, penalty = m.groups()
    assert (-b["alice"].net_cost, b["alice"].received, b["alice"].paid) == (dec(net), dec(received), dec(penalty))


def _e_flow(m: re.Match[str], b: dict[str, Bill], es: list[LedgerEntry], ss: list[Settlement]) -> None:
    solar, bess, supplied, shortfall, uses, used_solar, used_bess, unconsumed = (int(g) for g in m.groups())
    assert solar + bess == supplied
    assert sum(e.quantity_wh for e in es if e.kind in (EntryKind.P2P, EntryKind.BESS_COVER,
                                                       EntryKind.UNCONSUMED)) == supplied
    assert [e.quantity_wh for e in by_kind(es, EntryKind.SHORTFALL)] == [shortfall]
    assert [e.quantity_wh for e in by_kind(es, EntryKind.P2P)] == [used_solar]
    assert [e.quantity_wh for e in by_kind(es, EntryKind.BESS_COVER)] == [used_bess]
    assert used_solar + used_bess == uses
    assert [(e.source, e.quantity_wh) for e in by_kind(es, EntryKind.UNCONSUMED)] == [("bess", unconsumed)]


def _e_sum(m: re.Match[str], b: dict[str, Bill], es: list[LedgerEntry], ss: list[Settlement]) -> None:
    *parts, total = (int(g) for g in m.groups())
    [s] = ss
    kinds = (EntryKind.P2P, EntryKind.BESS_COVER, EntryKind.UNCONSUMED, EntryKind.SHORTFALL)
    assert [e.quantity_wh for k in kinds for e in by_kind(es, k)] == parts
    assert sum(parts) == total == s.quantity_wh


def _e_no_import(m: re.Match[str], b: dict[str, Bill], es: list[LedgerEntry], ss: list[Settlement]) -> None:
    assert not by_kind(es, EntryKind.GRID_IMPORT)
    assert by_kind(es, EntryKind.SHORTFALL_PENALTY)


def _f_bob(m: re.Match[str], b: dict[str, Bill], es: list[LedgerEntry], ss: list[Settlement]) -> None:
    assert (b["bob"].paid, b["bob"].received, b["bob"].net_cost) == tuple(dec(g) for g in m.groups())


def _f2_alice(m: re.Match[str], b: dict[str, Bill], es: list[LedgerEntry], ss: list[Settlement]) -> None:
    assert (b["alice"].paid, b["alice"].received, b["alice"].net_cost) == tuple(dec(g) for g in m.groups())


def _g_cover(m: re.Match[str], b: dict[str, Bill], es: list[LedgerEntry], ss: list[Settlement]) -> None:
    assert [e.quantity_wh for e in by_kind(es, EntryKind.BESS_COVER)] == [int(m.group(1))]
    assert ss[0].source == "bess"  # the battery sale was matched (and served) first


def _g_settlements(m: re.Match[str], b: dict[str, Bill], es: list[LedgerEntry], ss: list[Settlement]) -> None:
    stated = re.findall(r"(\d+) Wh (\w+) to (\w+) at ([\d.]*\d) \((\w+)\)", m.group(0))
    assert [(str(s.quantity_wh), s.source, s.buyer, str(s.buy_price), short(s.settlement_id)) for s in ss] == stated
    assert {s.seller for s in ss} == {"alice"}  # "Two settlements for alice"
    assert all(s.buy_price == s.sell_price for s in ss)


# The money and energy stated in the prose of the examples that have no "Net:" sentence
# (and a few more facts the prose tells), as (sentence of the page, check).
CLAIMS: dict[str, list[tuple[str, Claim]]] = {
    "C": [
        (r"Alice is paid for all (\d+) Wh \(([\d.]*\d) \$\)", _c_paid),
        (r"Bob pays ([\d.]*\d) \$ and gets ([\d.]*\d) \$ back from the grid for the (\d+) Wh he did not use: "
         r"net ([\d.]*\d) \$", _c_bob),
        (r"Grid: ([\d.]*\d) \$", _grid_pays),
    ],
    "D": [
        (r"In the penalty row the payer is (\w+) \(the buyer column\): she pays (\w+) ([\d.]*\d) \$, what \w+ pays "
         r"the grid for the (\d+) Wh he imports instead", _d_penalty),
        (r"Bob's net cost is exactly his contract, ([\d.]*\d) \$", _contract),
        (r"alice nets ([\d.]*\d) \$ \(([\d.]*\d) received less the ([\d.]*\d) penalty\)", _d_alice),
        (r"the grid receives ([\d.]*\d) \$", _grid_receives),
    ],
    "E": [
        (r"Supplied: (\d+) solar \+ (\d+) bess = (\d+); shortfall (\d+); bob uses (\d+) \(the (\d+) solar first, "
         r"then (\d+) of the battery energy\); (\d+) battery Wh are unconsumed", _e_flow),
        (r"(\d+) \+ (\d+) \+ (\d+) \+ (\d+) = (\d+) Wh", _e_sum),
        (r"Bob has no residual import, so he pays no grid import, yet the penalty is still due", _e_no_import),
    ],
    "F": [
        (r"Bob pays ([\d.]*\d) \$ and is credited ([\d.]*\d) \$ \(net ([\d.]*\d) \$\)", _f_bob),
    ],
    "F'": [
        (r"Bob's net cost is again his contract, ([\d.]*\d) \$", _contract),
        (r"alice pays ([\d.]*\d) \$ and receives ([\d.]*\d) \$ \(net cost ([\d.]*\d) \$\)", _f2_alice),
        (r"the grid receives ([\d.]*\d) \$", _grid_receives),
    ],
    "G": [
        (r"They give (\d+ Wh \w+ to \w+ at [\d.]*\d \(\w+\)), and (\d+ Wh \w+ to \w+ at [\d.]*\d \(\w+\))",
         _g_settlements),
        (r"only (\d+) Wh of battery are left to cover the solar gap", _g_cover),
    ],
}


@pytest.mark.parametrize("label", RECONCILIATION_LABELS)
def test_reconciliation_example(label: str) -> None:
    setup = reconciliation_setup()
    block = example(f"reconciliation-{label}")
    before_table = prose(block, until_table=True)
    own_orders = orders_in(before_table, setup.slot)
    settlements = setup.settlements
    if own_orders:  # G: its own book, "cleared with midpoint"
        assert "cleared with midpoint" in before_table
        settlements = clear(own_orders, region=setup.region, slot=setup.slot, rule=PricingRule.MIDPOINT,
                            matched_at_ms=Schedule().closes_at(setup.slot) * 1000)
    readings, silent = readings_in(before_table, setup.slot)
    assert readings, "no readings found in the example's text"
    grid = Tariff().prices_at(setup.slot.start)
    entries = reconcile(region=setup.region, slot=setup.slot, settlements=settlements, readings=readings, grid=grid)

    rows = table(block, "kind")
    by_id = {s.settlement_id: s for s in settlements}
    only = settlements[0] if len(settlements) == 1 else None
    got, expected = [], []
    for e, row in zip(entries, rows, strict=False):
        s = by_id[e.settlement_id] if e.settlement_id else None
        got.append((e.kind.value, f"{e.seller} → {e.buyer}", e.source, str(e.quantity_wh),
                    f"{e.buy_price} / {e.sell_price}", short(e.settlement_id) if e.settlement_id else ""))
        if "settlement" in row:
            sid = row["settlement"]
        else:  # one settlement: an entry carries it when its kind comes from a settlement (section 7)
            assert only is not None
            sid = short(only.settlement_id) if "settlement" in kind_rules()[row["kind"]]["seller → buyer"] else ""
        expected.append((row["kind"], row["seller → buyer"], row["source"], row["Wh"], row["buy / sell price"], sid))
        check_against_kind_table(e, s, grid.buy_price, grid.sell_price)
        assert (e.region, e.slot, e.delivered_at) == (setup.region, setup.slot, setup.slot.end)
        assert e.matched_at_ms == (s.matched_at_ms if s else None)
    assert len(entries) == len(rows), [(e.kind.value, e.quantity_wh) for e in entries]
    assert got == expected

    # The invariants of section 7, and the same entries whatever order the readings come in.
    assert violations(settlements, readings, entries) == []
    bill_of = bills(entries)
    assert money_sum(bill_of) == 0
    assert reconcile(region=setup.region, slot=setup.slot, settlements=settlements,
                     readings=list(reversed(readings)), grid=grid) == entries
    # Who "sends no reading" is a party that has none, and is treated as zeros.
    parties = {s.buyer for s in settlements} | {s.seller for s in settlements}
    assert silent <= parties and not silent & {r.participant_id for r in readings}

    text = prose(block)
    checked = net_claims(text, bill_of)
    for pattern, check in CLAIMS.get(label, []):
        check(find(pattern, text), bill_of, entries, settlements)
        checked += 1
    assert checked, f"example {label} states no money the test knows how to check"


# --- section 8: grid prices ----------------------------------------------------------------


def test_tariff_defaults_of_section_8() -> None:
    block = example("tariff-defaults")
    defaults = {row["setting"]: row["default"] for row in table(block, "setting")}
    tariff = Tariff()
    assert tariff.price == dec(defaults["MICROTE_GRID_PRICE"])
    assert tariff.fee_ratio == dec(defaults["MICROTE_FEE_RATIO"])
    assert tariff.timezone == defaults["MICROTE_TIMEZONE"]
    assert from_env({}).market.tariff == tariff
    text = prose(block)
    buy, sell = find(r"With the defaults, prices_at gives buy ([\d.]*\d) and sell ([\d.]*\d)\.", text).groups()
    prices = tariff.prices_at(1782151320)
    assert (str(prices.buy_price), str(prices.sell_price)) == (buy, sell)
    base, base_buy = find(r"A base price of ([\d.]*\d) gives buy ([\d.]*\d) \(not rounded\)", text).groups()
    prices = Tariff(price=dec(base)).prices_at(1782151320)
    assert (str(prices.buy_price), str(prices.sell_price)) == (base_buy, base)
    # "sell_price = price", "buy_price = price * (1 + fee_ratio)", "on the 0.0001 tick, >= 0"
    assert prices.buy_price == dec(base) * (1 + tariff.fee_ratio)
    for bad in (dec(base) + PRICE_TICK / 2, -PRICE_TICK):
        with pytest.raises(ValueError):
            Tariff(price=bad)


def literal(node: ast.AST) -> Any:
    """A constant of the page's ``Tariff(...)`` call: literals, dicts, ``Decimal("...")``."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "Decimal":
        assert len(node.args) == 1 and not node.keywords
        return Decimal(ast.literal_eval(node.args[0]))
    if isinstance(node, ast.Dict):
        return {literal(k): literal(v) for k, v in zip(node.keys, node.values, strict=True) if k is not None}
    return ast.literal_eval(node)


def test_time_of_use_example_of_section_8() -> None:
    block = example("tariff-time-of-use")
    call = ast.parse(find(r"`(Tariff\([^`]*\))`", block).group(1), mode="eval").body
    assert isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "Tariff"
    assert not call.args
    tariff = Tariff(**{kw.arg: literal(kw.value) for kw in call.keywords if kw.arg})
    local_zone = pinned_zone(tariff.timezone)
    rows = table(block, "slot start (local)")
    assert rows
    for row in rows:
        local, ts = find(r"^(\w{3} \d{4}-\d\d-\d\d \d\d:\d\d \w+) \((\d+)\)$", row["slot start (local)"]).groups()
        assert datetime.fromtimestamp(int(ts), local_zone).strftime("%a %Y-%m-%d %H:%M %Z") == local
        prices = tariff.prices_at(int(ts))
        assert f"{prices.buy_price} / {prices.sell_price}" == row["prices_at → buy / sell"], row


# --- section 10 (and 6): units and numbers -------------------------------------------------


def test_number_examples_of_section_10() -> None:
    units = {row["quantity"]: row["representation"] for row in table(section(10), "quantity")}
    assert dec(find(r"^([\d.]*\d) \$/kWh \(PRICE_TICK\)", units["tick"]).group(1)) == PRICE_TICK
    exponent = int(find(r"bounds 10\^(\d+) per order and per meter value", units["energy"]).group(1))
    assert MAX_ORDER_WH == MAX_READING_WH == 10**exponent
    assert "amount(quantity_wh, price) = quantity_wh * price / 1000, exact" in units["money"]
    assert amount(1234, dec("0.1449")) == Decimal(1234) * dec("0.1449") / 1000

    text = prose(section(10))
    ticks, price = find(r"ticks_to_price writes a tick count as a 4-decimal price \((\d+) → ([\d.]*\d)\)",
                        text).groups()
    assert str(ticks_to_price(int(ticks))) == price
    assert price_to_ticks(dec(price)) == text_to_ticks(price) == int(ticks)
    midpoints = re.findall(r"\(([\d.]*\d) and ([\d.]*\d) → ([\d.]*\d)\)", text)
    assert len(midpoints) == 2, midpoints
    for (a, b, mid), even in zip(midpoints, (True, False), strict=True):  # "when ... sum to an even number"
        half_ticks = price_to_ticks(dec(a)) + price_to_ticks(dec(b))
        assert (half_ticks % 2 == 0) is even
        assert str(half_ticks_to_price(half_ticks)) == mid
        assert -int(dec(mid).as_tuple().exponent) == (4 if even else 5)
    wh, at, money = find(r"\((\d+) Wh at ([\d.]*\d) is exactly ([\d.]*\d) \$\)", text).groups()
    assert amount(int(wh), dec(at)) == dec(money)
    digits = int(find(r"in a Decimal context \((\d+) digits\) that raises on any inexact result", text).group(1))
    assert EXACT.prec == digits
    with pytest.raises(Inexact):
        amount(3, Decimal("0." + "7" * digits))
    most = find(r"at most 10\^(\d+) Wh at at most (\d+) \$/kWh", text).groups()
    assert (10 ** int(most[0]), dec(most[1])) == (MAX_ORDER_WH, MAX_PRICE)
    assert amount(MAX_ORDER_WH, MAX_PRICE) == Decimal(10**9)
    assert "parse_price refuses a float outright" in text
    with pytest.raises(InvalidPrice):
        parse_price(0.1)  # type: ignore[arg-type]
    assert "nothing is rounded onto the tick" in text
    with pytest.raises(InvalidPrice):
        text_to_ticks("0.12345")
    base, factor, product = find(r"\(([\d.]*\d) × ([\d.]*\d) = ([\d.]*\d)\)", text).groups()
    assert str(EXACT.multiply(dec(base), dec(factor))) == product
    assert 1 + Tariff().fee_ratio == dec(factor)
    assert str(Tariff(price=dec(base)).prices_at(0).buy_price) == product


def test_reading_bounds_of_section_6() -> None:
    text = prose(section(6))
    exponent = int(find(r"Values are integers from 0 to MAX_READING_WH \(10\^(\d+)\)", text).group(1))
    assert 10**exponent == MAX_READING_WH
    assert int(find(r"MAX_READING_SOURCES \((\d+)\) sources", text).group(1)) == MAX_READING_SOURCES


# --- every example is tested ----------------------------------------------------------------


def test_every_example_marker_is_tested() -> None:
    known = {"timeline", "order-ids", "matching-book", "reconciliation-setup", "tariff-defaults",
             "tariff-time-of-use", "matching-uniform-limits", "true-up"}
    known |= {f"matching-{rule.value}" for rule in PricingRule}
    known |= {f"reconciliation-{label}" for label in RECONCILIATION_LABELS}
    assert sorted(m.group(1) for m in MARKER.finditer(DOC)) == sorted(known)
    # each pricing rule of section 5 has its example, under its own heading
    headings = re.findall(r"^### `(\w+)`$", section(5), re.M)
    assert sorted(headings) == sorted(rule.value for rule in PricingRule)
    assert set(CLAIMS) <= set(RECONCILIATION_LABELS)


# --- section 7: true-up --------------------------------------------------------------------


def test_true_up_example() -> None:
    block = example("true-up")
    text = prose(block)
    assert "alice sold bob 1000 Wh of solar at 0.1000 in slot [600, 660)" in text
    slot, grid = Slot(600, 660), GridPrices(buy_price=Decimal("0.1449"), sell_price=Decimal("0.069"))
    sold = Settlement(settlement_id="s", region="r1", slot=slot, source="solar", buyer="bob", seller="alice",
                      bid_id="b", ask_id="a", quantity_wh=1000, buy_price=Decimal("0.1000"),
                      sell_price=Decimal("0.1000"), matched_at_ms=0)
    revisions = true_up(region="r1", slot=slot, settlements=[sold], readings=[Reading("bob", slot, import_wh=1000)],
                        late=[Reading("alice", slot, export_wh={"solar": 1000})], grid=grid)
    built = [(str(e.revision), e.kind.value, f"{e.seller} → {e.buyer}", str(e.quantity_wh), e.buy_price,
              "yes" if e.reverses else "") for revision in revisions for e in revision]
    shown = [(r["revision"], r["kind"], r["seller → buyer"], r["Wh"], Decimal(r["price"]), r["reverses"])
             for r in table(block, "revision")]
    assert shown == built
    for k, revision in enumerate(revisions):
        stated = re.search(rf"Revision {k}: (.*?\$)\.", text)
        assert stated, f"the money of revision {k}"
        money = {party: Decimal(value.replace("−", "-").replace("+", ""))
                 for party, value in re.findall(r"(\w+) ([−+]?[\d.]+) \$", stated.group(1))}
        net = {p: b.received - b.paid for p, b in bills(revision).items()}
        assert money == {p: net.get(p, Decimal(0)) for p in money} and set(money) >= {p for p, v in net.items() if v}
