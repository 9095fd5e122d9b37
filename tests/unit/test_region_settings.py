"""A region's ledger keeps the market settings it runs with (shared.runtime.region_settings)."""

from __future__ import annotations

import json

import pytest

from shared.market import PricingRule
from shared.runtime.ledger.memory import MemoryLedgerStore
from shared.runtime.region_settings import as_recorded, keep_market_settings
from shared.runtime.settings import SettingsError, from_env, market_record, with_record


async def test_the_first_ledger_writer_stores_them_and_a_later_one_must_agree() -> None:
    store = MemoryLedgerStore()
    await store.open()
    ran = from_env({"MICROTE_REGION": "north", "MICROTE_PRICING_RULE": "pay_as_bid", "MICROTE_GRID_PRICE": "0.0690"})
    await keep_market_settings(store, ran)
    stored = json.loads(await store.market_settings("north") or "{}")
    assert stored["MICROTE_PRICING_RULE"] == "pay_as_bid" and stored["MICROTE_GRID_PRICE"] == "0.069"
    await keep_market_settings(store, from_env({"MICROTE_REGION": "north", "MICROTE_PRICING_RULE": "pay_as_bid",
                                                "MICROTE_GRID_PRICE": "0.069", "MICROTE_LOG_LEVEL": "debug"}))
    with pytest.raises(SettingsError, match=r"MICROTE_PRICING_RULE: pay_as_bid -> midpoint; "
                                            r"MICROTE_TIMEZONE: UTC -> Europe/Berlin\): a region's market settings "
                                            "cannot change"):
        await keep_market_settings(store, from_env({"MICROTE_REGION": "north", "MICROTE_TIMEZONE": "Europe/Berlin"}))


async def test_a_report_takes_the_settings_the_ledger_keeps_over_its_own() -> None:
    store = MemoryLedgerStore()
    await store.open()
    mine = from_env({"MICROTE_REGION": "north", "MICROTE_GRID_PRICE": "0.5"})
    assert await as_recorded(store, mine) == (mine, False)  # a ledger from before: as given
    await keep_market_settings(store, from_env({"MICROTE_REGION": "north", "MICROTE_PRICING_RULE": "equal_price",
                                                "MICROTE_ROUND_SECONDS": "900", "MICROTE_HORIZON_S": "172800"}))
    recorded, kept = await as_recorded(store, mine)
    assert kept
    assert recorded.market.rule is PricingRule.EQUAL_PRICE
    assert recorded.market.schedule.duration == 900 and str(recorded.market.tariff.price) == "0.069"
    assert recorded.ledger_url == mine.ledger_url and recorded.region == "north"


def test_a_record_with_a_setting_this_version_does_not_know_is_refused() -> None:
    base = from_env({"MICROTE_REGION": "north"})
    assert with_record(base, market_record(base.market)) == base
    with pytest.raises(SettingsError, match="does not know"):
        with_record(base, {**market_record(base.market), "MICROTE_SURCHARGE": "1"})


def test_a_time_of_use_table_is_read_kept_with_the_region_and_given_back() -> None:
    from decimal import Decimal

    from shared.runtime.settings import format_time_of_use, parse_time_of_use

    table = parse_time_of_use("6-7:17-19=0.15; 12:7=0.1200")
    assert table == {6: {17: Decimal("0.15"), 18: Decimal("0.15"), 19: Decimal("0.15")},
                     7: {17: Decimal("0.15"), 18: Decimal("0.15"), 19: Decimal("0.15")}, 12: {7: Decimal("0.12")}}
    assert format_time_of_use(table) == "6:17-19=0.15;7:17-19=0.15;12:7=0.12"
    assert parse_time_of_use(format_time_of_use(table)) == table and parse_time_of_use("") == {}
    ran = from_env({"MICROTE_REGION": "north", "MICROTE_TIME_OF_USE": "6-7:17-19=0.15;12:7=0.12"})
    record = market_record(ran.market)
    assert with_record(from_env({"MICROTE_REGION": "north"}), record).market.tariff.time_of_use == table
    # a record kept before the table was: no table
    older = {k: v for k, v in record.items() if k != "MICROTE_TIME_OF_USE"}
    assert with_record(ran, older).market.tariff.time_of_use == {}


@pytest.mark.parametrize(("text", "says"), [
    ("6:24=0.1", "has a month or hour out of range"), ("0:1=0.1", "has a month or hour out of range"),
    ("6:9-7=0.1", "has a month or hour out of range"), ("6:1=abc", "is not a part"), ("peak", "is not a part"),
    ("6:1-2=0.1;6:2=0.2", "prices month 6 hour 2 again"), ("6:1=0.123456", "is not on the 0.0001 tick"),
])
def test_a_bad_time_of_use_table_says_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(SettingsError, match="MICROTE_TIME_OF_USE") as refused:
        from_env({"MICROTE_TIME_OF_USE": text})
    assert says in str(refused.value)


@pytest.mark.parametrize("window", ["60", "120"])
def test_a_true_up_window_that_ends_by_the_reading_deadline_is_refused(window: str) -> None:
    """A slot is reconciled by its reading deadline at the latest: such a window would take no
    late reading ever."""
    with pytest.raises(SettingsError, match=r"MICROTE_TRUE_UP_S \(\d+\) must be 0 or longer than "
                                            r"MICROTE_READING_DEADLINE_S \(120\)"):
        from_env({"MICROTE_TRUE_UP_S": window, "MICROTE_READING_DEADLINE_S": "120"})
    assert from_env({"MICROTE_TRUE_UP_S": "121", "MICROTE_READING_DEADLINE_S": "120"}).market.true_up_s == 121
    assert from_env({"MICROTE_TRUE_UP_S": "0"}).market.true_up_s == 0
