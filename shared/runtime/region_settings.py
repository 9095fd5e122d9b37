"""The market settings a region's ledger keeps: stored by its first ledger-writer, checked
by every later one, and used by whatever re-derives its slots (report, audit, replay).

A slot's ledger entries depend on the pricing rule, the round timing, the grid tariff and
the price cap. A report or a replay that took them from its own environment would
re-derive a ``pay_as_bid`` region as ``midpoint`` and call its ledger wrong; a
ledger-writer started with other settings would let a region change its rules half way.
"""

from __future__ import annotations

import json

from shared.runtime.ledger import LedgerStore, RecordBatch
from shared.runtime.settings import Settings, SettingsError, market_record, record_differences, with_record


async def keep_market_settings(store: LedgerStore, settings: Settings) -> None:
    """Store the region's market settings if its ledger has none; refuse other ones."""
    mine = market_record(settings.market)
    stored = await store.market_settings(settings.region)
    if stored is None:
        await store.write(RecordBatch(market_settings=[(settings.region, json.dumps(mine, sort_keys=True))]))
        stored = await store.market_settings(settings.region)  # another replica may have been first
    differences = record_differences(json.loads(stored or "{}"), mine)
    if differences:
        raise SettingsError(
            f"region {settings.region} runs with other market settings than these ({'; '.join(differences)}): "
            "a region's market settings cannot change half way; start a new region for new ones")


async def as_recorded(store: LedgerStore, settings: Settings) -> tuple[Settings, bool]:
    """``settings`` with the market settings the region's ledger keeps, and whether it keeps
    any (a ledger written before microte kept them has none: the settings stay as given)."""
    stored = await store.market_settings(settings.region)
    if stored is None:
        return settings, False
    return with_record(settings, json.loads(stored)), True
