"""Ledger entries (docs/market.md section 9) and the bills they add up to.

Every entry is a transfer between two parties: ``seller`` delivers to ``buyer`` and
``buyer`` pays. The buyer pays ``quantity_wh/1000 * buy_price``, the seller receives
``quantity_wh/1000 * sell_price``, and the market operator keeps the difference, so
money sums to zero over all parties. A *financial* entry (``shortfall``,
``shortfall_penalty``) moves money only; its ``quantity_wh`` is the energy it prices.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum

from shared.market.numbers import ZERO, amount
from shared.market.timing import Slot

GRID = "grid"
MARKET = "market"


class EntryKind(StrEnum):
    P2P = "p2p"
    BESS_COVER = "bess_cover"
    UNCONSUMED = "unconsumed"
    UNCONSUMED_EXPORT = "unconsumed_export"
    SHORTFALL = "shortfall"
    SHORTFALL_PENALTY = "shortfall_penalty"
    SELF_CONSUMPTION = "self_consumption"
    GRID_EXPORT = "grid_export"
    GRID_IMPORT = "grid_import"


FINANCIAL_KINDS = frozenset({EntryKind.SHORTFALL, EntryKind.SHORTFALL_PENALTY})


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    entry_id: str
    region: str
    slot: Slot
    kind: EntryKind
    seller: str
    buyer: str
    source: str
    quantity_wh: int
    buy_price: Decimal
    sell_price: Decimal
    settlement_id: str | None
    matched_at_ms: int | None
    delivered_at: int

    @property
    def paid(self) -> Decimal:
        return amount(self.quantity_wh, self.buy_price)

    @property
    def received(self) -> Decimal:
        return amount(self.quantity_wh, self.sell_price)

    @property
    def moves_energy(self) -> bool:
        return self.kind not in FINANCIAL_KINDS


def entry_id(
    region: str, slot: Slot, kind: str, settlement_id: str | None, seller: str, buyer: str, source: str
) -> str:
    """Deterministic: the same inputs always name the same entry, so a replay adds nothing."""
    key = f"{region}|{slot}|{kind}|{settlement_id or ''}|{seller}|{buyer}|{source}"
    return hashlib.blake2b(key.encode(), digest_size=16).hexdigest()


@dataclass
class Bill:
    """One party's money and energy over a set of entries (money exact)."""

    paid: Decimal = ZERO
    received: Decimal = ZERO
    bought_wh: int = 0
    sold_wh: int = 0

    @property
    def net_cost(self) -> Decimal:
        return self.paid - self.received


def bills(entries: Iterable[LedgerEntry]) -> dict[str, Bill]:
    """Each party's bill: what it paid and received, energy bought and sold.

    The market operator receives every spread (``buy_price - sell_price``).
    Self-consumption moves nothing between parties and is left out.
    """
    result: dict[str, Bill] = defaultdict(Bill)
    for e in entries:
        if e.seller == e.buyer:
            continue
        buyer, seller = result[e.buyer], result[e.seller]
        paid, received = e.paid, e.received
        buyer.paid += paid
        seller.received += received
        if paid != received:
            result[MARKET].received += paid - received
        if e.moves_energy:
            buyer.bought_wh += e.quantity_wh
            seller.sold_wh += e.quantity_wh
    return dict(result)
