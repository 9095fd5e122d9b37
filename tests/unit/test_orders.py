"""Order validation: one rejection reason per broken rule (docs/market.md section 4)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from shared.market import (
    MAX_ORDER_WH,
    MAX_PRICE,
    OrderTerms,
    Pool,
    Rejection,
    RejectReason,
    Schedule,
    Side,
    Slot,
    accept,
    classify_source,
    validate_order,
)
from shared.market.numbers import (
    SPEND_UNITS_PER_DOLLAR,
    InvalidPrice,
    amount,
    check_price_cap,
    check_spend_limit,
    held_connection,
    price_to_ticks,
    spend_units,
)
from shared.market.orders import DEFAULT_PRICE_CAP

SCHEDULE = Schedule(duration=60, close_steps=2)
ROUND = 6000
NEXT_SETTLE = Slot(6120, 6180)


def validate(**changes: Any) -> OrderTerms | Rejection:
    terms: dict[str, Any] = {
        "participant_id": "p1",
        "side": "bid",
        "quantity_wh": 1500,
        "price": Decimal("0.1200"),
        "source": "solar",
        "slot": NEXT_SETTLE,
        "schedule": SCHEDULE,
        "round_start": ROUND,
    }
    terms.update(changes)
    return validate_order(**terms)


def reason_of(result: OrderTerms | Rejection) -> RejectReason | None:
    return result.reason if isinstance(result, Rejection) else None


def test_a_valid_order_is_returned_as_its_normalised_terms() -> None:
    assert validate() == OrderTerms(
        participant_id="p1", side=Side.BID, quantity_wh=1500, price=Decimal("0.12"), source="solar", slot=NEXT_SETTLE
    )


@pytest.mark.parametrize("quantity", [0, -1, -1500, True, False, 1.0, 1500.0, "1500", None, Decimal(1500)])
def test_a_quantity_that_is_not_a_positive_integer_is_invalid_quantity(quantity: Any) -> None:
    assert reason_of(validate(quantity_wh=quantity)) is RejectReason.INVALID_QUANTITY


@pytest.mark.parametrize("quantity", [1, 2, 1500, MAX_ORDER_WH - 1, MAX_ORDER_WH])
def test_any_integer_quantity_from_1_wh_up_to_the_limit_is_accepted(quantity: int) -> None:
    result = validate(quantity_wh=quantity)
    assert isinstance(result, OrderTerms) and result.quantity_wh == quantity


@pytest.mark.parametrize("quantity", [MAX_ORDER_WH + 1, 2 * MAX_ORDER_WH, 2**40, 2**53, 2**62, 2**63 - 1, 2**64])
def test_a_quantity_above_the_limit_is_quantity_too_large_and_the_detail_names_the_limit(quantity: int) -> None:
    result = validate(quantity_wh=quantity)
    assert isinstance(result, Rejection) and result.reason is RejectReason.QUANTITY_TOO_LARGE
    assert str(MAX_ORDER_WH) in result.detail and str(quantity) in result.detail


def test_the_order_limit_is_one_gwh_and_a_million_orders_at_it_sum_far_inside_int64() -> None:
    assert MAX_ORDER_WH == 10**9
    assert 10**6 * MAX_ORDER_WH < (2**63 - 1) // 1000


@pytest.mark.parametrize(
    "price",
    [
        Decimal("0.00005"),  # off the 0.0001 tick
        Decimal("0.12345"),
        Decimal("-0.0001"),  # negative, on the tick
        Decimal("-1"),
        Decimal("10.0001"),  # above the default cap of 10
        Decimal("1E+3"),
        Decimal("NaN"),
        Decimal("Infinity"),
        0.12,  # a binary float is never a price
        "0.12",
        None,
    ],
)
def test_a_price_off_the_tick_negative_above_the_cap_or_not_a_decimal_is_invalid_price(price: Any) -> None:
    assert reason_of(validate(price=price)) is RejectReason.INVALID_PRICE


@pytest.mark.parametrize("price", ["0", "0.0001", "0.1449", "10", "10.0000"])
def test_prices_from_zero_up_to_the_cap_on_the_tick_are_accepted(price: str) -> None:
    result = validate(price=Decimal(price))
    assert isinstance(result, OrderTerms) and result.price == Decimal(price)


def test_the_price_cap_is_configurable() -> None:
    assert reason_of(validate(price=Decimal("0.5001"), price_cap=Decimal("0.5"))) is RejectReason.INVALID_PRICE
    assert isinstance(validate(price=Decimal("0.5"), price_cap=Decimal("0.5")), OrderTerms)


@pytest.mark.parametrize("price", ["999.9999", "1000", "1000.0000"])
def test_a_price_up_to_the_hard_ceiling_is_accepted_under_a_cap_that_high(price: str) -> None:
    assert isinstance(validate(price=Decimal(price), price_cap=MAX_PRICE), OrderTerms)


@pytest.mark.parametrize("cap", [MAX_PRICE, Decimal("5000"), Decimal("1E+9")])
def test_a_price_above_the_hard_ceiling_is_invalid_price_whatever_cap_validation_is_given(cap: Decimal) -> None:
    result = validate(price=Decimal("1000.0001"), price_cap=cap)
    assert isinstance(result, Rejection) and result.reason is RejectReason.INVALID_PRICE
    assert str(MAX_PRICE) in result.detail


@pytest.mark.parametrize("cap", ["0", "0.0001", "10", "999.9999", "1000", "1000.0000"])
def test_a_price_cap_on_the_tick_up_to_the_hard_ceiling_is_a_valid_setting(cap: str) -> None:
    assert check_price_cap(Decimal(cap)) == Decimal(cap)


@pytest.mark.parametrize("cap", ["1000.0001", "1001", "1E+6"])
def test_a_price_cap_above_the_hard_ceiling_is_refused_and_the_error_names_the_ceiling(cap: str) -> None:
    with pytest.raises(InvalidPrice, match=f"within \\[0, {MAX_PRICE}\\]"):
        check_price_cap(Decimal(cap))


@pytest.mark.parametrize("cap", ["-0.0001", "-1", "0.00001", "NaN", "Infinity"])
def test_a_price_cap_that_is_negative_off_the_tick_or_not_finite_is_refused(cap: str) -> None:
    with pytest.raises(InvalidPrice):
        check_price_cap(Decimal(cap))


def test_the_hard_price_ceiling_is_above_the_default_cap_and_a_full_order_at_it_costs_an_exact_billion() -> None:
    assert check_price_cap(DEFAULT_PRICE_CAP) == DEFAULT_PRICE_CAP
    assert price_to_ticks(MAX_PRICE) == 10**7
    assert amount(MAX_ORDER_WH, MAX_PRICE) == Decimal(10**9)


@pytest.mark.parametrize("source", ["grid", "GRID", "coal", "", "sol ar", "solar ", "bess2"])
def test_a_source_other_than_solar_wind_or_bess_is_unknown_source(source: str) -> None:
    assert reason_of(validate(source=source)) is RejectReason.UNKNOWN_SOURCE
    assert classify_source(source) is None


@pytest.mark.parametrize(
    ("source", "normalised", "pool"),
    [
        ("SOLAR", "solar", Pool.NON_DISPATCH),
        ("Solar", "solar", Pool.NON_DISPATCH),
        ("wInD", "wind", Pool.NON_DISPATCH),
        ("BESS", "bess", Pool.DISPATCH),
        ("bess", "bess", Pool.DISPATCH),
    ],
)
def test_sources_are_classified_case_insensitively_and_stored_in_lower_case(
    source: str, normalised: str, pool: Pool
) -> None:
    assert classify_source(source) == (normalised, pool)
    result = validate(source=source)
    assert isinstance(result, OrderTerms) and result.source == normalised


@pytest.mark.parametrize("side", ["buy", "sell", "BID", "", None])
def test_a_side_other_than_bid_or_ask_is_invalid_side(side: Any) -> None:
    assert reason_of(validate(side=side)) is RejectReason.INVALID_SIDE


def test_an_ask_is_accepted_as_an_ask() -> None:
    result = validate(side="ask")
    assert isinstance(result, OrderTerms) and result.side is Side.ASK


def test_a_misaligned_slot_is_misaligned_slot() -> None:
    assert reason_of(validate(slot=Slot(6150, 6210))) is RejectReason.MISALIGNED_SLOT


@pytest.mark.parametrize("slot", [Slot(6060, 6120), Slot(6000, 6060), Slot(5940, 6000)])
def test_an_order_for_a_slot_whose_gate_closed_is_gate_closed(slot: Slot) -> None:
    assert reason_of(validate(slot=slot)) is RejectReason.GATE_CLOSED


def test_an_order_for_a_slot_beyond_the_horizon_is_beyond_horizon() -> None:
    assert reason_of(validate(slot=Slot(ROUND + 86_400, ROUND + 86_460))) is RejectReason.BEYOND_HORIZON
    assert isinstance(validate(slot=Slot(ROUND + 86_340, ROUND + 86_400)), OrderTerms)


def test_every_rejection_says_why_in_words() -> None:
    for changes in ({"quantity_wh": 0}, {"quantity_wh": MAX_ORDER_WH + 1}, {"price": Decimal("-1")},
                    {"source": "grid"}, {"slot": Slot(0, 60)}):
        result = validate(**changes)
        assert isinstance(result, Rejection) and result.detail


def test_accepting_terms_adds_the_server_facts_and_keeps_the_terms() -> None:
    terms = validate(source="WIND", side="ask")
    assert isinstance(terms, OrderTerms)
    order = accept(terms, order_id="o-1", client_order_id="c-1", seq=42, submitted_at_ms=6_000_123)
    assert (order.order_id, order.client_order_id, order.seq, order.submitted_at_ms) == ("o-1", "c-1", 42, 6_000_123)
    assert (order.participant_id, order.side, order.quantity_wh, order.price, order.source, order.slot) == (
        "p1", Side.ASK, 1500, Decimal("0.12"), "wind", NEXT_SETTLE)
    assert order.pool is Pool.NON_DISPATCH
    assert order.price_ticks == 1200


def test_a_simulated_rounds_orders_rank_by_round_then_by_a_lottery_no_arrival_changes() -> None:
    from shared.market import simultaneous_seq

    slot = Slot(1782151320, 1782151380)
    later = Slot(1782151380, 1782151440)

    def seq(pid: str, client: str = "c-1", round_start: int = 1782151200, s: Slot = slot) -> int:
        return simultaneous_seq(s, pid, client, round_start)

    assert seq("h1") == seq("h1")  # a function of the order alone: arrival plays no part
    assert seq("h1", round_start=1782151200) < seq("h0", round_start=1782151260)  # an earlier round first
    assert seq("h9") >> 20 == 1782151200
    ranked = sorted(range(50), key=lambda i: seq(f"h{i:02d}"))
    again = sorted(range(50), key=lambda i: seq(f"h{i:02d}", s=later))
    assert ranked != list(range(50)) and ranked != again  # drawn afresh for each slot, not by name
    assert len({seq(f"h{i:02d}") >> 4 for i in range(50)}) >= 49  # 16 bits: a tie among 50 is rare
    own = [seq("h1", f"c-{i}") for i in range(5)]  # a participant's own orders: its lottery bits, then its own
    assert len({o >> 4 for o in own}) == 1
    assert max(seq(f"h{i}", round_start=2**33 - 1) for i in range(10)) <= 2**53  # the wire's integers, until 2242


@pytest.mark.parametrize(("quantity_wh", "price"), [(1, "0.0001"), (1500, "0.1449"), (10**9, "1000"), (333, "0.10025")])
def test_a_bids_worth_in_spend_units_is_its_exact_amount(quantity_wh: int, price: str) -> None:
    if price == "0.10025":  # a settlement price, never an order's: off the tick
        with pytest.raises(InvalidPrice):
            spend_units(quantity_wh, Decimal(price))
        return
    units = spend_units(quantity_wh, Decimal(price))
    assert Decimal(units) / SPEND_UNITS_PER_DOLLAR == amount(quantity_wh, Decimal(price))


@pytest.mark.parametrize(("limit", "units"), [("0", 0), ("0.0000001", 1), ("12.5", 125_000_000),
                                              ("100000000", 10**15)])
def test_a_spending_limit_is_whole_units_of_a_ten_millionth_of_a_dollar(limit: str, units: int) -> None:
    assert check_spend_limit(Decimal(limit)) == units


@pytest.mark.parametrize("limit", ["-0.01", "0.00000001", "100000000.1", "NaN", "Infinity"])
def test_a_spending_limit_that_is_negative_too_fine_too_large_or_not_finite_is_refused(limit: str) -> None:
    with pytest.raises(ValueError):
        check_spend_limit(Decimal(limit))


@pytest.mark.parametrize(("declared", "cap", "held"), [(None, 0, None), (5000, 0, 5000), (None, 6000, 6000),
                                                       (9000, 6000, 6000), (3000, 6000, 3000), (0, 6000, 0)])
def test_a_members_connection_is_its_own_capped_by_the_regions(declared: int | None, cap: int,
                                                                held: int | None) -> None:
    assert held_connection(declared, cap) == held
